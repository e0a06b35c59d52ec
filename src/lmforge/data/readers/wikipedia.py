"""Wikipedia `pages-articles` XML dumps in, clean article text out.

The dump (plain, .bz2 or any compression; UTF-8 or UTF-16 with a byte-order mark, which expat
detects) is streamed with `xml.etree.ElementTree.iterparse`, and each `<page>` is dropped from
the tree once read, so memory stays flat however large the dump. Only pages in
`wiki_namespaces` (0, the articles, by default) are kept; redirects and other namespaces are
counted in `ReadReport.skipped_records`.

Wikitext becomes text with mwparserfromhell: templates, tables, `<ref>`s, files and images,
categories, interlanguage links, comments and magic words are removed; links are replaced by
their text; headings stay as lines of their own; bold/italic quotes go. Three cuts are made by
hand before parsing, as WikiExtractor and gensim do, because they are the slow and fragile
part of the parse and their content is dropped anyway: `<ref>` elements and comments (which
never nest) with a regular expression, templates by matching `{{`/`}}` pairs (building
mwparserfromhell's node tree for them took a fifth of the time), and tables, which MediaWiki
only opens and closes at the start of a line, line by line. Parsing the rest with
`skip_style_tags` avoids mwparserfromhell's failure mode on unbalanced `''`, which leaves
whole paragraphs of raw markup behind. About 5 MB of dump XML (85 articles) per CPU-second.

meta: `title`, `page_id`, `url`. A document's `source` is "file:N" for the N-th `<page>`.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Tag, Text, Wikilink

from lmforge.data.document import DataError, Document
from lmforge.data.readers.base import STREAM_ERRORS, ReadContext, Source

log = logging.getLogger(__name__)

# Namespace keys whose links are not part of the text: Media, File, Category.
_DROP_NAMESPACE_KEYS = {"-2", "6", "14"}
# The canonical (English) names are valid on every wiki, besides the local ones in <siteinfo>.
_CANONICAL_DROP = {"media", "file", "image", "category"}
# Tags whose content is not running text.
_DROP_TAGS = {
    "ref", "references", "gallery", "math", "chem", "ce", "timeline", "score", "graph",
    "imagemap", "inputbox", "templatedata", "templatestyles", "categorytree", "mapframe",
    "maplink", "table", "includeonly", "syntaxhighlight", "source", "hiero", "indicator",
    "section", "noinclude",
}  # fmt: skip
# Tags that end a line of text, in HTML and as wiki list/definition markup.
_BREAK_TAGS = {"br", "p", "div", "li", "tr", "blockquote", "poem", "dd", "dt", "hr", "pre"}
_LIST_MARKUP = {"*", "#", ";", ":"}
# An interwiki/interlanguage prefix: `de`, `zh-min-nan`, `simple`, `wikt`.
_INTERWIKI = re.compile(r"[a-z][a-z0-9-]{1,15}")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_REF = re.compile(r"<ref\b[^>]*?/>|<ref\b[^>]*>.*?(?:</ref\s*>|\Z)", re.S | re.I)
_MAGIC = re.compile(r"__[A-Z]{3,}__")
_BLANKS = re.compile(r"\n{3,}")


def _drop_tables(text: str) -> str:
    if "{|" not in text:
        return text
    out, depth = [], 0
    for line in text.split("\n"):
        s = line.lstrip()
        if s.startswith("{|"):
            depth += 1
        elif depth and s.startswith("|}"):
            depth -= 1
            if depth == 0 and s[2:].strip():
                out.append(s[2:])  # e.g. the "}}" of a template that held the table
        elif not depth:
            out.append(line)
    return "\n".join(out)


_BRACES = re.compile(r"\{\{|\}\}")


def _drop_templates(text: str) -> str:
    """Cut balanced `{{...}}` spans (templates, nested or not); an unclosed one is left."""
    if "{{" not in text:
        return text
    out, depth, start, last = [], 0, 0, 0
    for m in _BRACES.finditer(text):
        if m.group() == "{{":
            if depth == 0:
                start = m.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                out.append(text[last:start])
                last = m.end()
    out.append(text[last:])
    return "".join(out)


def _render(code: Any, out: list[str], drop: set[str]) -> None:
    for node in code.nodes:
        kind = type(node)
        if kind is Text:
            out.append(node.value)
        elif kind is Wikilink:
            title = str(node.title).strip()
            prefix = None
            if title.startswith(":"):  # [[:Category:X]] is a link to the page, shown as text
                title = title[1:]
            elif ":" in title:
                prefix = title.split(":", 1)[0].strip().lower()
            if prefix in drop:
                continue
            if node.text is not None:
                _render(node.text, out, drop)
            elif prefix is not None and _INTERWIKI.fullmatch(prefix):
                continue  # [[de:Anarchismus]]: an interlanguage link, not text
            else:
                out.append(title.split("#", 1)[0] or title.lstrip("#"))
        elif kind is Tag:
            tag = str(node.tag).strip().lower()
            if tag in _DROP_TAGS:
                continue
            breaks = tag in _BREAK_TAGS or node.wiki_markup in _LIST_MARKUP
            if breaks:
                out.append("\n")
            if node.contents is not None:
                _render(node.contents, out, drop)
            if breaks:
                out.append("\n")
        elif kind is Heading:
            out.append("\n")
            _render(node.title, out, drop)
            out.append("\n")
        elif kind is ExternalLink:
            if node.title is not None:  # [http://x label] -> label; a bare URL goes
                _render(node.title, out, drop)
        elif kind is HTMLEntity:
            out.append(node.normalize())
        # Templates, comments, template arguments: not text.


def wikitext_to_text(wikitext: str, drop_prefixes: set[str] | None = None) -> str:
    """Plain text of one article's wikitext (see the module docstring for what is kept).

    `drop_prefixes`: lower-case namespace names whose links are removed (the wiki's local
    names for File, Category and Media); the English names are always removed.
    """
    drop = _CANONICAL_DROP | (drop_prefixes or set())
    wikitext = _drop_tables(_drop_templates(_REF.sub("", _COMMENT.sub("", wikitext))))
    out: list[str] = []
    _render(mwparserfromhell.parse(wikitext, skip_style_tags=True), out, drop)
    text = _MAGIC.sub("", "".join(out).replace("'''", "").replace("''", ""))
    lines = [" ".join(line.split()) for line in text.split("\n")]  # spaces left by removals
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class _Site:
    """What <siteinfo> says: database name, page URL prefix, link prefixes to drop."""

    def __init__(self) -> None:
        self.dbname = "wiki"
        self.url_prefix: str | None = None
        self.drop: set[str] = set()

    def read(self, siteinfo: ET.Element) -> None:
        for child in siteinfo:
            name = _local(child.tag)
            if name == "dbname" and child.text:
                self.dbname = child.text.strip()
            elif name == "base" and child.text:
                self.url_prefix = child.text.strip().rsplit("/", 1)[0] + "/"
            elif name == "namespaces":
                for ns in child:
                    if ns.get("key") in _DROP_NAMESPACE_KEYS and ns.text:
                        self.drop.add(ns.text.strip().lower())

    def url(self, title: str) -> str | None:
        if self.url_prefix is None:
            return None
        return self.url_prefix + quote(title.replace(" ", "_"), safe=":/()!*,;@$'-._~")


def _page(page: ET.Element, n: int, site: _Site, src: Source, ctx: ReadContext):
    report = ctx.report
    ns_text = page.findtext("{*}ns") or "0"
    if page.find("{*}redirect") is not None:
        report.skip_record("wikipedia redirect")
        return None
    try:
        ns = int(ns_text)
    except ValueError:
        ns = None
    if ns not in ctx.options.wiki_namespaces:
        report.skip_record(f"wikipedia page in namespace {ns_text}")
        return None
    title = page.findtext("{*}title") or ""
    page_id = (page.findtext("{*}id") or "").strip()
    wikitext = page.findtext("{*}revision/{*}text") or ""
    where = f"{src.name}:{n}"
    if wikitext.lstrip()[:9].upper() == "#REDIRECT":  # dumps without the <redirect> element
        report.skip_record("wikipedia redirect")
        return None
    try:
        text = wikitext_to_text(wikitext, site.drop)
    except Exception as e:  # mwparserfromhell gives up on some pathological markup
        ctx.bad(where, f"wikitext not parseable ({type(e).__name__}: {e})", "it is skipped")
        return None
    if not text:
        report.skip_record("wikipedia article with no text left after cleaning")
        return None
    meta: dict[str, Any] = {"title": title, "page_id": page_id}
    url = site.url(title)
    if url:
        meta["url"] = url
    doc_id = f"{site.dbname}-{page_id}" if page_id else where
    return Document(text=text, id=doc_id, source=where, meta=meta)


def read_wikipedia(src: Source, ctx: ReadContext) -> Iterator[Document]:
    """Articles of a MediaWiki XML export (`pages-articles` dumps)."""
    site = _Site()
    root: ET.Element | None = None
    n = 0
    with src.open() as f:
        events = ET.iterparse(f, events=("start", "end"))
        try:
            for event, el in events:
                if root is None:
                    root = el
                    if _local(el.tag) != "mediawiki":
                        ctx.bad_file(
                            src.name,
                            f"an XML file whose root is <{_local(el.tag)}>, not <mediawiki>",
                            "only MediaWiki XML dumps (pages-articles) are read",
                        )
                        return
                    continue
                if event != "end":
                    continue
                name = _local(el.tag)
                if name == "siteinfo":
                    site.read(el)
                    root.clear()
                elif name == "page":
                    n += 1
                    doc = _page(el, n, site, src, ctx) if ctx.owns(n - 1) else None
                    root.clear()  # drop the page (and every page before it) from the tree
                    if doc is not None:
                        yield doc
        except DataError:
            raise
        except (ET.ParseError, *STREAM_ERRORS) as e:
            if root is None and isinstance(e, ET.ParseError) and e.position == (1, 0):
                if ctx.owns(0):
                    ctx.empty(src.name)
                return
            line, col = getattr(e, "position", (None, None))
            position = f"line {line}, column {col}" if line else f"page {n + 1}"
            if ctx.owns(n):  # the page that broke off: one shard reports it
                ctx.read_error(src.name, f"{position} (after {n} pages)", e, "a whole XML dump")
