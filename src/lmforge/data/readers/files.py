"""Readers for plain files: text, JSON lines, CSV/TSV, Parquet.

.txt/.md: a whole file is one document, yielded in parts of about `max_part_chars` characters
(see `lmforge.data.document`). .jsonl/.json: one JSON object per line, the text in
`text_field`; a line longer than `max_record_bytes` characters is reported and skipped without
being held in memory. .csv/.tsv: a header row names the columns; a malformed row, or a line or
field longer than `max_record_bytes`, is reported and skipped. .parquet: read in batches of
rows. The record's own `id` field/column, when it has one, becomes the document id, and its
`meta_fields` (url, title, ...) the document's meta.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

from lmforge.data.document import DataError, Document
from lmforge.data.readers.base import ReadContext, Source, decoded_chunks, lines, parts


def _field_missing(ctx: ReadContext, where: str, keys: Iterable[str]) -> None:
    listed = ", ".join(repr(k) for k in keys) or "none"
    ctx.bad(
        where,
        f"no field {ctx.options.text_field!r} (its fields: {listed})",
        "pass --text-field NAME to read the text from another field, "
        "or --on-bad-record skip to skip such records",
    )


def text_ok(ctx: ReadContext, where: str, text: Any) -> bool:
    """True when `text` is a string; else count (or raise on) the bad record."""
    if isinstance(text, str):
        return True
    kind = "null" if text is None else type(text).__name__
    ctx.bad(
        where,
        f"field {ctx.options.text_field!r} is {kind}, expected a string",
        "pass --text-field NAME to read another field, or --on-bad-record skip",
    )
    return False


def record_meta(ctx: ReadContext, record: dict[str, Any]) -> dict[str, Any]:
    """The `meta_fields` a record has (not null), for the document's meta."""
    return {f: record[f] for f in ctx.options.meta_fields if record.get(f) is not None}


def plain_meta(values: dict[str, Any]) -> dict[str, Any]:
    """Column values (Parquet, datasets) as meta: nulls left out, and values JSON cannot hold
    (a timestamp, bytes) as their text."""
    return {
        k: v if isinstance(v, (str, int, float, bool, list, dict)) else str(v)
        for k, v in values.items()
        if v is not None
    }


def record_id(record: dict[str, Any], where: str) -> str:
    rid = record.get("id")
    return str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else where


def _what(src: Source) -> str:
    return f"a valid {src.compression} file" if src.compression else "a readable file"


def read_text(src: Source, ctx: ReadContext) -> Iterator[Document]:
    chunks = decoded_chunks(src, ctx, _what(src))
    pieces = parts(chunks, ctx.options.max_part_chars)
    prev = next(pieces)
    i = 0
    for piece in pieces:  # one part of lookahead, to know which part is the last
        yield Document(text=prev, id=src.name, source=src.name, part=i, last=False)
        prev, i = piece, i + 1
    yield Document(text=prev, id=src.name, source=src.name, part=i, last=True)


def read_jsonl(src: Source, ctx: ReadContext) -> Iterator[Document]:
    chunks = decoded_chunks(src, ctx, _what(src))
    field = ctx.options.text_field
    limit = ctx.options.max_record_bytes
    seen_record = False
    for lineno, line in enumerate(lines(chunks, limit), 1):
        where = f"{src.name}:{lineno}"
        if isinstance(line, int):
            if ctx.owns(lineno - 1):
                ctx.bad(
                    where,
                    f"a line of {line:,} characters, over max_record_bytes={limit:,}",
                    "raise max_record_bytes, or split the record",
                )
            seen_record = True
            continue
        if not line.strip():
            continue
        if not seen_record and line.lstrip().startswith("["):
            ctx.bad_file(
                src.name,
                "is a JSON array, not JSON lines (one object per line)",
                "convert it, e.g. `jq -c '.[]' in.json > out.jsonl`",
            )
            return
        seen_record = True
        if not ctx.owns(lineno - 1):  # another reader's line (see ReadContext.shard)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            ctx.bad(
                where,
                f"not valid JSON ({e.msg} at column {e.colno})",
                "fix the line, or pass --on-bad-record skip to skip bad lines",
            )
            continue
        if not isinstance(record, dict):
            ctx.bad(
                where,
                f"a JSON {type(record).__name__}, expected an object",
                'each line must be an object like {"text": ...}; or pass --on-bad-record skip',
            )
            continue
        if field not in record:
            _field_missing(ctx, where, record.keys())
            continue
        text = record[field]
        if text_ok(ctx, where, text):
            meta = record_meta(ctx, record)
            yield Document(text=text, id=record_id(record, where), source=where, meta=meta)


class _TooLong(Exception):
    """A CSV line over `max_record_bytes`, raised in its place to `read_csv`."""


class _Lines:
    """The lines of a CSV file for `csv.reader`, counted. A line longer than the limit is not
    held in memory: `_TooLong` is raised in its place, which `csv.reader` passes on; it starts
    the next row afresh on the next line, as it does after its own errors."""

    def __init__(self, chunks: Iterable[str], limit: int) -> None:
        self._lines = lines(chunks, limit)
        self.count = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.count += 1
        if isinstance(line, int):
            raise _TooLong(line)
        return line


def read_csv(src: Source, ctx: ReadContext, delimiter: str) -> Iterator[Document]:
    field = ctx.options.text_field
    limit = ctx.options.max_record_bytes
    # A field may be a whole document, far beyond csv's default 128 KiB, but no field may grow
    # past a record's limit (a stray quote would otherwise swallow the rest of the file). The
    # limit is csv's, for the whole process; every reader sets it before reading.
    csv.field_size_limit(limit)
    source = _Lines(decoded_chunks(src, ctx, _what(src)), limit)
    reader = csv.reader(source, delimiter=delimiter)
    too_long = f"a line over max_record_bytes={limit:,} characters"
    try:
        header = next(reader, None)
    except (csv.Error, _TooLong) as e:
        reason = too_long if isinstance(e, _TooLong) else f"malformed CSV ({e})"
        ctx.bad_file(src.name, f"header row unreadable: {reason}", "fix the first line")
        return
    if header is None or field not in header:
        cols = ", ".join(repr(c) for c in header or []) or "none"
        ctx.bad_file(
            src.name,
            f"no column {field!r} in the header row (columns: {cols})",
            "pass --text-field NAME to read another column, or --on-bad-record skip",
        )
        return
    col = header.index(field)
    id_col = header.index("id") if "id" in header else None
    meta_cols = [(f, header.index(f)) for f in ctx.options.meta_fields if f in header]
    number = -1  # rows after the header, bad ones included (see ReadContext.owns)
    while True:
        where = f"{src.name}:{source.count + 1}"
        try:
            row = next(reader)
            reason = None
        except StopIteration:
            return
        except _TooLong:
            reason = too_long
        except csv.Error as e:
            reason = f"malformed CSV ({e})"
        if reason is None and not row:
            continue
        number += 1
        if not ctx.owns(number):
            continue
        if reason is not None:
            ctx.bad(where, reason, "fix the row, or pass --on-bad-record skip to skip such rows")
            continue
        if col >= len(row):
            ctx.bad(
                where,
                f"{len(row)} field(s), but {field!r} is column {col + 1}",
                "fix the row, or pass --on-bad-record skip",
            )
            continue
        doc_id = row[id_col] if id_col is not None and id_col < len(row) else where
        meta = {f: row[i] for f, i in meta_cols if i < len(row) and row[i]}
        yield Document(text=row[col], id=doc_id, source=where, meta=meta)


def read_parquet(src: Source, ctx: ReadContext) -> Iterator[Document]:
    import pyarrow.parquet as pq

    field = ctx.options.text_field
    with src.open_raw() as raw:
        try:
            pf = pq.ParquetFile(raw)
        except Exception as e:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{src.name}: not a readable Parquet file ({e})") from e
        names = pf.schema_arrow.names
        if field not in names:
            ctx.bad_file(
                src.name,
                f"no column {field!r} (columns: {', '.join(map(repr, names))})",
                "pass --text-field NAME to read another column, or --on-bad-record skip",
            )
            return
        has_id = "id" in names and field != "id"
        meta_cols = [f for f in ctx.options.meta_fields if f in names and f != "id"]
        columns = [field, *(["id"] if has_id else []), *meta_cols]
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if has_id else [None] * len(texts)
            metas = batch.select(meta_cols).to_pylist() if meta_cols else [{}] * len(texts)
            for text, rid, values in zip(texts, ids, metas, strict=True):
                row += 1
                if not ctx.owns(row - 1):
                    continue
                where = f"{src.name}:{row}"
                if text_ok(ctx, where, text):
                    doc_id = where if rid is None else str(rid)
                    meta = plain_meta(values)
                    yield Document(text=text, id=doc_id, source=where, meta=meta)
