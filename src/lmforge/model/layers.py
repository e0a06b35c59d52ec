"""Building blocks shared by the model families: norms, attention with a KV cache, MLPs.

Written by hand because they are the point of the project: each piece is small enough to read
in one sitting, and the submodule names (`attn.{q,k,v,o}_proj`, `mlp.{up,down}_proj`,
`norm_attn`, `norm_mlp`) are the public checkpoint keys that import/export map from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def dropout_or_identity(p: float) -> nn.Module:
    """Dropout, or nothing at all when p == 0: a no-op module still costs a call per token."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's own cannot drop only the bias before 2.1)."""

    def __init__(self, dim: int, *, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@dataclass
class KVCache:
    """Pre-allocated keys and values for every layer, filled as tokens are decoded.

    `k` and `v` are (n_layers, B, n_kv_heads, max_len, head_dim); `pos` is how many positions
    hold valid entries. A layer writes its new keys at [pos, pos + T) and the model advances
    `pos` once all layers have run.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: int = 0

    def __post_init__(self) -> None:
        # Per-layer views made once: indexing the stacked tensors on every call costs more
        # than the copy itself when decoding one token at a time.
        self._layers = [(self.k[i], self.v[i]) for i in range(self.k.shape[0])]

    @classmethod
    def empty(
        cls,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, H_kv, T, D) keys/values and return all valid ones so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to fill to {end}")
        k_all, v_all = self._layers[layer]
        k_all[:, :, self.pos : end] = k
        v_all[:, :, self.pos : end] = v
        return k_all[:, :, :end], v_all[:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `F.scaled_dot_product_attention`.

    `n_kv_heads < n_heads` gives grouped-query attention (each key/value head serves
    n_heads // n_kv_heads query heads); `n_kv_heads == n_heads` is classic multi-head.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        *,
        bias: bool,
        dropout: float,
        layer_idx: int,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.layer_idx = layer_idx
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.resid_dropout = dropout_or_identity(dropout)
        self._fused_qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def fuse_qkv(self) -> None:
        """Project q, k and v with one matmul from now on (a speed-up for decoding).

        Takes a copy of the three weights: call it again after changing them. Switching to
        training mode drops the copy, so training always uses (and updates) the parameters.
        The copy is stored transposed, which batch-1 decoding reads faster (see
        `lmforge.infer.generate.prepare_for_decoding`).
        """
        projs = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight.detach().t() for p in projs], dim=1).t()  # (3C, C)
        bias = torch.cat([p.bias.detach() for p in projs]) if self.q_proj.bias is not None else None
        self._fused_qkv = (weight, bias)

    def train(self, mode: bool = True) -> CausalSelfAttention:
        if mode:
            self._fused_qkv = None
        return super().train(mode)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        if self._fused_qkv is not None and not self.training:
            q, k, v = F.linear(x, *self._fused_qkv).split([H * D, Hkv * D, Hkv * D], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, past + T, D)
        if self.n_kv_heads != self.n_heads:
            groups = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(groups, dim=1)  # (B, H, S, D)
        mask, is_causal = None, T > 1
        if past and T > 1:
            # Queries at positions past..past+T-1 see every cached key and the new keys up to
            # their own position: the causal mask shifted right by `past`.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            is_causal = False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: up-project, GELU, down-project."""

    def __init__(self, d_model: int, d_ff: int, *, bias: bool, dropout: float) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = dropout_or_identity(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.gelu(self.up_proj(x), approximate="tanh")))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        d_ff: int,
        *,
        bias: bool,
        dropout: float,
        layer_idx: int,
    ) -> None:
        super().__init__()
        self.norm_attn = LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(
            d_model, n_heads, n_kv_heads, bias=bias, dropout=dropout, layer_idx=layer_idx
        )
        self.norm_mlp = LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, d_ff, bias=bias, dropout=dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), cache)
        return x + self.mlp(self.norm_mlp(x))
