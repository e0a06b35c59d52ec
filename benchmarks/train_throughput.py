"""Training throughput of lmforge's models against Hugging Face's of the same shape.

Three families, each against the transformers model its export adapter maps onto exactly:

| shapes            | lmforge               | transformers      | adapter                         |
|-------------------|-----------------------|-------------------|---------------------------------|
| `a`, `b`, `gpt2`  | `GPT`                 | `GPT2LMHeadModel` | `export.hf_gpt2.to_hf_gpt2`     |
| `bert-a`          | `Encoder` (masked LM) | `BertForMaskedLM` | `export.hf_bert.to_hf_bert`     |
| `s2s-a`           | `Seq2Seq`             | `MarianMTModel`   | `export.hf_marian.to_hf_marian` |

Both models of a shape start from the same weights (ours converted by the adapter), see the same
random batches and run the same step as lmforge's trainer: forward and the family's loss (for
lmforge exactly as `lmforge.train.objectives` computes it; for transformers as its own models
or its Trainer compute it), backward, clip the grad norm to 1.0, a step of lmforge's AdamW
(`build_optimizer`, fused where PyTorch has it), zero_grad. Dropout is 0.
Timed rounds alternate between the two models (and which goes first) so that machine noise hits
both alike; warmup steps are not timed. MFU is against `peak_flops(device)` measured in the
same run.

- GPT: next-token cross-entropy on (B, T) windows of random ids.
- BERT (`bert-a`, the size of `recipes/bert-mlm.toml`, batch 16): random ids with `[CLS]`
  first, corrupted by lmforge's `mask_tokens` (15% selected, 80/10/10; ids 0-4 special, as in
  a WordPiece vocabulary). lmforge: `Encoder(inputs, labels=labels)`, as `MaskedLMObjective`
  calls it, which runs the MLM head only at the masked positions; transformers:
  `BertForMaskedLM(input_ids, labels=labels).loss`, its head on every position. The config is
  the recipe's: BERT's post-norm layout with learned positions.
- Seq2seq (`s2s-a`, the size of `recipes/translate-multi30k.toml`: 3+3 layers, width 256,
  d_ff 1024, one shared 8000-token vocabulary; batch 64): random source and target sentences of
  8..24 tokens (sources end with EOS, targets are BOS ... EOS, right-padded to 24 with the pad
  id, as `PairBatches.collate` builds them); label-smoothed (0.1) cross-entropy, pads ignored.
  lmforge: `Seq2Seq(src, tgt_in, tgt_out)`, as `TranslationObjective` calls it, which runs the
  output projection only at real target positions; transformers: the (B, T, V) logits into
  the same smoothed loss (what its Trainer's `label_smoothing_factor` does). The config is
  post-norm with sinusoidal positions, biases and LayerNorm eps 1e-5: what
  `hf_marian.check_mappable` requires (Marian has no pre-norm variant; the recipe is pre-norm,
  which adds one final LayerNorm per stack). HF gets the source padding mask
  (`attention_mask`); lmforge derives it from the pad id.

Figures: `tokens_per_s` is the tokens the trainer counts per step over the time of the timed
steps: B x T for GPT and BERT, real (non-pad) source plus target tokens for seq2seq. `mfu`
divides model FLOPs (the model's `flops_per_token`, the same for both libraries: per token for
GPT and BERT; for seq2seq per real target token, which counts the encoder once per source
token as well, with attention over the padded width) by the time and `peak_flops`.

    python benchmarks/train_throughput.py                   # shapes a, b, bert-a, s2s-a on CPU
    python benchmarks/train_throughput.py --shapes a,b      # the GPT shapes only
    python benchmarks/train_throughput.py --shapes bert-a,s2s-a --steps 6 --rounds 2  # a check
    python benchmarks/train_throughput.py --shapes a --steps 200
    python benchmarks/train_throughput.py --device cuda --shapes gpt2   # bf16 autocast

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers

from lmforge.export.hf_bert import to_hf_bert
from lmforge.export.hf_gpt2 import to_hf_gpt2
from lmforge.export.hf_marian import to_hf_marian
from lmforge.model.encoder import Encoder, EncoderConfig, mask_tokens
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.model.seq2seq import Seq2Seq, Seq2SeqConfig
from lmforge.train.optim import OptimConfig, build_optimizer
from lmforge.train.trainer import peak_flops


@dataclass(frozen=True)
class Shape:
    n_layers: int  # seq2seq: per stack (encoder and decoder alike)
    n_heads: int
    d_model: int
    seq_len: int  # seq2seq: the padded width of sources and targets
    batch_size: int
    vocab_size: int
    steps: int  # timed steps per model by default (sized to keep the default run short)
    warmup: int
    family: str = "gpt"  # gpt | bert | seq2seq
    min_len: int = 0  # seq2seq: the shortest sentence, in tokens with its EOS / BOS


SHAPES = {
    "a": Shape(4, 4, 128, 64, 12, 65, steps=150, warmup=10),
    "b": Shape(6, 6, 384, 256, 16, 65, steps=10, warmup=2),
    "gpt2": Shape(12, 12, 768, 1024, 8, 50304, steps=50, warmup=5),  # 124M; meant for a GPU
    "bert-a": Shape(4, 4, 256, 128, 16, 8000, steps=24, warmup=3, family="bert"),
    "s2s-a": Shape(3, 4, 256, 24, 64, 8000, steps=24, warmup=3, family="seq2seq", min_len=8),
}
# The special ids of lmforge's vocabularies: WordPiece [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
# [MASK]=4; BPE (seq2seq) <|bos|>=0 <|eos|>=1 <|pad|>=2.
BERT_SPECIALS, BERT_CLS, BERT_MASK = (0, 1, 2, 3, 4), 2, 4
BOS, EOS, PAD = 0, 1, 2

Batch = tuple[torch.Tensor, ...]


@dataclass
class Contest:
    """One shape's two models, their losses on a batch, and the batches they share."""

    ours: torch.nn.Module
    hf: torch.nn.Module
    losses: dict[str, Callable[[Batch], torch.Tensor]]  # "lmforge" / "hf" -> loss of a batch
    batches: list[Batch]  # cycled: a fixed pool keeps memory small
    tokens: list[int]  # tokens per batch, as the trainer counts them
    flops: list[float]  # model FLOPs of a training step on each batch
    shape: dict


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, loss_fn, device: torch.device, autocast):
    """One training step of lmforge's trainer, for either model."""
    optimizer = build_optimizer(model, OptimConfig(), device.type)

    def step(batch: Batch) -> torch.Tensor:
        with autocast:
            loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def maybe_compile(model: torch.nn.Module, args: argparse.Namespace):
    return torch.compile(model) if args.compile else model


def gpt_contest(s: Shape, args: argparse.Namespace, device: torch.device, n: int) -> Contest:
    cfg = GPTConfig(
        vocab_size=s.vocab_size,
        n_layers=s.n_layers,
        n_heads=s.n_heads,
        d_model=s.d_model,
        max_seq_len=s.seq_len,
        dropout=0.0,
    )
    ours = GPT(cfg).to(device).train()
    hf = to_hf_gpt2(ours, attn_implementation="sdpa").train()
    ours_fwd, hf_fwd = maybe_compile(ours, args), maybe_compile(hf, args)

    def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        b = torch.randint(0, s.vocab_size, (s.batch_size, s.seq_len + 1), generator=gen).to(device)
        batches.append((b[:, :-1], b[:, 1:]))
    tokens = s.batch_size * s.seq_len
    return Contest(
        ours=ours,
        hf=hf,
        losses={
            "lmforge": lambda b: lm_loss(ours_fwd(b[0]), b[1]),
            # No KV cache while training: HF would otherwise build one on every forward.
            "hf": lambda b: lm_loss(hf_fwd(input_ids=b[0], use_cache=False).logits, b[1]),
        },
        batches=batches,
        tokens=[tokens] * n,
        flops=[ours.flops_per_token(s.seq_len) * tokens] * n,
        shape={
            "n_layers": s.n_layers,
            "n_heads": s.n_heads,
            "d_model": s.d_model,
            "seq_len": s.seq_len,
            "batch_size": s.batch_size,
            "vocab_size": s.vocab_size,
            "params": ours.num_params(),
        },
    )


def bert_contest(s: Shape, args: argparse.Namespace, device: torch.device, n: int) -> Contest:
    cfg = EncoderConfig(
        vocab_size=s.vocab_size,
        n_layers=s.n_layers,
        n_heads=s.n_heads,
        d_model=s.d_model,
        max_seq_len=s.seq_len,
        dropout=0.0,
        norm_position="post",  # BERT's layout: the one the adapter maps
        pos_emb="learned",
    )
    ours = Encoder(cfg).to(device).train()
    hf = to_hf_bert(ours, attn_implementation="sdpa").train()
    ours_fwd, hf_fwd = maybe_compile(ours, args), maybe_compile(hf, args)

    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        x = torch.randint(
            len(BERT_SPECIALS), s.vocab_size, (s.batch_size, s.seq_len), generator=gen
        )
        x[:, 0] = BERT_CLS  # [CLS] first, as MaskedLMObjective builds its windows
        inputs, labels = mask_tokens(
            x, cfg, mask_id=BERT_MASK, special_ids=BERT_SPECIALS, vocab_size=s.vocab_size,
            generator=gen,
        )  # fmt: skip
        batches.append((inputs.to(device), labels.to(device)))
    tokens = s.batch_size * s.seq_len
    return Contest(
        ours=ours,
        hf=hf,
        losses={
            "lmforge": lambda b: ours_fwd(b[0], labels=b[1]),
            "hf": lambda b: hf_fwd(input_ids=b[0], labels=b[1]).loss,
        },
        batches=batches,
        tokens=[tokens] * n,
        flops=[ours.flops_per_token(s.seq_len) * tokens] * n,
        shape={
            "family": "bert",
            "n_layers": s.n_layers,
            "n_heads": s.n_heads,
            "d_model": s.d_model,
            "d_ff": cfg.d_ff,
            "seq_len": s.seq_len,
            "batch_size": s.batch_size,
            "vocab_size": s.vocab_size,
            "norm_position": cfg.norm_position,
            "params": ours.num_params(),
            "masked_fraction": round(
                sum(int((b[1] != -100).sum()) for b in batches) / (n * tokens), 4
            ),
        },
    )


def pair_batch(s: Shape, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (src, tgt_in, tgt_out), each (B, seq_len), as `PairBatches.collate` lays them out:
    src = ids EOS pad...; tgt_in = BOS ids pad...; tgt_out = ids EOS pad...."""
    B, T = s.batch_size, s.seq_len
    src = torch.full((B, T), PAD)
    tgt = torch.full((B, T + 1), PAD)
    lengths = torch.randint(s.min_len, T + 1, (2, B), generator=gen)  # with EOS (and BOS)
    words = torch.randint(3, s.vocab_size, (2, B, T), generator=gen)
    for row in range(B):
        ls, lt = int(lengths[0, row]), int(lengths[1, row])
        src[row, : ls - 1] = words[0, row, : ls - 1]
        src[row, ls - 1] = EOS
        tgt[row, 0] = BOS
        tgt[row, 1 : lt - 1] = words[1, row, : lt - 2]
        tgt[row, lt - 1] = EOS
    tgt_in, tgt_out = tgt[:, :-1].clone(), tgt[:, 1:].clone()
    tgt_in[tgt_in == EOS] = PAD  # the EOS is only ever a target
    return src, tgt_in, tgt_out


def seq2seq_contest(s: Shape, args: argparse.Namespace, device: torch.device, n: int) -> Contest:
    cfg = Seq2SeqConfig(
        vocab_size=s.vocab_size,
        n_encoder_layers=s.n_layers,
        n_decoder_layers=s.n_layers,
        n_heads=s.n_heads,
        d_model=s.d_model,
        max_seq_len=64,  # the recipe's; only the size of the position table
        dropout=0.0,
        norm_position="post",  # Marian's layout: the one the adapter maps
        pos_emb="sinusoidal",
        label_smoothing=0.1,
        pad_id=PAD,
        bos_id=BOS,
        eos_id=EOS,
    )
    ours = Seq2Seq(cfg).to(device).train()
    hf = to_hf_marian(ours, attn_implementation="sdpa").train()
    ours_fwd, hf_fwd = maybe_compile(ours, args), maybe_compile(hf, args)

    def smoothed_loss(logits: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            tgt_out.reshape(-1),
            ignore_index=PAD,
            label_smoothing=cfg.label_smoothing,
        )

    def hf_logits(src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return hf_fwd(
            input_ids=src, attention_mask=src != PAD, decoder_input_ids=tgt_in, use_cache=False
        ).logits

    gen = torch.Generator().manual_seed(1)
    batches = [tuple(t.to(device) for t in pair_batch(s, gen)) for _ in range(n)]
    tokens = [int((b[0] != PAD).sum()) + int((b[2] != PAD).sum()) for b in batches]
    per_token = ours.flops_per_token(s.seq_len)
    flops = [per_token * int((b[2] != PAD).sum()) for b in batches]
    return Contest(
        ours=ours,
        hf=hf,
        losses={
            "lmforge": lambda b: ours_fwd(b[0], b[1], b[2]),
            "hf": lambda b: smoothed_loss(hf_logits(b[0], b[1]), b[2]),
        },
        batches=batches,
        tokens=tokens,
        flops=flops,
        shape={
            "family": "seq2seq",
            "n_encoder_layers": s.n_layers,
            "n_decoder_layers": s.n_layers,
            "n_heads": s.n_heads,
            "d_model": s.d_model,
            "d_ff": cfg.d_ff,
            "seq_len": s.seq_len,
            "sentence_tokens": [s.min_len, s.seq_len],
            "batch_size": s.batch_size,
            "vocab_size": s.vocab_size,
            "norm_position": cfg.norm_position,
            "params": ours.num_params(),
            "real_token_fraction": round(sum(tokens) / (2 * n * s.batch_size * s.seq_len), 4),
        },
    )


CONTESTS = {"gpt": gpt_contest, "bert": bert_contest, "seq2seq": seq2seq_contest}


def bench_shape(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    s = SHAPES[name]
    steps = args.steps or s.steps
    rounds = max(1, min(args.rounds, steps))
    per_round = math.ceil(steps / rounds)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    torch.manual_seed(0)
    n_batches = s.warmup + rounds * per_round
    contest = CONTESTS[s.family](s, args, device, min(n_batches, 16))
    models = {
        "lmforge": make_step(contest.ours, contest.losses["lmforge"], device, autocast),
        "hf": make_step(contest.hf, contest.losses["hf"], device, autocast),
    }

    def batch(i: int) -> Batch:
        return contest.batches[i % len(contest.batches)]

    losses = {k: [] for k in models}
    for key, step in models.items():
        for i in range(s.warmup):
            losses[key].append(step(batch(i)))
    sync(device)

    elapsed = dict.fromkeys(models, 0.0)
    order = list(models)
    i0 = s.warmup
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            step = models[key]
            sync(device)
            t0 = time.perf_counter()
            for i in range(i0, i0 + per_round):
                losses[key].append(step(batch(i)))
            sync(device)
            elapsed[key] += time.perf_counter() - t0
        i0 += per_round

    timed_steps = rounds * per_round
    timed = range(s.warmup, s.warmup + timed_steps)
    n_pool = len(contest.batches)
    tokens = sum(contest.tokens[i % n_pool] for i in timed)
    flops = sum(contest.flops[i % n_pool] for i in timed)  # same architecture, same FLOPs
    peak = args.peak
    result: dict = {
        "shape": contest.shape,
        "timed_steps": timed_steps,
        "rounds": rounds,
        "warmup_steps": s.warmup,
        "precision": "bf16-autocast" if use_bf16 else "fp32",
    }
    for key in models:
        result[key] = {
            "tokens_per_s": round(tokens / elapsed[key], 1),
            "ms_per_step": round(1000 * elapsed[key] / timed_steps, 2),
            "mfu": round(flops / elapsed[key] / peak, 4) if peak else None,
            # Same weights and batches: the two losses should track each other closely.
            "first_loss": round(losses[key][0].item(), 4),
            "last_loss": round(losses[key][-1].item(), 4),
        }
    result["ratio_lmforge_over_hf"] = round(elapsed["hf"] / elapsed["lmforge"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--shapes",
        default="a,b,bert-a,s2s-a",
        help=f"comma-separated from {list(SHAPES)} (a, b, gpt2: GPT; bert-a: masked-LM "
        "encoder; s2s-a: encoder-decoder)",
    )
    parser.add_argument("--steps", type=int, default=0, help="timed steps per model; 0 = shape's")
    parser.add_argument("--rounds", type=int, default=6, help="alternating timing rounds")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.peak = peak_flops(device)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {list(SHAPES)}")

    out = {
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "peak_flops": args.peak,
        "peak_flops_source": "table (bf16)" if device.type == "cuda" else "measured fp32 matmul",
        "compile": args.compile,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "shapes": {name: bench_shape(name, args, device) for name in shapes},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
