"""Batches of token windows from the memory-mapped shards that `tokenizer encode` writes.

Training batches are random windows, drawn by a generator seeded from (seed, step): the batch
for a step depends on nothing else, so a resumed run sees exactly the batches the
uninterrupted run would have seen, with no loader state to save. In a distributed run each rank
reads only its own rows of that same batch (`shard=(rank, world_size)`), so the tokens a step
trains on do not depend on the number of processes. Evaluation walks every
token of a split once, in non-overlapping windows.

Recurrent models train on `TokenStreams` instead: the split is cut into batch_size contiguous
streams and each batch is the next `seq_len` tokens of every stream, so the hidden state at the
end of one batch is the right start for the next (truncated back-propagation through time, as
PyTorch's word_language_model example batches its corpus). The batch is again a function of its
index alone, so resuming needs no loader state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lmforge.tokenizer.encode import open_split


def open_shards(tokens_dir: str | Path, split: str) -> list[np.ndarray]:
    """The memory-mapped shards of one split that hold more than one token; at least one."""
    shards = [s for s in open_split(tokens_dir, split) if len(s) > 1]
    if not shards:
        raise ValueError(
            f"the {split!r} split in {tokens_dir} has no tokens; prepare more data or "
            "change the split fractions in `lmforge data prepare`"
        )
    return shards


class TokenWindows:
    """The shards of one split, viewed as windows of `seq_len + 1` tokens (inputs + targets)."""

    def __init__(self, tokens_dir: str | Path, split: str, seq_len: int) -> None:
        self.split = split
        self.seq_len = seq_len
        self.shards = open_shards(tokens_dir, split)
        self.num_tokens = sum(len(s) for s in self.shards)
        # Random windows start anywhere a whole window fits; a shard shorter than one window
        # still contributes a single (shorter) window, which is then padded by repetition.
        self._starts = np.array([max(1, len(s) - seq_len) for s in self.shards], dtype=np.int64)
        self._cum = np.cumsum(self._starts)

    def batch(
        self, batch_size: int, *, seed: int, step: int, shard: tuple[int, int] = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (x, y) int64 tensors of shape (batch_size, seq_len) for this step.

        With `shard=(i, n)`, only rows `i * batch_size // n` up to the next part's start of that
        batch: the i-th of n equal parts (batch_size must divide by n).
        """
        part, parts = shard
        if batch_size % parts:
            raise ValueError(f"a batch of {batch_size} cannot be cut into {parts} equal parts")
        rng = np.random.default_rng([seed, step, 0])
        draws = rng.integers(0, self._cum[-1], size=batch_size)
        rows_per_part = batch_size // parts
        draws = draws[part * rows_per_part : (part + 1) * rows_per_part]
        shard_ids = np.searchsorted(self._cum, draws, side="right")
        rows = []
        for draw, sid in zip(draws, shard_ids):
            start = draw - (self._cum[sid] - self._starts[sid])
            rows.append(self._window(self.shards[sid], int(start), self.seq_len + 1))
        data = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T + 1)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    @staticmethod
    def _window(shard: np.ndarray, start: int, length: int) -> np.ndarray:
        window = np.asarray(shard[start : start + length])
        if len(window) < length:
            window = np.resize(window, length)  # only for shards shorter than one window
        return window

    def sequential(
        self, batch_size: int, *, max_tokens: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every target token of the split exactly once (or the first `max_tokens` of them).

        Windows do not overlap and never cross a shard boundary; the last window of a shard
        may be shorter, so it is yielded alone rather than padded into a batch.
        """
        budget = max_tokens if max_tokens else self.num_tokens
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        for shard in self.shards:
            for start in range(0, len(shard) - 1, self.seq_len):
                if budget <= 0:
                    break
                window = np.asarray(shard[start : start + self.seq_len + 1], dtype=np.int64)
                window = window[: budget + 1]
                budget -= len(window) - 1
                if len(window) - 1 < self.seq_len:
                    yield _tensors([window[:-1]], [window[1:]])
                    continue
                xs.append(window[:-1])
                ys.append(window[1:])
                if len(xs) == batch_size:
                    yield _tensors(xs, ys)
                    xs, ys = [], []
        if xs:
            yield _tensors(xs, ys)


def _tensors(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


class TokenStreams:
    """The shards of one split read end to end and cut into `batch_size` contiguous streams.

    Stream b is tokens [b * L, (b + 1) * L) of the split (its shards one after another, so a
    stream crosses shard boundaries as it crosses document boundaries, at an EOS), with
    L = num_tokens // batch_size; the last num_tokens % batch_size tokens are never read. Row b
    of batch i is stream b's tokens [j * seq_len, (j + 1) * seq_len] (inputs, and targets one
    further), j = i % len(self). So row b of batch i + 1 starts exactly where row b of batch i
    ended, and the hidden state a recurrent model ends one batch with is the state to begin the
    next with. An epoch reads len(self) * seq_len + 1 tokens of each stream; the rest of a stream
    (fewer than seq_len tokens) is not trained on.

    At the wrap-around to a new epoch the state is meant to continue, not to be reset: the
    jump from a stream's end back to its start is one more boundary between unrelated texts,
    like the document boundaries the streams already cross, so a trainer has nothing to do.
    """

    def __init__(self, tokens_dir: str | Path, split: str, seq_len: int, batch_size: int) -> None:
        if seq_len <= 0 or batch_size <= 0:
            raise ValueError(
                f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}"
            )
        self.split = split
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.shards = open_shards(tokens_dir, split)
        self.num_tokens = sum(len(s) for s in self.shards)
        self.stream_len = self.num_tokens // batch_size
        self._ends = np.cumsum([len(s) for s in self.shards])
        self._batches = (self.stream_len - 1) // seq_len
        if self._batches <= 0:
            raise ValueError(
                f"the {split!r} split in {tokens_dir} has {self.num_tokens} tokens, too few for "
                f"{batch_size} streams of {seq_len + 1} tokens or more; lower the batch size or "
                "the sequence length, or prepare more data"
            )

    def __len__(self) -> int:
        """Batches per epoch."""
        return self._batches

    def batch(
        self, index: int, *, shard: tuple[int, int] = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (rows, seq_len) of batch `index` (any index >= 0:
        it wraps around epochs).

        With `shard=(i, n)`, only the i-th of n equal parts of the rows, i.e. of the streams
        (batch_size must divide by n): each process carries the state of its own streams.
        """
        part, parts = shard
        if self.batch_size % parts:
            raise ValueError(f"a batch of {self.batch_size} cannot be cut into {parts} equal parts")
        if index < 0:
            raise ValueError(f"batch index must be >= 0, got {index}")
        rows = self.batch_size // parts
        offset = (index % self._batches) * self.seq_len
        data = np.stack(
            [
                self._read(b * self.stream_len + offset, self.seq_len + 1)
                for b in range(part * rows, (part + 1) * rows)
            ]
        )
        data = torch.from_numpy(data.astype(np.int64))  # (rows, T + 1)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def _read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split, across shard boundaries."""
        sid = int(np.searchsorted(self._ends, start, side="right"))
        pieces = []
        while length > 0:
            shard = self.shards[sid]
            lo = start - (int(self._ends[sid]) - len(shard))
            piece = np.asarray(shard[lo : lo + length])
            pieces.append(piece)
            start += len(piece)
            length -= len(piece)
            sid += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
