"""Sampling text from a trained model: KV cache, temperature, top-k, top-p, stops, streaming.

Written by hand because the sampler is part of what the project teaches and because a lean
loop over our own KV cache is what makes it fast (no per-step cache objects or logits
processor chains). The prompt is run once to fill the cache, then each step feeds one token.
When the cache is full (the model's context is used up) the window slides: the last three
quarters of the context are run again and decoding goes on from there.

A recurrent model (`lmforge.model.rnn.RNNLM`) takes a small branch of its own: its "cache" is
its hidden state, and it has no context limit, so nothing slides. The prompt is read once and
each step feeds one token and the state; without the cache each step re-reads the whole
context from a zero state, which is slow and gives the same tokens.

Only ids the tokenizer can decode are ever sampled: a model may have more embedding rows than
the vocabulary has tokens (checkpoints padded to a multiple of 64 or 128, as many on the
Hugging Face Hub are), and those rows' logits are left out before sampling. A prompt is
encoded with `Tokenizer.encode_prompt` (BOS first for imported models trained with one), and
generation ends at any of `Tokenizer.eos_ids`.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.model.gpt import GPT
from lmforge.model.rnn import RNNLM
from lmforge.tokenizer.tokenizer import Tokenizer


@dataclass(kw_only=True)
class GenerationConfig:
    max_new_tokens: int = 200
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    seed: int | None = None
    stop_at_eos: bool = True
    # Past the model's context the cached path slides its window by a quarter at a time and
    # the uncached one by a token, so the two agree exactly only within the context.
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.stop = tuple(s for s in self.stop if s)


def prepare_for_decoding(model: GPT | RNNLM) -> GPT | RNNLM:
    """Arrange a model's weights for fast batch-1 decoding; their values and names stay.

    Decoding one token multiplies a vector by every weight matrix, so it is bound by reading
    the weights. Two changes make that cheaper: q, k and v are projected by one matmul
    (`CausalSelfAttention.fuse_qkv`), and every Linear weight is stored transposed in memory
    (a column-major (out, in) tensor), which the CPU BLAS reads about 1.4x faster for a
    matrix-vector product on a 6-layer, 384-wide model (benchmarks/generate_speed.py). The
    tied LM head keeps its layout because the embedding lookup reads rows of it. A recurrent
    model's weights are read by PyTorch's fused RNN kernel in the layout it keeps itself, so it
    is only put in eval mode.
    """
    model.eval()
    if isinstance(model, RNNLM):
        return model
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight is not model.tok_emb.weight:
            module.weight.data = module.weight.data.t().contiguous().t()
    for block in model.blocks:
        block.attn.fuse_qkv()
    return model


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # every generated token, a cut-off stop string's included
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


def sample_next(
    logits: torch.Tensor,
    cfg: GenerationConfig,
    generator: torch.Generator | None,
    *,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V).

    With `vocab_size`, only ids below it can be drawn: the logits past it (embedding rows
    with no token, which the tokenizer cannot decode) count as -inf.
    """
    if vocab_size is not None and vocab_size < logits.size(-1):
        logits = logits[:, :vocab_size]  # (B, vocab_size): the same ids, the padding dropped
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_ids(
    model: GPT | RNNLM,
    prompt_ids: list[int],
    cfg: GenerationConfig,
    *,
    eos_id: int | Collection[int] | None = None,
    vocab_size: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time (batch of one).

    `eos_id` is the id, or the ids, that end generation (with `cfg.stop_at_eos`; the id is
    yielded first). `vocab_size` is the tokenizer's: no id at or past it is sampled.
    """
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    stop_ids = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    device = model.tok_emb.weight.device
    max_len = model.config.max_seq_len
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed)
    if isinstance(model, RNNLM):
        yield from _recurrent_ids(model, prompt_ids, cfg, stop_ids, generator, vocab_size)
        return
    context = list(prompt_ids[-max_len:])
    cache = model.new_cache(1) if cfg.use_cache else None
    keep = max(1, max_len - max_len // 4)
    pending = context  # tokens the model has not seen yet
    for _ in range(cfg.max_new_tokens):
        if cache is not None:
            if cache.pos + len(pending) > max_len:
                cache.pos = 0
                pending = context[-keep:]
            logits = model(torch.tensor([pending], device=device), cache)[:, -1]
        else:
            logits = model(torch.tensor([context[-max_len:]], device=device))[:, -1]
        token = int(sample_next(logits, cfg, generator, vocab_size=vocab_size)[0])
        yield token
        if cfg.stop_at_eos and token in stop_ids:
            return
        context.append(token)
        pending = [token]


def _recurrent_ids(
    model: RNNLM,
    prompt_ids: list[int],
    cfg: GenerationConfig,
    stop_ids: set[int],
    generator: torch.Generator | None,
    vocab_size: int | None,
) -> Iterator[int]:
    """`generate_ids` for a recurrent model: the whole prompt, then the state carries on."""
    device = model.tok_emb.weight.device
    context = list(prompt_ids)
    state = None
    pending = context  # tokens the state has not seen yet
    for _ in range(cfg.max_new_tokens):
        if cfg.use_cache:
            logits, state = model(torch.tensor([pending], device=device), state)
        else:
            logits, _ = model(torch.tensor([context], device=device))
        token = int(sample_next(logits[:, -1], cfg, generator, vocab_size=vocab_size)[0])
        yield token
        if cfg.stop_at_eos and token in stop_ids:
            return
        context.append(token)
        pending = [token]


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters may still turn into the start of a stop string."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


def stream_text(
    model: GPT | RNNLM,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    cfg: GenerationConfig,
) -> Iterator[str | Completion]:
    """Yield text pieces as they become final, then the finished `Completion`.

    `prompt` is text, or ids already encoded (a conversation in a chat template:
    `lmforge.tokenizer.chat.encode_chat`). A piece is final when no stop string can begin in
    it. Text is decoded from the tokens' bytes by an incremental UTF-8 decoder, so a character
    split across tokens comes out whole once its last byte arrives, and what was emitted never
    changes.
    """
    # An empty prompt (and no BOS) starts after an EOS, as documents do in training.
    encoded = tokenizer.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
    prompt_ids = encoded or [tokenizer.eos_id]
    stop_ids = set(tokenizer.eos_ids)
    new_ids: list[int] = []
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    id_to_bytes = tokenizer.id_to_bytes
    emitted = 0
    text = ""
    finish = "length"
    cut = -1  # where a stop string begins in the text, once one has
    tokens = generate_ids(
        model, prompt_ids, cfg, eos_id=tokenizer.eos_ids, vocab_size=tokenizer.vocab_size
    )
    for token in tokens:
        if cfg.stop_at_eos and token in stop_ids:
            finish = "stop"
            break
        new_ids.append(token)
        text += utf8.decode(id_to_bytes[token])
        cut = min(
            (i for i in (text.find(s, max(0, emitted - len(s))) for s in cfg.stop) if i >= 0),
            default=-1,
        )
        if cut >= 0:
            text = text[:cut]
            finish = "stop"
            break
        safe = len(text) - _held_back(text, cfg.stop)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if cut < 0:  # no stop string cut the text: flush a character still split across tokens
        text += utf8.decode(b"", final=True)
    if len(text) > emitted:
        yield text[emitted:]
    yield Completion(
        text=text, token_ids=new_ids, prompt_tokens=len(prompt_ids), finish_reason=finish
    )


def complete(
    model: GPT | RNNLM,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    cfg: GenerationConfig,
) -> Completion:
    """Generate to the end and return the whole completion (`prompt`: text or ids)."""
    for item in stream_text(model, tokenizer, prompt, cfg):
        if isinstance(item, Completion):
            return item
    raise AssertionError("stream_text always ends with a Completion")
