"""Batches of token windows from the memory-mapped shards that `tokenizer encode` writes.

Training batches are random windows, drawn by a generator seeded from (seed, step): the batch
for a step depends on nothing else, so a resumed run sees exactly the batches the
uninterrupted run would have seen, with no loader state to save. In a distributed run each rank
reads only its own rows of that same batch (`shard=(rank, world_size)`), so the tokens a step
trains on do not depend on the number of processes. Evaluation walks every
token of a split once, in non-overlapping windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lmforge.tokenizer.encode import open_split


class TokenWindows:
    """The shards of one split, viewed as windows of `seq_len + 1` tokens (inputs + targets)."""

    def __init__(self, tokens_dir: str | Path, split: str, seq_len: int) -> None:
        self.split = split
        self.seq_len = seq_len
        self.shards = [s for s in open_split(tokens_dir, split) if len(s) > 1]
        self.num_tokens = sum(len(s) for s in self.shards)
        if not self.shards:
            raise ValueError(
                f"the {split!r} split in {tokens_dir} has no tokens; prepare more data or "
                "change the split fractions in `lmforge data prepare`"
            )
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
