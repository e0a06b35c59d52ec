"""Web archives: WARC files (Common Crawl, wget, ClueWeb) and WET text extracts, with warcio.

WARC `response` records holding HTML become documents through trafilatura (see `html.py`);
WET `conversion` records (Common Crawl's extracted text) become documents as they are. Every
other record (warcinfo, request, metadata, revisit, resource) and every response that is not a
2xx HTML page is skipped and counted by reason in `ReadReport.skipped_records`.

warcio reads every file in `shared/data/warc-sample/` (per-record gzip, uncompressed, chunked
HTTP bodies, wget's `<...>`-wrapped target URIs, ClueWeb's malformed dates) and writes the
archives `lmforge data crawl` saves. It stops quietly at a truncated file, so each record's
block is drained and checked against its Content-Length: a short one ends reading with an
entry in `ReadReport.read_errors` naming the record's byte offset, and is not yielded.

A document's `source` is "file@OFFSET", the byte offset of its record in the stored (possibly
compressed) file, where `warcio.ArchiveIterator` can seek to read it again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from lmforge.data.document import DataError, Document
from lmforge.data.readers.base import STREAM_ERRORS, ReadContext, Source, decode_bytes, read_exact
from lmforge.data.readers.html import extract_or_count

HTML_TYPES = ("text/html", "application/xhtml+xml")


def _unwrap(value: str | None) -> str | None:
    """wget writes `WARC-Target-URI: <http://...>`; WARC/1.1 and record ids use `<...>` too."""
    if value is None:
        return None
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value or None


def _mime_and_charset(content_type: str | None) -> tuple[str, str | None]:
    if not content_type:
        return "", None
    mime, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'")
    return mime.strip().lower(), charset


def _html_input(body: bytes, charset: str | None) -> bytes | str:
    """The HTTP header's charset wins when it decodes the body; else trafilatura guesses."""
    if charset:
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    return body


def _drained_short(record: Any) -> int:
    """Bytes of the record's block that are missing (0 when it is whole), after reading it."""
    raw = record.raw_stream
    while raw.read(1 << 16):
        pass
    return getattr(raw, "limit", 0) or 0


def _body(record: Any, where: str, ctx: ReadContext) -> bytes | None:
    """The record's payload (HTTP chunking and Content-Encoding undone), up to the limit + 1."""
    try:
        return read_exact(record.content_stream(), ctx.options.max_record_bytes + 1)
    except Exception as e:  # warcio's chunked, gzip and brotli decoders raise their own types
        ctx.bad(where, f"payload not decodable ({type(e).__name__}: {e})", "it is skipped")
        return None


def _meta(headers: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    url = _unwrap(headers.get_header("WARC-Target-URI"))
    if url:
        meta["url"] = url
    date = headers.get_header("WARC-Date")
    if date:
        meta["date"] = date.strip()
    rid = _unwrap(headers.get_header("WARC-Record-ID"))
    if rid:
        meta["warc_record_id"] = rid
    return meta


def _response(record: Any, where: str, ctx: ReadContext) -> Document | None:
    report = ctx.report
    http = record.http_headers
    if http is None:
        report.skip_record("warc response without HTTP headers")
        return None
    status = (http.get_statuscode() or "").strip()
    if not status.startswith("2"):
        report.skip_record(f"warc response with HTTP status {status[:1] or '?'}xx")
        return None
    mime, charset = _mime_and_charset(http.get_header("Content-Type"))
    if not mime:  # no HTTP Content-Type: Common Crawl's own payload detection, if present
        mime, _ = _mime_and_charset(record.rec_headers.get_header("WARC-Identified-Payload-Type"))
    if mime not in HTML_TYPES:
        report.skip_record("warc response that is not HTML")
        return None
    limit = ctx.options.max_record_bytes
    body = _body(record, where, ctx)
    if body is None:
        return None
    if len(body) > limit:
        ctx.bad(where, f"an HTML body over max_record_bytes={limit:,}", "raise max_record_bytes")
        return None
    meta = _meta(record.rec_headers)
    got = extract_or_count(_html_input(body, charset), ctx, where, url=meta.get("url"))
    if got is None:
        return None
    text, page_meta = got
    meta.update({k: v for k, v in page_meta.items() if k not in meta})
    return Document(text=text, id=meta.get("warc_record_id", where), source=where, meta=meta)


def _conversion(record: Any, where: str, ctx: ReadContext, name: str) -> Document | None:
    limit = ctx.options.max_record_bytes
    data = _body(record, where, ctx)
    if data is None:
        return None
    if len(data) > limit:
        ctx.bad(where, f"a text record over max_record_bytes={limit:,}", "raise max_record_bytes")
        return None
    text = decode_bytes(data, ctx, name)
    if not text.strip():
        ctx.report.skip_record("wet conversion record with no text")
        return None
    meta = _meta(record.rec_headers)
    lang = record.rec_headers.get_header("WARC-Identified-Content-Language")
    if lang:
        meta["lang"] = lang.strip()
    return Document(text=text, id=meta.get("warc_record_id", where), source=where, meta=meta)


def read_warc(src: Source, ctx: ReadContext) -> Iterator[Document]:
    """Documents of a .warc/.wet file: HTML responses extracted, conversion records as is."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    # warcio reads per-record gzip itself (and must: it needs the member boundaries); other
    # compressions are undone first.
    stream_src = (
        src if src.compression not in (None, ".gz") else dataclasses.replace(src, compression=None)
    )
    what = "a valid WARC file"
    offset, records = 0, 0
    with stream_src.open() as f:
        it = ArchiveIterator(f)
        try:
            for record in it:
                records += 1
                # The start of this record; `get_record_offset()` would read the record first.
                offset = it.offset
                where = f"{src.name}@{offset}"
                if record.format != "warc":  # warcio falls back to parsing ARC headers
                    if not ctx.owns(records - 1):
                        return
                    if records == 1:
                        ctx.bad_file(src.name, "not a WARC file", "check the file's format")
                    else:
                        ctx.read_error(
                            src.name, f"byte {offset}", ValueError("not a WARC record"), what
                        )
                    return
                kind = record.rec_type
                mine = ctx.owns(records - 1)
                if not mine:
                    doc = None
                elif kind == "response":
                    doc = _response(record, where, ctx)
                elif kind == "conversion":
                    doc = _conversion(record, where, ctx, src.name)
                else:
                    ctx.report.skip_record(f"warc {kind} record")
                    doc = None
                missing = _drained_short(record)
                if missing:  # a truncated file: this record and what follows are lost
                    if mine:
                        short = EOFError(f"{missing:,} bytes of its block are missing; truncated?")
                        ctx.read_error(src.name, f"the record at byte {offset}", short, what)
                    return
                if doc is not None:
                    yield doc
        except DataError:
            raise
        except (ArchiveLoadFailed, *STREAM_ERRORS) as e:
            if not ctx.owns(records):  # the record that broke off: one shard reports
                return
            if records == 0 and offset == 0:
                ctx.bad_file(src.name, f"not a WARC file ({e})", "check the file's format")
            else:
                ctx.read_error(src.name, f"the record after byte {offset}", e, what)
            return
    if records == 0 and ctx.owns(0):
        ctx.empty(src.name)
