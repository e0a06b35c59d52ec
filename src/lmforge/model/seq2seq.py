"""The encoder-decoder Transformer of Vaswani et al. (2017), "Attention Is All You Need".

An encoder reads the whole source with bidirectional self-attention; a decoder reads the target
so far with causal self-attention and the encoder's output ("memory") with cross-attention, and
predicts the next target token. The options cover the paper (post-norm, ReLU, sinusoidal
positions, one embedding matrix shared by the encoder input, decoder input and output
projection, embeddings scaled by sqrt(d_model), label smoothing 0.1) and the variants that train
more easily (pre-norm with a final norm in each stack) or that later models use (GELU, swish,
learned positions, separate source and target vocabularies).

The sinusoidal table is the paper's (same frequencies as `layers.sinusoidal_positions`) with the
sines in the first half of the channels and the cosines in the second, as Marian (and
tensor2tensor) lay it out, not interleaved: a fixed table is not a weight, any channel order is
the same model family, and this one makes weights map one to one onto Hugging Face's
`MarianMTModel` (`lmforge.export.hf_marian`).

Padding: sequences are padded on the right with `config.pad_id`. Padded source positions are
masked as keys in encoder self-attention and in cross-attention, so padding never changes the
output at real positions. Target padding needs no mask: causal attention never lets a real
position see a later pad, and the loss ignores pad labels.

Written by hand (rather than `nn.Transformer`) so the module names are lmforge's checkpoint
keys, attention goes through `F.scaled_dot_product_attention` with a KV cache that beam search
can reorder, and cross-attention keys/values are computed once per source and shared by all of
its beams. The decoder's self-attention is `layers.CausalSelfAttention`, fed by the cache here.

Checkpoint keys (a public API; `{i}` is a block index):

    encoder.tok_emb.weight             source embedding; THE shared matrix with share_embeddings
    encoder.pos_emb.weight             learned positions only
    encoder.blocks.{i}.norm_attn, .attn.{q,k,v,o}_proj, .norm_mlp, .mlp.{up,down}_proj
    encoder.norm_f                     pre-norm only
    decoder.tok_emb.weight             target embedding (saved only without share_embeddings)
    decoder.pos_emb.weight             learned positions only
    decoder.blocks.{i}.norm_attn, .attn.{q,k,v,o}_proj          causal self-attention
    decoder.blocks.{i}.norm_cross_attn, .cross_attn.{q,k,v,o}_proj
    decoder.blocks.{i}.norm_mlp, .mlp.{up,down}_proj
    decoder.norm_f                     pre-norm only
    lm_head.weight                     output projection (saved only without share_embeddings)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.layers import (
    CausalSelfAttention,
    LayerNorm,
    dropout_or_identity,
    sinusoidal_positions,
)


@dataclass(kw_only=True)
class Seq2SeqConfig:
    family: Literal["seq2seq"] = "seq2seq"
    vocab_size: int = 0  # source vocabulary (and target when shared); 0 = from the tokenizer
    tgt_vocab_size: int = 0  # 0 = the source vocabulary (shared); set = a separate one
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    n_heads: int = 4
    d_model: int = 256
    d_ff: int = 0  # 0: 4 * d_model
    max_seq_len: int = 128  # longest source or target sequence in tokens (incl. BOS/EOS)
    dropout: float = 0.1  # on embeddings, attention weights and every residual branch
    norm_position: Literal["post", "pre"] = "pre"  # the paper is post-norm; pre trains easier
    activation: Literal["relu", "gelu", "swish"] = "relu"  # gelu is the exact (erf) one
    pos_emb: Literal["sinusoidal", "learned"] = "sinusoidal"
    # One matrix for the encoder input, decoder input and output projection (needs one shared
    # vocabulary); False gives three separate matrices.
    share_embeddings: bool = True
    scale_embeddings: bool = True  # multiply embeddings by sqrt(d_model), as the paper does
    bias: bool = True  # biases in Linear layers and LayerNorms
    norm_eps: float = 1e-5
    # Std of token embeddings (and an untied lm_head) and of learned positions; 0 = d_model**-0.5,
    # which gives embeddings scaled by sqrt(d_model) unit variance (as fairseq initialises them).
    init_std: float = 0.0
    label_smoothing: float = 0.1
    pad_id: int = 2  # lmforge tokenizers: <|bos|>=0 <|eos|>=1 <|pad|>=2
    bos_id: int = 0
    eos_id: int = 1

    def __post_init__(self) -> None:
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model
        for name in (
            "n_encoder_layers", "n_decoder_layers", "n_heads", "d_model", "d_ff", "max_seq_len"
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("vocab_size", "tgt_vocab_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0 (0 = auto), got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                f"pick d_model as a multiple of n_heads (e.g. {self.n_heads * 32})"
            )
        if self.pos_emb == "sinusoidal" and self.d_model % 2:
            raise ValueError(
                f"sinusoidal positions need an even model.d_model (sine and cosine pairs), "
                f"got {self.d_model}"
            )
        if self.share_embeddings and self.tgt_vocab_size:
            raise ValueError(
                f"model.share_embeddings=True needs one vocabulary for source and target, but "
                f"model.tgt_vocab_size={self.tgt_vocab_size} asks for a separate target "
                "vocabulary; set model.share_embeddings=false, or model.tgt_vocab_size=0 to "
                "share the source vocabulary"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.init_std < 0:
            raise ValueError(
                f"model.init_std must be >= 0 (0 = d_model**-0.5), got {self.init_std}"
            )
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        if min(ids.values()) < 0 or len(set(ids.values())) < 3:
            raise ValueError(
                f"model.pad_id, bos_id and eos_id must be distinct and >= 0, got {ids}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def target_vocab_size(self) -> int:
        """Rows of the decoder embedding and the output projection."""
        return self.tgt_vocab_size or self.vocab_size

    @property
    def emb_std(self) -> float:
        return self.init_std or self.d_model**-0.5


def _final_norm(c: Seq2SeqConfig) -> LayerNorm | None:
    """The norm after a stack's last block: pre-norm needs one (its residual stream is never
    normalised otherwise); post-norm blocks already end with one."""
    return LayerNorm(c.d_model, bias=c.bias, eps=c.norm_eps) if c.norm_position == "pre" else None


# The feed-forward activations by name: GELU is the exact one (erf), as the reference
# encoder-decoders (Marian, BART) compute "gelu"; swish is SiLU.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "swish": F.silu,
}


class FeedForward(nn.Module):
    """The position-wise feed-forward network, up -> activation -> down.

    Not `layers.MLP`, whose table has GPT-2's tanh GELU and no plain swish; the submodule names
    are the same (`up_proj`, `down_proj`).
    """

    def __init__(self, d_model: int, d_ff: int, *, bias: bool, dropout: float, activation: str):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = dropout_or_identity(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act(self.up_proj(x))))


class Attention(nn.Module):
    """Multi-head attention of queries from `x` over keys/values made from another sequence,
    with a key padding mask: the encoder's self-attention and the decoder's cross-attention.

    Keys/values come from `kv()` so that the decoder can compute them from the memory once and
    keep them in its cache. They may belong to fewer rows than `x`: rows b*G .. b*G+G-1 of `x`
    (G beams of source b) all attend to source b, with the G beams' queries stacked as one
    longer query sequence, so beam search never copies the memory or its keys/values.
    """

    def __init__(self, d_model: int, n_heads: int, *, bias: bool, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = dropout_or_identity(dropout)

    def kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, S, D) of `source` (B, S, C)."""
        B, S, _ = source.shape
        k = self.k_proj(source).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(source).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        return k, v  # (B, H, S, D) each

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor
    ) -> torch.Tensor:
        """x (B*G, T, C) -> (B*G, T, C); `key_mask` (B, 1, 1, S) is True at real keys."""
        k, v = kv
        N, T, C = x.shape
        B = k.shape[0]
        q = self.q_proj(x).view(B, N // B * T, self.n_heads, self.head_dim)  # (B, G*T, H, D)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),  # (B, H, G*T, D)
            k,
            v,
            attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, G*T, D)
        y = y.transpose(1, 2).reshape(N, T, C)  # (B*G, T, C)
        return self.resid_dropout(self.o_proj(y))


class EncoderBlock(nn.Module):
    """Self-attention over the whole source, then the feed-forward network."""

    def __init__(self, c: Seq2SeqConfig) -> None:
        super().__init__()
        self.pre_norm = c.norm_position == "pre"
        self.norm_attn = LayerNorm(c.d_model, bias=c.bias, eps=c.norm_eps)
        self.attn = Attention(c.d_model, c.n_heads, bias=c.bias, dropout=c.dropout)
        self.norm_mlp = LayerNorm(c.d_model, bias=c.bias, eps=c.norm_eps)
        self.mlp = FeedForward(
            c.d_model, c.d_ff, bias=c.bias, dropout=c.dropout, activation=c.activation
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            h = self.norm_attn(x)
            x = x + self.attn(h, self.attn.kv(h), key_mask)
            return x + self.mlp(self.norm_mlp(x))
        x = self.norm_attn(x + self.attn(x, self.attn.kv(x), key_mask))
        return self.norm_mlp(x + self.mlp(x))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention over the memory, then the feed-forward network."""

    def __init__(self, c: Seq2SeqConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_norm = c.norm_position == "pre"
        self.norm_attn = LayerNorm(c.d_model, bias=c.bias, eps=c.norm_eps)
        self.attn = CausalSelfAttention(
            c.d_model, c.n_heads, c.n_heads, bias=c.bias, dropout=c.dropout, layer_idx=layer_idx
        )
        self.norm_cross_attn = LayerNorm(c.d_model, bias=c.bias, eps=c.norm_eps)
        self.cross_attn = Attention(c.d_model, c.n_heads, bias=c.bias, dropout=c.dropout)
        self.norm_mlp = LayerNorm(c.d_model, bias=c.bias, eps=c.norm_eps)
        self.mlp = FeedForward(
            c.d_model, c.d_ff, bias=c.bias, dropout=c.dropout, activation=c.activation
        )

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor,
        cache: Seq2SeqCache | None,
    ) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm_attn(x), cache)
            x = x + self.cross_attn(self.norm_cross_attn(x), memory_kv, key_mask)
            return x + self.mlp(self.norm_mlp(x))
        x = self.norm_attn(x + self.attn(x, cache))
        x = self.norm_cross_attn(x + self.cross_attn(x, memory_kv, key_mask))
        return self.norm_mlp(x + self.mlp(x))


class Seq2SeqCache:
    """What the decoder keeps between decoding steps.

    Self-attention keys/values of the N hypotheses sit in pre-allocated buffers laid out
    sequence-major, (max_len, N, H, D) per layer, two of each: a step writes its position in
    place, and beam search's `reorder` gathers the `pos` filled positions of the surviving rows
    into the other buffer with one `index_select` (positions are the outer dimension, so the
    filled part of both buffers is contiguous), then swaps. Attention reads the filled part
    as a (N, H, pos, D) view. Growing per-step tensors with `torch.cat` and reordering them
    copied the whole cache twice a step, which measured ~40% of beam-search time; this copies
    it once.

    `cross_kv[i]` holds layer i's cross-attention keys/values (B, H, S, D) for the B sources,
    computed from the memory on the first step and never again. `update` is the interface
    `layers.CausalSelfAttention` writes through (the same as `layers.KVCache`'s).
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.pos = 0
        self.max_len = max_len
        self.rows = 0  # N, the hypotheses the buffers hold now
        # Per layer: flat storage (2 buffers, keys/values, max_len * N * H * D) and which
        # buffer is current; sized on the first update, when N, H and D are known.
        self._store: list[torch.Tensor | None] = [None] * n_layers
        self._current = [0] * n_layers
        self._head_shape: tuple[int, int] = (0, 0)  # (H, D)
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    def _views(self, layer: int, buffer: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffer `buffer` of `layer` as (max_len, rows, H, D) keys and values."""
        H, D = self._head_shape
        size = self.max_len * rows * H * D
        store = self._store[layer]
        return (
            store[buffer, 0, :size].view(self.max_len, rows, H, D),
            store[buffer, 1, :size].view(self.max_len, rows, H, D),
        )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (N, H, T, D) keys/values and return all (N, H, pos + T, D)."""
        N, H, T, D = k.shape
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"decoding past the cache's {self.max_len} positions")
        if self._store[layer] is None:
            self._head_shape, self.rows = (H, D), N
            self._store[layer] = k.new_empty(2, 2, self.max_len * N * H * D)
        keys, values = self._views(layer, self._current[layer], N)
        keys[self.pos : end] = k.permute(2, 0, 1, 3)  # (T, N, H, D)
        values[self.pos : end] = v.permute(2, 0, 1, 3)
        return keys[:end].permute(1, 2, 0, 3), values[:end].permute(1, 2, 0, 3)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the hypotheses `rows` (new row r continues old row rows[r])."""
        for layer, store in enumerate(self._store):
            if store is None:
                continue
            cur = self._current[layer]
            old = self._views(layer, cur, self.rows)
            new = self._views(layer, 1 - cur, rows.numel())
            for src, dst in zip(old, new):
                torch.index_select(src[: self.pos], 1, rows, out=dst[: self.pos])
            self._current[layer] = 1 - cur
        self.rows = rows.numel()

    def select_sources(self, sources: torch.Tensor) -> None:
        """Keep only the sources `sources` (their hypotheses are kept by `reorder`)."""
        self.cross_kv = [
            None if kv is None else (kv[0][sources], kv[1][sources]) for kv in self.cross_kv
        ]


class _Stack(nn.Module):
    """What the encoder and the decoder share: token embedding, positions, blocks."""

    def __init__(self, c: Seq2SeqConfig, tok_emb: nn.Embedding) -> None:
        super().__init__()
        self.tok_emb = tok_emb
        self.emb_scale = math.sqrt(c.d_model) if c.scale_embeddings else 1.0
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model) if c.pos_emb == "learned" else None
        if c.pos_emb == "sinusoidal":
            # Sines in the first half of the channels, cosines in the second (see module doc).
            table = sinusoidal_positions(c.max_seq_len, c.d_model)
            table = torch.cat((table[:, 0::2], table[:, 1::2]), dim=1)  # (L, D)
            self.register_buffer("pos_table", table, persistent=False)
        self.drop = dropout_or_identity(c.dropout)
        self.max_seq_len = c.max_seq_len

    def embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token embeddings (scaled) plus positions start .. start+T-1: (B, T) -> (B, T, C)."""
        T = ids.shape[1]
        if start + T > self.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than model.max_seq_len="
                f"{self.max_seq_len}; shorten the input or train with a larger max_seq_len"
            )
        x = self.tok_emb(ids) * self.emb_scale  # (B, T, C)
        pos = self.pos_emb.weight if self.pos_emb is not None else self.pos_table
        return self.drop(x + pos[start : start + T])


class Encoder(_Stack):
    def __init__(self, c: Seq2SeqConfig) -> None:
        super().__init__(c, nn.Embedding(c.vocab_size, c.d_model))
        self.blocks = nn.ModuleList(EncoderBlock(c) for _ in range(c.n_encoder_layers))
        self.norm_f = _final_norm(c)

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Memory (B, S, C) of source ids (B, S); `src_mask` (B, S) is True at real tokens."""
        key_mask = src_mask[:, None, None, :]  # (B, 1, 1, S): broadcast over heads and queries
        x = self.embed(src_ids)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm_f(x) if self.norm_f is not None else x


class Decoder(_Stack):
    def __init__(self, c: Seq2SeqConfig, tok_emb: nn.Embedding) -> None:
        super().__init__(c, tok_emb)
        self.blocks = nn.ModuleList(DecoderBlock(c, i) for i in range(c.n_decoder_layers))
        self.norm_f = _final_norm(c)

    def forward(
        self,
        tgt_ids: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:
        """Final hidden states (N, T, C) of target ids (N, T); N may be G hypotheses per source."""
        start = cache.pos if cache is not None else 0
        key_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self.embed(tgt_ids, start)
        for i, block in enumerate(self.blocks):
            if cache is None:
                memory_kv = block.cross_attn.kv(memory)
            else:
                if cache.cross_kv[i] is None:
                    cache.cross_kv[i] = block.cross_attn.kv(memory)
                memory_kv = cache.cross_kv[i]
            x = block(x, memory_kv, key_mask, cache)
        if cache is not None:
            cache.pos += tgt_ids.shape[1]
        return self.norm_f(x) if self.norm_f is not None else x


class Seq2Seq(nn.Module):
    """Encoder, decoder and output projection; see the module docstring."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.vocab_size <= 0:
            raise ValueError("Seq2SeqConfig.vocab_size must be set before building the model")
        if max(c.pad_id, c.bos_id, c.eos_id) >= min(c.vocab_size, c.target_vocab_size):
            raise ValueError(
                f"model.pad_id={c.pad_id}, bos_id={c.bos_id}, eos_id={c.eos_id} must be ids of "
                f"both vocabularies (sizes {c.vocab_size} and {c.target_vocab_size})"
            )
        self.encoder = Encoder(c)
        tgt_emb = (
            self.encoder.tok_emb
            if c.share_embeddings
            else nn.Embedding(c.target_vocab_size, c.d_model)
        )
        self.decoder = Decoder(c, tgt_emb)
        self.lm_head = nn.Linear(c.d_model, c.target_vocab_size, bias=False)
        if c.share_embeddings:
            self.lm_head.weight = self.encoder.tok_emb.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise every parameter:

        | parameter                                                | init                     |
        |----------------------------------------------------------|--------------------------|
        | tok_emb (both), lm_head when untied, learned pos_emb     | N(0, emb_std)            |
        | every other Linear weight (attention, cross, MLP)        | U, Glorot (xavier)       |
        | Linear biases                                            | 0                        |
        | LayerNorm gains / biases                                 | 1 / 0                    |

        emb_std is `config.init_std`, or d_model**-0.5 when that is 0: embeddings scaled by
        sqrt(d_model) then start with unit variance, and a tied output projection gives
        logits of unit scale (fairseq's transformer does the same). Glorot-uniform linear
        layers follow the paper's reference code (tensor2tensor) and fairseq.
        """
        std = self.config.emb_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Linear):
                if name == "lm_head":
                    if not self.config.share_embeddings:
                        nn.init.normal_(module.weight, mean=0.0, std=std)
                    continue
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def source_mask(self, src_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) bool, True at real (non-pad) source tokens."""
        mask = src_ids != self.config.pad_id
        # A source of nothing but padding would leave its attention rows with no key at all,
        # which SDPA turns into NaN (and a NaN loss poisons a whole batch): let it see its
        # first position instead. Its outputs mean nothing either way.
        mask[:, 0] |= ~mask.any(dim=1)
        return mask

    def encode(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory (B, S, C) and the source mask (B, S) (True at real tokens) for `src_ids`."""
        src_mask = self.source_mask(src_ids)
        return self.encoder(src_ids, src_mask), src_mask

    def decode(
        self,
        tgt_in_ids: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:
        """Logits (N, T, Vt) for target ids (N, T) given `encode`'s memory and mask.

        With `cache`, `tgt_in_ids` are the T tokens after the `cache.pos` already decoded. N
        may be a multiple G of the memory's batch B: rows b*G .. b*G+G-1 are hypotheses of
        source b (beam search), and the memory is not copied for them.
        """
        return self.lm_head(self.decoder(tgt_in_ids, memory, src_mask, cache))  # (N, T, Vt)

    def forward(
        self,
        src_ids: torch.Tensor,
        tgt_in_ids: torch.Tensor,
        tgt_out_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, Vt) for sources (B, S) and decoder inputs (B, T), padded with pad_id;
        with `tgt_out_ids`, the training loss instead (`loss`), so that a wrapper around the
        model's forward (DDP, torch.compile) sees the whole training computation."""
        if tgt_out_ids is not None:
            return self.loss(src_ids, tgt_in_ids, tgt_out_ids)
        memory, src_mask = self.encode(src_ids)
        return self.decode(tgt_in_ids, memory, src_mask)

    def loss(
        self, src_ids: torch.Tensor, tgt_in_ids: torch.Tensor, tgt_out_ids: torch.Tensor
    ) -> torch.Tensor:
        """Label-smoothed cross-entropy, averaged over the non-pad target tokens.

        The same value as `F.cross_entropy(self(src, tgt_in), ..., ignore_index=pad_id)`, but
        the output projection runs only at real target positions: it is the largest matmul
        of the model, and batches of sentences of mixed lengths are often a third padding.
        """
        memory, src_mask = self.encode(src_ids)
        hidden = self.decoder(tgt_in_ids, memory, src_mask)  # (B, T, C)
        real = tgt_out_ids != self.config.pad_id  # (B, T)
        logits = self.lm_head(hidden[real])  # (M, Vt), M real target tokens
        return F.cross_entropy(
            logits.float(), tgt_out_ids[real], label_smoothing=self.config.label_smoothing
        )

    def new_cache(self, max_len: int | None = None) -> Seq2SeqCache:
        """A decoder cache for targets of up to `max_len` tokens (default: max_seq_len)."""
        return Seq2SeqCache(self.config.n_decoder_layers, max_len or self.config.max_seq_len)

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count, shared weights once.

        `non_embedding` leaves out the tables that are only looked up (learned positions, and
        the token embeddings when they are not the output projection): they cost no FLOPs.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for stack in (self.encoder, self.decoder):
                if stack.pos_emb is not None:
                    n -= stack.pos_emb.weight.numel()
            if not self.config.share_embeddings:
                n -= self.encoder.tok_emb.weight.numel() + self.decoder.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per target token, for a source as long as the
        target (`seq_len` tokens each): 6 per parameter (the encoder's run once per source
        token, i.e. once per target token here) plus attention scores and weighted sums over
        `seq_len` keys in encoder self-, decoder self- and cross-attention, as GPT's count."""
        c = self.config
        t = seq_len or c.max_seq_len
        attention = 12 * c.d_model * t * (c.n_encoder_layers + 2 * c.n_decoder_layers)
        return 6 * self.num_params() + attention
