"""What a run measures and keeps: val loss over a whole split, metrics.jsonl and TensorBoard
events, and the loss-curve PNG."""

from __future__ import annotations

import json
import logging
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.data.loader import TokenWindows
from lmforge.io import write_text_atomic
from lmforge.train import distributed as D

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    windows: TokenWindows,
    *,
    device: torch.device,
    batch_size: int = 64,
    max_tokens: int | None = None,
    autocast: Any = None,
    token_bytes: torch.Tensor | None = None,
    world: D.World | None = None,
) -> dict[str, float]:
    """Mean loss over every target token of a split (or its first `max_tokens`).

    With `token_bytes` (UTF-8 bytes per token id) it also gives bits per byte: the summed loss
    of tokens that stand for text, in bits, over the bytes they stand for. Special tokens (0
    bytes) are left out of that ratio, which makes it comparable across tokenizers.
    In a distributed run each rank scores every `world.size`-th batch and the sums are added.
    """
    world = world or D.World()
    was_training = model.training
    model.eval()
    total_loss, total_tokens, text_loss, text_bytes = 0.0, 0, 0.0, 0
    for x, y, counts in _rank_batches(windows.sequential(batch_size, max_tokens=max_tokens), world):
        x, y = x.to(device), y.to(device)
        with autocast or nullcontext():
            logits = model(x)
        if not counts:
            continue  # a padding batch: FSDP needs every rank in every forward
        losses = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none"
        )
        total_loss += losses.sum().item()
        total_tokens += y.numel()
        if token_bytes is not None:
            nbytes = token_bytes[y.reshape(-1)]
            text_loss += losses[nbytes > 0].sum().item()
            text_bytes += int(nbytes.sum().item())
    model.train(was_training)
    total_loss, total_tokens, text_loss, text_bytes = D.all_reduce_sum(
        [total_loss, total_tokens, text_loss, text_bytes], world, device
    )
    total_tokens, text_bytes = int(total_tokens), int(text_bytes)
    loss = total_loss / max(1, total_tokens)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": total_tokens}
    if token_bytes is not None and text_bytes:
        out["bits_per_byte"] = text_loss / math.log(2) / text_bytes
        out["bytes"] = text_bytes
    return out


def _rank_batches(batches: Any, world: D.World) -> Any:
    """This rank's share of `batches` as (x, y, counts): every world.size-th batch, then
    repeats of its last batch with counts=False until all ranks have made as many calls."""
    if not world.distributed:
        for x, y in batches:
            yield x, y, True
        return
    # Every rank walks the whole split (cheap: no model) so that all know how many rounds.
    total, mine, last = 0, 0, None
    for i, (x, y) in enumerate(batches):
        total, last = i + 1, (x, y)
        if i % world.size == world.rank:
            mine += 1
            yield x, y, True
    for _ in range(-(-total // world.size) - mine):
        yield *last, False


def _metric_step(line: str) -> float:
    """The step of a metrics.jsonl line, or infinity for a line that is not a whole record."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """Metrics to `metrics.jsonl` and TensorBoard (`tb/`) in the run directory."""

    def __init__(self, run_dir: Path, *, resume_step: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        elif self.path.exists():
            # Drop what a crashed run logged after its last checkpoint: the resumed run
            # logs those steps again.
            # A line cut short by the crash is dropped too.
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if _metric_step(line) <= resume_step
            ]
            write_text_atomic(self.path, "".join(k + "\n" for k in kept))
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is a dependency, but a trimmed install still trains
            log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def plot_losses(metrics_path: Path, out_path: Path) -> None:
    """Train and val loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record:
            train.append((record["step"], record["loss"]))
        if "val_loss" in record:
            val.append((record["step"], record["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), label="val", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(out_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
