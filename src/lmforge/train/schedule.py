"""Learning-rate schedules as pure functions of the step, so a resumed run needs no state.

`cosine` is linear warmup then cosine decay to `min_lr_ratio * lr` (Loshchilov & Hutter, 2017,
without restarts, as used by GPT-3 and nanoGPT); `constant` is warmup then flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class ScheduleConfig:
    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the LR the decay ends at, as a fraction of the peak LR

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def lr_at(step: int, peak_lr: float, max_steps: int, cfg: ScheduleConfig) -> float:
    """The learning rate for optimizer step `step` (0-based) of a run of `max_steps` steps."""
    if step < cfg.warmup_steps:
        return peak_lr * (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return peak_lr
    decay_steps = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    min_lr = peak_lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)
