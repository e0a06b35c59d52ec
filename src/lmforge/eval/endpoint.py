"""The same evaluation tasks against any OpenAI-compatible server, through the `openai` client.

Multiple choice needs the server to score text it did not write: each choice is sent as
``completions.create(prompt=context + continuation, echo=True, logprobs=1, max_tokens=0)``
(the request lm-evaluation-harness's OpenAI adapter makes) and the continuation's log-prob is
the sum of the echoed prompt's `token_logprobs` from the first token that starts at or after
the end of the context (`text_offset`). `lmforge serve` answers such requests, as do vLLM and
llama.cpp's server; OpenAI's own newer models do not. Such a server raises `NoLogprobsError`,
which `evaluate_multiple_choice` (method "auto") answers by scoring the task through generation
instead (lettered choices, the answer read back; see `lmforge.eval.multiple_choice`), and the
result says which method was used; generation tasks work against any server (plain
completions).

The server tokenizes, so the context/continuation split follows its tokens' text offsets; for
a tokenizer whose tokens never straddle that boundary (characters, or a space-prefixed
continuation in byte-level BPE) the scores equal in-process scoring of the same checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lmforge.deps import require
from lmforge.eval.lm import Generated
from lmforge.eval.scoring import Loglik, split_pair
from lmforge.infer.generate import GenerationConfig

NEEDS_LOGPROBS = (
    "multiple-choice scoring needs the server to return log-probabilities of the prompt's "
    "tokens (echo=true with logprobs); {detail}. Use a server that does (lmforge serve, "
    "vLLM, llama.cpp's server) or evaluate a generation task instead"
)


class EndpointError(ValueError):
    """A server answered something an evaluation cannot use."""


class NoLogprobsError(EndpointError):
    """The server gives no log-probabilities of a prompt's tokens (or refuses echo)."""


def _openai():
    return require("openai", "client")


class EndpointLM:
    """An OpenAI-compatible `/v1` server (`base_url` like http://127.0.0.1:8000/v1)."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str = "unused",
        timeout: float = 600.0,
        client: Any = None,
    ) -> None:
        openai = _openai()
        for name in ("httpx", "httpx2"):  # a log line per HTTP request would drown the results
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        base_url = base_url.rstrip("/")
        if not base_url.endswith("/v1"):
            base_url += "/v1"  # a bare http://host:port is the usual way to name a server
        self.base_url = base_url
        self.client = client or openai.OpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2
        )
        self._errors = (openai.APIError,)
        self.model = model or self._only_model()

    def _only_model(self) -> str:
        try:
            names = [m.id for m in self.client.models.list().data]
        except self._errors as e:
            raise EndpointError(
                f"could not list the models of {self.base_url} ({e}); pass --model NAME"
            ) from e
        if len(names) != 1:
            raise EndpointError(
                f"{self.base_url} serves {len(names)} models ({', '.join(names) or 'none'}); "
                "pick one with --model NAME"
            )
        return names[0]

    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16, progress: bool = False
    ) -> list[Loglik]:
        """Score (context, continuation) pairs, `batch_size` prompts per request."""
        split = [split_pair(ctx, cont) for ctx, cont in pairs]
        for i, (ctx, _) in enumerate(split):
            if not ctx:
                raise EndpointError(
                    f"request {i} has an empty context; a server cannot score the first token "
                    "of a prompt, so give every item some context text"
                )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(split), desc="scoring", unit="request")
        out: list[Loglik] = []
        for start in range(0, len(split), max(1, batch_size)):
            chunk = split[start : start + max(1, batch_size)]
            prompts = [ctx + cont for ctx, cont in chunk]
            try:
                response = self.client.completions.create(
                    model=self.model,
                    prompt=prompts,
                    echo=True,
                    logprobs=1,
                    # One token, as lm-eval-harness asks: servers such as vLLM refuse 0; what
                    # is generated after the prompt is ignored below.
                    max_tokens=1,
                    temperature=0,
                )
            except self._errors as e:
                message = getattr(e, "message", str(e))
                if "logprobs" in message or "echo" in message:
                    raise NoLogprobsError(NEEDS_LOGPROBS.format(detail=message)) from e
                hint = ""
                if getattr(e, "code", None) == "context_length_exceeded":
                    hint = (
                        "; a server does not cut prompts to fit, so evaluate the checkpoint "
                        "in-process (contexts are truncated on the left) or use --limit"
                    )
                raise EndpointError(
                    f"{self.base_url} refused requests {start}-{start + len(chunk) - 1}: "
                    f"{message}{hint}"
                ) from e
            choices = sorted(response.choices, key=lambda c: c.index)
            if len(choices) != len(chunk):
                raise EndpointError(
                    f"{self.base_url} answered {len(choices)} choices for {len(chunk)} prompts"
                )
            for (ctx, cont), choice in zip(chunk, choices):
                out.append(_continuation_score(choice, len(ctx), len(ctx) + len(cont)))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out

    def generate(
        self, prompts: Sequence[str], cfg: GenerationConfig, *, progress: bool = False
    ) -> list[Generated]:
        if len(cfg.stop) > 4:
            raise EndpointError(
                f"{len(cfg.stop)} stop strings given; OpenAI-compatible servers take at most 4"
            )
        items: Any = prompts
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(prompts, desc="generating", unit="prompt")
        out = []
        for i, prompt in enumerate(items):
            kwargs: dict[str, Any] = {}
            if cfg.top_k:
                kwargs["extra_body"] = {"top_k": cfg.top_k}  # vLLM's and lmforge's extension
            try:
                response = self.client.completions.create(
                    model=self.model,
                    prompt=prompt,
                    max_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    stop=list(cfg.stop) or None,
                    seed=cfg.seed,
                    **kwargs,
                )
            except self._errors as e:
                raise EndpointError(
                    f"{self.base_url} refused prompt {i}: {getattr(e, 'message', e)}"
                ) from e
            choice = response.choices[0]
            out.append(Generated(text=choice.text, finish_reason=choice.finish_reason or ""))
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "url": self.base_url, "model": self.model}


def _continuation_score(choice: Any, context_chars: int, prompt_chars: int) -> Loglik:
    """Sum the echoed prompt's log-probs over the tokens of the continuation."""
    lp = choice.logprobs
    tokens = getattr(lp, "tokens", None) if lp is not None else None
    offsets = getattr(lp, "text_offset", None) if lp is not None else None
    values = getattr(lp, "token_logprobs", None) if lp is not None else None
    if not tokens or offsets is None or values is None:
        raise NoLogprobsError(NEEDS_LOGPROBS.format(detail="it returned no logprobs"))
    if not offsets or offsets[0] != 0:
        raise NoLogprobsError(
            NEEDS_LOGPROBS.format(detail="it did not echo the prompt's tokens (echo=true)")
        )
    top = getattr(lp, "top_logprobs", None) or [None] * len(tokens)
    total, greedy, count = 0.0, True, 0
    for token, offset, value, best in zip(tokens, offsets, values, top):
        if offset < context_chars < offset + len(token):
            raise EndpointError(
                "a token of the server straddles the context/continuation boundary, so the "
                "continuation's log-likelihood cannot be read off its prompt logprobs; score "
                "this task in-process instead"
            )
        if offset < context_chars or offset >= prompt_chars:
            continue  # a context token, or one the server generated after the prompt
        if value is None:
            raise NoLogprobsError(NEEDS_LOGPROBS.format(detail="a prompt token had no logprob"))
        total += value
        count += 1
        if best:
            greedy = greedy and max(best, key=best.get) == token
    if count == 0:
        raise EndpointError(
            "the server's tokens give the continuation no token of its own (a token straddles "
            "the context/continuation boundary); score this task in-process instead"
        )
    return Loglik(logprob=total, is_greedy=greedy, tokens=count)
