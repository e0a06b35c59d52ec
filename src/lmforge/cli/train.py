"""`lmforge train` and `lmforge model info`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lmforge.cli import _print_json, command, parse_overrides


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="a TOML recipe (see recipes/); defaults apply without one")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's last checkpoint (without --recipe: with the run's own "
        "config.json)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.epilog = (
        "Any recipe field can be overridden as --SECTION.FIELD VALUE, for example "
        "--optim.lr 3e-4 --train.max_steps 500 --model.n_layers 6 --data.tokens runs/x/tokens. "
        "Sections: data, model, optim, schedule, train, distributed. "
        "Several processes: torchrun --nproc-per-node N -m lmforge train ... "
        "(--distributed.strategy ddp|fsdp; train.batch_size is the global batch)."
    )


@command(
    "train",
    help="train a model from a recipe; writes checkpoints, metrics and plots",
    args=_train_args,
    overrides=True,
)
def cmd_train(a: argparse.Namespace) -> int:
    from lmforge.train.trainer import load_run_config, train

    base = None
    saved = Path(a.out) / "config.json"
    if a.resume and not a.recipe and saved.exists():
        base = json.loads(saved.read_text(encoding="utf-8"))  # continue the run as it was set up
    cfg = load_run_config(a.recipe, parse_overrides(a.extra), base=base)
    summary = train(cfg, a.out, resume=a.resume, progress=not a.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 speaks for the run
    world = f" x {summary['world_size']} processes" if summary["world_size"] > 1 else ""
    print(
        f"trained {summary['steps']} steps ({summary['tokens_seen']:,} tokens) in "
        f"{summary['elapsed_s']:.0f}s on {summary['device']}{world} ({summary['dtype']}): "
        f"val loss {summary['final_val_loss']:.4f} (best {summary['best_val_loss']:.4f})"
    )
    print(f"checkpoints in {a.out}/checkpoints, loss curve in {a.out}/loss.png")
    return 0


def _model_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="a TOML recipe (its [model] table); defaults without one")
    p.add_argument(
        "--vocab-size",
        type=int,
        help="vocabulary size, when the recipe takes it from the tokenizer (model.vocab_size = 0)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="sequences per step for the memory estimate (default: recipe)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.epilog = "Recipe fields can be overridden as --SECTION.FIELD VALUE, e.g. --model.depth 8."


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


@command(
    "model",
    "info",
    help="parameters by group, FLOPs per token and memory of a recipe's model",
    args=_model_info_args,
    overrides=True,
)
def cmd_model_info(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console
    from rich.table import Table

    from lmforge.model.info import model_info
    from lmforge.train.objectives import training_seq_len
    from lmforge.train.trainer import load_run_config

    cfg = load_run_config(a.recipe, parse_overrides(a.extra))
    model_cfg = cfg.model
    if a.vocab_size:
        model_cfg = replace(model_cfg, vocab_size=a.vocab_size)
    if model_cfg.vocab_size == 0:
        raise ValueError(
            "the recipe takes model.vocab_size from the tokenizer; pass --vocab-size N"
        )
    batch = (a.batch_size or cfg.train.batch_size) * cfg.train.grad_accum_steps
    info = model_info(model_cfg, batch_size=batch, seq_len=training_seq_len(cfg))
    if a.json:
        _print_json(info)
        return 0
    table = Table(title=f"{a.recipe or 'default config'}: {_human(info['params']['total'])} params")
    table.add_column("parameters")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for group, n in info["params"]["by_group"].items():
        table.add_row(group, f"{n:,}", f"{n / info['params']['total']:.1%}")
    table.add_row("total", f"{info['params']['total']:,}", "")
    table.add_row("non-embedding", f"{info['params']['non_embedding']:,}", "")
    console = Console()
    console.print(table)
    console.print(
        f"FLOPs per token (train, fwd+bwd): {_human(info['flops_per_token'])}; per step of "
        f"{batch} x {info['seq_len']} tokens: {_human(info['flops_per_step'])}"
    )
    for precision, mem in info["memory_estimate"].items():
        console.print(
            f"memory estimate ({precision} activations): "
            f"weights+grads+AdamW {_human(mem['weights_grads_adamw_bytes'], 'B')}, "
            f"activations {_human(mem['activations_bytes'], 'B')}, "
            f"total {_human(mem['total_bytes'], 'B')}"
        )
    return 0
