"""TPE against random search against a grid, on the same budget of short Shakespeare runs.

Each sampler gets the same number of trials (20 by default) of the same short training run
(recipes/tune-shakespeare.toml: a 2-layer, 64-wide character-level GPT, 120 steps of 16 x 64
characters) over the same six hyperparameters, none of which changes the compute of a trial:

    optim.lr              1e-4 .. 1e-1, log scale
    optim.weight_decay    0.0 .. 0.5
    schedule.kind         cosine, linear, wsd
    schedule.warmup_steps 0 .. 100
    schedule.min_lr_ratio 0.0 .. 0.5
    model.dropout         0.0 .. 0.3

TPE (Optuna's default Bayesian sampler, 10 random start-up trials) and random search sample all
six. A grid of 20 points can vary only a few: it runs 5 learning rates (log-spaced over the
range) x 2 schedules (cosine, wsd) x 2 dropouts (0, 0.15), the other three at the recipe's
values, as one would pick them by hand. No pruning: every trial trains its whole budget and is
scored once, at its end, on the first 32,768 tokens of the validation split (the last 10% of
the text). Training is deterministic, so a configuration always gets the same loss; samplers
differ only in which configurations they try.

With one seed, TPE's 10 start-up trials are the random sampler's first 10 draws, so the two
differ only in the last 10 trials, where TPE's model of the earlier ones picks the values. One
sweep is one draw, so TPE and random run once per seed (0, 1, 2 by default) and the means are
compared; the grid is the same at every seed and runs once.

    python benchmarks/tune_compare.py                     # 7 sweeps of 20 trials (~8 min)
    python benchmarks/tune_compare.py --seeds 0 --trials 10 --steps 60

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch

from lmforge.corpora import corpus_path
from lmforge.data.prepare import PrepareConfig, prepare_corpus
from lmforge.tokenizer.encode import encode_data
from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer_from_data
from lmforge.train.trainer import peak_flops
from lmforge.tune.search import TuneConfig, load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tune-shakespeare.toml"

SPACE = """
[optim]
lr = { low = 1e-4, high = 1e-1, log = true }
weight_decay = { low = 0.0, high = 0.5 }
[schedule]
kind = ["cosine", "linear", "wsd"]
warmup_steps = { low = 0, high = 100 }
min_lr_ratio = { low = 0.0, high = 0.5 }
[model]
dropout = { low = 0.0, high = 0.3 }
"""
GRID = """
[optim]
lr = [1e-4, 5.62e-4, 3.16e-3, 1.78e-2, 1e-1]
[schedule]
kind = ["cosine", "wsd"]
[model]
dropout = [0.0, 0.15]
"""


def make_tokens(work: Path) -> Path:
    """Char-level Tiny Shakespeare, the last 10% for validation; return the tokens dir."""
    shakespeare = corpus_path("tinyshakespeare")
    prepare_corpus([shakespeare], work / "data", PrepareConfig(val_fraction=0.1, test_fraction=0))
    train_tokenizer_from_data(work / "data", work / "tokenizer", TokenizerConfig(kind="char"))
    encode_data(work / "data", work / "tokenizer", work / "tokens")
    return work / "tokens"


def sweep(sampler: str, seed: int, work: Path, tokens: Path, args: argparse.Namespace) -> dict:
    name = f"{sampler}-seed{seed}"
    space = work / f"{name}.toml"
    space.write_text(GRID if sampler == "grid" else SPACE, encoding="utf-8")
    cfg = TuneConfig(
        space=str(space),
        out=str(work / name),
        recipe=str(RECIPE),
        overrides={
            "data.tokens": str(tokens),
            "train.max_steps": args.steps,
            "train.eval_interval": args.steps,  # scored once, at the end
        },
        n_trials=args.trials,
        sampler=sampler,
        pruner="none",
        seed=seed,
        threads=args.threads,
        plots=False,
    )
    t0 = time.perf_counter()
    summary = run_sweep(cfg, progress=False)
    seconds = time.perf_counter() - t0
    running_best, best = [], float("inf")
    for t in load_sweep(cfg.out).get_trials(deepcopy=False):
        if t.state.name == "COMPLETE":
            best = min(best, t.value)
        running_best.append(round(best, 4))
    return {
        "seed": seed,
        "best_val_loss": round(summary["best"]["value"], 4),
        "best_trial": summary["best"]["number"],
        "best_params": {
            k: round(v, 6) if isinstance(v, float) else v
            for k, v in summary["best"]["params"].items()
        },
        "complete": summary["trials"]["complete"],
        "failed": summary["trials"]["failed"],
        "best_after_each_trial": running_best,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per sweep")
    parser.add_argument("--steps", type=int, default=120, help="training steps per trial")
    parser.add_argument("--seeds", default="0,1,2", help="sampler seeds for TPE and random")
    parser.add_argument("--samplers", default="tpe,random,grid", help="comma-separated")
    # One thread: this small model gains little from a second one, and on a busy 2-core
    # machine a 2-thread pool waits on descheduled threads (a trial took 4x longer).
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    # Measure the CPU's peak once, before any trial, so no trial's timing includes it.
    torch.set_num_threads(args.threads)
    peak_flops(torch.device("cpu"))

    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokens = make_tokens(work)
        for sampler in args.samplers.split(","):
            for seed in seeds[:1] if sampler == "grid" else seeds:
                runs.setdefault(sampler, []).append(sweep(sampler, seed, work, tokens, args))

    mean = {k: round(statistics.mean(r["best_val_loss"] for r in v), 4) for k, v in runs.items()}
    out: dict = {
        "benchmark": "tune_compare",
        "task": "char-level Tiny Shakespeare, recipes/tune-shakespeare.toml",
        "budget": {"trials_per_sweep": args.trials, "steps_per_trial": args.steps},
        "space": "lr 1e-4..1e-1 (log), weight_decay 0..0.5, schedule cosine/linear/wsd, "
        "warmup_steps 0..100, min_lr_ratio 0..0.5, dropout 0..0.3",
        "seeds": seeds,
        "mean_best_val_loss": mean,
        "runs": runs,
    }
    if "tpe" in runs:
        others = {k: v for k, v in mean.items() if k != "tpe"}
        out["tpe_wins"] = all(mean["tpe"] < v for v in others.values())
        # Positive: TPE's mean best val loss is that much lower (nats per character).
        out["tpe_margin"] = {k: round(v - mean["tpe"], 4) for k, v in others.items()}
        if "random" in runs:
            pairs = zip(runs["tpe"], runs["random"])
            out["tpe_beats_random_at_seeds"] = [
                t["seed"] for t, r in pairs if t["best_val_loss"] < r["best_val_loss"]
            ]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "threads_per_trial": args.threads,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
