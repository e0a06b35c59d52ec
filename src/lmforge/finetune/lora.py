"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A chosen `nn.Linear` keeps its weight W frozen and gains a trainable low-rank update:
`y = x W^T + (alpha / rank) * dropout(x) A^T B^T`, with A (rank, in) initialised like a Linear
and B (out, rank) at zero, so training starts from exactly the base model. Only A and B (and
whatever the caller unfreezes, such as a classification head) train; they save as a small
safetensors file, and `merge_lora` folds `W + (alpha / rank) B A` back into a plain Linear
that computes the same outputs.

Written here rather than taken from `peft`: peft requires `transformers` at run time and
addresses modules by Hugging Face conventions, while the whole method is a few lines on top of
`nn.Linear`, and owning them lets adapters travel in lmforge's own safetensors + JSON format and
target our module names (`blocks.3.attn.q_proj`) directly.

Targets are patterns matched against module names: a glob (`blocks.*.attn.q_proj`,
`*.mlp.*`) matched against the whole name, or a bare name (`q_proj`, `attn.o_proj`) matching
every module whose name ends with it.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import ConfigError, from_dict
from lmforge.io import atomic_path, write_json_atomic

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(kw_only=True)
class LoRAConfig:
    """Which Linear layers get adapters, and their shape."""

    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("lora.targets is empty; name at least one Linear, e.g. q_proj")
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be positive, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable rank-r update."""

    def __init__(self, base: nn.Linear, cfg: LoRAConfig) -> None:
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        w = base.weight
        self.lora_a = nn.Parameter(
            torch.empty(cfg.rank, w.shape[1], device=w.device, dtype=w.dtype)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(w.shape[0], cfg.rank, device=w.device, dtype=w.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own init
        self.scale = cfg.alpha / cfg.rank
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (self.dropout(x) @ self.lora_a.t()) @ self.lora_b.t()  # (..., out)
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain Linear with the update folded into its weight."""
        out = nn.Linear(
            self.base.in_features,
            self.base.out_features,
            bias=self.base.bias is not None,
            device=self.base.weight.device,
            dtype=self.base.weight.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _matches(name: str, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _tied(model: nn.Module) -> set[int]:
    """Ids of parameters registered under more than one name (a tied LM head)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze `model` and wrap every Linear a target names; return the wrapped names.

    A pattern that matches no Linear is an error listing the Linear layers there are. A
    Linear whose weight is tied to another parameter (the LM head that is the token
    embedding) is never wrapped: merging would untie it.
    """
    tied = _tied(model)
    linears = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) not in tied
    ]
    unmatched = [p for p in cfg.targets if not any(_matches(n, p) for n in linears)]
    if unmatched:
        sample = ", ".join(linears[:12]) + (", ..." if len(linears) > 12 else "")
        raise ConfigError(
            f"LoRA target pattern(s) {unmatched} match no Linear layer of this model; its Linear "
            f"layers are: {sample} (use a suffix like q_proj or a glob like blocks.*.mlp.*)"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [n for n in linears if any(_matches(n, p) for p in cfg.targets)]
    for name in chosen:
        _set_module(model, name, LoRALinear(model.get_submodule(name), cfg))
    return chosen


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors alone, by name (`blocks.0.attn.q_proj.lora_a`, ...)."""
    return {
        name: p.detach().contiguous().cpu()
        for name, p in model.named_parameters()
        if name.endswith((".lora_a", ".lora_b"))
    }


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its Linear in place; return how many were merged."""
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in wrapped:
        _set_module(model, name, model.get_submodule(name).merged())
    return len(wrapped)


def save_adapters(
    model: nn.Module,
    out_dir: str | Path,
    cfg: LoRAConfig,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `adapters.safetensors` and `adapter_config.json` into `out_dir`.

    `extra` tensors (a new task head, say) travel in the same file; `load_adapters` hands
    them back.
    """
    out = Path(out_dir)
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        save_file({**lora_state(model), **(extra or {})}, str(tmp))
    write_json_atomic(out / ADAPTER_CONFIG, asdict(cfg))
    return out / ADAPTER_WEIGHTS


def load_adapters(
    model: nn.Module, adapter_dir: str | Path
) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """Wrap `model` as the saved adapters were and load their weights; return the config and
    the file's other tensors (those `save_adapters` was given as `extra`)."""
    adapter_dir = Path(adapter_dir)
    try:
        cfg = from_dict(LoRAConfig, json.loads((adapter_dir / ADAPTER_CONFIG).read_text()))
        tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except FileNotFoundError as e:
        raise ConfigError(
            f"{adapter_dir} holds no LoRA adapters ({e.filename} is missing)"
        ) from None
    apply_lora(model, cfg)
    expected = lora_state(model)
    adapters = {k: v for k, v in tensors.items() if k.endswith((".lora_a", ".lora_b"))}
    if set(adapters) != set(expected):
        missing = sorted(set(expected) - set(adapters))[:4]
        unexpected = sorted(set(adapters) - set(expected))[:4]
        raise ConfigError(
            f"{adapter_dir / ADAPTER_WEIGHTS} does not fit this model (missing {missing}, "
            f"unexpected {unexpected}); load it onto the base model it was trained on"
        )
    model.load_state_dict(adapters, strict=False)
    return cfg, {k: v for k, v in tensors.items() if k not in adapters}
