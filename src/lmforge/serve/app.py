"""An HTTP server for a trained run: `/generate` and an OpenAI-compatible `/v1` API.

`/v1/completions` and `/v1/models` follow OpenAI's legacy completions API closely enough that
the official `openai` client (and tools built on it) can talk to a run:
``openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")``. Errors come back in
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and a bad request is
always a 4xx, never a 500.

One model is loaded per server. Generation is CPU/GPU bound, so it runs in the threadpool to
keep the event loop answering, and an asyncio lock lets one request generate at a time:
two generations side by side would only fight for the same cores.

`/v1/chat/completions` answers a conversation (`messages` of system, user and assistant turns,
text content) in the run's own chat template (`tokenizer/chat_template.jinja`, written by
`lmforge finetune sft` or `import hf`; lmforge's default template otherwise), encoded by
`lmforge.tokenizer.chat.encode_chat` with the generation prompt: the same ids that fine-tuning
put before each answer and that `lmforge generate --chat` sends, so a served model is asked in
the format it was taught; where the template ends a turn in text rather than an EOS token,
the answer stops at that text (`turn_end`). Streaming sends OpenAI's `chat.completion.chunk`
deltas.

`logprobs` (0-5) and `echo` follow OpenAI's legacy format: `choices[].logprobs` holds
`tokens`, `token_logprobs` (null for the prompt's first token, which nothing predicts),
`top_logprobs` and `text_offset` (where each token starts in prompt + completion). With
``echo=true, logprobs=1, max_tokens=0`` the server scores text it did not write, which is
how lm-evaluation-harness and `lmforge eval --endpoint` run multiple-choice tasks. Log-probs
are those of the model's raw distribution (before temperature, top-k or top-p), computed by
`lmforge.eval.scoring` in one pass over prompt + completion (rolling windows past the
model's context), so they equal in-process scoring of the same checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.eval.scoring import sequence_logprobs, token_strings, top_strings
from lmforge.infer.generate import (
    Completion,
    GenerationConfig,
    complete,
    prepare_for_decoding,
    stream_text,
)
from lmforge.infer.load import LoadedRun, load_run
from lmforge.tokenizer.chat import ChatTemplateError, encode_chat, template_for_run, turn_end
from lmforge.train.trainer import resolve_device

log = logging.getLogger(__name__)

OPENAI_DEFAULT_MAX_TOKENS = 16  # what OpenAI's completions API uses when max_tokens is not given
OPENAI_MAX_LOGPROBS = 5  # the most top_logprobs OpenAI's completions API returns per token
GENERATE_DEFAULT_MAX_TOKENS = 200


@dataclass(kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_prompt_tokens: int = 0  # longest prompt accepted; 0 = the model's context length
    max_tokens_limit: int = 1024  # largest max_tokens (max_new_tokens) a request may ask for
    model_name: str = "lmforge"  # the model id in /v1/models and in responses
    checkpoint: str = "best"  # 'best', 'last' or a folder name like step-0001000
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_prompt_tokens < 0:
            raise ValueError(
                f"max_prompt_tokens must be >= 0 (0 = the model's context), "
                f"got {self.max_prompt_tokens}"
            )
        if self.max_tokens_limit < 1:
            raise ValueError(f"max_tokens_limit must be >= 1, got {self.max_tokens_limit}")
        if not self.model_name:
            raise ValueError("model_name must not be empty; pass the id clients should use")


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# ---------------------------------------------------------------- request bodies
# Optional fields accept null as "not given", as OpenAI's API does; unknown fields are ignored
# so that clients sending e.g. `user` still work.


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None


class CompletionRequest(SamplingFields):
    model: str | None = None  # None: the served model
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=OPENAI_MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # OpenAI's newer clients send "developer" where older ones send "system".
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(SamplingFields):
    model: str | None = None  # None: the served model
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)  # OpenAI's newer name
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    tools: list[Any] | None = None


class GenerateRequest(SamplingFields):
    text: str
    max_new_tokens: int | None = Field(default=None, ge=0)
    stop: list[str] | None = None


# ---------------------------------------------------------------- the app


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """`{role, content}` dicts for the chat template: text parts joined, "developer" as
    "system" (what chat templates know); other content (images, audio) is refused."""
    out = []
    for i, m in enumerate(messages):
        content = m.content or ""
        if not isinstance(content, str):
            texts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(
                        400,
                        f"messages[{i}].content has a part of type {part.get('type')!r}; only "
                        "text parts are supported",
                        param=f"messages[{i}].content",
                    )
                texts.append(part["text"])
            content = "".join(texts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    return out


def _validation_error(exc: RequestValidationError) -> APIError:
    """One readable message for pydantic's errors, naming the first bad field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [part for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON: {detail}", code="json_invalid")
    if not loc or not isinstance(loc[0], str):
        return APIError(
            400, "the request body must be a JSON object sent as Content-Type: application/json"
        )
    seen: dict[str, str] = {}
    for err in errors:
        field = [p for p in err.get("loc", ()) if p != "body"]
        if field and isinstance(field[0], str):
            # A nested field by its path: messages[0].role
            name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in field)[1:]
            seen.setdefault(name, err.get("msg", "invalid"))
    message = "; ".join(f"{name}: {msg}" for name, msg in seen.items())
    return APIError(400, f"invalid request: {message}", param=loc[0])


def build_app(run_dir: str | Path, cfg: ServeConfig) -> FastAPI:
    """A FastAPI app serving checkpoint `cfg.checkpoint` of the run in `run_dir`."""
    device = resolve_device(cfg.device)
    run: LoadedRun = load_run(
        run_dir, which=cfg.checkpoint, device=device, families={"gpt"}, command="lmforge serve"
    )
    prepare_for_decoding(run.model)
    model, tokenizer = run.model, run.tokenizer
    template = template_for_run(Path(run_dir) / "tokenizer")
    # A turn that ends in text rather than an EOS id ends the answer as a stop string would.
    chat_stops = tuple(filter(None, [turn_end(template, tokenizer)]))
    context = model.config.max_seq_len
    max_prompt = cfg.max_prompt_tokens or context
    created = int(run.checkpoint.stat().st_mtime)
    # Created here; asyncio binds it to the running loop on first contended use.
    lock = asyncio.Lock()
    log.info(
        "serving %s (%s) as %r on %s; prompts up to %d tokens, max_tokens up to %d",
        run_dir,
        run.checkpoint.name,
        cfg.model_name,
        device,
        max_prompt,
        cfg.max_tokens_limit,
    )

    app = FastAPI(title="lmforge", summary=f"serving {cfg.model_name}")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(exc.status_code, message).response()

    def check_model(name: str | None) -> None:
        if name is not None and name != cfg.model_name:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves `{cfg.model_name}`",
                param="model",
                code="model_not_found",
            )

    def generation_config(
        body: SamplingFields, max_tokens: int, stop: tuple[str, ...], param: str
    ) -> GenerationConfig:
        if max_tokens > cfg.max_tokens_limit:
            raise APIError(
                400,
                f"{param} is {max_tokens}, more than this server's limit of "
                f"{cfg.max_tokens_limit}; ask for at most {cfg.max_tokens_limit}",
                param=param,
            )
        try:
            return GenerationConfig(
                max_new_tokens=max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_k=body.top_k or 0,
                top_p=1.0 if body.top_p is None else body.top_p,
                stop=stop,
                seed=body.seed,
            )
        except ValueError as e:
            raise APIError(400, str(e)) from e

    async def check_prompt(prompt: str, param: str) -> None:
        # Encoding a huge prompt takes a while; keep it off the event loop.
        n = len(await run_in_threadpool(tokenizer.encode_prompt, prompt))
        if n > max_prompt:
            raise APIError(
                400,
                f"the prompt is {n} tokens, more than this server's limit of {max_prompt} "
                "tokens; shorten it",
                param=param,
                code="context_length_exceeded",
            )

    async def generate(prompt: str | list[int], gen: GenerationConfig) -> Completion:
        async with lock:
            return await run_in_threadpool(complete, model, tokenizer, prompt, gen)

    async def score(prompt: str, done: Completion, top: int, echo: bool) -> dict[str, Any]:
        async with lock:
            return await run_in_threadpool(
                completion_logprobs, model, tokenizer, prompt, done, top, echo
            )

    # ------------------------------------------------------------ routes

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": cfg.model_name,
            "checkpoint": run.checkpoint.name,
            "device": str(device),
            "max_seq_len": context,
        }

    def model_card() -> dict[str, Any]:
        return {"id": cfg.model_name, "object": "model", "created": created, "owned_by": "lmforge"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card()

    @app.post("/generate")
    async def generate_text(body: GenerateRequest) -> dict[str, Any]:
        limit = min(GENERATE_DEFAULT_MAX_TOKENS, cfg.max_tokens_limit)
        max_new = limit if body.max_new_tokens is None else body.max_new_tokens
        gen = generation_config(body, max_new, _stops(body.stop), "max_new_tokens")
        await check_prompt(body.text, "text")
        done = await generate(body.text, gen)
        return {
            "text": body.text,
            "completion": done.text,
            "finish_reason": done.finish_reason,
            "usage": _usage(done.prompt_tokens, len(done.token_ids)),
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> dict[str, Any] | StreamingResponse:
        check_model(body.model)
        if body.n not in (None, 1):
            raise APIError(400, f"n is {body.n}; only n=1 is supported", param="n")
        if body.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported", param="best_of")
        if body.logprobs is not None and body.stream:
            raise APIError(
                400,
                "logprobs with stream=true is not supported; ask without streaming",
                param="logprobs",
            )
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        max_tokens = OPENAI_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        gen = generation_config(body, max_tokens, _stops(body.stop), "max_tokens")
        for prompt in prompts:
            await check_prompt(prompt, "prompt")

        completion_id = f"cmpl-{uuid.uuid4().hex}"
        now = int(time.time())

        def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": now,
                "model": cfg.model_name,
                "choices": choices,
            }

        def choice(
            index: int, text: str, finish_reason: str | None, logprobs: Any = None
        ) -> dict[str, Any]:
            return {
                "text": text,
                "index": index,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }

        if not body.stream:
            # Several prompts are answered one after another, each as its own choice.
            choices, prompt_tokens, completion_tokens = [], 0, 0
            for i, prompt in enumerate(prompts):
                done = await generate(prompt, gen)
                text = prompt + done.text if body.echo else done.text
                logprobs = None
                if body.logprobs is not None:
                    logprobs = await score(prompt, done, body.logprobs, body.echo)
                choices.append(choice(i, text, done.finish_reason, logprobs))
                prompt_tokens += done.prompt_tokens
                completion_tokens += len(done.token_ids)
            return {**envelope(choices), "usage": _usage(prompt_tokens, completion_tokens)}

        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            prompt_tokens, completion_tokens = 0, 0
            # Held for the whole stream; released if the client goes away (the task is cancelled).
            async with lock:
                for i, prompt in enumerate(prompts):
                    if body.echo and prompt:
                        yield _sse(envelope([choice(i, prompt, None)]))
                    pieces = stream_text(model, tokenizer, prompt, gen)
                    while True:
                        item = await run_in_threadpool(_next_or_none, pieces)
                        if isinstance(item, Completion):
                            yield _sse(envelope([choice(i, "", item.finish_reason)]))
                            prompt_tokens += item.prompt_tokens
                            completion_tokens += len(item.token_ids)
                            break
                        if item is None:
                            raise RuntimeError("stream_text ended without a Completion")
                        yield _sse(envelope([choice(i, item, None)]))
            if include_usage:
                yield _sse({**envelope([]), "usage": _usage(prompt_tokens, completion_tokens)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        check_model(body.model)
        if body.n not in (None, 1):
            raise APIError(400, f"n is {body.n}; only n=1 is supported", param="n")
        if body.logprobs:
            raise APIError(
                400, "logprobs is not supported for chat; use /v1/completions", param="logprobs"
            )
        if body.tools:
            raise APIError(400, "tools are not supported", param="tools")
        # OpenAI's chat API has no small default; this server answers up to its /generate
        # default unless asked for more.
        asked = body.max_completion_tokens if body.max_tokens is None else body.max_tokens
        max_tokens = (
            min(GENERATE_DEFAULT_MAX_TOKENS, cfg.max_tokens_limit) if asked is None else asked
        )
        param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
        gen = generation_config(body, max_tokens, _stops(body.stop) + chat_stops, param)
        messages = _chat_messages(body.messages)
        try:
            ids, _ = await run_in_threadpool(
                encode_chat, tokenizer, template, messages, add_generation_prompt=True
            )
        except ChatTemplateError as e:
            raise APIError(400, str(e), param="messages") from None
        if len(ids) > max_prompt:
            raise APIError(
                400,
                f"the conversation is {len(ids)} tokens in the chat template, more than this "
                f"server's limit of {max_prompt} tokens; shorten it",
                param="messages",
                code="context_length_exceeded",
            )
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())

        def envelope(obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": obj,
                "created": now,
                "model": cfg.model_name,
                "choices": choices,
            }

        if not body.stream:
            done = await generate(ids, gen)
            message = {"role": "assistant", "content": done.text}
            choice = {"index": 0, "message": message, "logprobs": None}
            return {
                **envelope("chat.completion", [{**choice, "finish_reason": done.finish_reason}]),
                "usage": _usage(done.prompt_tokens, len(done.token_ids)),
            }

        include_usage = bool((body.stream_options or {}).get("include_usage"))

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse(envelope("chat.completion.chunk", [choice]))

        async def events() -> AsyncIterator[str]:
            async with lock:  # held for the whole stream, as for /v1/completions
                yield chunk({"role": "assistant", "content": ""})
                pieces = stream_text(model, tokenizer, ids, gen)
                while True:
                    item = await run_in_threadpool(_next_or_none, pieces)
                    if isinstance(item, Completion):
                        yield chunk({}, item.finish_reason)
                        break
                    if item is None:
                        raise RuntimeError("stream_text ended without a Completion")
                    yield chunk({"content": item})
            if include_usage:
                usage = _usage(item.prompt_tokens, len(item.token_ids))
                yield _sse({**envelope("chat.completion.chunk", []), "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def completion_logprobs(
    model: Any, tokenizer: Any, prompt: str, done: Completion, top: int, echo: bool
) -> dict[str, Any]:
    """OpenAI's `logprobs` object for a finished completion (and its prompt, with `echo`).

    The completion's tokens are reported up to where its text ends (the tokens of a stop
    string that was cut off are not). The prompt is scored as it is generated from: after a
    BOS for a model trained with one (the BOS itself is not echoed, so offsets index the
    prompt's text), and an empty prompt otherwise after an EOS.
    """
    context = tokenizer.encode_prompt(prompt) or [tokenizer.eos_id]
    prompt_ids = tokenizer.encode(prompt)
    first = len(context) - len(prompt_ids)  # the prompt's first token in `context`
    new_strings, new_offsets, _ = token_strings(tokenizer, done.token_ids)
    keep = sum(1 for off in new_offsets if off < len(done.text))
    new_ids = list(done.token_ids[:keep])
    scored = sequence_logprobs(model, context + new_ids, top=top)
    tokens, offsets, values, tops = [], [], [], []
    if echo and prompt_ids:
        strings, prompt_offsets, _ = token_strings(tokenizer, prompt_ids)
        tokens += strings
        offsets += prompt_offsets
        values += scored.logprobs[first : len(context)]
        tops += scored.top[first : len(context)]
    tokens += new_strings[:keep]
    offsets += [len(prompt) + off for off in new_offsets[:keep]]  # into prompt + completion
    values += scored.logprobs[len(context) :]
    tops += scored.top[len(context) :]
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": [None if t is None else top_strings(tokenizer, t) for t in tops],
        "text_offset": offsets,
    }


def _next_or_none(it: Iterator[str | Completion]) -> str | Completion | None:
    # StopIteration cannot cross a threadpool boundary into a coroutine, so map it to None.
    return next(it, None)


def serve(run_dir: str | Path, cfg: ServeConfig) -> None:
    """Load the run and answer HTTP requests on cfg.host:cfg.port until interrupted."""
    import uvicorn

    uvicorn.run(build_app(run_dir, cfg), host=cfg.host, port=cfg.port)
