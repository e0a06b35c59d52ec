"""The BERT-style encoder: bidirectional self-attention and a masked-LM head, from one config.

The defaults are BERT (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding"): learned positions, token-type (segment)
embeddings, post-norm blocks (`x = LN(x + attn(x)); x = LN(x + mlp(x))`, with a LayerNorm
after the summed embeddings), exact (erf) GELU, and an MLM head that transforms the hidden
state (dense, activation, LayerNorm) before the output projection tied to the token
embedding. The same config builds a pre-norm encoder (the GPT layout, `x + attn(norm(x))`,
plus a final norm) and one with fixed sinusoidal positions.

`mask_tokens` is the masked-LM corruption: 15% of the tokens selected, 80/10/10
mask/random/keep, optionally whole words at a time, drawn afresh on every call so that each
batch gets its own masks (RoBERTa's dynamic masking, Liu et al., 2019).

Hand-written, like the GPT in `gpt.py`, because the model is the point of the project; the
attention is new here only because `layers.CausalSelfAttention` is causal by construction.
Norms, positions, dropout and the MLP come from `layers.py`. Checkpoint keys are the module
names below and are a public API (`lmforge.export.hf_bert` maps them to Hugging Face's):

    tok_emb, pos_emb (learned only), type_emb, norm_emb (post-norm only),
    blocks.{i}.attn.{q,k,v,o}_proj, blocks.{i}.norm_attn, blocks.{i}.mlp.{up,down}_proj,
    blocks.{i}.norm_mlp, norm_f (pre-norm only), mlm_dense, mlm_norm, lm_head (weight, bias)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.layers import MLP, LayerNorm, dropout_or_identity, sinusoidal_positions

# BERT's GELU is the exact (erf) one; `layers.ACTIVATIONS["gelu"]` is GPT-2's tanh
# approximation, which differs by up to ~1e-3 and would break parity with BERT weights.
_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


@dataclass(kw_only=True)
class EncoderConfig:
    family: Literal["bert"] = "bert"
    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    d_ff: int = 0  # 0: 4 * d_model
    max_seq_len: int = 128
    type_vocab_size: int = 2  # segment ids (sentence A / B)
    pos_emb: Literal["learned", "sinusoidal"] = "learned"
    norm_position: Literal["post", "pre"] = "post"  # BERT is post-norm
    activation: Literal["gelu", "relu"] = "gelu"
    dropout: float = 0.1
    norm_eps: float = 1e-12
    init_std: float = 0.02
    tie_embeddings: bool = True
    # Masking, used by the training objective; part of the model config so a run records it.
    mask_prob: float = 0.15  # fraction of (non-special) tokens selected for prediction
    mask_token_frac: float = 0.8  # of those, replaced by the mask token
    random_token_frac: float = 0.1  # of those, replaced by a random token; the rest are kept
    whole_word_mask: bool = False

    def __post_init__(self) -> None:
        if self.family != "bert":
            raise ValueError(
                f"model.family must be 'bert' for an EncoderConfig, got {self.family!r}"
            )
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model
        for name in (
            "n_layers", "n_heads", "d_model", "d_ff", "max_seq_len", "type_vocab_size",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ValueError(f"model.vocab_size must be >= 0 (0 = auto), got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                f"pick d_model as a multiple of n_heads (e.g. {self.n_heads * 32})"
            )
        choices = {
            "pos_emb": ("learned", "sinusoidal"),
            "norm_position": ("post", "pre"),
            "activation": tuple(_ACTIVATIONS),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name in ("norm_eps", "init_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"model.mask_prob must be in (0, 1), got {self.mask_prob}")
        for name in ("mask_token_frac", "random_token_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_token_frac + self.random_token_frac > 1.0:
            raise ValueError(
                f"model.mask_token_frac + model.random_token_frac must be <= 1 (the rest are "
                f"kept), got {self.mask_token_frac} + {self.random_token_frac}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _word_ids(
    input_ids: torch.Tensor, maskable: torch.Tensor, word_starts: torch.Tensor
) -> torch.Tensor:
    """Number each position by the word it belongs to, (B, T) in 0..T-1 within each row.

    A word is a word-start token and the continuation tokens after it. Special tokens are
    words of their own, and a continuation right after one (or at position 0) starts a word,
    so a word never spans a special token.
    """
    starts = word_starts.to(input_ids.device)[input_ids] | ~maskable  # (B, T)
    starts[:, 1:] |= ~maskable[:, :-1]
    starts[:, 0] = True
    return starts.long().cumsum(dim=1) - 1  # (B, T)


def mask_tokens(
    input_ids: torch.Tensor,
    cfg: EncoderConfig,
    *,
    mask_id: int,
    special_ids: Collection[int],
    vocab_size: int,
    generator: torch.Generator | None = None,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch for masked-LM training: (inputs, labels), both (B, T).

    Each token not in `special_ids` is selected with probability `cfg.mask_prob` (include the
    padding id in `special_ids`: padding is then never selected). `labels` holds the original
    id at selected positions and -100 (cross-entropy's ignore index) everywhere else. Of the
    selected tokens, `cfg.mask_token_frac` become `mask_id`, `cfg.random_token_frac` a random
    non-special id, and the rest stay as they are, decided per token.

    With `cfg.whole_word_mask` and `word_starts` (a (vocab_size,) bool table, True for tokens
    that begin a word), whole words are selected instead, each with probability
    `cfg.mask_prob`, so that the expected fraction of selected tokens is still `mask_prob`.

    Every row that has at least one maskable token gets at least one selected (one more
    position, or word, picked at random when the draw selected none): a row with nothing to
    predict would make the mean loss of a batch of short rows 0/0 = NaN. On rows of 100+
    tokens this almost never happens (0.85^100 ~ 1e-7), so the rate stays `mask_prob`.

    `generator`, when given, must be on `input_ids`' device; the same generator state gives
    the same masks.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"mask_tokens expects (batch, seq) token ids, got shape {input_ids.shape}")
    device = input_ids.device
    specials = torch.tensor(sorted({*special_ids, mask_id}), dtype=torch.long, device=device)
    if specials.numel() and (specials.min() < 0 or specials.max() >= vocab_size):
        raise ValueError(
            f"special/mask ids {specials.tolist()} must lie in [0, vocab_size={vocab_size})"
        )
    maskable = ~torch.isin(input_ids, specials)  # (B, T)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    B, T = input_ids.shape
    words = None
    if cfg.whole_word_mask and word_starts is not None:
        if word_starts.shape != (vocab_size,) or word_starts.dtype != torch.bool:
            raise ValueError(
                f"word_starts must be a bool tensor of shape ({vocab_size},), got "
                f"{word_starts.dtype} {tuple(word_starts.shape)}"
            )
        words = _word_ids(input_ids, maskable, word_starts)  # (B, T)
        selected = (rand(B, T) < cfg.mask_prob).gather(1, words) & maskable
    else:
        selected = (rand(B, T) < cfg.mask_prob) & maskable

    # At least one selection per row that can have one: pick a random maskable position.
    empty = ~selected.any(dim=1) & maskable.any(dim=1)  # (B,)
    if empty.any():
        scores = torch.where(maskable, rand(B, T), -1.0)  # non-maskable never win
        pick = scores.argmax(dim=1, keepdim=True)  # (B, 1)
        if words is None:
            extra = torch.zeros_like(selected).scatter_(1, pick, True)
        else:
            extra = (words == words.gather(1, pick)) & maskable  # the whole word of the pick
        selected |= extra & empty[:, None]

    labels = torch.where(selected, input_ids, -100)
    r = rand(B, T)
    to_mask = selected & (r < cfg.mask_token_frac)
    to_random = selected & ~to_mask & (r < cfg.mask_token_frac + cfg.random_token_frac)
    candidates = torch.ones(vocab_size, dtype=torch.bool, device=device)
    candidates[specials] = False
    candidates = candidates.nonzero().squeeze(1)  # (V',) the non-special ids
    if candidates.numel() == 0:
        raise ValueError(f"every id of the vocabulary ({vocab_size}) is special; nothing to draw")
    draws = (rand(B, T) * candidates.numel()).long().clamp_(max=candidates.numel() - 1)
    inputs = torch.where(to_mask, mask_id, input_ids)
    inputs = torch.where(to_random, candidates[draws], inputs)
    return inputs, labels


def _key_mask(attention_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    """(B, T) 1/0 padding mask -> (B, 1, 1, T) bool for attention, or None when nothing is
    padded (so attention can take its fastest kernel)."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (B, T):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({B}, {T}), "
            "the shape of input_ids"
        )
    keep = attention_mask.bool()
    if bool(keep.all()):
        return None
    # A row of nothing but padding would softmax over no keys (NaN); let it see every key
    # instead. Its outputs are padding and ignored by the loss either way.
    keep = keep | ~keep.any(dim=1, keepdim=True)
    return keep[:, None, None, :]  # (B, 1, 1, T)


class SelfAttention(nn.Module):
    """Multi-head bidirectional self-attention; padded keys are masked out."""

    def __init__(self, d_model: int, n_heads: int, *, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        self.resid_dropout = dropout_or_identity(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); `key_mask` (B, 1, 1, T) bool, True = may be attended to."""
        B, T, C = x.shape
        H, D = self.n_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = self.v_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


class EncoderBlock(nn.Module):
    """Attention then MLP, each with a residual; the LayerNorm after (post) or before (pre)."""

    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.pre_norm = c.norm_position == "pre"
        self.attn = SelfAttention(c.d_model, c.n_heads, dropout=c.dropout)
        self.norm_attn = LayerNorm(c.d_model, eps=c.norm_eps)
        # layers.MLP gives the shape and names; its activation becomes this family's own
        # (BERT's exact GELU is not in layers.ACTIVATIONS, see _ACTIVATIONS above).
        self.mlp = MLP(c.d_model, c.d_ff, bias=True, dropout=c.dropout, activation="relu")
        self.mlp.act = _ACTIVATIONS[c.activation]
        self.norm_mlp = LayerNorm(c.d_model, eps=c.norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm_attn(x), key_mask)
            return x + self.mlp(self.norm_mlp(x))
        x = self.norm_attn(x + self.attn(x, key_mask))
        return self.norm_mlp(x + self.mlp(x))


class Encoder(nn.Module):
    """The encoder body and its masked-LM head: token ids (B, T) -> logits (B, T, vocab)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("EncoderConfig.vocab_size must be set before building the model")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model) if c.pos_emb == "learned" else None
        if c.pos_emb == "sinusoidal":
            self.register_buffer(
                "pos_table", sinusoidal_positions(c.max_seq_len, c.d_model), persistent=False
            )
        self.type_emb = nn.Embedding(c.type_vocab_size, c.d_model)
        post = c.norm_position == "post"
        # Post-norm normalises the summed embeddings (every block input is normalised);
        # pre-norm normalises the residual stream once at the end instead.
        self.norm_emb = LayerNorm(c.d_model, eps=c.norm_eps) if post else None
        self.drop = dropout_or_identity(c.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(c) for _ in range(c.n_layers))
        self.norm_f = None if post else LayerNorm(c.d_model, eps=c.norm_eps)
        # The MLM head: a dense + activation + LayerNorm transform, then the output projection.
        self.mlm_dense = nn.Linear(c.d_model, c.d_model)
        self.mlm_norm = LayerNorm(c.d_model, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=True)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise every parameter as BERT does.

        | parameter                                            | init            |
        |------------------------------------------------------|-----------------|
        | tok_emb, pos_emb, type_emb                           | N(0, init_std)  |
        | attn.{q,k,v,o}_proj, mlp.{up,down}_proj, mlm_dense   | N(0, init_std)  |
        | lm_head.weight (when untied; else it is tok_emb)     | N(0, init_std)  |
        | every Linear bias, lm_head.bias included             | 0               |
        | LayerNorm gains / biases                             | 1 / 0           |

        Unlike GPT-2 the residual projections are not scaled down with depth: post-norm
        renormalises the residual stream after every sub-layer, so its variance cannot grow.
        """
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if module.weight is not self.tok_emb.weight:
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T); with `labels`, the masked-LM loss
        instead (`mlm_loss`), so that a wrapper around forward (DDP, torch.compile) sees the
        whole training computation.

        `attention_mask` (B, T) is 1 for real tokens and 0 for padding (Hugging Face's
        convention); no token attends to padding, so padding never changes the logits of
        real tokens. `token_type_ids` (B, T) are segment ids, all 0 when not given.
        """
        if labels is not None:
            return self.mlm_loss(input_ids, labels, attention_mask, token_type_ids)
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        return self.mlm_head(h)  # (B, T, V)

    def mlm_head(self, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., V) for hidden states (..., d_model)."""
        act = _ACTIVATIONS[self.config.activation]
        return self.lm_head(self.mlm_norm(act(self.mlm_dense(h))))

    def mlm_loss(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-entropy averaged over the positions whose label is not -100.

        The same value as `F.cross_entropy(self(input_ids).view(-1, V), labels.view(-1),
        ignore_index=-100)`, but the head runs only at the labelled positions: the output
        projection is the largest matmul of a small encoder, and MLM labels 15% of tokens.
        """
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        picked = labels != -100  # (B, T)
        logits = self.mlm_head(h[picked])  # (M, V), M labelled positions
        return F.cross_entropy(logits.float(), labels[picked])

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final layer's hidden states (B, T, d_model): what the MLM head (or a
        fine-tuning head) reads."""
        c = self.config
        B, T = input_ids.shape
        if T > c.max_seq_len:
            raise ValueError(
                f"sequence of {T} tokens is longer than model.max_seq_len={c.max_seq_len}"
            )
        x = self.tok_emb(input_ids)  # (B, T, C)
        x = x + (self.pos_emb.weight[:T] if self.pos_emb is not None else self.pos_table[:T])
        if token_type_ids is None:
            x = x + self.type_emb.weight[0]
        else:
            x = x + self.type_emb(token_type_ids)
        if self.norm_emb is not None:
            x = self.norm_emb(x)
        x = self.drop(x)
        key_mask = _key_mask(attention_mask, B, T)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm_f(x) if self.norm_f is not None else x

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count, tied weights once.

        `non_embedding` leaves out the tables that are only looked up (learned positions,
        token types, and the token embedding when it is not tied to the LM head): they cost
        no FLOPs.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.type_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B.

        6N for the matrices plus 12 * L * d_model * T for the attention scores and their
        weighted sum; the PaLM term already counts every query against every key, which is
        exactly what bidirectional attention computes.
        """
        c = self.config
        t = seq_len or c.max_seq_len
        return 6 * self.num_params() + 12 * c.n_layers * c.d_model * t
