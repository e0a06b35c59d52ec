"""The unit every data step passes along: a `Document` (or one part of a large one).

Readers yield documents; cleaning and splitting consume them. A document too large to hold in
memory (a multi-gigabyte .txt file) arrives as consecutive parts that share one `id`: `part`
counts from 0 and only the final part has `last=True`. Parts are cut just after a newline that
sits between two non-space characters where possible, so tokenizing the parts one by one gives
the same tokens as tokenizing the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """Input data that cannot be used as given; the message names the file and the fix."""


def utf8_problem(data: bytes, e: UnicodeDecodeError) -> str:
    """What `e`, raised decoding `data`, found, for an error message: the reason, the bad byte
    and its place on its line (the caller names the file and the line)."""
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return f"not valid UTF-8 ({e.reason}: byte {data[e.start]:#04x} at byte {column} of the line)"


@dataclass
class Document:
    """A text with where it came from.

    `source` is the file path, or "path:N" for the N-th line (JSONL, CSV) or row (Parquet),
    counting from 1. `id` is the record's own "id" field when it has one, else `source`.
    """

    text: str
    id: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    part: int = 0
    last: bool = True
