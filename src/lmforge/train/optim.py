"""Optimizers: AdamW (the default), Muon for hidden matrices with AdamW for the rest, and SGD.

`build_optimizer` always returns ONE `torch.optim.Optimizer`, so the trainer's gradient clipping,
`zero_grad`, AMP grad scaling and checkpointing (`state_dict`/`load_state_dict`) need no branch
per optimizer. Every param group carries `initial_lr`, its peak LR; the trainer multiplies it by
the schedule's factor each step, which lets Muon's groups and AdamW's have different peaks.

- `adamw`: decoupled weight decay (Loshchilov & Hutter 2019) on matrices only. Biases, norm gains
  and other 1-D parameters are not decayed: decaying them pulls norms toward zero and buys no
  regularisation (as in GPT-2, nanoGPT and most LLM recipes).
- `muon`: Muon, "MomentUm Orthogonalized by Newton-Schulz" (Keller Jordan, 2024,
  https://kellerjordan.github.io/posts/muon/), as in the modded-nanogpt speedruns and nanochat.
  It updates the 2-D weights of the hidden layers (attention and MLP projections) with the
  momentum orthogonalized by a quintic Newton-Schulz iteration; embeddings, the LM head, norms
  and biases are not "hidden matrices" and go to AdamW in the same optimizer (`MuonWithAdamW`).
- `sgd`: SGD with (optionally Nesterov) momentum and the same decay groups, as a baseline. Its
  weight decay is PyTorch's coupled L2 penalty, not AdamW's decoupled one.

PyTorch >= 2.9 ships `torch.optim.Muon`. We do not use it: it always runs Newton-Schulz in bf16,
which is many times slower than fp32 on CPUs without AMX (we pick the dtype by device: bf16 on
CUDA as the speedrun does, fp32 elsewhere); it accepts only 2-D parameters, so it cannot be the
single optimizer the trainer steps; and lmforge supports torch 2.4, which lacks it. The update
here is the same as its default ("original" LR adjustment), which tests/test_optim.py checks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

OptimName = Literal["adamw", "muon", "sgd"]

# Keller Jordan's quintic coefficients: they maximise the slope at zero, so 5 iterations push
# every singular value into roughly [0.7, 1.2] rather than converging exactly to 1; that is
# enough for training and much cheaper than an exact polar decomposition.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Parameters of these modules are the model's input and output maps, never "hidden matrices".
# A tied LM head is the token embedding, which the nn.Embedding check already catches.
_INPUT_OUTPUT_MODULES = ("tok_emb", "pos_emb", "lm_head")


@dataclass(kw_only=True)
class OptimConfig:
    name: OptimName = "adamw"
    lr: float = 1e-3  # peak LR of AdamW or SGD; with muon, of the AdamW groups
    # Peak LRs of the token embeddings and of an untied LM head; 0: `lr`. An embedding row
    # moves only when its token occurs, so it can take a far larger LR than the rest (the
    # speedruns give it ~10x); the head sees every token and wants a smaller one.
    embed_lr: float = 0.0
    head_lr: float = 0.0
    weight_decay: float = 0.1  # AdamW/SGD decay, on matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's
    eps: float = 1e-8  # AdamW's
    muon_lr: float = 0.02  # peak LR of the Muon groups (spectral-norm scale, not AdamW's)
    # Decoupled decay of the Muon matrices, per unit of LR. Muon's LR is ~20x AdamW's, so the
    # AdamW value would shrink them 20x harder; the reference Muon code uses none.
    muon_weight_decay: float = 0.0
    muon_momentum: float = 0.95
    nesterov: bool = True  # Nesterov momentum, for muon and sgd
    ns_steps: int = 5  # Newton-Schulz iterations per Muon update
    momentum: float = 0.9  # sgd's

    def __post_init__(self) -> None:
        if self.name not in _BUILDERS:
            raise ValueError(f"optim.name must be one of {sorted(_BUILDERS)}, got {self.name!r}")
        for field_name in ("lr", "muon_lr", "eps"):
            if getattr(self, field_name) <= 0:
                raise ValueError(
                    f"optim.{field_name} must be positive, got {getattr(self, field_name)}"
                )
        for field_name in ("embed_lr", "head_lr"):
            if getattr(self, field_name) < 0:
                raise ValueError(
                    f"optim.{field_name} must be >= 0 (0 = optim.lr), got "
                    f"{getattr(self, field_name)}"
                )
        for field_name in ("weight_decay", "muon_weight_decay"):
            if getattr(self, field_name) < 0:
                raise ValueError(
                    f"optim.{field_name} must be >= 0, got {getattr(self, field_name)}"
                )
        self.betas = tuple(self.betas)  # TOML and JSON give lists
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(
                f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}; "
                "e.g. [0.9, 0.95]"
            )
        for field_name in ("muon_momentum", "momentum"):
            if not 0.0 <= getattr(self, field_name) < 1.0:
                raise ValueError(
                    f"optim.{field_name} must be in [0, 1), got {getattr(self, field_name)}"
                )
        if self.ns_steps < 1:
            raise ValueError(
                f"optim.ns_steps must be >= 1, got {self.ns_steps}; 5 is the usual choice"
            )
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError(
                "optim.nesterov needs optim.momentum > 0 for sgd, got momentum 0; "
                "set optim.nesterov = false or give a momentum such as 0.9"
            )


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]  # shared (tied) ones once


def split_hidden_matrices(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices for Muon, everything else for AdamW), each trainable parameter once.

    A hidden matrix is a 2-D parameter outside the embeddings and the LM head: the attention
    and MLP projections. Orthogonalizing suits a map between hidden activations; an embedding
    is a lookup table and the head's rows are per-token, and both train better with AdamW
    (Jordan 2024). Modules are recognised by type (`nn.Embedding`) and by the glossary names
    `tok_emb`, `pos_emb` and `lm_head`; a tied head is the token embedding.
    """
    not_hidden: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.rsplit(".", 1)[-1] in _INPUT_OUTPUT_MODULES:
            not_hidden.update(id(p) for p in module.parameters())
    hidden, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (hidden if p.dim() == 2 and id(p) not in not_hidden else rest).append(p)
    return hidden, rest


def orthogonalize(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U V^T for g = U S V^T, by the quintic Newton-Schulz iteration.

    `g` is one matrix (rows, cols) or a stack of same-shaped ones (n, rows, cols), which run
    as batched matmuls: far fewer, larger kernel calls than one matrix at a time. Runs in
    bf16 on CUDA (what the speedrun uses: the iteration tolerates it and tensor cores are
    fast) and in fp32 elsewhere, where bf16 matmuls are usually slower. The result has g's
    shape and the working dtype.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the wide side, so the Gram matrix x x^T is the smaller one
    # Frobenius norm >= spectral norm, so every singular value starts <= 1.
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer: Muon for param groups with `use_muon=True`, AdamW for the others.

    Muon group keys: lr, momentum, nesterov, ns_steps, weight_decay. AdamW group keys: lr,
    betas, eps, weight_decay. Missing keys take the defaults below; `initial_lr` defaults to lr.
    All state is tensors plus an integer AdamW step count, so it checkpoints like AdamW's.
    """

    MUON_DEFAULTS = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "ns_steps": 5}
    ADAMW_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8}

    def __init__(self, groups: Iterable[dict[str, Any]]) -> None:
        filled = []
        for group in groups:
            if "use_muon" not in group:
                raise ValueError(
                    "every MuonWithAdamW param group needs a 'use_muon' key (True for hidden "
                    f"matrices, False for AdamW); got keys {sorted(group)}"
                )
            defaults = self.MUON_DEFAULTS if group["use_muon"] else self.ADAMW_DEFAULTS
            group = {"weight_decay": 0.0, **defaults, **group}
            group.setdefault("initial_lr", group["lr"])
            if group["use_muon"]:
                flat = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if flat:
                    raise ValueError(
                        f"Muon updates 2-D matrices only, got parameters of shapes {flat}; "
                        "put them in a group with use_muon=False"
                    )
            filled.append(group)
        super().__init__(filled, defaults={})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (self._muon_step if group["use_muon"] else self._adamw_step)(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        by_shape: dict[tuple[int, ...], list[tuple[Tensor, Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            # The EMA form of momentum (as torch.optim.Muon and Keller's current code): it is the
            # classic buf = mu * buf + g times (1 - mu), a scale the orthogonalization removes.
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            by_shape.setdefault(tuple(p.shape), []).append((p, update))
        for (rows, cols), pairs in by_shape.items():
            updates = orthogonalize(torch.stack([u for _, u in pairs]), group["ns_steps"])
            # An orthogonal (rows x cols) update has RMS 1 / sqrt(max(rows, cols)); scaling tall
            # ones by sqrt(rows / cols) makes it 1 / sqrt(cols) for every shape (Jordan 2024).
            scale = max(1.0, rows / cols) ** 0.5
            for (p, _), update in zip(pairs, updates):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * scale)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            bias1 = 1 - beta1 ** state["step"]
            bias2 = 1 - beta2 ** state["step"]
            p.mul_(1 - lr * group["weight_decay"])
            denom = (exp_avg_sq / bias2).sqrt_().add_(eps)
            p.addcdiv_(exp_avg, denom, value=-lr / bias1)


def lr_groups(model: nn.Module, params: list[nn.Parameter], cfg: OptimConfig) -> list[dict]:
    """AdamW's (or SGD's) param groups for `params`, each with its peak LR and decay.

    Matrices are decayed by `cfg.weight_decay` and vectors (biases, gains, Canon taps) are not:
    decaying them pulls norms toward zero and buys no regularisation. Where `cfg.embed_lr` or
    `cfg.head_lr` is set, the token embeddings (modules named `tok_emb`) or the LM head
    (`lm_head`) get groups of their own at that LR; a head tied to the embedding is the
    embedding. Groups come in a fixed order and empty ones are left out, so with neither set
    there are two (matrices, vectors), as checkpoints expect.
    """
    roles: dict[int, str] = {}
    for name, module in model.named_modules():
        role = {"tok_emb": "embed", "lm_head": "head"}.get(name.rsplit(".", 1)[-1])
        if role is not None:
            for p in module.parameters():
                roles.setdefault(id(p), role)  # the tied head was met as the embedding first
    peak = {"other": cfg.lr, "embed": cfg.embed_lr, "head": cfg.head_lr}
    missing = {
        "embed": "embed_lr is set but this model has no token embedding (tok_emb)",
        "head": "head_lr is set but this model has no LM head of its own (lm_head); untie it "
        "from the embedding (model.tie_embeddings = false, or model.share_embeddings = false "
        "for seq2seq) to give it its own LR",
    }
    for role, problem in missing.items():
        if peak[role] and not any(roles.get(id(p)) == role and p.dim() >= 2 for p in params):
            raise ValueError(f"optim.{problem}")
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in params:
        role = roles.get(id(p), "other")
        groups.setdefault((role if peak[role] else "other", p.dim() >= 2), []).append(p)
    order = [(role, decay) for role in ("other", "embed", "head") for decay in (True, False)]
    return [
        {
            "params": groups[key],
            "weight_decay": cfg.weight_decay if key[1] else 0.0,
            "lr": peak[key[0]],
            "initial_lr": peak[key[0]],
        }
        for key in order
        if key in groups
    ]


def _build_adamw(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    extra = {}
    # The fused kernel exists for CUDA (and CPU since 2.4); fall back to foreach elsewhere.
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in (
        "cuda",
        "cpu",
    ):
        extra["fused"] = True
    groups = lr_groups(model, _trainable(model), cfg)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **extra)


def _build_muon(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    hidden, rest = split_hidden_matrices(model)
    muon = {"lr": cfg.muon_lr, "initial_lr": cfg.muon_lr, "use_muon": True}
    muon |= {"momentum": cfg.muon_momentum, "nesterov": cfg.nesterov, "ns_steps": cfg.ns_steps}
    adamw = {"use_muon": False, "betas": cfg.betas, "eps": cfg.eps}
    # Embeddings and an untied head are matrices: decayed, as under plain AdamW.
    groups = [{"params": hidden, "weight_decay": cfg.muon_weight_decay, **muon}]
    groups += [{**group, **adamw} for group in lr_groups(model, rest, cfg)]
    return MuonWithAdamW([g for g in groups if g["params"]])


def _build_sgd(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    groups = lr_groups(model, _trainable(model), cfg)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


_BUILDERS: dict[str, Callable[[nn.Module, OptimConfig, str], torch.optim.Optimizer]] = {
    "adamw": _build_adamw,
    "muon": _build_muon,
    "sgd": _build_sgd,
}


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` for `model`; each param group's peak LR is its `initial_lr`."""
    return _BUILDERS[cfg.name](model, cfg, device_type)
