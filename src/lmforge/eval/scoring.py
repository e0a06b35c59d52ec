"""Log-likelihoods of text under a model: the one scoring core of every likelihood-based eval.

Multiple-choice tasks, the lm-eval-harness adapter and the server's `logprobs` all reduce to
"how likely are these tokens after those", and all of them go through this module, so a
number means the same wherever it is reported.

It follows lm-evaluation-harness (Gao et al., `lm_eval/models/huggingface.py`) request for
request, so scores are comparable with the harness's:

- a (context, continuation) pair is tokenized as the harness does: trailing whitespace of the
  context is moved onto the continuation, `context + continuation` is encoded whole and the
  continuation is what follows the context's own tokens. The context is encoded as a prompt
  (`Tokenizer.encode_prompt`: after a BOS for an imported model trained with one, e.g.
  Llama), the continuation never starts with one; an empty context is that BOS, or else one
  EOS token (documents start after an EOS in lmforge's training);
- a pair longer than the context window keeps its last `max_seq_len + 1` tokens (the input
  is the first `max_seq_len` of them), i.e. the context is truncated on the left; a
  continuation longer than the window itself (which the harness refuses, and a
  character-level model meets often) is scored in rolling windows, each token once;
- requests are scored longest first in right-padded batches. The model is causal, so padding
  after a row's last token cannot change that row's logits: batched and one-at-a-time scores
  agree (tested), and so do the harness's own scorer on the same weights exported to
`transformers` (checked on 200 HellaSwag items: log-likelihoods within 1e-4, accuracies equal).

Written by hand because the harness's scorer is tied to its `transformers` model wrapper and
the project's model is not a `transformers` model; the rolling windows copy its
`get_rolling_token_windows` scheme (every token predicted once, each window with as much
context as fits).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.tokenizer.tokenizer import Tokenizer


@dataclass
class Loglik:
    """The score of one continuation."""

    logprob: float  # summed log-probability of the continuation's tokens (natural log)
    is_greedy: bool  # whether greedy decoding would have produced exactly these tokens
    tokens: int  # continuation length in tokens
    truncated: bool = False  # the context was cut on the left to fit the window


@dataclass
class TokenLogprobs:
    """Per-token log-probabilities of a sequence, as OpenAI's `logprobs` reports them."""

    logprobs: list[float | None]  # log p(token i | tokens < i); None for the first token
    top: list[list[tuple[int, float]] | None]  # the k likeliest ids at each position


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace onto the continuation, as the harness does.

    "Question: x\\nAnswer: " + "Paris" is scored as "Question: x\\nAnswer:" + " Paris", so the
    space is tokenized with the word it belongs to, the way the model saw it in training.
    """
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def encode_pair(
    tokenizer: Tokenizer, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Context and continuation token ids of one request, tokenized as the harness does."""
    context, continuation = split_pair(context, continuation)
    if not context:
        return tokenizer.encode_prompt("") or [tokenizer.eos_id], tokenizer.encode(continuation)
    whole = tokenizer.encode_prompt(context + continuation)
    context_ids = tokenizer.encode_prompt(context)
    return context_ids, whole[len(context_ids) :]


def model_window(model: nn.Module) -> int:
    """The longest input the model takes (`config.max_seq_len`)."""
    return int(model.config.max_seq_len)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def score_token_pairs(
    model: nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Loglik]:
    """Summed log-likelihood of each continuation given its context, in the order given.

    `pairs` holds (context ids, continuation ids); the context must hold at least one token.
    A continuation longer than the model's window is scored in rolling windows (the harness
    refuses such requests; a character-level model meets them often).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    window = model_window(model)
    device = _device(model)
    # Every request becomes one window (or, for a continuation longer than the model's
    # window, several): (request, input ids, how many of the last positions are scored).
    jobs: list[tuple[int, list[int], list[int]]] = []
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx:
            raise ValueError(f"request {i}: the context holds no token; start it with EOS")
        if not cont:
            raise ValueError(f"request {i}: the continuation holds no token; nothing to score")
        seq = list(ctx) + list(cont)
        for start, first, end in prediction_windows(len(ctx), len(seq), window):
            jobs.append((i, seq[start : end - 1], seq[first:end]))
    # Longest first (the harness's order): a batch pads to its first row, and memory errors
    # show up at once rather than at the end.
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][1]))
    picked: list[tuple[float, bool]] = [(0.0, True)] * len(jobs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="scoring", unit="window")
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        width = len(jobs[rows[0]][1])
        batch = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T); padding is never read
        for r, j in enumerate(rows):
            batch[r, : len(jobs[j][1])] = torch.tensor(jobs[j][1])
        logp = F.log_softmax(model(batch.to(device)).float(), dim=-1)  # (B, T, V)
        for r, j in enumerate(rows):
            _, inp, target_ids = jobs[j]
            n, c = len(inp), len(target_ids)
            target = torch.tensor(target_ids, device=device)
            row = logp[r, n - c : n]  # (c, V): the positions that predict the targets
            lp = row.gather(-1, target[:, None]).squeeze(-1)
            picked[j] = (float(lp.double().sum()), bool((row.argmax(-1) == target).all()))
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    totals = [0.0] * len(pairs)
    greedy = [True] * len(pairs)
    for (i, _, _), (lp, g) in zip(jobs, picked):  # in window order: sums do not depend on batching
        totals[i] += lp
        greedy[i] = greedy[i] and g
    return [
        Loglik(
            logprob=totals[i],
            is_greedy=greedy[i],
            tokens=len(cont),
            truncated=len(ctx) + len(cont) > window + 1,
        )
        for i, (ctx, cont) in enumerate(pairs)
    ]


def score_pairs(
    model: nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Loglik]:
    """`score_token_pairs` on (context, continuation) strings."""
    encoded = [encode_pair(tokenizer, ctx, cont) for ctx, cont in pairs]
    return score_token_pairs(model, encoded, batch_size=batch_size, progress=progress)


def prediction_windows(first: int, n: int, window: int) -> list[tuple[int, int, int]]:
    """(input start, first predicted position, end) windows predicting positions first..n-1.

    Position p is predicted from the positions before it. A window's input is
    `ids[start:end-1]` (at most `window` tokens) and it predicts `ids[first:end]`, each
    prediction with as much context as fits; every position is predicted once. For
    first=1 this is the harness's rolling-window scheme for perplexity.
    """
    out = []
    while first < n:
        end = min(n, first + window)
        out.append((max(0, end - 1 - window), first, end))
        first = end
    return out


@torch.inference_mode()
def sequence_logprobs(model: nn.Module, ids: Sequence[int], *, top: int = 0) -> TokenLogprobs:
    """log p(ids[i] | ids[:i]) for every position (None for the first), and the `top` likeliest.

    Sequences longer than the model's window are scored in rolling windows.
    """
    device = _device(model)
    logprobs: list[float | None] = [None]
    tops: list[list[tuple[int, float]] | None] = [None]
    for start, first, end in prediction_windows(1, len(ids), model_window(model)):
        x = torch.tensor([list(ids[start : end - 1])], device=device)  # (1, T)
        logp = F.log_softmax(model(x)[0].float(), dim=-1)  # (T, V)
        logp = logp[first - 1 - start :]  # the rows that predict ids[first:end]
        target = torch.tensor(list(ids[first:end]), device=device)
        logprobs.extend(logp.gather(-1, target[:, None]).squeeze(-1).tolist())
        if top:
            values, indices = logp.topk(min(top, logp.size(-1)), dim=-1)
            tops.extend(list(zip(idx, val)) for idx, val in zip(indices.tolist(), values.tolist()))
        else:
            tops.extend([] for _ in range(end - first))
    return TokenLogprobs(logprobs=logprobs[: len(ids)], top=tops[: len(ids)])


def token_strings(tokenizer: Tokenizer, ids: Sequence[int]) -> tuple[list[str], list[int], str]:
    """Each token's text, where it starts in the decoded text, and the decoded text.

    A token that holds part of a UTF-8 character is written `bytes:\\xNN...`, as OpenAI does;
    offsets come from an incremental decoder, so they index the text a client reassembles.
    """
    table = tokenizer.id_to_bytes
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, strings, offsets = "", [], []
    for i in ids:
        raw = table[i]
        offsets.append(len(text))
        text += decoder.decode(raw)
        strings.append(_token_text(raw))
    text += decoder.decode(b"", final=True)
    return strings, offsets, text


def _token_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def top_strings(tokenizer: Tokenizer, top: list[tuple[int, float]] | None) -> dict[str, float]:
    """{token text: logprob} of the likeliest tokens (two ids with one text keep the higher).

    Ids past the tokenizer's vocabulary (padded embedding rows) have no text and are left out.
    """
    out: dict[str, float] = {}
    table = tokenizer.id_to_bytes
    for i, lp in top or []:
        if i >= len(table):
            continue
        key = _token_text(table[i])
        out[key] = max(lp, out.get(key, float("-inf")))
    return out
