"""Streaming readers: files and folders of raw text in, `Document`s out.

Formats go by suffix: .txt/.md (a whole file is one document), .jsonl/.json (one JSON object per
line), .parquet, .csv/.tsv (a header row names the columns). An outer .gz, .bz2 or .zst suffix
means compressed (`x.jsonl.gz`, `x.txt.zst`). Nothing reads a whole file at once: text files
are decoded in chunks and yielded as parts of about `max_part_chars` characters (see
`lmforge.data.document`), record files one record at a time.

Every problem is either raised as a `DataError` naming the file (and line) and the fix, or, when
the caller chose to skip bad records, counted with its reason in a `ReadReport`.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from lmforge.data.document import DataError, Document

log = logging.getLogger(__name__)

FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
}
COMPRESSIONS = (".gz", ".bz2", ".zst")
BAD_RECORD_MODES = ("skip", "fail")
MAX_EXAMPLES = 20
DEFAULT_MAX_PART_CHARS = 1_000_000
_READ_BYTES = 1 << 20
_SUPPORTED = (
    f"{' '.join(FORMATS)}, optionally compressed as {' '.join(COMPRESSIONS)} (e.g. x.jsonl.gz)"
)


@dataclass
class ReadReport:
    """What reading saw: files read and skipped, bad records, undecodable bytes."""

    files_read: list[str] = field(default_factory=list)
    # {"path": ..., "reason": ...} for every file not read (unknown suffix, no text column...).
    files_skipped: list[dict[str, str]] = field(default_factory=list)
    bad_records: int = 0
    # The first MAX_EXAMPLES bad records as "file:line: reason".
    bad_record_examples: list[str] = field(default_factory=list)
    # Per file, how many bytes were not valid in its encoding and became U+FFFD.
    replaced_bytes: dict[str, int] = field(default_factory=dict)

    def add_bad(self, where: str, reason: str) -> None:
        self.bad_records += 1
        if len(self.bad_record_examples) < MAX_EXAMPLES:
            self.bad_record_examples.append(f"{where}: {reason}")

    def skip_file(self, path: Path | str, reason: str) -> None:
        self.files_skipped.append({"path": str(path), "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["replaced_bytes_total"] = sum(self.replaced_bytes.values())
        return d


def detect_format(path: Path | str) -> tuple[str, str | None] | None:
    """`(format, compression)` for a file name, or None when its suffix is not readable."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = suffixes.pop()
    if not suffixes or suffixes[-1] not in FORMATS:
        return None
    fmt = FORMATS[suffixes[-1]]
    if fmt == "parquet" and compression:
        return None  # Parquet compresses internally and needs a seekable file.
    return fmt, compression


def list_input_files(
    inputs: Iterable[str | os.PathLike] | str | os.PathLike, report: ReadReport | None = None
) -> list[tuple[Path, str, str | None]]:
    """Expand files and folders into `(path, format, compression)`, in a deterministic order.

    Folders are walked recursively in sorted order, hidden files and folders skipped; files with
    an unknown suffix inside a folder are skipped and recorded in `report`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise DataError("no inputs given: pass at least one file or folder of text")
    report = report if report is not None else ReadReport()
    out: list[tuple[Path, str, str | None]] = []
    for p in inputs:
        if not p.exists():
            raise DataError(f"input {p} does not exist; check the path (it is read as given)")
        if p.is_dir():
            found, skipped = [], []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    fp = Path(root) / name
                    kind = detect_format(fp)
                    if kind is None:
                        skipped.append(fp)
                        report.skip_file(fp, "unknown suffix")
                    else:
                        found.append((fp, *kind))
            if skipped:
                log.info("skipped %d file(s) with unknown suffixes in %s", len(skipped), p)
            if not found:
                names = ", ".join(f.name for f in skipped[:5]) or "none"
                raise DataError(
                    f"folder {p} holds no readable files (non-hidden files seen: {names}); "
                    f"readable suffixes are {_SUPPORTED}"
                )
            out.extend(found)
        else:
            kind = detect_format(p)
            if kind is None:
                raise DataError(
                    f"{p}: cannot read files named like this (suffix {''.join(p.suffixes)!r}); "
                    f"readable suffixes are {_SUPPORTED}; rename or convert the file"
                )
            out.append((p, *kind))
    return out


def iter_documents(
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    *,
    text_field: str = "text",
    on_bad_record: str = "skip",
    report: ReadReport | None = None,
    max_part_chars: int = DEFAULT_MAX_PART_CHARS,
    warn: bool = True,
) -> Iterator[Document]:
    """Stream the documents (parts of documents, for .txt/.md) of every input file.

    `on_bad_record`: "skip" counts unparseable records and records without a string
    `text_field` in `report`; "fail" raises `DataError` at the first one.
    `warn`: log a warning for each file with undecodable bytes.
    """
    if on_bad_record not in BAD_RECORD_MODES:
        raise DataError(f"on_bad_record={on_bad_record!r}; expected one of {BAD_RECORD_MODES}")
    if max_part_chars < 1:
        raise DataError(f"max_part_chars={max_part_chars}; expected a positive number")
    report = report if report is not None else ReadReport()
    reader = _Reader(text_field, on_bad_record, report, max_part_chars, warn)
    for path, fmt, compression in list_input_files(inputs, report):
        report.files_read.append(str(path))
        yield from reader.read(path, fmt, compression)


# --- decoding ---------------------------------------------------------------------------------

# The decode error handler counts into whichever counter is active on this thread; it is set
# only around each synchronous decode call, so interleaved generators cannot mix their counts.
_active = threading.local()
_ERRORS = "lmforge-count-replace"


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    counter = getattr(_active, "counter", None)
    if counter is not None:
        counter[0] += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error(_ERRORS, _count_and_replace)


def _open_binary(path: Path, compression: str | None) -> BinaryIO:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(
            open(path, "rb"), read_across_frames=True, closefd=True
        )
    return open(path, "rb")


def _read_exact(f: BinaryIO, n: int) -> bytes:
    # Decompressing readers may return short reads before EOF.
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _decoded_chunks(path: Path, compression: str | None, report: ReadReport, warn: bool):
    """Yield the text of a file in chunks: UTF-16 when it starts with a BOM, else UTF-8."""
    counter = [0]
    try:
        with _open_binary(path, compression) as f:
            data = _read_exact(f, 4)
            if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                encoding = "utf-16"  # the decoder reads the BOM for the byte order
            elif data[:3] == codecs.BOM_UTF8:
                encoding = "utf-8-sig"
            else:
                encoding = "utf-8"
            decoder = codecs.getincrementaldecoder(encoding)(errors=_ERRORS)
            while True:
                _active.counter = counter
                try:
                    text = decoder.decode(data, final=not data)
                finally:
                    _active.counter = None
                if text:
                    yield text
                if not data:
                    break
                data = f.read(_READ_BYTES)
    except (OSError, EOFError, ValueError, zstandard.ZstdError) as e:
        if isinstance(e, DataError):
            raise
        what = f"a valid {compression} file" if compression else "a readable file"
        raise DataError(f"{path}: cannot read it ({e}); is it {what}?") from e
    if counter[0]:
        report.replaced_bytes[str(path)] = counter[0]
        if warn:
            log.warning(
                "%s: %d byte(s) were not valid %s and were replaced by U+FFFD",
                path,
                counter[0],
                encoding,
            )


def _lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines ending in "\\n" (kept); only "\\n" ends a line, unlike `str.splitlines`."""
    rest = ""
    for chunk in chunks:
        data = rest + chunk
        pos = 0
        while (i := data.find("\n", pos)) != -1:
            yield data[pos : i + 1]
            pos = i + 1
        rest = data[pos:]
    if rest:
        yield rest


# --- cutting large texts into parts -----------------------------------------------------------


def _clean_cut(buf: str, nl: int) -> bool:
    # A single "\n" between two non-space characters: GPT-2 style pre-tokenizers make it a token
    # of its own either way, so tokenizing the parts separately changes nothing.
    return 0 < nl < len(buf) - 1 and not buf[nl - 1].isspace() and not buf[nl + 1].isspace()


def _choose_cut(buf: str, start: int, size: int) -> int:
    """End (exclusive) of the next part of `buf[start:]`, about `size` characters long."""
    target = start + size
    nl = buf.rfind("\n", start, target)
    while nl != -1:
        if _clean_cut(buf, nl):
            return nl + 1
        nl = buf.rfind("\n", start, nl)
    end = min(len(buf), start + 2 * size)
    nl = buf.find("\n", target, end)
    while nl != -1:
        if _clean_cut(buf, nl):
            return nl + 1
        nl = buf.find("\n", nl + 1, end)
    nl = buf.rfind("\n", start, target)
    if nl != -1 and nl + 1 > start:
        return nl + 1
    return target  # one enormous line: cut it anywhere


def _parts(chunks: Iterable[str], size: int) -> Iterator[str]:
    """Re-cut text chunks into parts of about `size` characters; always at least one part."""
    buf, start = "", 0
    for chunk in chunks:
        buf = buf[start:] + chunk
        start = 0
        while len(buf) - start >= 2 * size:
            cut = _choose_cut(buf, start, size)
            yield buf[start:cut]
            start = cut
    while len(buf) - start > size:
        cut = _choose_cut(buf, start, size)
        yield buf[start:cut]
        start = cut
    yield buf[start:]


# --- one reader per format --------------------------------------------------------------------


class _Reader:
    def __init__(
        self, text_field: str, on_bad: str, report: ReadReport, max_part_chars: int, warn: bool
    ) -> None:
        self.text_field = text_field
        self.on_bad = on_bad
        self.report = report
        self.max_part_chars = max_part_chars
        self.warn = warn

    def read(self, path: Path, fmt: str, compression: str | None) -> Iterator[Document]:
        if fmt == "text":
            return self._text(path, compression)
        if fmt == "jsonl":
            return self._jsonl(path, compression)
        if fmt == "parquet":
            return self._parquet(path)
        return self._csv(path, compression, "\t" if fmt == "tsv" else ",")

    def _bad(self, where: str, reason: str, fix: str) -> None:
        if self.on_bad == "fail":
            raise DataError(f"{where}: {reason}; {fix}")
        self.report.add_bad(where, reason)

    def _bad_file(self, path: Path, reason: str, fix: str) -> None:
        if self.on_bad == "fail":
            raise DataError(f"{path}: {reason}; {fix}")
        log.warning("skipping %s: %s", path, reason)
        self.report.skip_file(path, reason)

    def _field_missing(self, where: str, keys: Iterable[str]) -> None:
        listed = ", ".join(repr(k) for k in keys) or "none"
        self._bad(
            where,
            f"no field {self.text_field!r} (its fields: {listed})",
            "pass --text-field NAME to read the text from another field, "
            "or --on-bad-record skip to skip such records",
        )

    def _text_ok(self, where: str, text: Any) -> bool:
        if isinstance(text, str):
            return True
        kind = "null" if text is None else type(text).__name__
        self._bad(
            where,
            f"field {self.text_field!r} is {kind}, expected a string",
            "pass --text-field NAME to read another field, or --on-bad-record skip",
        )
        return False

    def _text(self, path: Path, compression: str | None) -> Iterator[Document]:
        chunks = _decoded_chunks(path, compression, self.report, self.warn)
        parts = _parts(chunks, self.max_part_chars)
        prev = next(parts)
        i = 0
        for part in parts:  # one part of lookahead, to know which part is the last
            yield Document(text=prev, id=str(path), source=str(path), part=i, last=False)
            prev, i = part, i + 1
        yield Document(text=prev, id=str(path), source=str(path), part=i, last=True)

    def _jsonl(self, path: Path, compression: str | None) -> Iterator[Document]:
        chunks = _decoded_chunks(path, compression, self.report, self.warn)
        seen_record = False
        for lineno, line in enumerate(_lines(chunks), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            if not seen_record and line.lstrip().startswith("["):
                self._bad_file(
                    path,
                    "is a JSON array, not JSON lines (one object per line)",
                    "convert it, e.g. `jq -c '.[]' in.json > out.jsonl`",
                )
                return
            seen_record = True
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                self._bad(
                    where,
                    f"not valid JSON ({e.msg} at column {e.colno})",
                    "fix the line, or pass --on-bad-record skip to skip bad lines",
                )
                continue
            if not isinstance(record, dict):
                self._bad(
                    where,
                    f"a JSON {type(record).__name__}, expected an object",
                    'each line must be an object like {"text": ...}; or pass --on-bad-record skip',
                )
                continue
            if self.text_field not in record:
                self._field_missing(where, record.keys())
                continue
            text = record[self.text_field]
            if self._text_ok(where, text):
                yield Document(text=text, id=_record_id(record, where), source=where)

    def _csv(self, path: Path, compression: str | None, delimiter: str) -> Iterator[Document]:
        # Single fields can be whole documents, far beyond csv's default 128 KiB limit.
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
        chunks = _decoded_chunks(path, compression, self.report, self.warn)
        reader = csv.reader(_lines(chunks), delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None or self.text_field not in header:
                cols = ", ".join(repr(c) for c in header or []) or "none"
                self._bad_file(
                    path,
                    f"no column {self.text_field!r} in the header row (columns: {cols})",
                    "pass --text-field NAME to read another column, or --on-bad-record skip",
                )
                return
            col = header.index(self.text_field)
            id_col = header.index("id") if "id" in header else None
            line = reader.line_num
            for row in reader:
                where = f"{path}:{line + 1}"
                line = reader.line_num
                if not row:
                    continue
                if col >= len(row):
                    self._bad(
                        where,
                        f"{len(row)} field(s), but {self.text_field!r} is column {col + 1}",
                        "fix the row, or pass --on-bad-record skip",
                    )
                    continue
                doc_id = row[id_col] if id_col is not None and id_col < len(row) else where
                yield Document(text=row[col], id=doc_id, source=where)
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e

    def _parquet(self, path: Path) -> Iterator[Document]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from e
        names = pf.schema_arrow.names
        if self.text_field not in names:
            self._bad_file(
                path,
                f"no column {self.text_field!r} (columns: {', '.join(map(repr, names))})",
                "pass --text-field NAME to read another column, or --on-bad-record skip",
            )
            return
        columns = [self.text_field]
        if "id" in names and self.text_field != "id":
            columns.append("id")
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, rid in zip(texts, ids, strict=True):
                row += 1
                where = f"{path}:{row}"
                if self._text_ok(where, text):
                    yield Document(text=text, id=where if rid is None else str(rid), source=where)


def _record_id(record: dict[str, Any], where: str) -> str:
    rid = record.get("id")
    return str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else where


__all__ = [
    "DataError",
    "Document",
    "ReadReport",
    "detect_format",
    "iter_documents",
    "list_input_files",
]
