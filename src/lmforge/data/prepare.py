"""`lmforge data prepare`: raw files in, cleaned train/val/test JSONL shards and a manifest out.

Each document is cleaned (line endings to "\\n", control characters other than "\\n" and "\\t"
dropped, Unicode NFC) and dropped, with a counted reason, when nothing but whitespace is left.
Documents go to a split by a hash of their cleaned text, so the split of a document never
depends on what else is in the corpus and exact duplicates land in the same split. A corpus of
exactly one document (one .txt file, like Tiny Shakespeare) is instead cut into contiguous
blocks at line boundaries: train first, then val, then test.

Output, in `out_dir`: `{split}-00000.jsonl`, ... with one record per line,
`{"id", "source", "text"}` plus `"last": false` on a record that a later record of the same
split continues (a part of a large document); every other record ends a document. Every
split has at least its `-00000` shard, possibly empty. `manifest.json` is written last and
describes it all; `read_manifest`, `split_files` and `iter_records` read it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge import __version__
from lmforge.data.document import DataError, Document
from lmforge.data.readers import (
    BAD_RECORD_MODES,
    DEFAULT_MAX_PART_CHARS,
    ReadReport,
    iter_documents,
)
from lmforge.data.shards import SPLITS, SplitWriters
from lmforge.io import write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "lmforge.prepared-text"
MANIFEST_VERSION = 1

# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; "\t" and "\n" stay. A regex
# is about ten times faster than `str.translate` on text that has none (most text).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Both in [0, 1) and leaving something to train on, or a ValueError saying which."""
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= v < 1:
            raise ValueError(f"{name}={v}; expected a fraction in [0, 1), e.g. 0.05")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction}; "
            "expected less than 1 so that something is left to train on"
        )


@dataclass(kw_only=True)
class PrepareConfig:
    """How raw text becomes split, cleaned JSONL shards."""

    val_fraction: float = 0.05
    test_fraction: float = 0.05
    # Field (JSONL) or column (Parquet, CSV) holding the text.
    text_field: str = "text"
    # "skip": count bad records in the manifest and go on; "fail": stop at the first.
    on_bad_record: str = "skip"
    # A new shard starts once a shard would grow past this many bytes.
    shard_bytes: int = 64 * 2**20
    # Documents with fewer characters than this after cleaning are dropped.
    min_chars: int = 1
    # .txt files are read in parts of about this many characters (see lmforge.data.document).
    max_part_chars: int = DEFAULT_MAX_PART_CHARS

    def __post_init__(self) -> None:
        check_split_fractions(self.val_fraction, self.test_fraction)
        if self.on_bad_record not in BAD_RECORD_MODES:
            raise ValueError(
                f"on_bad_record={self.on_bad_record!r}; expected one of {BAD_RECORD_MODES}"
            )
        if not self.text_field:
            raise ValueError("text_field is empty; give the name of the field holding the text")
        if self.shard_bytes < 1:
            raise ValueError(f"shard_bytes={self.shard_bytes}; expected a positive byte count")
        if self.min_chars < 1:
            raise ValueError(f"min_chars={self.min_chars}; expected 1 or more")
        if self.max_part_chars < 1:
            raise ValueError(f"max_part_chars={self.max_part_chars}; expected 1 or more")


def clean_text(text: str) -> tuple[str, int]:
    """`(cleaned, control characters removed)`: "\\n" line ends, no Cc but "\\n"/"\\t", NFC."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text, removed = _CONTROL.subn("", text)
    # Lone surrogates (from JSON "\ud800" escapes) cannot be written as UTF-8.
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    return unicodedata.normalize("NFC", text), removed


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """The split a document goes to, from a hash of `key` mapped onto [0, 1)."""
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass
class Piece:
    """A cleaned, non-empty piece of a kept document."""

    doc: Document  # the document's first part, for id and source
    text: str
    first: bool
    last: bool
    multipart: bool


def _kept_pieces(docs: Iterable[Document], min_chars: int, stats: dict[str, int]):
    """Clean documents part by part and yield the pieces of those that are kept.

    A document is held back only until it is known to be kept (non-whitespace text and at
    least `min_chars` characters), and one piece is always held so that the piece ending the
    document can be marked `last` even when the parts after it clean to nothing.
    """
    head: Document | None = None
    pending: list[str] = []
    chars, content, kept, emitted, multipart = 0, False, False, False, False
    for d in docs:
        if d.part == 0:
            head, pending = d, []
            chars, content, kept, emitted = 0, False, False, False
            multipart = not d.last
            stats["documents_read"] += 1
        text, removed = clean_text(d.text)
        stats["control_chars_removed"] += removed
        if text:
            pending.append(text)
            chars += len(text)
            content = content or not text.isspace()
        kept = kept or (content and chars >= min_chars)
        if kept:
            while len(pending) > 1:
                yield Piece(head, pending.pop(0), not emitted, False, multipart)
                emitted = True
        if d.last:
            if kept:
                yield Piece(head, pending.pop(), not emitted, True, multipart)
            elif content:
                stats["dropped_shorter_than_min_chars"] += 1
            else:
                stats["dropped_empty_after_cleaning"] += 1


def _new_stats() -> dict[str, int]:
    return {
        "documents_read": 0,
        "control_chars_removed": 0,
        "dropped_empty_after_cleaning": 0,
        "dropped_shorter_than_min_chars": 0,
    }


def _count_kept(inputs: list[str], cfg: PrepareConfig) -> tuple[int, int]:
    """First, cheap pass: `(kept documents, capped at 2; characters of the first)`."""
    docs = iter_documents(
        inputs,
        text_field=cfg.text_field,
        on_bad_record=cfg.on_bad_record,
        report=ReadReport(),
        max_part_chars=cfg.max_part_chars,
        warn=False,
    )
    kept, chars = 0, 0
    for piece in _kept_pieces(docs, cfg.min_chars, _new_stats()):
        if piece.first:
            kept += 1
            if kept == 2:
                break
        chars += len(piece.text)
    return kept, chars


def write_contiguous(
    pieces: Iterable[Piece],
    writers: SplitWriters,
    val_fraction: float,
    test_fraction: float,
    total: int,
    meta: dict[str, Any] | None = None,
) -> None:
    """Cut the one document (`total` characters) into train, val, test blocks, each ending
    just after a newline; `data pipeline` uses it too, with the document's `meta`."""
    train_end = (1 - val_fraction - test_fraction) * total
    targets = [math.ceil(train_end), math.ceil(train_end + val_fraction * total)]
    fractions = [1 - val_fraction - test_fraction, val_fraction, test_fraction]
    held: str | None = None  # one piece of lookahead to mark each block's final record
    head: Document | None = None
    s, pos = 0, 0  # current split index; characters before `text`

    def emit(text: str) -> None:
        nonlocal held
        if text:
            if held is not None:
                writers[SPLITS[s]].write(head.id, head.source, held, last=False, meta=meta)
            held = text

    def close_block() -> None:
        nonlocal held, s
        if held is not None:
            writers[SPLITS[s]].write(head.id, head.source, held, last=True, meta=meta)
        held = None
        s += 1

    for piece in pieces:
        head, text = piece.doc, piece.text
        while s < 2:
            if fractions[s] == 0 and s > 0:
                close_block()
                continue
            nl = text.find("\n", max(0, targets[s] - pos))
            if nl == -1:
                break
            emit(text[: nl + 1])
            close_block()
            pos += nl + 1
            text = text[nl + 1 :]
        emit(text)
        pos += len(text)
    while s < 3:
        close_block()


def prepare_corpus(
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: PrepareConfig | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Clean, split and shard `inputs` (files and folders) into `out_dir`; return the manifest.

    Nothing already in `out_dir` changes unless the whole run succeeds; then shards of a
    previous run that this run did not rewrite are removed.
    """
    cfg = cfg or PrepareConfig()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(p) for p in inputs]
    out = Path(out_dir)

    kept, total_chars = _count_kept(inputs, cfg)
    mode = "contiguous" if kept == 1 else "hash"
    log.info("preparing %s into %s (split: %s)", ", ".join(inputs), out, mode)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    writers = SplitWriters(out, cfg.shard_bytes)
    report = ReadReport()
    stats = _new_stats()
    try:
        docs = iter_documents(
            inputs,
            text_field=cfg.text_field,
            on_bad_record=cfg.on_bad_record,
            report=report,
            max_part_chars=cfg.max_part_chars,
        )
        docs = tqdm(docs, desc="prepare", unit="part", disable=not progress)
        pieces = _kept_pieces(docs, cfg.min_chars, stats)
        if mode == "contiguous":
            write_contiguous(pieces, writers, cfg.val_fraction, cfg.test_fraction, total_chars)
        else:
            split = "train"
            for piece in pieces:
                if piece.first:
                    key = piece.doc.id if piece.multipart else piece.text
                    split = split_of(key, cfg.val_fraction, cfg.test_fraction)
                writers[split].write(piece.doc.id, piece.doc.source, piece.text, piece.last)
        writers.close()
        if writers.documents == 0:
            raise DataError(
                f"no documents left in {', '.join(inputs)} after reading and cleaning "
                f"({stats['documents_read']} read, "
                f"{stats['dropped_empty_after_cleaning']} empty after cleaning, "
                f"{stats['dropped_shorter_than_min_chars']} shorter than "
                f"min_chars={cfg.min_chars}, {report.bad_records} bad records); "
                f"nothing was written to {out}"
            )
    except BaseException:
        writers.discard()
        if created and not any(out.iterdir()):
            out.rmdir()
        raise

    # The old manifest lists the shards that commit replaces: a crash before the new one is
    # written must leave no manifest (readers say to run again), not one naming missing files.
    (out / MANIFEST).unlink(missing_ok=True)
    writers.commit()

    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "lmforge_version": __version__,
        "inputs": inputs,
        "config": asdict(cfg),
        "split_mode": mode,
        "splits": writers.summary(),
        "documents_read": stats["documents_read"],
        "control_chars_removed": stats["control_chars_removed"],
        "dropped": {
            "empty_after_cleaning": stats["dropped_empty_after_cleaning"],
            "shorter_than_min_chars": stats["dropped_shorter_than_min_chars"],
        },
        "read_report": report.to_dict(),
    }
    write_json_atomic(out / MANIFEST, manifest)
    log.info(
        "prepared %s: %s",
        out,
        ", ".join(f"{s} {w.documents} docs / {w.chars} chars" for s, w in writers.writers.items()),
    )
    return manifest


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared data dir."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {data_dir}: run `lmforge data prepare` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); run `lmforge data prepare` again") from e
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(
            f"{path} is not a manifest written by `lmforge data prepare` "
            f"(format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r})"
        )
    return manifest


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The shard files of `split`, in order, as listed in the manifest."""
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise DataError(f"no split {split!r} in {data_dir}; it has {', '.join(manifest['splits'])}")
    paths = [Path(data_dir) / name for name in manifest["splits"][split]["files"]]
    for p in paths:
        if not p.is_file():
            raise DataError(
                f"{p} is listed in the manifest but missing; run `lmforge data prepare` again"
            )
    return paths


def iter_records(data_dir: str | os.PathLike, split: str) -> Iterator[dict[str, Any]]:
    """Stream the records (`{"id", "source", "text"[, "last": false]}`) of a split in order."""
    for path in split_files(data_dir, split):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
