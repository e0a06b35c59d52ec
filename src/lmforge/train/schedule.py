"""Learning-rate schedules as pure functions of the step, so a resumed run needs no state.

A schedule gives a multiplier in [0, 1] of each parameter group's peak LR (`lr_factor`), so
optimizers whose groups have different peaks (Muon's matrices beside AdamW's embeddings) share
one schedule. Every kind starts with the same linear warmup over `warmup_steps`, then:

| kind           | after warmup                                   | follows                       |
|----------------|------------------------------------------------|-------------------------------|
| `constant`     | flat at 1                                      |                               |
| `cosine`       | half a cosine down to `min_lr_ratio`           | Loshchilov & Hutter 2017, no  |
|                |                                                | restarts (GPT-3, nanoGPT)     |
| `linear`       | a straight line down to `min_lr_ratio`         | BERT (Devlin et al. 2019)     |
| `step`         | times `step_gamma` every `step_size` steps     | He et al. 2016 (ResNet)       |
| `wsd`          | flat, then down to `min_lr_ratio` over the     | MiniCPM (Hu et al. 2024);     |
|                | last `decay_fraction` of the run, linearly or  | 1-sqrt: Hägele et al. 2024    |
|                | as 1 - sqrt(progress)                          |                               |
| `inverse_sqrt` | sqrt(warmup_steps / step)                      | Vaswani et al. 2017           |

Decaying kinds reach `min_lr_ratio` at step `max_steps`, one past the last optimizer step.
`step` and `inverse_sqrt` have no end point and ignore `min_lr_ratio`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

ScheduleKind = Literal["constant", "cosine", "linear", "step", "wsd", "inverse_sqrt"]


@dataclass(kw_only=True)
class ScheduleConfig:
    kind: ScheduleKind = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # where cosine, linear and wsd end, as a fraction of the peak LR
    step_size: int = 0  # step: steps between drops; must be set for kind = "step"
    step_gamma: float = 0.1  # step: the factor of each drop
    decay_fraction: float = 0.2  # wsd: the share of max_steps spent decaying
    decay_shape: Literal["linear", "1-sqrt"] = "linear"  # wsd: the shape of that decay

    def __post_init__(self) -> None:
        if self.kind not in _AFTER_WARMUP:
            raise ValueError(
                f"schedule.kind must be one of {sorted(_AFTER_WARMUP)}, got {self.kind!r}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.kind == "step" and self.step_size <= 0:
            raise ValueError(
                f"schedule.step_size must be positive for kind 'step', got {self.step_size}; "
                "set it to the number of steps between LR drops"
            )
        if not 0.0 < self.step_gamma <= 1.0:
            raise ValueError(f"schedule.step_gamma must be in (0, 1], got {self.step_gamma}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(
                f"schedule.decay_fraction must be in (0, 1], got {self.decay_fraction}; "
                "e.g. 0.2 decays over the last fifth of the run"
            )
        if self.decay_shape not in _DECAY_SHAPES:
            raise ValueError(
                f"schedule.decay_shape must be one of {sorted(_DECAY_SHAPES)}, "
                f"got {self.decay_shape!r}"
            )
        if self.kind == "inverse_sqrt" and self.warmup_steps == 0:
            raise ValueError(
                "schedule.warmup_steps must be positive for kind 'inverse_sqrt' (the decay is "
                "sqrt(warmup_steps / step)), got 0; e.g. set it to 100"
            )


def _decay(progress: float, cfg: ScheduleConfig) -> float:
    """Map `progress` in [0, 1] of a decay to a factor from 1 down to `min_lr_ratio`."""
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * progress


def _constant(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    return 1.0


def _cosine(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return _decay(0.5 * (1.0 + math.cos(math.pi * progress)), cfg)


def _linear(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return _decay(1.0 - progress, cfg)


def _step(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    return cfg.step_gamma ** ((step - cfg.warmup_steps) // cfg.step_size)


_DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda progress: 1.0 - progress,
    # Hägele et al. 2024: staying higher early in the cooldown and dropping late beats linear.
    "1-sqrt": lambda progress: 1.0 - math.sqrt(progress),
}


def _wsd(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    decay_steps = max(1, round(cfg.decay_fraction * max_steps))
    decay_start = max(cfg.warmup_steps, max_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    return _decay(_DECAY_SHAPES[cfg.decay_shape](progress), cfg)


def _inverse_sqrt(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    return math.sqrt(cfg.warmup_steps / max(step, cfg.warmup_steps))


_AFTER_WARMUP: dict[str, Callable[[int, int, ScheduleConfig], float]] = {
    "constant": _constant,
    "cosine": _cosine,
    "linear": _linear,
    "step": _step,
    "wsd": _wsd,
    "inverse_sqrt": _inverse_sqrt,
}


def lr_factor(step: int, max_steps: int, cfg: ScheduleConfig) -> float:
    """The multiplier in [0, 1] of the peak LR for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return _AFTER_WARMUP[cfg.kind](step, max_steps, cfg)


def lr_at(step: int, peak_lr: float, max_steps: int, cfg: ScheduleConfig) -> float:
    """The learning rate for optimizer step `step` (0-based) of a run of `max_steps` steps."""
    return peak_lr * lr_factor(step, max_steps, cfg)
