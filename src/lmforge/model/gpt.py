"""The GPT decoder: token + learned position embeddings, pre-norm blocks, tied LM head.

Follows GPT-2 (Radford et al., 2019) as nanoGPT writes it: pre-norm blocks, GELU MLP,
weights tied between the token embedding and the LM head, and GPT-2's scaled init (see
`init_weights`). Attention goes through `F.scaled_dot_product_attention`, so PyTorch picks
a flash or memory-efficient kernel where the hardware has one. Checkpoint keys are the
module names below and are a public API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.model.layers import Block, KVCache, LayerNorm, dropout_or_identity


@dataclass(kw_only=True)
class GPTConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: same as n_heads (multi-head); fewer: grouped-query attention
    d_model: int = 128
    d_ff: int = 0  # 0: 4 * d_model
    max_seq_len: int = 256
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model
        for name in ("n_layers", "n_heads", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
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

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size must be set before building the model")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model)
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
            )
            for i in range(c.n_layers)
        )
        self.norm_f = LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's initialisation.

        | parameter                                  | init                              |
        |--------------------------------------------|-----------------------------------|
        | tok_emb, pos_emb, lm_head (when untied)    | normal(0, init_std)               |
        | attn.{q,k,v}_proj.weight, mlp.up_proj      | normal(0, init_std)               |
        | attn.o_proj.weight, mlp.down_proj.weight   | normal(0, init_std/sqrt(2*n_layers)) |
        | every Linear bias                          | zeros                             |
        | norm weights / biases                      | ones / zeros                      |

        The residual projections are scaled down because each block adds two of them to the
        residual stream, whose variance would otherwise grow with depth.
        """
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_resid = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=resid_std if is_resid else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T); with `cache`, T new tokens after it."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than model.max_seq_len="
                f"{self.config.max_seq_len}"
            )
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.norm_f(x))  # (B, T, V)

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
        )

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count; tied weights once, and without position embeddings by default."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B."""
        c = self.config
        t = seq_len or c.max_seq_len
        return 6 * self.num_params() + 12 * c.n_layers * c.d_model * t
