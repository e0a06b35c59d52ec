"""Data-parallel scaling: training tokens/s at 1 and N processes, and the efficiency ratio.

Each configuration is a real `lmforge train` run launched by torchrun on the same tokens, model
and *global* batch, so the runs train the same thing and only the number of processes changes.
Reported per run: training tokens/s (the mean of the logged windows after the first, which
holds the warmup) and the final val loss (the same at every world size, up to float summation
order). Two baselines are measured in the same invocation:

- `1x1`: one process, one thread: N processes of one thread each should reach N times it
  (`efficiency = tokens/s / (N * baseline)`).
- `1xN`: one process with N threads, the alternative on a machine of N cores: whether N
  processes beat one process with N threads is what a user of this machine wants to know.

    python benchmarks/scaling.py                           # CPU, gloo, 1 and 2 processes
    python benchmarks/scaling.py --strategies ddp,fsdp --steps 60
    python benchmarks/scaling.py --device cuda --procs 1,2,4,8 --shape 12,12,768,1024 \
        --batch-size 64                                    # GPUs (nccl), when there are several

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def prepare_tokens(root: Path) -> Path:
    """Char-level tokens of the bundled Tiny Shakespeare."""
    from lmforge.corpora import corpus_path
    from lmforge.data.prepare import prepare_corpus
    from lmforge.tokenizer.encode import encode_data
    from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer_from_data

    prepare_corpus([corpus_path("tinyshakespeare")], root / "data")
    train_tokenizer_from_data(root / "data", root / "tokenizer", TokenizerConfig(kind="char"))
    encode_data(root / "data", root / "tokenizer", root / "tokens", workers=1)
    return root / "tokens"


def run(
    out: Path, tokens: Path, procs: int, threads: int, strategy: str, args: argparse.Namespace
) -> dict:
    layers, heads, width, context = (int(v) for v in args.shape.split(","))
    overrides = {
        "data.tokens": str(tokens),
        "model.n_layers": layers,
        "model.n_heads": heads,
        "model.d_model": width,
        "model.max_seq_len": context,
        "train.max_steps": args.steps,
        "train.batch_size": args.batch_size,
        "train.log_interval": args.log_interval,
        "train.eval_interval": args.steps,
        "train.eval_tokens": 32768,
        "train.threads": threads,
        "train.device": args.device,
        "distributed.strategy": strategy,
        "schedule.warmup_steps": 10,
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={procs}", "-m", "lmforge", "train", "--out", str(out)]
    cmd += ["--no-progress"]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    val = [r["val_loss"] for r in records if "val_loss" in r][-1]
    return {
        "procs": procs,
        "threads_per_proc": threads,
        "strategy": strategy if procs > 1 else "none",
        "tokens_per_s": round(sum(speeds) / len(speeds), 1),
        "final_val_loss": round(val, 5),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--procs", default="2", help="process counts to compare with 1 (comma list)")
    p.add_argument("--strategies", default="ddp", help="ddp, fsdp or both (comma list)")
    p.add_argument("--shape", default="4,4,128,128", help="layers,heads,d_model,context")
    p.add_argument("--batch-size", type=int, default=32, help="global sequences per step")
    p.add_argument("--steps", type=int, default=120, help="training steps per run")
    p.add_argument("--log-interval", type=int, default=20, help="steps per timed window")
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    p.add_argument("--tokens", help="a token folder to train on (default: Tiny Shakespeare)")
    args = p.parse_args()
    if args.steps < 2 * args.log_interval:
        p.error("--steps must be at least twice --log-interval (the first window is warmup)")

    procs = [int(n) for n in args.procs.split(",") if int(n) > 1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokens = Path(args.tokens) if args.tokens else prepare_tokens(tmp / "corpus")
        runs = {"1x1": run(tmp / "1x1", tokens, 1, 1, "ddp", args)}
        for n in procs:
            runs[f"1x{n}"] = run(tmp / f"1x{n}", tokens, 1, n, "ddp", args)
            for strategy in args.strategies.split(","):
                runs[f"{n}x1-{strategy}"] = run(
                    tmp / f"{n}-{strategy}", tokens, n, 1, strategy, args
                )
    base = runs["1x1"]["tokens_per_s"]
    for r in runs.values():
        if r["procs"] > 1:
            r["efficiency_vs_1x1"] = round(r["tokens_per_s"] / (r["procs"] * base), 3)
            r["speedup_vs_1xN"] = round(
                r["tokens_per_s"] / runs[f"1x{r['procs']}"]["tokens_per_s"], 3
            )
    print(
        json.dumps(
            {
                "shape": args.shape,
                "global_batch": args.batch_size,
                "steps": args.steps,
                "device": args.device,
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "torch": torch.__version__,
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
