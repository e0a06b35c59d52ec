"""Decoding an encoder-decoder model (`lmforge.model.seq2seq`): greedy and beam search.

Every target starts with `bos_id` and ends at `eos_id`; results are token ids without either.
The pad and BOS ids are never generated (their log-probabilities are set to -inf after the
softmax, as `transformers`' `suppress_tokens` does). A target is at most `max_len` tokens long,
BOS and EOS included (the model's `max_seq_len` by default, or `max_len_a * source length +
max_len_b` per sentence when either is set); one that reaches it ends there without EOS.

Beam search is Hugging Face's (transformers 5 `generate(num_beams=k)` with its defaults,
`early_stopping=False`), batched over all sentences at once with tensor operations only:

- each step scores every (beam, token) continuation by its summed log-probability and keeps
  the best 2k (so that k remain when some of them end);
- candidates among the best k that end (EOS, or the length limit) join the sentence's k
  finished hypotheses if good enough, scored by `sum_logprob / length ** length_penalty` with
  `length` the number of generated tokens including EOS (HF's convention, not GNMT's
  ((5 + length) / 6) ** alpha): `length_penalty` > 0 favours longer outputs, < 0 shorter;
- the best k candidates that did not end carry on;
- a sentence is done when it has k finished hypotheses and its best running beam, normalised
  at its current length, scores no better than the worst of them (HF's heuristic: exact
  without a length penalty, where scores only fall; an estimate with one), or at its limit.
  Done sentences leave the batch, so late steps run only the sentences still open.

Beam size 1 gives exactly greedy search (tested); `translate_batches` uses greedy then.

The decoder's KV cache holds self-attention keys/values per hypothesis (reordered when beams
swap) and cross-attention keys/values per source, computed once and shared by its beams
(`Seq2Seq.decode` lets several hypotheses share one memory row). `use_cache=False` runs the
whole prefix every step instead: the reference that the cached path matches token for token.

Written by hand because `transformers.generate` needs a transformers model, and because this
loop is what the speed goal measures: no per-beam Python, no cache objects copied per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmforge.model.seq2seq import Seq2Seq

# HF's "minus infinity" for beams that must not be picked (kept finite, as HF does, so that
# the very first step, where only beam 0 is live, picks exactly the same candidates).
_NEG = -1.0e9


@dataclass(kw_only=True)
class DecodeConfig:
    beam_size: int = 4
    # Finished hypotheses are scored sum_logprob / length ** length_penalty (HF style; length
    # counts generated tokens, EOS included): > 0 favours longer outputs, 0 = raw sum.
    length_penalty: float = 1.0
    max_len: int = 0  # longest target in tokens, BOS and EOS included; 0 = model.max_seq_len
    # Per-sentence limit max_len_a * source_tokens + max_len_b (source tokens without padding),
    # used when either is set, and never above max_len (fairseq's --max-len-a/-b).
    max_len_a: float = 0.0
    max_len_b: int = 0
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"decode.beam_size must be >= 1, got {self.beam_size}")
        if self.max_len == 1 or self.max_len < 0:
            raise ValueError(
                f"decode.max_len must be 0 (the model's max_seq_len) or >= 2 (BOS and one "
                f"token), got {self.max_len}"
            )
        if self.max_len_a < 0 or self.max_len_b < 0:
            raise ValueError(
                f"decode.max_len_a and max_len_b must be >= 0, got {self.max_len_a} and "
                f"{self.max_len_b}"
            )


def _device(model: Seq2Seq) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: Seq2Seq) -> Iterator[None]:
    """Decode without dropout, and give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _source_batch(
    model: Seq2Seq, src_ids: list[list[int]] | torch.Tensor, cfg: DecodeConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources as a right-padded (N, S) tensor on the model's device, and each sentence's
    target length limit (N,), BOS and EOS included."""
    c = model.config
    device = _device(model)
    if isinstance(src_ids, torch.Tensor):
        if src_ids.dim() != 2:
            raise ValueError(f"src_ids must be a (N, S) tensor, got shape {tuple(src_ids.shape)}")
        src = src_ids.to(device=device, dtype=torch.long)
    else:
        for i, ids in enumerate(src_ids):
            if len(ids) == 0:
                raise ValueError(f"source {i} is empty; every source needs at least one token")
        width = max(len(ids) for ids in src_ids)
        src = torch.full((len(src_ids), width), c.pad_id, dtype=torch.long)
        for i, ids in enumerate(src_ids):
            src[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        src = src.to(device)
    if src.shape[1] > c.max_seq_len:
        raise ValueError(
            f"a source of {src.shape[1]} tokens is longer than model.max_seq_len="
            f"{c.max_seq_len}; split or truncate it"
        )
    if cfg.max_len > c.max_seq_len:
        raise ValueError(
            f"decode.max_len={cfg.max_len} is longer than model.max_seq_len={c.max_seq_len}, "
            "the most target positions the model has"
        )
    limit = cfg.max_len or c.max_seq_len
    limits = torch.full((src.shape[0],), limit, dtype=torch.long, device=device)
    if cfg.max_len_a or cfg.max_len_b:
        src_len = (src != c.pad_id).sum(dim=1)
        relative = (cfg.max_len_a * src_len).long() + cfg.max_len_b
        limits = relative.clamp(min=2, max=limit)
    return src, limits


def _suppress_special(log_probs: torch.Tensor, model: Seq2Seq) -> torch.Tensor:
    """Never generate pad or BOS (in place on (N, V) scores)."""
    log_probs[:, [model.config.pad_id, model.config.bos_id]] = float("-inf")
    return log_probs


def _strip(rows: torch.Tensor, model: Seq2Seq) -> list[list[int]]:
    """Token ids after BOS, up to (not including) the first EOS or pad, of (N, L) rows."""
    eos, pad = model.config.eos_id, model.config.pad_id
    out = []
    for row in rows[:, 1:].tolist():
        for j, token in enumerate(row):
            if token == eos or token == pad:
                row = row[:j]
                break
        out.append(row)
    return out


@torch.inference_mode()
def greedy_decode(
    model: Seq2Seq, src_ids: list[list[int]] | torch.Tensor, cfg: DecodeConfig | None = None
) -> list[list[int]]:
    """The most likely next token at every step, for every source at once (`cfg.beam_size`
    is not used)."""
    cfg = cfg or DecodeConfig(beam_size=1)
    c = model.config
    with _eval_mode(model):
        src, limits = _source_batch(model, src_ids, cfg)
        memory, src_mask = model.encode(src)
        N, L = src.shape[0], int(limits.max())
        seqs = src.new_full((N, L), c.pad_id)  # (N, L)
        seqs[:, 0] = c.bos_id
        done = torch.zeros(N, dtype=torch.bool, device=src.device)
        cache = model.new_cache(L) if cfg.use_cache else None
        for t in range(1, L):
            inp = seqs[:, t - 1 : t] if cache is not None else seqs[:, :t]
            logits = model.decode(inp, memory, src_mask, cache)[:, -1].float()  # (N, V)
            token = _suppress_special(logits, model).argmax(dim=-1)  # (N,)
            seqs[:, t] = token.masked_fill(done, c.pad_id)
            done |= (token == c.eos_id) | (t + 1 >= limits)
            if bool(done.all()):
                break
        return _strip(seqs, model)


@torch.inference_mode()
def beam_search(
    model: Seq2Seq, src_ids: list[list[int]] | torch.Tensor, cfg: DecodeConfig | None = None
) -> list[list[int]]:
    """The best hypothesis of a `cfg.beam_size`-wide beam search for every source (see the
    module docstring for the algorithm); all sources are searched as one batch."""
    cfg = cfg or DecodeConfig()
    c = model.config
    K, lp = cfg.beam_size, cfg.length_penalty
    with _eval_mode(model):
        src, limits = _source_batch(model, src_ids, cfg)
        memory, src_mask = model.encode(src)
        device = src.device
        N, L = src.shape[0], int(limits.max())
        ids = torch.arange(N, device=device)  # the input sentence of each open row
        results = src.new_full((N, L), c.pad_id)  # (N, L): each sentence's best, once done

        # Running beams: token rows and summed log-probabilities. Only beam 0 is live at the
        # start, so the first step's k candidates are k different tokens.
        seqs = src.new_full((N, K, L), c.pad_id)  # (N, K, L)
        seqs[:, :, 0] = c.bos_id
        run_scores = torch.zeros(N, K, device=device)  # (N, K)
        run_scores[:, 1:] = _NEG
        # Finished hypotheses: k slots per sentence, the best first; `fin_flag` marks the
        # slots that hold one.
        fin_seqs = seqs.clone()  # (N, K, L)
        fin_scores = torch.full((N, K), _NEG, device=device)
        fin_flag = torch.zeros(N, K, dtype=torch.bool, device=device)
        in_top_k = torch.arange(2 * K, device=device) < K  # (2K,): may join the finished
        cache = model.new_cache(L) if cfg.use_cache else None

        for t in range(1, L):
            n = ids.numel()
            inp = seqs[:, :, t - 1 : t] if cache is not None else seqs[:, :, :t]
            logits = model.decode(inp.reshape(n * K, -1), memory, src_mask, cache)[:, -1]
            log_probs = _suppress_special(F.log_softmax(logits.float(), dim=-1), model)
            V = log_probs.shape[-1]
            scores = (log_probs.view(n, K, V) + run_scores[:, :, None]).view(n, K * V)
            top_scores, top = scores.topk(2 * K, dim=1)  # (n, 2K), best first
            parent, token = top // V, top % V  # (n, 2K) each
            cand_seqs = seqs.gather(1, parent[:, :, None].expand(n, 2 * K, L))  # (n, 2K, L)
            cand_seqs[:, :, t] = token
            ends = (token == c.eos_id) | (t + 1 >= limits[:, None])  # (n, 2K)

            # The best k candidates that go on become the running beams.
            go_on_scores = top_scores + ends.float() * _NEG
            keep = go_on_scores.topk(K, dim=1).indices  # (n, K)
            seqs = cand_seqs.gather(1, keep[:, :, None].expand(n, K, L))  # (n, K, L)
            run_scores = go_on_scores.gather(1, keep)  # (n, K)
            rows = (torch.arange(n, device=device)[:, None] * K + parent.gather(1, keep)).view(-1)

            # Candidates among the best k that end compete for the k finished slots.
            joins = ends & in_top_k  # (n, 2K)
            if bool(joins.any()):
                cand_final = top_scores / (t**lp) + (~joins).float() * _NEG
                merged = torch.cat((fin_scores, cand_final), dim=1)  # (n, 3K)
                best = merged.topk(K, dim=1).indices  # (n, K)
                fin_scores = merged.gather(1, best)
                fin_flag = torch.cat((fin_flag, joins), dim=1).gather(1, best)
                fin_seqs = torch.cat((fin_seqs, cand_seqs), dim=1)  # (n, 3K, L)
                fin_seqs = fin_seqs.gather(1, best[:, :, None].expand(n, K, L))  # (n, K, L)

            # Done: k finished that the best running beam (at this length) cannot beat.
            best_possible = run_scores[:, :1] / (t**lp)  # (n, 1)
            worst_finished = torch.where(
                fin_flag, fin_scores.min(dim=1, keepdim=True).values, _NEG
            )  # (n, K)
            done = ~(best_possible > worst_finished).any(dim=1) | (t + 1 >= limits)  # (n,)
            if bool(done.any()):
                results[ids[done]] = fin_seqs[done, 0]
                open_ = (~done).nonzero().squeeze(1)  # (n',)
                if open_.numel() == 0:
                    break
                ids, limits = ids[open_], limits[open_]
                seqs, run_scores = seqs[open_], run_scores[open_]
                fin_seqs, fin_scores, fin_flag = fin_seqs[open_], fin_scores[open_], fin_flag[open_]
                memory, src_mask = memory[open_], src_mask[open_]
                rows = rows.view(n, K)[open_].view(-1)
                if cache is not None:
                    cache.select_sources(open_)
            if cache is not None:
                cache.reorder(rows)
        return _strip(results, model)


def translate_batches(
    model: Seq2Seq,
    src_ids: list[list[int]],
    cfg: DecodeConfig | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[int]]:
    """Decode many sources in batches of `batch_size` sentences; results in input order.

    Sources are sorted by length first, so a batch pads little and its sentences tend to end
    at similar steps. Beam size 1 runs greedy search (the same tokens, less work).
    """
    cfg = cfg or DecodeConfig()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]), reverse=True)
    search = greedy_decode if cfg.beam_size == 1 else beam_search
    out: list[list[int]] = [[] for _ in src_ids]
    with tqdm(total=len(src_ids), desc="decoding", unit="sent", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, ids in zip(chunk, search(model, [src_ids[i] for i in chunk], cfg)):
                out[i] = ids
            bar.update(len(chunk))
    return out
