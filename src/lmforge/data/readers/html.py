"""HTML pages in, their main text out, with trafilatura.

trafilatura (Barbaresi, ACL 2021) finds the main content of a page and drops navigation,
boilerplate, scripts and comments; it is what FineWeb and RefinedWeb-style pipelines use, and
its fallbacks (readability, jusText) rescue pages its own heuristics miss. Nothing here strips
tags by hand. `meta` gets `title`, `url` (the page's canonical or og:url link), `date` and
`lang` (the `<html lang>` attribute) when the page has them.

The metadata comes from trafilatura's own functions, called one by one (`_metadata`) rather
than through `bare_extraction(with_metadata=True)`: that also looks for the author, site name,
categories, tags and licence, which are not kept, and cost as much as the title, URL and date
together (measured on the 119 HTML pages of `shared/data/html-sample` and `warc-sample`: the
whole extraction 2.5 against 2.0 CPU-seconds, text and metadata identical on every page).

A page that is empty, not parseable as HTML, or has no main text is a bad record: counted in
the report with its file, never an exception.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from lmforge.data.document import Document
from lmforge.data.readers.base import ReadContext, ReadOptions, Source, read_some

log = logging.getLogger(__name__)

_NO_TEXT = "no main text found (an empty page, a page of links, or not HTML)"


def _trafilatura():
    try:
        import trafilatura
    except ImportError as e:  # a runtime dependency; this only happens in a broken install
        raise ImportError(
            "reading HTML needs trafilatura: pip install trafilatura lxml_html_clean"
        ) from e
    # trafilatura logs an ERROR for every page it cannot parse; those pages are counted in the
    # ReadReport instead. Quieten it unless the application configured its level itself.
    logger = logging.getLogger("trafilatura")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)
    return trafilatura


def extract_html(
    data: bytes | str, options: ReadOptions, url: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """`(main text, meta)` of one page, or None when it has no main text.

    `url` (where the page came from, e.g. a WARC record's target) is passed to trafilatura
    and kept as `meta["url"]`; without it the page's own canonical link is used.
    """
    trafilatura = _trafilatura()
    from trafilatura.utils import load_html

    tree = load_html(data)
    if tree is None:
        return None
    lang = tree.get("lang") or tree.get("{http://www.w3.org/XML/1998/namespace}lang")
    title, page_url, date = _metadata(tree, url)
    doc = trafilatura.bare_extraction(
        tree,
        url=url or page_url,
        with_metadata=False,
        include_comments=False,
        favor_precision=options.html_favor_precision,
        fast=options.html_fast,
    )
    if doc is None or not (doc.text or "").strip():
        return None
    meta: dict[str, Any] = {}
    for key, value in (("title", title), ("url", url or page_url), ("date", date)):
        if value:
            meta[key] = value
    if lang and lang.strip():
        meta["lang"] = lang.strip()
    return doc.text, meta


def _metadata(tree: Any, url: str | None) -> tuple[str | None, str | None, str | None]:
    """`(title, url, date)` of a page, as `trafilatura.extract_metadata` finds them (the same
    steps in the same order: meta tags, JSON-LD, the title element, the canonical link, then
    htmldate's extensive date search), without the fields that are not kept."""
    from htmldate import find_date
    from trafilatura import metadata as tm
    from trafilatura.settings import set_date_params

    md = tm.examine_meta(tree)
    try:
        md = tm.extract_meta_json(tree, md)
    except Exception:  # noqa: BLE001  (trafilatura, too, carries on without the JSON-LD)
        pass
    if not md.title:
        md.title = tm.extract_title(tree)
    if not md.url:
        md.url = tm.extract_url(tree, url)
    md.date = find_date(tree, **set_date_params(True), url=md.url)
    md.clean_and_trim()
    return md.title, md.url, md.date


def extract_or_count(
    data: bytes | str, ctx: ReadContext, where: str, url: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """`extract_html`, with a page that yields nothing counted as a bad record at `where`."""
    try:
        got = extract_html(data, ctx.options, url)
    except Exception as e:  # lxml and trafilatura fail in many ways on broken markup
        ctx.bad(where, f"HTML extraction failed ({type(e).__name__}: {e})", "it is skipped")
        return None
    if got is None:
        ctx.bad(where, _NO_TEXT, "it is skipped")
    return got


def read_html(src: Source, ctx: ReadContext) -> Iterator[Document]:
    """One document per page file (.html/.htm, optionally compressed)."""
    limit = ctx.options.max_record_bytes
    with src.open() as f:
        data, error = read_some(f, limit + 1)
    if error is not None:  # a truncated .html.gz: the page is not whole, so it is not used
        ctx.read_error(src.name, f"byte {len(data)} (decompressed)", error, "a whole HTML file")
        return
    if not data.strip():
        ctx.empty(src.name)
        ctx.bad(src.name, "an empty HTML file", "remove it, or ignore this count")
        return
    if len(data) > limit:
        ctx.bad(
            src.name,
            f"an HTML page over max_record_bytes={limit:,} bytes",
            "raise max_record_bytes if the page is real",
        )
        return
    got = extract_or_count(data, ctx, src.name)
    if got is None:
        return
    text, meta = got
    yield Document(text=text, id=src.name, source=src.name, meta=meta)
