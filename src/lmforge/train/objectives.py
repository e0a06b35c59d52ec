"""What each model family learns from: its batches, its loss, and what its evaluation reports.

The trainer is one loop for every family (`lmforge.train.trainer`); the three things that
differ live here, one small class per family:

- `gpt`: random windows of the token shards (`train.seq_len` tokens, or the model's
  max_seq_len); next-token cross-entropy; eval gives loss, perplexity and bits per byte over
  windows of max_seq_len.
- `rnn`: contiguous streams (truncated BPTT), the hidden state carried from batch to batch;
  the same loss and eval, the state also carried through the val split.
- `bert`: random windows with `[CLS]` first, masked afresh each time they are drawn;
  cross-entropy on the masked tokens only; eval gives MLM loss and masked-token accuracy.
- `seq2seq`: sentence pairs of similar length; label-smoothed cross-entropy on target tokens,
  pads left out; eval gives loss and perplexity without smoothing. Its tokens (in tokens/s and
  MFU) are target tokens, each standing for the source token it was translated from too.

Every batch is a function of (seed, step), so a resumed run trains on what the uninterrupted
run would have; the one exception is the RNN's carried hidden state, which starts from zeros
again after a resume. Evaluation always covers a whole split (or its first `max_tokens`), with
masks drawn from a fixed seed for the masked LM so that two evaluations compare.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import ConfigError
from lmforge.data.loader import TokenWindows, open_shards
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train import distributed as D
from lmforge.train.metrics import evaluate_loss


def training_seq_len(cfg: Any) -> int:
    """Tokens per training window: `train.seq_len`, or the model's max_seq_len when it is 0.

    Validation always reads windows of max_seq_len, so training on shorter windows is allowed
    only where the positions past them need nothing new: rotary positions with a sliding
    attention window no wider than the training windows (the relative distances a query sees
    are then the ones it trained on).
    """
    m, seq_len = cfg.model, cfg.train.seq_len
    if not seq_len:
        return m.max_seq_len
    if m.family != "gpt":
        raise ConfigError(
            f"train.seq_len is for the gpt family; model.family={m.family!r} trains on windows "
            "of model.max_seq_len (set train.seq_len = 0)"
        )
    if seq_len > m.max_seq_len:
        raise ConfigError(
            f"train.seq_len={seq_len} is longer than model.max_seq_len={m.max_seq_len}; raise "
            "max_seq_len or shorten the training windows"
        )
    if seq_len < m.max_seq_len and (m.pos_emb != "rope" or not 0 < m.attn_window <= seq_len):
        raise ConfigError(
            f"train.seq_len={seq_len} is shorter than model.max_seq_len={m.max_seq_len}, which "
            f"validation reads, so the model would meet positions it never trained on; that "
            f"needs model.pos_emb = 'rope' and 0 < model.attn_window <= {seq_len} (now "
            f"pos_emb={m.pos_emb!r}, attn_window={m.attn_window})"
        )
    return seq_len


class LMObjective:
    """Next-token prediction on random windows (the GPT family)."""

    def __init__(
        self,
        cfg: Any,
        tokens_dir: Path,
        tokenizer: Tokenizer,
        device: torch.device,
        train: bool = True,
    ) -> None:
        self.cfg, self.device, self.tokenizer = cfg, device, tokenizer
        if train:
            self.train_data = TokenWindows(tokens_dir, cfg.data.train_split, training_seq_len(cfg))
        self.val_data = TokenWindows(tokens_dir, cfg.data.val_split, cfg.model.max_seq_len)
        self.token_bytes = torch.as_tensor(tokenizer.token_bytes, dtype=torch.long, device=device)

    def batch(self, index: int, shard: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        tc = self.cfg.train
        x, y = self.train_data.batch(tc.batch_size, seed=tc.seed, step=index, shard=shard)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def loss(self, forward: Any, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = forward(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        return loss, y.numel()

    def evaluate(
        self, model: torch.nn.Module, *, autocast: Any, max_tokens: int | None, world: D.World
    ) -> dict[str, float]:
        return evaluate_loss(
            model,
            self.val_data,
            device=self.device,
            batch_size=self.cfg.train.eval_batch_size,
            max_tokens=max_tokens,
            autocast=autocast,
            token_bytes=self.token_bytes,
            world=world,
        )


class RecurrentObjective(LMObjective):
    """Truncated back-propagation through time: the batch of index i+1 continues each row of
    the batch of index i, and the hidden state is carried over (detached) between them."""

    def __init__(
        self,
        cfg: Any,
        tokens_dir: Path,
        tokenizer: Tokenizer,
        device: torch.device,
        train: bool = True,
    ) -> None:
        from lmforge.data.loader import TokenStreams

        self.cfg, self.device, self.tokenizer = cfg, device, tokenizer
        seq_len, batch = cfg.model.max_seq_len, cfg.train.batch_size
        if train:
            self.train_data = TokenStreams(tokens_dir, cfg.data.train_split, seq_len, batch)
        # The val split end to end, read once here rather than at every evaluation.
        shards = open_shards(tokens_dir, cfg.data.val_split)
        self.val_tokens = np.concatenate([np.asarray(s) for s in shards] or [np.zeros(0, int)])
        if not len(self.val_tokens):
            raise ValueError(
                f"the {cfg.data.val_split!r} split in {tokens_dir} has no tokens; prepare more "
                "data or change the split fractions in `lmforge data prepare`"
            )
        self.token_bytes = torch.as_tensor(tokenizer.token_bytes, dtype=torch.long, device=device)
        self.state: Any = None

    def batch(self, index: int, shard: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        x, y = self.train_data.batch(index, shard=shard)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def loss(self, forward: Any, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
        from lmforge.model.rnn import detach_state

        x, y = batch
        logits, state = forward(x, self.state)
        self.state = detach_state(state)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        return loss, y.numel()

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, *, autocast: Any, max_tokens: int | None, world: D.World
    ) -> dict[str, float]:
        """Every target token of the val split once, read as `eval_batch_size` contiguous
        streams with the state carried through (as the model reads text when it generates);
        the few tokens past an equal share each go on the last stream, alone."""
        seq_len, tokens = self.cfg.model.max_seq_len, self.val_tokens
        n = len(tokens) - 1 if not max_tokens else min(len(tokens) - 1, max_tokens)
        rows = max(1, min(self.cfg.train.eval_batch_size, n // seq_len))
        per_row = n // rows
        starts = [b * per_row for b in range(rows)]
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64)  # loss, tokens, text loss, text bytes
        state: Any = None
        # (stream starts, offset, length) of each forward; the last stream then goes on over
        # the tokens past the equal shares, alone, with its own state.
        tail = rows * per_row
        pieces = [(starts, off, min(seq_len, per_row - off)) for off in range(0, per_row, seq_len)]
        pieces += [
            ([tail], off, min(seq_len, n - tail - off)) for off in range(0, n - tail, seq_len)
        ]
        for row_starts, off, length in pieces:
            if state is not None and len(row_starts) < state[0].size(1):
                state = tuple(h[:, -1:].contiguous() for h in state)
            window = np.stack([tokens[r + off : r + off + length + 1] for r in row_starts])
            x = torch.from_numpy(window[:, :-1].astype(np.int64)).to(self.device)
            y = torch.from_numpy(window[:, 1:].astype(np.int64)).to(self.device)
            with autocast or nullcontext():
                logits, state = model(x, state)
            losses = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none"
            )
            nbytes = self.token_bytes[y.reshape(-1)]
            text = nbytes > 0
            sums = [losses.sum(), y.numel(), losses[text].sum(), nbytes.sum()]
            totals += torch.tensor([float(v) for v in sums], dtype=torch.float64)
        model.train(was_training)
        total, count, text_loss, text_bytes = totals.tolist()
        loss = total / max(1, count)
        out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(count)}
        if text_bytes:
            out["bits_per_byte"] = text_loss / math.log(2) / text_bytes
            out["bytes"] = int(text_bytes)
        return out


class MaskedLMObjective:
    """Masked-LM pretraining (BERT): windows of the token shards, `[CLS]` first, 15% masked."""

    def __init__(
        self,
        cfg: Any,
        tokens_dir: Path,
        tokenizer: Tokenizer,
        device: torch.device,
        train: bool = True,
    ) -> None:
        mask_id = getattr(tokenizer, "mask_id", None)
        if mask_id is None:
            raise ConfigError(
                f"model.family='bert' needs a tokenizer with a mask token; the run's tokenizer "
                f"is {tokenizer.kind!r}. Train one with `lmforge tokenizer train DATA --kind "
                "wordpiece` and encode the data with it"
            )
        self.cfg, self.device, self.tokenizer = cfg, device, tokenizer
        self.mask_id = mask_id
        self.cls_id = tokenizer.bos_id
        # Windows leave room for [CLS]; documents inside a window are separated by [SEP].
        seq_len = cfg.model.max_seq_len - (self.cls_id is not None)
        if train:
            self.train_data = TokenWindows(tokens_dir, cfg.data.train_split, seq_len)
        self.val_data = TokenWindows(tokens_dir, cfg.data.val_split, seq_len)
        specials = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, mask_id)
        specials += (getattr(tokenizer, "unk_id", None),)
        self.special_ids = sorted({i for i in specials if i is not None})
        word_starts = None
        if cfg.model.whole_word_mask:
            word_starts = torch.as_tensor(tokenizer.word_start_mask(), dtype=torch.bool)
        self.word_starts = word_starts

    def _with_cls(self, x: torch.Tensor) -> torch.Tensor:
        if self.cls_id is None:
            return x
        return torch.cat([torch.full_like(x[:, :1], self.cls_id), x], dim=1)

    def _mask(self, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from lmforge.model.encoder import mask_tokens

        generator = torch.Generator().manual_seed(seed)
        return mask_tokens(
            x,
            self.cfg.model,
            mask_id=self.mask_id,
            special_ids=self.special_ids,
            vocab_size=self.tokenizer.vocab_size,
            generator=generator,
            word_starts=self.word_starts,
        )

    def batch(self, index: int, shard: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        tc = self.cfg.train
        x, _ = self.train_data.batch(tc.batch_size, seed=tc.seed, step=index, shard=shard)
        # Dynamic masking (RoBERTa): a new mask every time a window is drawn, from
        # (seed, index, rank) so that a resumed run masks alike.
        seed = ((tc.seed * 1_000_003 + index) * 1024 + shard[0]) % 2**63
        inputs, labels = self._mask(self._with_cls(x), seed)
        return inputs.to(self.device), labels.to(self.device)

    def loss(self, forward: Any, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
        inputs, labels = batch
        # The model's own loss runs the MLM head only at the masked positions.
        return forward(inputs, labels=labels), inputs.numel()

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, *, autocast: Any, max_tokens: int | None, world: D.World
    ) -> dict[str, float]:
        """MLM loss and accuracy on the masked tokens of the whole val split. Each window's
        mask is drawn from its own place in the split, so the figures do not depend on the
        batch size."""
        was_training = model.training
        model.eval()
        total, correct, masked, seen = 0.0, 0, 0, 0
        batches = self.val_data.sequential(self.cfg.train.eval_batch_size, max_tokens=max_tokens)
        window = 0
        for x, _ in batches:
            x = self._with_cls(x)
            rows = [self._mask(row[None], 10_000 + window + r) for r, row in enumerate(x)]
            window += len(x)
            inputs = torch.cat([i for i, _ in rows]).to(self.device)
            labels = torch.cat([lab for _, lab in rows]).to(self.device)
            with autocast or nullcontext():
                logits = model(inputs)
            sel = labels != -100
            if not sel.any():
                continue
            picked = logits[sel].float()
            total += F.cross_entropy(picked, labels[sel], reduction="sum").item()
            correct += int((picked.argmax(-1) == labels[sel]).sum())
            masked += int(sel.sum())
            seen += x.numel()
        model.train(was_training)
        loss = total / max(1, masked)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "masked_accuracy": correct / max(1, masked),
            "masked_tokens": masked,
            "tokens": seen,
        }


class TranslationObjective:
    """Sentence pairs for the encoder-decoder: label-smoothed loss on target tokens."""

    def __init__(self, cfg: Any, pairs_dir: Path, device: torch.device, train: bool = True) -> None:
        from lmforge.data.pairs import PairBatches

        m = cfg.model
        self.cfg, self.device = cfg, device
        ids = dict(pad_id=m.pad_id, bos_id=m.bos_id, eos_id=m.eos_id, max_len=m.max_seq_len)
        if train:
            self.train_data = PairBatches(pairs_dir, cfg.data.train_split, **ids)
        self.val_data = PairBatches(pairs_dir, cfg.data.val_split, **ids)

    def batch(self, index: int, shard: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        tc = self.cfg.train
        tensors = self.train_data.batch(tc.batch_size, seed=tc.seed, step=index, shard=shard)
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    def loss(self, forward: Any, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
        src, tgt_in, tgt_out = batch
        # The model's own loss runs the output layer only at real (non-pad) target positions.
        loss = forward(src, tgt_in, tgt_out)
        # Tokens are counted as target tokens, the unit of the model's flops_per_token.
        return loss, int((tgt_out != self.cfg.model.pad_id).sum())

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, *, autocast: Any, max_tokens: int | None, world: D.World
    ) -> dict[str, float]:
        """Cross-entropy (without smoothing) per target token over the val pairs."""
        was_training = model.training
        model.eval()
        pad = self.cfg.model.pad_id
        total, count = 0.0, 0
        for src, tgt_in, tgt_out in self.val_data.sequential(self.cfg.train.eval_batch_size):
            if max_tokens and count >= max_tokens:
                break
            src, tgt_in, tgt_out = (t.to(self.device) for t in (src, tgt_in, tgt_out))
            with autocast or nullcontext():
                logits = model(src, tgt_in)
            total += F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                tgt_out.reshape(-1),
                ignore_index=pad,
                reduction="sum",
            ).item()
            count += int((tgt_out != pad).sum())
        model.train(was_training)
        loss = total / max(1, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def build_objective(
    cfg: Any, data_dir: Path, tokenizer: Tokenizer, device: torch.device, *, train: bool = True
) -> LMObjective | MaskedLMObjective | TranslationObjective:
    """The objective of `cfg.model.family` over `data_dir`; `train=False` reads only the
    val split (`cfg.data.val_split`), for evaluation."""
    family = cfg.model.family
    if family == "seq2seq":
        return TranslationObjective(cfg, data_dir, device, train)
    if family == "bert":
        return MaskedLMObjective(cfg, data_dir, tokenizer, device, train)
    if family == "rnn":
        return RecurrentObjective(cfg, data_dir, tokenizer, device, train)
    return LMObjective(cfg, data_dir, tokenizer, device, train)
