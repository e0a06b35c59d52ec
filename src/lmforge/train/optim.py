"""Optimizers: AdamW with weight decay only on matrices, fused where PyTorch offers it.

Biases, norm gains and other 1-D parameters are not decayed: decaying them pulls norms toward
zero and buys no regularisation (as in GPT-2, nanoGPT and most LLM recipes).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        self.betas = tuple(self.betas)  # TOML and JSON give lists


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: parameters with >= 2 dims are decayed, the rest are not."""
    params = [p for p in model.parameters() if p.requires_grad]  # shared (tied) ones once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    extra = {}
    # The fused kernel exists for CUDA (and CPU since 2.4); fall back to foreach elsewhere.
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in (
        "cuda",
        "cpu",
    ):
        extra["fused"] = True
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **extra
    )
