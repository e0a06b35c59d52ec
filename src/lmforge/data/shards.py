"""Writing train/val/test JSONL shards: the output format of `data prepare` and `data pipeline`.

One record per line, `{"id", "source", "text"}` plus `"last": false` on a record that a later
record of the same split continues (a part of a large document), and optionally `"meta"` (url,
title, language...; readers of the shards ignore it). A new shard starts once a shard would grow
past `shard_bytes`; every split has at least its `-00000` shard, possibly empty.

Shards are written under temporary names and only renamed into place by `commit`, which then
removes the shards of an earlier run that this run did not rewrite; until then nothing already
in the folder changes. Both stages that write shards share this code so that `tokenizer
train/encode` read either's output unchanged.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


class ShardWriter:
    """Writes one split's records to temporary shard files in `out_dir`."""

    def __init__(self, out_dir: Path, split: str, shard_bytes: int, tag: str) -> None:
        self.out_dir, self.split, self.shard_bytes, self.tag = out_dir, split, shard_bytes, tag
        self.files: list[tuple[Path, str]] = []  # (temporary path, final name)
        self.documents = self.records = self.chars = self.bytes = 0
        self._fh = None
        self._size = 0

    def _next_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        name = f"{self.split}-{len(self.files):05d}.jsonl"
        tmp = self.out_dir / f".{name}.tmp-{self.tag}"
        self.files.append((tmp, name))
        self._fh = open(tmp, "wb")
        self._size = 0

    def write(
        self, doc_id: str, source: str, text: str, last: bool, meta: dict[str, Any] | None = None
    ) -> None:
        record: dict[str, Any] = {"id": doc_id, "source": source, "text": text}
        if not last:
            record["last"] = False
        if meta:
            record["meta"] = meta
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        if self._fh is None or (self._size and self._size + len(data) > self.shard_bytes):
            self._next_shard()
        self._fh.write(data)
        self._size += len(data)
        self.records += 1
        self.documents += last
        self.chars += len(text)
        self.bytes += len(text.encode("utf-8"))

    def close(self) -> None:
        if self._fh is None:
            self._next_shard()  # an empty split still gets its -00000 shard
        self._fh.close()

    def summary(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "records": self.records,
            "chars": self.chars,
            "bytes": self.bytes,
            "files": [name for _, name in self.files],
        }


class SplitWriters:
    """One `ShardWriter` per split in `out_dir`, committed or discarded together."""

    def __init__(self, out_dir: str | os.PathLike, shard_bytes: int) -> None:
        self.out_dir = Path(out_dir)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.writers = {s: ShardWriter(self.out_dir, s, shard_bytes, tag) for s in SPLITS}

    def __getitem__(self, split: str) -> ShardWriter:
        return self.writers[split]

    @property
    def documents(self) -> int:
        return sum(w.documents for w in self.writers.values())

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def discard(self) -> None:
        """Close and delete every temporary shard (after a failure)."""
        for w in self.writers.values():
            if w._fh is not None:
                w._fh.close()
            for tmp, _ in w.files:
                tmp.unlink(missing_ok=True)

    def commit(self) -> None:
        """Rename the closed shards into place and remove stale shards of an earlier run."""
        new_names = set()
        for w in self.writers.values():
            for tmp, name in w.files:
                os.replace(tmp, self.out_dir / name)
                new_names.add(name)
        for split in SPLITS:
            for stale in self.out_dir.glob(f"{split}-*.jsonl"):
                if stale.name not in new_names:
                    stale.unlink()

    def summary(self) -> dict[str, dict[str, Any]]:
        return {s: w.summary() for s, w in self.writers.items()}
