"""Where a fine-tuning run starts (`--from runs/x` or `--from path/to/hf-dir`), and the step
loop that classification and extractive QA share.

Every `lmforge finetune <task>` takes either an lmforge run directory or a local Hugging Face
model folder. A folder is imported once, through the same `import hf` adapters a user would run
by hand, into `<out>/base/`, so the fine-tuned result records what it started from and the
import can be inspected, served or evaluated on its own.

`fit` is the loop of the tasks that train on a list of examples drawn in shuffled mini-batches
and keep the step with the best validation score: linear warmup and decay, gradient clipping,
a metrics line a step. SFT and seq2seq batch differently (packed rows, batches by length) and
keep their own loops.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.tokenizer.tokenizer import Tokenizer


class BaseModelError(ValueError):
    """`--from` names neither an lmforge run nor a Hugging Face model folder."""


def is_run_dir(path: Path) -> bool:
    """A run written by `lmforge train`, `import hf` or a fine-tuning command."""
    return (path / "checkpoints").is_dir() and (path / "tokenizer").is_dir()


def is_hf_dir(path: Path) -> bool:
    """A Hugging Face model folder: config.json naming a model_type, beside its weights."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def resolve_base(source: str | Path, out_dir: str | Path) -> Path:
    """The run directory to fine-tune from: `source` itself when it is a run, else `source`
    imported as a Hugging Face folder into `out_dir/base` (reused if already imported)."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise BaseModelError(f"--from {source}: no such run directory or Hugging Face folder")
    if is_run_dir(source):
        return source
    if is_hf_dir(source):
        base = out_dir / "base"
        if is_run_dir(base):
            try:
                provenance = json.loads((base / "imported_from.json").read_text("utf-8"))
            except (OSError, ValueError):
                provenance = {}
            imported_from = provenance.get("hf_dir")
            if imported_from == str(source.resolve()):
                return base
            raise BaseModelError(
                f"{base} already holds an import of {imported_from}, not {source}; "
                "give a fresh --out"
            )
        from lmforge.export.hf import import_hf

        import_hf(source, base)
        return base
    raise BaseModelError(
        f"--from {source}: neither an lmforge run (checkpoints/ and tokenizer/) nor a Hugging "
        "Face model folder (config.json with a model_type); train one with `lmforge train` or "
        "give a folder saved with transformers' save_pretrained"
    )


def load_base_model(
    run: Path, families: set[str], command: str, init: str = "pretrained"
) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """The model of `run`'s best checkpoint (refused unless of one of `families`), its
    tokenizer and its config; with `init` "scratch", the same architecture freshly initialised
    (the baseline that shows what pretraining transfers)."""
    from lmforge.model import build_model, model_config_from_dict, require_family
    from lmforge.tokenizer.tokenizer import load_tokenizer
    from lmforge.train import checkpoint as ckpt

    ckpt_dir = ckpt.checkpoint_dir(run, "best")
    config = ckpt.read_config(ckpt_dir)
    require_family(config["model"], families, command)
    model = build_model(model_config_from_dict(config["model"]))
    if init == "pretrained":
        ckpt.load_model_weights(model, ckpt_dir / "model.safetensors")
    return model, load_tokenizer(run / "tokenizer"), config


@dataclass(kw_only=True)
class Fitted:
    steps: int
    best_step: int  # the step whose weights the model holds now
    train_seconds: float


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[list[int]], torch.Tensor],
    *,
    n_examples: int,
    epochs: float,
    batch_size: int,
    warmup_fraction: float,
    grad_clip: float,
    evals_per_epoch: int,
    seed: int,
    validate: Callable[[], dict[str, float]] | None,
    keep_best: str,
    metrics_path: Path,
    progress: bool,
    desc: str,
) -> Fitted:
    """Train `model` for `epochs` over examples 0..n_examples-1, `batch_size` at a time in a
    shuffled order (`batch_loss(indices)` gives a batch's loss), and leave it holding the step
    whose `validate()[keep_best]` was highest (the last step without `validate`).

    Each parameter group's LR is its `initial_lr` times a linear warmup then linear decay to 0;
    each step writes `{step, loss, val_*}` to `metrics_path`. A non-finite loss stops training
    before it reaches the weights.
    """
    from lmforge.train.schedule import ScheduleConfig, lr_factor

    steps_per_epoch = math.ceil(n_examples / batch_size)
    total_steps = max(1, round(epochs * steps_per_epoch))
    schedule = ScheduleConfig(
        kind="linear", warmup_steps=int(warmup_fraction * total_steps), min_lr_ratio=0.0
    )
    eval_every = max(1, steps_per_epoch // evals_per_epoch)
    metrics_path.write_text("", encoding="utf-8")
    rng = random.Random(seed)
    order: list[int] = []
    best_state, best_score, best_step = None, -math.inf, 0
    model.train()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=desc, unit="step", mininterval=1.0)
    try:
        for step in range(total_steps):
            if not order:
                order = list(range(n_examples))
                rng.shuffle(order)
            chunk, order = order[:batch_size], order[batch_size:]
            factor = lr_factor(step, total_steps, schedule)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            loss = batch_loss(chunk)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; lower lr")
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record: dict[str, Any] = {"step": step + 1, "loss": loss.item()}
            if validate is not None and ((step + 1) % eval_every == 0 or step + 1 == total_steps):
                val = validate()
                record |= {f"val_{k}": v for k, v in val.items()}
                if val[keep_best] > best_score:
                    best_score, best_step = val[keep_best], step + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if bar is not None:
                    best = {f"val_{keep_best}": f"{best_score:.3f}"}
                    bar.set_postfix(loss=f"{loss.item():.3f}", **best)
            with metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return Fitted(
        steps=total_steps,
        best_step=best_step or total_steps,
        train_seconds=time.perf_counter() - t0,
    )
