"""Building blocks shared by the model families: norms, positions, attention, MLPs.

Written by hand because they are the point of the project: each piece is small enough to read
in one sitting, and the submodule names (`attn.{q,k,v,o}_proj`, `attn.{q,k}_norm`,
`mlp.{up,gate,down}_proj`, `norm_attn`, `norm_mlp`) are the public checkpoint keys that
import/export map from. Variants are picked by name from small tables (`NORMS`,
`ACTIVATIONS`), not by branches inside the modules.

Papers: RMSNorm (Zhang & Sennrich, 2019), rotary position embeddings (Su et al., 2021,
"RoFormer"), sinusoidal positions (Vaswani et al., 2017), GLU variants / SwiGLU (Shazeer,
2020), squared ReLU (So et al., 2021, "Primer"), QK-norm (Dehghani et al., 2023; as in OLMo 2),
Canon layers (Allen-Zhu, 2025, "Physics of Language Models: Part 4.1").
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain and no bias or mean subtraction."""

    def __init__(self, dim: int, *, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        del bias  # RMSNorm has none; the argument keeps the NORMS table uniform
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


NORMS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """The original Transformer's fixed position table (max_len, dim): sin on even, cos on odd."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (T, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table


def rope_tables(max_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (max_len, head_dim // 2) for rotary embeddings."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]) of (B, H, T, D) by each position's angles.

    The half-split pairing (as in GPT-NeoX and Llama's Hugging Face port) rather than
    interleaved pairs: the two are the same model up to a permutation of q/k channels.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, D/2), broadcast over B and H
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


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
    # Canon layers' inputs at the last kernel - 1 positions: (n_layers, 2, B, kernel - 1, C),
    # [:, 0] before attention and [:, 1] before the MLP. None for a model without them.
    conv: torch.Tensor | None = None

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
        canon: tuple[int, int] | None = None,
    ) -> KVCache:
        """`canon` is (kernel, d_model) for a model with Canon layers: their state is kept too."""
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        conv = None
        if canon is not None:
            kernel, dim = canon
            conv = torch.zeros(n_layers, 2, batch_size, kernel - 1, dim, device=device, dtype=dtype)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            conv=conv,
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


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Positions (B, T) that restart at 0 where `doc_ids` (B, T) changes value.

    A packed row holds several documents end to end, each in one contiguous run of equal ids;
    each document's tokens must see the positions they would have had alone.
    """
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)  # (B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # (B, T)
    return idx - first


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask (B, 1, T, T), True where a query may attend to a key: keys
    at or before it in the same document, so packed documents never see each other."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()  # (T, T)
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]  # (B, 1, T, T)


def window_mask(q_len: int, k_len: int, window: int, device: torch.device) -> torch.Tensor:
    """Sliding-window causal mask (q_len, k_len), True where a query may attend: the last
    q_len queries of k_len positions each see their own key and the `window` - 1 before it."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    return (k_pos <= q_pos) & (q_pos - k_pos < window)


class CanonConv(nn.Module):
    """A Canon layer: h plus a causal depthwise convolution of h over its last `kernel`
    positions, with one weight per channel and tap (Allen-Zhu, 2025).

    It hands every position a learned mix of the few tokens just before it, which attention
    otherwise has to learn to find; small models learn that slowly (on character-level text
    it is the largest gain in docs/recipes.md). The taps start at zero, so a new layer is the
    identity. Each tap is a 1-D vector, so optimizers treat the taps as they treat norm gains
    (AdamW, never weight decay or Muon).
    """

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.taps = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(kernel))

    def forward(
        self,
        h: torch.Tensor,
        past: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h (B, T, C) -> (B, T, C). `past` (B, kernel - 1, C) holds the inputs just before h
        (decoding with a cache); without it the sequence starts at h. With `doc_ids` (B, T),
        no position mixes in a token of another packed document.

        With `past`, it is overwritten with the inputs of the last kernel - 1 positions.
        """
        kernel, T = len(self.taps), h.shape[1]
        if past is None:
            padded = F.pad(h, (0, 0, kernel - 1, 0))  # (B, kernel - 1 + T, C)
        else:
            padded = torch.cat([past, h], dim=1)
            past.copy_(padded[:, T:])
        docs = None if doc_ids is None else F.pad(doc_ids, (kernel - 1, 0), value=-1)
        out = h
        for shift, tap in enumerate(self.taps):
            start = kernel - 1 - shift
            shifted = padded[:, start : start + T]  # each position's input `shift` back
            if docs is not None:
                shifted = shifted * (docs[:, start : start + T] == doc_ids)[..., None]
            out = out + tap * shifted
        return out


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
        qk_norm: str | None = None,
        gate: str = "none",
        window: int = 0,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.window = window  # > 0: sliding-window attention over this many positions
        self.head_dim = d_model // n_heads
        self.layer_idx = layer_idx
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.resid_dropout = dropout_or_identity(dropout)
        # QK-norm: normalising each head's queries and keys bounds the attention logits,
        # which lets training run at higher learning rates without blowing up.
        self.q_norm = NORMS[qk_norm](self.head_dim, bias=False) if qk_norm else None
        self.k_norm = NORMS[qk_norm](self.head_dim, bias=False) if qk_norm else None
        # Gated attention (Qiu et al. 2025): a sigmoid of this block's input scales each head's
        # output ("head") or each of its channels ("element"), so a head can go quiet for a
        # token instead of parking its attention on some position; see docs/recipes.md.
        gate_width = {"none": 0, "head": n_heads, "element": n_heads * self.head_dim}[gate]
        self.gate = nn.Linear(d_model, gate_width, bias=False) if gate_width else None
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

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); `rope` holds cos/sin (T, D/2) for these T positions, or
        (B, 1, T, D/2) per row. `attn_mask` (B, 1, T, T), True = may attend, replaces the
        causal mask (packed rows, see `document_mask`); it cannot be combined with a cache.
        With `window`, a query further than `window` positions from the start also loses the
        keys before its window (`window_mask`); shorter inputs take the plain causal path."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        if self._fused_qkv is not None and not self.training:
            q, k, v = F.linear(x, *self._fused_qkv).split([H * D, Hkv * D, Hkv * D], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, past + T, D)
        if self.n_kv_heads != self.n_heads:
            groups = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(groups, dim=1)  # (B, H, S, D)
        mask, is_causal = None, T > 1
        if attn_mask is not None:
            if cache is not None:
                raise ValueError("attn_mask (packed documents) cannot be used with a KV cache")
            mask, is_causal = attn_mask, False
        windowed = bool(self.window) and past + T > self.window
        if (past and T > 1) or windowed:
            # Queries at positions past..past+T-1 see the keys up to their own position (the
            # causal mask shifted right by `past`), and with a window only its last `window`.
            band = window_mask(T, past + T, self.window if windowed else past + T, x.device)
            mask, is_causal = band if mask is None else mask & band, False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, H, T, D)
        if self.gate is not None:
            g = torch.sigmoid(self.gate(x))  # (B, T, H) or (B, T, H * D)
            y = y * g.view(B, T, H, -1).transpose(1, 2)  # (B, H, T, 1 or D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")  # GPT-2's GELU, so its weights load exactly


# name -> (activation, gated). A gated MLP multiplies act(gate_proj(x)) by up_proj(x).
ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], bool]] = {
    "gelu": (_gelu_tanh, False),
    "relu": (F.relu, False),
    "relu2": (_relu2, False),
    "swiglu": (F.silu, True),
}


class MLP(nn.Module):
    """The position-wise feed-forward network: up-project, activate (gated or not), down."""

    def __init__(
        self, d_model: int, d_ff: int, *, bias: bool, dropout: float, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.act, gated = ACTIVATIONS[activation]
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = dropout_or_identity(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            h = self.act(self.up_proj(x))  # (B, T, F)
        else:
            h = self.act(self.gate_proj(x)) * self.up_proj(x)  # (B, T, F)
        return self.dropout(self.down_proj(h))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    With `canon_kernel`, a Canon layer follows each of the two norms (the paper's positions A
    and C); its decoding state lives in the KV cache beside the keys and values.
    """

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
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        qk_norm: bool = False,
        activation: str = "gelu",
        canon_kernel: int = 0,
        attn_gate: str = "none",
        attn_window: int = 0,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.norm_attn = NORMS[norm](d_model, bias=bias, eps=norm_eps)
        self.canon_attn = CanonConv(d_model, canon_kernel) if canon_kernel else None
        self.attn = CausalSelfAttention(
            d_model,
            n_heads,
            n_kv_heads,
            bias=bias,
            dropout=dropout,
            layer_idx=layer_idx,
            qk_norm=norm if qk_norm else None,
            gate=attn_gate,
            window=attn_window,
        )
        self.norm_mlp = NORMS[norm](d_model, bias=bias, eps=norm_eps)
        self.canon_mlp = CanonConv(d_model, canon_kernel) if canon_kernel else None
        self.mlp = MLP(d_model, d_ff, bias=bias, dropout=dropout, activation=activation)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`doc_ids` (B, T) marks packed documents for the Canon layers (`attn_mask` does
        it for attention); see `GPT.hidden_states`."""
        h = self.norm_attn(x)
        if self.canon_attn is not None:
            h = self.canon_attn(h, self._canon_state(cache, 0), doc_ids)
        x = x + self.attn(h, cache, rope, attn_mask)
        h = self.norm_mlp(x)
        if self.canon_mlp is not None:
            h = self.canon_mlp(h, self._canon_state(cache, 1), doc_ids)
        return x + self.mlp(h)

    def _canon_state(self, cache: KVCache | None, which: int) -> torch.Tensor | None:
        """The cache's Canon state for this layer (None without a cache). A cache at position
        0 starts a new sequence, so its state is cleared first."""
        if cache is None:
            return None
        if cache.conv is None:
            raise ValueError(
                "this KV cache holds no Canon-layer state; build it with the model's new_cache()"
            )
        state = cache.conv[self.layer_idx, which]  # (B, kernel - 1, C), a view
        if cache.pos == 0:
            state.zero_()
        return state
