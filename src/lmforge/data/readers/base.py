"""What every reader shares: the options, the report of what reading saw, and byte decoding.

A reader turns one `Source` (a file, or a member of a .zip archive) into `Document`s. Problems
with the input never escape as a traceback: with `on_bad_record="skip"` (the default) they are
counted in the `ReadReport` with the file and the position (line, record or byte offset) and
reading goes on; with `"fail"` the first one raises a `DataError` that names the same.

Decoding is hand-written on top of `codecs` because no library does the three things together:
stream a file in chunks, detect a UTF-16/UTF-8 byte-order mark, and count (not just replace)
the undecodable bytes per file.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import logging
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

import zstandard

from lmforge.config import ConfigError
from lmforge.data.document import DataError

log = logging.getLogger(__name__)

COMPRESSIONS = (".gz", ".bz2", ".zst")
BAD_RECORD_MODES = ("skip", "fail")
MAX_EXAMPLES = 20
DEFAULT_MAX_PART_CHARS = 1_000_000
DEFAULT_MAX_RECORD_BYTES = 64 * 2**20
_READ_BYTES = 1 << 20
# The magic bytes each compression starts with.
_MAGIC = {".gz": b"\x1f\x8b", ".bz2": b"BZh", ".zst": b"\x28\xb5\x2f\xfd"}
# Errors that decompressors and file objects raise for truncated or corrupt data.
STREAM_ERRORS = (OSError, EOFError, ValueError, zstandard.ZstdError, zipfile.BadZipFile)


@dataclass(kw_only=True)
class ReadOptions:
    """How inputs are read; `iter_documents(..., **settings)` builds one from its keywords."""

    # Field (JSONL, Hugging Face datasets) or column (Parquet, CSV) holding the text.
    text_field: str = "text"
    # Fields or columns of a record (JSONL, CSV, Parquet, datasets) copied into the document's
    # meta when present and not null: url_blocklist reads "url" (C4 and FineWeb carry one),
    # and the pipeline keeps meta in the shards.
    meta_fields: tuple[str, ...] = ("url", "title", "timestamp", "date")
    # "skip": count bad records and unreadable stretches in the report and go on; "fail": raise.
    on_bad_record: str = "skip"
    # .txt/.md files are yielded in parts of about this many characters.
    max_part_chars: int = DEFAULT_MAX_PART_CHARS
    # A single record larger than this is reported and skipped instead of held in memory: a
    # JSONL or CSV line (measured in characters), an HTML page or a WARC response body (bytes).
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # Log a warning for each file with undecodable bytes.
    warn: bool = True
    # trafilatura: prefer leaving out doubtful text (menus, teasers) over keeping it.
    html_favor_precision: bool = True
    # trafilatura: skip its fallback extractors (readability, jusText); about 1.4x faster, but
    # it loses most of the text on some pages (2 of the 34 in html-sample/).
    html_fast: bool = False
    # MediaWiki namespaces kept from a Wikipedia dump (0 = articles).
    wiki_namespaces: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.on_bad_record not in BAD_RECORD_MODES:
            raise ConfigError(
                f"on_bad_record={self.on_bad_record!r}; expected one of {BAD_RECORD_MODES}"
            )
        if not self.text_field:
            raise ConfigError("text_field is empty; give the name of the field holding the text")
        if isinstance(self.meta_fields, str) or not all(
            isinstance(f, str) and f for f in self.meta_fields
        ):
            raise ConfigError(
                f"meta_fields={self.meta_fields!r}; expected a list of field names, "
                'e.g. ["url", "title"]'
            )
        self.meta_fields = tuple(f for f in self.meta_fields if f != self.text_field)
        for name in ("max_part_chars", "max_record_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}; expected a positive number")
        self.wiki_namespaces = tuple(int(n) for n in self.wiki_namespaces)
        if not self.wiki_namespaces:
            raise ConfigError("wiki_namespaces is empty; give at least one, e.g. (0,) for articles")


@dataclass
class ReadReport:
    """What reading saw: files read and skipped, bad records, unreadable stretches, skips."""

    files_read: list[str] = field(default_factory=list)
    # {"path": ..., "reason": ...} for every file not read (unknown suffix, no text column...).
    files_skipped: list[dict[str, str]] = field(default_factory=list)
    bad_records: int = 0
    # The first MAX_EXAMPLES bad records as "file:position: reason".
    bad_record_examples: list[str] = field(default_factory=list)
    # Per file, how many bytes were not valid in its encoding and became U+FFFD.
    replaced_bytes: dict[str, int] = field(default_factory=dict)
    # {"path", "position", "reason"} for each file whose reading stopped early (a truncated
    # .gz/.bz2/.warc.gz, a broken XML dump): what came before the position was read.
    read_errors: list[dict[str, str]] = field(default_factory=list)
    # Files with no content at all.
    empty_files: list[str] = field(default_factory=list)
    # Records left out on purpose, by reason: Wikipedia redirects, WARC request records, ...
    skipped_records: dict[str, int] = field(default_factory=dict)

    def add_bad(self, where: str, reason: str) -> None:
        self.bad_records += 1
        if len(self.bad_record_examples) < MAX_EXAMPLES:
            self.bad_record_examples.append(f"{where}: {reason}")

    def skip_file(self, path: Any, reason: str) -> None:
        self.files_skipped.append({"path": str(path), "reason": reason})

    def skip_record(self, reason: str, n: int = 1) -> None:
        self.skipped_records[reason] = self.skipped_records.get(reason, 0) + n

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["replaced_bytes_total"] = sum(self.replaced_bytes.values())
        return d


@dataclass(frozen=True)
class Source:
    """One readable thing: a file, or a member of an archive ("a.zip!dir/b.txt")."""

    name: str
    # The stored bytes (before decompression); a new stream each call.
    open_raw: Callable[[], BinaryIO]
    compression: str | None = None

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The decompressed bytes; closes the stored stream too on exit."""
        raw = self.open_raw()
        try:
            f = decompress(raw, self.compression)
            try:
                yield f
            finally:
                f.close()
        finally:
            raw.close()


def has_magic(src: Source) -> bool:
    """True when `src` starts like the compression its name says (then a failure to read it
    means it is truncated or corrupt, not misnamed)."""
    magic = _MAGIC.get(src.compression or "")
    if magic is None:
        return True
    try:
        with src.open_raw() as raw:
            return raw.read(len(magic)) == magic
    except OSError:
        return False


def decompress(raw: BinaryIO, compression: str | None) -> BinaryIO:
    """A reader of `raw` decompressed; closing it may leave `raw` open."""
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == ".bz2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if compression == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=True
        )  # type: ignore[return-value]
    return raw


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


def read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes; decompressing readers may return short reads before EOF."""
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def read_some(f: BinaryIO, n: int) -> tuple[bytes, BaseException | None]:
    """Up to `n` bytes, and the error that stopped the stream early, if one did.

    Reads with `read1` where the stream has it: a decompressor's `read(n)` raises at a
    truncation and loses the bytes it had decompressed in that call; `read1` returns them.
    """
    read = getattr(f, "read1", f.read)
    parts, got = [], 0
    try:
        while got < n:
            b = read(n - got)
            if not b:
                break
            parts.append(b)
            got += len(b)
    except STREAM_ERRORS as e:
        return b"".join(parts), e
    return b"".join(parts), None


def bom_encoding(head: bytes) -> str:
    """The encoding a file starting with `head` is read in: UTF-16 with a BOM, else UTF-8."""
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"  # the decoder reads the BOM for the byte order
    if head[:3] == codecs.BOM_UTF8:
        return "utf-8-sig"
    return "utf-8"


def note_replaced(ctx: ReadContext, name: str, n: int, encoding: str = "utf-8") -> None:
    if not n:
        return
    ctx.report.replaced_bytes[name] = ctx.report.replaced_bytes.get(name, 0) + n
    if ctx.options.warn:
        log.warning(
            "%s: %d byte(s) were not valid %s and were replaced by U+FFFD", name, n, encoding
        )


def decode_bytes(data: bytes, ctx: ReadContext, name: str, encoding: str = "utf-8") -> str:
    """`data` as text, invalid bytes replaced by U+FFFD and counted against `name`."""
    counter = [0]
    _active.counter = counter
    try:
        text = data.decode(encoding, errors=_ERRORS)
    finally:
        _active.counter = None
    note_replaced(ctx, name, counter[0], encoding)
    return text


def decoded_chunks(src: Source, ctx: ReadContext, what: str) -> Iterator[str]:
    """Yield the text of `src` in chunks: UTF-16 when it starts with a BOM, else UTF-8.

    A source that is not the compression its name says raises `DataError`: the name is wrong
    and only renaming or converting helps. A stream that breaks off (a truncated download)
    ends early and is recorded by `ctx.read_error`, with the decompressed byte offset. Only
    the reader that reports on the whole file (`ctx.reports_file`) records what this sees.
    """
    counter, pos, encoding = [0], 0, "utf-8"
    report = ctx.reports_file or ctx.options.on_bad_record == "fail"
    with src.open() as f:
        try:
            data = read_exact(f, 4)
        except STREAM_ERRORS as e:
            if not has_magic(src):
                raise DataError(f"{src.name}: cannot read it ({e}); is it {what}?") from e
            if report:  # cut before any data
                ctx.read_error(src.name, "byte 0 (decompressed)", e, what)
            return
        if not data:
            ctx.empty(src.name)
        encoding = bom_encoding(data)
        decoder = codecs.getincrementaldecoder(encoding)(errors=_ERRORS)
        error = None
        while True:
            _active.counter = counter
            try:  # final at the end, or where the stream broke: a cut character is counted
                text = decoder.decode(data, final=not data or error is not None)
            finally:
                _active.counter = None
            if text:
                yield text
            pos += len(data)
            if error is not None:
                if report:
                    ctx.read_error(src.name, f"byte {pos} (decompressed)", error, what)
                break
            if not data:
                break
            data, error = read_some(f, _READ_BYTES)
            if error is not None and not data:
                data = b""  # decode the decoder's tail, then report
    if report:
        note_replaced(ctx, src.name, counter[0], encoding)


def lines(chunks: Iterable[str], limit: int | None = None) -> Iterator[str | int]:
    """Lines ending in "\\n" (kept); only "\\n" ends a line, unlike `str.splitlines`.

    A line longer than `limit` characters is not held in memory: its length (an int) is
    yielded in its place once its end is found, so the caller can report it.
    """
    pending: list[str] = []  # pieces of the current line, joined once it ends
    size = 0
    too_long = False
    for chunk in chunks:
        pos = 0
        while (i := chunk.find("\n", pos)) != -1:
            size += i + 1 - pos
            if too_long or (limit is not None and size > limit):
                yield size
            elif pending:
                pending.append(chunk[pos : i + 1])
                yield "".join(pending)
            else:
                yield chunk[pos : i + 1]
            pending, size, too_long = [], 0, False
            pos = i + 1
        if pos < len(chunk):
            size += len(chunk) - pos
            if limit is not None and size > limit:
                too_long, pending = True, []
            elif not too_long:
                pending.append(chunk[pos:])
    if too_long:
        yield size
    elif pending:
        yield "".join(pending)


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


def parts(chunks: Iterable[str], size: int) -> Iterator[str]:
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


class ReadContext:
    """Options plus the report, with the one place that decides between counting and raising.

    `shard = (index, count)` lets `count` readers (the pipeline's map tasks) share one large
    file: each reads the whole file but extracts only the records whose number from 0 is
    `index` modulo `count` (`owns`), and reports only on those, so that together they yield
    every document once and report every problem once. Problems with the file as a whole
    (skipped, empty, undecodable bytes, a stream that breaks off) are reported by shard 0, a
    WARC record or Wikipedia page that breaks off by the shard that owns it. Record formats
    (JSON lines, CSV, Parquet, saved datasets) number their rows, WARC its records, Wikipedia
    its pages; other formats are read whole.
    """

    def __init__(
        self, options: ReadOptions, report: ReadReport, shard: tuple[int, int] = (0, 1)
    ) -> None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard={shard}; expected (index, count) with 0 <= index < count")
        self.options = options
        self.report = report
        self.shard = shard
        # The number of the record last claimed by `owns`: where in the file the document
        # being yielded stands, which orders the documents of the shards of one file.
        self.record = -1

    @property
    def reports_file(self) -> bool:
        """True for the one reader of a shared file that reports on the file as a whole."""
        return self.shard[0] == 0

    def owns(self, number: int) -> bool:
        """Whether record `number` (from 0) is this reader's to extract and report on."""
        index, count = self.shard
        if number % count != index:
            return False
        self.record = number
        return True

    def bad(self, where: str, reason: str, fix: str) -> None:
        if self.options.on_bad_record == "fail":
            raise DataError(f"{where}: {reason}; {fix}")
        self.report.add_bad(where, reason)

    def bad_file(self, name: str, reason: str, fix: str) -> None:
        if self.options.on_bad_record == "fail":
            raise DataError(f"{name}: {reason}; {fix}")
        if self.reports_file:
            log.warning("skipping %s: %s", name, reason)
            self.report.skip_file(name, reason)

    def read_error(self, name: str, position: str, error: BaseException, what: str) -> None:
        """Reading `name` stopped at `position`; what came before it was kept."""
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if self.options.on_bad_record == "fail":
            raise DataError(
                f"{name}: reading stopped at {position} ({reason}); is it {what}? "
                "pass --on-bad-record skip to keep what comes before it"
            ) from error
        log.warning("%s: reading stopped at %s (%s); kept what came before", name, position, reason)
        self.report.read_errors.append({"path": name, "position": position, "reason": reason})

    def empty(self, name: str) -> None:
        if self.reports_file:
            self.report.empty_files.append(name)
