"""Training throughput of lmforge's GPT against Hugging Face's GPT2LMHeadModel of the same shape.

Both models start from the same weights (ours converted with `to_hf_gpt2`), see the same random
token batches and run the same step as lmforge's trainer: forward, cross-entropy on float
logits, backward, clip the grad norm to 1.0, a step of lmforge's AdamW (`build_optimizer`,
fused where PyTorch has it), zero_grad. Timed rounds alternate between the two models (and
which goes first) so that machine noise hits both alike; warmup steps are not timed. MFU is
against `peak_flops(device)` measured in the same run.

    python benchmarks/train_throughput.py                   # shapes a and b on CPU
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
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers

from lmforge.export.hf_gpt2 import to_hf_gpt2
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.train.optim import OptimConfig, build_optimizer
from lmforge.train.trainer import peak_flops


@dataclass(frozen=True)
class Shape:
    n_layers: int
    n_heads: int
    d_model: int
    seq_len: int
    batch_size: int
    vocab_size: int
    steps: int  # timed steps per model by default (sized to keep the default run short)
    warmup: int


SHAPES = {
    "a": Shape(4, 4, 128, 64, 12, 65, steps=150, warmup=10),
    "b": Shape(6, 6, 384, 256, 16, 65, steps=10, warmup=2),
    "gpt2": Shape(12, 12, 768, 1024, 8, 50304, steps=50, warmup=5),  # 124M; meant for a GPU
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, forward, device: torch.device, autocast):
    """One training step of lmforge's trainer, for either model."""
    optimizer = build_optimizer(model, OptimConfig(), device.type)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast:
            logits = forward(x)  # (B, T, V)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def bench_shape(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    s = SHAPES[name]
    steps = args.steps or s.steps
    rounds = max(1, min(args.rounds, steps))
    per_round = math.ceil(steps / rounds)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    torch.manual_seed(0)
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
    ours_fwd = torch.compile(ours) if args.compile else ours
    hf_fwd_model = torch.compile(hf) if args.compile else hf

    def hf_forward(x: torch.Tensor) -> torch.Tensor:
        # No KV cache while training: HF would otherwise build one on every forward.
        return hf_fwd_model(input_ids=x, use_cache=False).logits

    models = {
        "lmforge": make_step(ours, ours_fwd, device, autocast),
        "hf": make_step(hf, hf_forward, device, autocast),
    }

    gen = torch.Generator().manual_seed(1)
    n_batches = s.warmup + rounds * per_round
    batches = [
        torch.randint(0, s.vocab_size, (s.batch_size, s.seq_len + 1), generator=gen).to(device)
        for _ in range(min(n_batches, 16))  # cycled: a fixed pool keeps memory small
    ]

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = batches[i % len(batches)]
        return b[:, :-1], b[:, 1:]

    losses = {k: [] for k in models}
    for key, step in models.items():
        for i in range(s.warmup):
            losses[key].append(step(*batch(i)))
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
                losses[key].append(step(*batch(i)))
            sync(device)
            elapsed[key] += time.perf_counter() - t0
        i0 += per_round

    timed_steps = rounds * per_round
    tokens = timed_steps * s.batch_size * s.seq_len
    flops = ours.flops_per_token(s.seq_len) * tokens  # same architecture, same FLOPs
    peak = args.peak
    result: dict = {
        "shape": {
            "n_layers": s.n_layers,
            "n_heads": s.n_heads,
            "d_model": s.d_model,
            "seq_len": s.seq_len,
            "batch_size": s.batch_size,
            "vocab_size": s.vocab_size,
            "params": ours.num_params(),
        },
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
    parser.add_argument("--shapes", default="a,b", help=f"comma-separated from {list(SHAPES)}")
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
