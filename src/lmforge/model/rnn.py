"""The recurrent language model family: a stacked LSTM or GRU over token embeddings.

The recurrence is PyTorch's fused `nn.LSTM` / `nn.GRU` (batch_first), which runs cuDNN's
kernels on a GPU; nothing of it is hand-written. What is written here is the model around it,
after the regularised LSTM LMs of Zaremba et al. (2014, "Recurrent Neural Network
Regularization"), Press & Wolf (2017, "Using the Output Embedding to Improve Language Models":
tied input and output embeddings) and Merity et al. (2018, "Regularizing and Optimizing LSTM
Language Models", AWD-LSTM: embedding dropout):

    idx (B, T) ─tok_emb, embedding dropout─▶ (B, T, d_model) ─rnn (n_layers; dropout between
    layers)─▶ (B, T, d_hidden) ─dropout─▶ [out_proj ─▶ (B, T, d_model)] ─lm_head─▶ (B, T, V)

Embedding dropout drops whole rows of the embedding matrix, i.e. whole *words*, during
training: every occurrence of a dropped id in the batch reads a zero vector, the kept rows are
scaled by 1 / (1 - emb_dropout). It is computed on the looked-up rows (one keep/drop draw per
vocabulary id, gathered by `idx`), which equals masking the matrix without copying it. The
tied LM head reads the unmasked matrix, as in AWD-LSTM. AWD-LSTM's other regulariser,
DropConnect on the recurrent weights, is left out: it would unfuse the cuDNN kernel.

Tied embeddings need the LM head's input to be d_model wide. When d_hidden == d_model the last
layer's output goes straight to the head; otherwise a bias-free `out_proj` (d_hidden → d_model)
sits in between. Untied models never have one.

The hidden state is the whole "context": `forward(idx, state)` continues from `state` and
returns the new one, so truncated back-propagation through time feeds the state of one batch
into the next (`detach_state` cuts the graph between them; `lmforge.data.loader.TokenStreams`
lays out batches so that rows continue each other), and generation feeds one token at a time.
An RNN has no context limit: `max_seq_len` is only the BPTT length of a training batch.

Checkpoint keys (a public API): `tok_emb.weight`; `rnn.weight_ih_l{k}`, `rnn.weight_hh_l{k}`,
`rnn.bias_ih_l{k}`, `rnn.bias_hh_l{k}` for layer k (PyTorch's own names and gate order:
i, f, g, o for the LSTM, r, z, n for the GRU); `out_proj.weight` when there is one;
`lm_head.bias`, and `lm_head.weight` when untied (tied, it is `tok_emb.weight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lmforge.model.layers import dropout_or_identity

# The state between batches: (h, c) for an LSTM, (h,) for a GRU; each (n_layers, B, d_hidden).
RNNState = tuple[torch.Tensor, ...]

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}
GATES = {"lstm": 4, "gru": 3}  # weight_ih/hh stack this many (d_hidden, ·) gate blocks


@dataclass(kw_only=True)
class RNNConfig:
    family: Literal["rnn"] = "rnn"
    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    cell: Literal["lstm", "gru"] = "lstm"
    n_layers: int = 2
    d_model: int = 256  # embedding size (and the tied LM head's input size)
    d_hidden: int = 0  # 0: d_model
    max_seq_len: int = 128  # the BPTT length of a training batch; generation has no limit
    dropout: float = 0.2  # between recurrent layers and on the last layer's outputs
    emb_dropout: float = 0.1  # drop whole rows (words) of the embedding matrix in training
    tie_embeddings: bool = True  # with d_hidden != d_model, through `out_proj`
    init_std: float = 0.3  # embedding (= tied LM head), untied LM head and out_proj init std
    forget_bias: float = 0.0  # LSTM forget-gate bias at init; 1.0 as Jozefowicz et al. (2015)

    def __post_init__(self) -> None:
        if self.family != "rnn":
            raise ValueError(f"model.family must be 'rnn' for RNNConfig, got {self.family!r}")
        if self.cell not in CELLS:
            raise ValueError(
                f"model.cell must be one of {', '.join(map(repr, CELLS))}, got {self.cell!r}"
            )
        if self.d_hidden == 0:
            self.d_hidden = self.d_model
        for name in ("n_layers", "d_model", "d_hidden", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ValueError(f"model.vocab_size must be >= 0 (0 = auto), got {self.vocab_size}")
        for name in ("dropout", "emb_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.init_std <= 0:
            raise ValueError(f"model.init_std must be positive, got {self.init_std}")

    @property
    def has_out_proj(self) -> bool:
        """Whether a projection d_hidden → d_model feeds the tied LM head."""
        return self.tie_embeddings and self.d_hidden != self.d_model


def detach_state(state: RNNState) -> RNNState:
    """The same state cut from the graph that made it: the truncation in truncated BPTT."""
    return tuple(s.detach() for s in state)


class RNNLM(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("RNNConfig.vocab_size must be set before building the model")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.rnn = CELLS[c.cell](
            c.d_model,
            c.d_hidden,
            num_layers=c.n_layers,
            dropout=c.dropout if c.n_layers > 1 else 0.0,  # nn.LSTM warns on 1 layer
            batch_first=True,
        )
        self.drop = dropout_or_identity(c.dropout)
        self.out_proj = nn.Linear(c.d_hidden, c.d_model, bias=False) if c.has_out_proj else None
        head_in = c.d_model if c.tie_embeddings else c.d_hidden
        self.lm_head = nn.Linear(head_in, c.vocab_size, bias=True)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    detach_state = staticmethod(detach_state)

    def init_weights(self) -> None:
        """Initialise every parameter.

        | parameter                            | init                                              |
        |--------------------------------------|---------------------------------------------------|
        | tok_emb (= lm_head.weight when tied) | N(0, init_std)                                    |
        | lm_head.weight (untied), out_proj    | N(0, init_std)                                    |
        | lm_head.bias                         | 0                                                 |
        | rnn.weight_ih_l{k}                   | U(±1/√d_hidden), PyTorch's default                |
        | rnn.weight_hh_l{k}                   | orthogonal, each gate block on its own            |
        | rnn.bias_ih_l{k}, rnn.bias_hh_l{k}   | 0 (LSTM forget-gate part of bias_ih: forget_bias) |

        Orthogonal recurrent matrices keep the state's norm through many steps at init (Saxe
        et al., 2014). The embedding is much wider than a Transformer's N(0, 0.02): the LSTM's
        input weights are U(±1/√d_hidden), so small embeddings hardly move its gates, and the
        model starts out as a unigram model for many steps. init_std = 0.3 was the best of
        0.1, 0.3, 0.5 and 1.0 (val loss 2.07, 1.99, 1.99, 2.02 after 300 steps of a 2x256
        LSTM on Tiny Shakespeare characters, batch 16 x 64, AdamW 3e-3); 1.0 (PyTorch's
        default) makes the tied head's first logits too large. A forget-gate bias of 1
        (Jozefowicz et al., 2015) is there to try: it did not help in that run (1.99 against
        1.95 with 0).
        """
        c = self.config
        bound = 1.0 / math.sqrt(c.d_hidden)
        gates = GATES[c.cell]
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.uniform_(p, -bound, bound)
            elif name.startswith("weight_hh"):
                for g in range(gates):
                    nn.init.orthogonal_(p.data[g * c.d_hidden : (g + 1) * c.d_hidden])
            else:
                nn.init.zeros_(p)
                if c.cell == "lstm" and name.startswith("bias_ih"):
                    nn.init.constant_(p.data[c.d_hidden : 2 * c.d_hidden], c.forget_bias)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=c.init_std)
        if not c.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=c.init_std)
        nn.init.zeros_(self.lm_head.bias)
        if self.out_proj is not None:
            nn.init.normal_(self.out_proj.weight, mean=0.0, std=c.init_std)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, d_model), with embedding dropout in training mode."""
        x = self.tok_emb(idx)  # (B, T, C)
        p = self.config.emb_dropout
        if self.training and p > 0:
            w = self.tok_emb.weight
            keep = torch.empty(w.size(0), 1, device=w.device, dtype=w.dtype)
            keep.bernoulli_(1 - p).div_(1 - p)  # (V, 1): one draw per vocabulary row
            x = x * keep[idx]  # (B, T, 1) broadcast: a dropped id is zero at every position
        return x

    def forward(
        self, idx: torch.Tensor, state: RNNState | None = None
    ) -> tuple[torch.Tensor, RNNState]:
        """Logits (B, T, vocab_size) for token ids (B, T), and the state after them.

        `state` (from `init_state`, or a previous call) is where the sequence continues
        from; None starts from zeros.
        """
        hx = None if state is None else (state if self.config.cell == "lstm" else state[0])
        out, new = self.rnn(self.embed(idx), hx)  # (B, T, d_hidden)
        out = self.drop(out)
        if self.out_proj is not None:
            out = self.out_proj(out)  # (B, T, d_model)
        new_state = tuple(new) if self.config.cell == "lstm" else (new,)
        return self.lm_head(out), new_state  # (B, T, V)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RNNState:
        """A zero state for `batch_size` rows (the start of every stream)."""
        c = self.config
        w = self.tok_emb.weight
        shape = (c.n_layers, batch_size, c.d_hidden)
        n = 2 if c.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device or w.device, dtype=w.dtype) for _ in range(n))

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count, tied weights once.

        `non_embedding` leaves out the token embedding when it is only looked up (untied):
        tied, it is also the LM head's matrix and costs FLOPs.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 per multiplied parameter.

        Every recurrent, projection and head weight is used once per token; unlike attention,
        nothing grows with the context, so `seq_len` (kept for the common signature) is unused.
        """
        del seq_len
        return 6.0 * self.num_params()
