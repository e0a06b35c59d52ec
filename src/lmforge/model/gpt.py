"""The GPT decoder, classic or modern, from one config.

The defaults are GPT-2 (Radford et al., 2019) as nanoGPT writes it: learned positions,
pre-norm LayerNorm blocks, GELU MLP, weights tied between the token embedding and the LM
head, and GPT-2's scaled init. The same config also builds the modern decoder (Llama-style):
rotary positions, RMSNorm, QK-norm, SwiGLU or squared-ReLU MLPs, grouped-query attention,
and optionally Canon layers (short causal convolutions before attention and the MLP),
gated attention (a sigmoid gate on each head's output) and sliding-window attention.
`PRESETS` names the two ends. Attention goes through `F.scaled_dot_product_attention`, so
PyTorch picks a flash or memory-efficient kernel where the hardware has one. Checkpoint keys
are the module names below and are a public API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lmforge.model.layers import (
    NORMS,
    Block,
    CanonConv,
    KVCache,
    document_mask,
    document_positions,
    dropout_or_identity,
    rope_tables,
    sinusoidal_positions,
)


@dataclass(kw_only=True)
class GPTConfig:
    family: Literal["gpt"] = "gpt"
    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: same as n_heads (multi-head); fewer: grouped-query attention
    d_model: int = 128
    d_ff: int = 0  # 0: 4 * d_model, or 8/3 * d_model (rounded up to 32) for gated MLPs
    max_seq_len: int = 256
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms
    tie_embeddings: bool = True
    pos_emb: Literal["learned", "sinusoidal", "rope"] = "learned"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    qk_norm: bool = False  # normalise each head's queries and keys (with `norm`)
    mlp: Literal["gelu", "relu", "relu2", "swiglu"] = "gelu"
    init: Literal["gpt2", "xavier", "kaiming"] = "gpt2"
    init_std: float = 0.02
    # > 0: a Canon layer (a causal depthwise convolution over this many positions, added to its
    # input) after each block's two norms; 0: none. 3 or 4 is the usual width.
    canon_kernel: int = 0
    # A sigmoid gate on each attention head's output, computed from the block's input (Qiu et
    # al. 2025): "head" (one scalar per head) or "element" (one per channel); "none": no gate.
    attn_gate: Literal["none", "head", "element"] = "none"
    # > 0: sliding-window attention (as in Mistral, and Gemma's local layers): each token
    # attends to itself and the attn_window - 1 tokens before it, so with rotary positions the
    # model reads sequences of any length up to max_seq_len at a fixed attention span, even
    # when it trained on shorter ones (train.seq_len); 0: every earlier token.
    attn_window: int = 0

    def __post_init__(self) -> None:
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.d_ff == 0:
            # A gated MLP has three matrices instead of two: 8/3 keeps the parameter count.
            gated = self.mlp == "swiglu"
            self.d_ff = -(-8 * self.d_model // 3 // 32) * 32 if gated else 4 * self.d_model
        for name in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.attn_window < 0:
            raise ValueError(
                f"model.attn_window must be >= 0 (0 = every earlier token), got {self.attn_window}"
            )
        if self.canon_kernel < 0:
            raise ValueError(
                f"model.canon_kernel must be >= 0 (0 = no Canon layers), got {self.canon_kernel}"
            )
        if self.vocab_size < 0:
            raise ValueError(f"model.vocab_size must be >= 0 (0 = auto), got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                f"pick d_model as a multiple of n_heads (e.g. {self.n_heads * 32})"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} is not divisible by "
                f"model.n_kv_heads={self.n_kv_heads}; each key/value head must serve a whole "
                "group of query heads"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(
                f"rotary positions need an even head size; d_model / n_heads = {self.head_dim}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# Named starting points; a recipe's own [model] fields override them.
PRESETS: dict[str, dict[str, object]] = {
    "gpt2-classic": dict(
        pos_emb="learned", norm="layernorm", mlp="gelu", bias=True, qk_norm=False,
        tie_embeddings=True, init="gpt2",
    ),
    "llama-style": dict(
        pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=False,
        tie_embeddings=False, init="gpt2",
    ),
}  # fmt: skip


def depth_dial(depth: int) -> tuple[dict[str, int], float]:
    """Model fields and a peak AdamW LR from one number, the depth (as nanochat does).

    Width grows with depth at a fixed aspect ratio (d_model = 32 * depth, the ratio of
    nanoGPT's 4-layer, 128-wide CPU model), heads are 32 wide, and the LR shrinks as
    1/sqrt(width) from 2e-3 at width 128, the value tuned for the demo recipe.
    """
    d_model = 32 * depth
    fields = {"n_layers": depth, "d_model": d_model, "n_heads": max(1, d_model // 32)}
    return fields, 2e-3 * math.sqrt(128 / d_model)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size must be set before building the model")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        # Positions: a learned table, a fixed sinusoidal one (a buffer: nothing to save), or
        # rotations of q and k inside attention.
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model) if c.pos_emb == "learned" else None
        if c.pos_emb == "sinusoidal":
            self.register_buffer(
                "pos_table", sinusoidal_positions(c.max_seq_len, c.d_model), persistent=False
            )
        if c.pos_emb == "rope":
            cos, sin = rope_tables(c.max_seq_len, c.head_dim, c.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = dropout_or_identity(c.dropout)
        self.blocks = nn.ModuleList(
            Block(
                c.d_model,
                c.n_heads,
                c.n_kv_heads,
                c.d_ff,
                bias=c.bias,
                dropout=c.dropout,
                layer_idx=i,
                norm=c.norm,
                norm_eps=c.norm_eps,
                qk_norm=c.qk_norm,
                activation=c.mlp,
                canon_kernel=c.canon_kernel,
                attn_gate=c.attn_gate,
                attn_window=c.attn_window,
            )
            for i in range(c.n_layers)
        )
        self.norm_f = NORMS[c.norm](c.d_model, bias=c.bias, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise every parameter by the scheme `config.init` names.

        | parameter                                   | gpt2                 | xavier         | kaiming          |
        |---------------------------------------------|----------------------|----------------|------------------|
        | tok_emb, pos_emb, lm_head (when untied)     | N(0, init_std)       | N(0, init_std) | N(0, init_std)   |
        | attn.{q,k,v}_proj, mlp.{up,gate}_proj       | N(0, init_std)       | U, Glorot      | N, He (fan_in)   |
        | attn.o_proj, mlp.down_proj                  | N(0, init_std/√(2L)) | U, Glorot/√(2L)| N, He/√(2L)      |
        | attn.gate (`attn_gate`)                     | 0                    | 0              | 0                |
        | Linear biases                               | 0                    | 0              | 0                |
        | norm gains / biases (incl. q_norm, k_norm)  | 1 / 0                | 1 / 0          | 1 / 0            |
        | canon_attn, canon_mlp taps                  | 0                    | 0              | 0                |

        L is n_layers. The residual projections are scaled down in every scheme because each
        block adds two of them to the residual stream, whose variance would otherwise grow
        with depth (GPT-2, section 2.3). Canon layers start at zero, as the identity, and the
        attention gates at zero, which opens every gate halfway (sigmoid(0) = 0.5).
        """  # noqa: E501
        c = self.config
        resid_scale = 1.0 / math.sqrt(2 * c.n_layers)
        matrix_init = {
            "gpt2": lambda w: nn.init.normal_(w, mean=0.0, std=c.init_std),
            "xavier": nn.init.xavier_uniform_,
            "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
        }[c.init]
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if module.weight is self.tok_emb.weight:
                    continue  # the tied LM head is the embedding, initialised below
                if name == "lm_head":
                    nn.init.normal_(module.weight, mean=0.0, std=c.init_std)
                elif name.endswith("attn.gate"):
                    nn.init.zeros_(module.weight)
                else:
                    matrix_init(module.weight)
                    if name.endswith(("o_proj", "down_proj")):
                        module.weight.data.mul_(resid_scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=c.init_std)
            elif isinstance(module, tuple(NORMS.values())):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, CanonConv):
                for tap in module.taps:
                    nn.init.zeros_(tap)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        *,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T); with `cache`, T new tokens after it.

        `doc_ids` (B, T) marks packed rows: each contiguous run of one id is a document that
        attends only to itself, with positions restarting at 0 (see `hidden_states`).
        """
        return self.lm_head(self.hidden_states(idx, cache, doc_ids=doc_ids))  # (B, T, V)

    def hidden_states(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        *,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normalised hidden states (B, T, d_model): what the LM head (or a
        fine-tuning head) reads.

        With `doc_ids`, every document of a packed row gets the positions and the attention
        it would have alone: a block-diagonal causal mask through
        `F.scaled_dot_product_attention`, so no token sees another example (sequence
        packing without cross-document leaks). Without it, the plain causal path runs.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than model.max_seq_len="
                f"{self.config.max_seq_len}"
            )
        if doc_ids is not None and cache is not None:
            raise ValueError("doc_ids (packed documents) cannot be used with a KV cache")
        x = self.tok_emb(idx)  # (B, T, C)
        rope, mask = None, None
        if doc_ids is None:
            if self.pos_emb is not None:
                x = x + self.pos_emb.weight[start : start + T]
            elif self.config.pos_emb == "sinusoidal":
                x = x + self.pos_table[start : start + T]
            else:
                rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        else:
            pos = document_positions(doc_ids)  # (B, T)
            mask = document_mask(doc_ids)  # (B, 1, T, T)
            if self.pos_emb is not None:
                x = x + self.pos_emb(pos)
            elif self.config.pos_emb == "sinusoidal":
                x = x + self.pos_table[pos]
            else:
                rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # (B,1,T,D/2)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, cache, rope, mask, doc_ids)
        if cache is not None:
            cache.pos += T
        return self.norm_f(x)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        c = self.config
        p = self.tok_emb.weight
        return KVCache.empty(
            c.n_layers,
            batch_size,
            c.n_kv_heads,
            max_len or c.max_seq_len,
            c.head_dim,
            device=p.device,
            dtype=p.dtype,
            canon=(c.canon_kernel, c.d_model) if c.canon_kernel else None,
        )

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count, tied weights once.

        `non_embedding` leaves out the tables that are only looked up (learned positions, and
        the token embedding when it is not tied to the LM head): they cost no FLOPs.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B."""
        c = self.config
        t = seq_len or c.max_seq_len
        if c.attn_window:
            t = min(t, c.attn_window)  # a query reads at most attn_window keys
        return 6 * self.num_params() + 12 * c.n_layers * c.d_model * t
