"""Blocklist filters: `url_blocklist` (drop documents from listed domains) and `toxicity`
(drop documents with words from a list of obscene words).

Both are plain list lookups, the way C4 (Raffel et al. 2020, section 2.2: pages with any word
of the "List of Dirty, Naughty, Obscene or Otherwise Bad Words" were dropped) and RefinedWeb /
FineWeb (a URL blocklist of adult domains) do it; a list lookup is explainable, fast and needs
no model, and is only a coarse filter: it misses what is not listed and cannot tell a quote
from an insult.

The default word list, `blocklists/en.txt`, is a short list written for lmforge: unambiguous
English profanity and sexually explicit terms, no slurs, and no words with common innocent
senses ("cock", "dick", "ass"). It is not LDNOOBW: the list C4 used was that repository's
2014 English file (about 400 entries); the current file has grown to some 20 KB and includes
topical phrases ("climate change is", "islam is") that would silently drop ordinary news and
science text. To filter as C4 did, give `path` a copy of that list.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from lmforge.data.clean.base import (
    Kept,
    Rejected,
    Step,
    file_digest,
    register_step,
    step_settings,
)
from lmforge.data.clean.textutil import file_stamp, read_list_file, words
from lmforge.data.document import Document

DEFAULT_WORDS = Path(__file__).parent / "blocklists" / "en.txt"
_DOMAIN = re.compile(
    r"^(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$"
)


def _ascii_host(host: str) -> str:
    """`host` lower-cased, with Unicode labels in their IDNA ("xn--") form."""
    host = host.strip().strip(".").lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _domain_entry(entry: str) -> str:
    """A blocklist entry as a bare domain: "*.example.com" and ".example.com" mean example.com
    and its subdomains, like "example.com"."""
    return _ascii_host(entry.removeprefix("*.").removeprefix("."))


def _domain_set(domains: tuple[str, ...], path: str) -> frozenset[str]:
    """The domains of a `url_blocklist` (its `domains` and its file), checked; built once per
    process while the file is unchanged."""
    return _build_domain_set(domains, path, file_stamp(path) if path else None)


@functools.lru_cache(maxsize=8)
def _build_domain_set(domains: tuple[str, ...], path: str, stamp: object) -> frozenset[str]:
    entries = [(f"domains[{i}]", d) for i, d in enumerate(domains)]
    if path:
        entries += [(f"{path}:{line}", d) for line, d in read_list_file(path, "path")]
    out = set()
    for where, entry in entries:
        domain = _domain_entry(entry)
        if not _DOMAIN.match(domain):
            raise ValueError(
                f"{where}: {entry!r} is not a domain name; write one domain per line, "
                "like example.com (no scheme, path or port)"
            )
        out.add(domain)
    return frozenset(out)


def _word_list(path: str) -> tuple[frozenset[tuple[str, ...]], frozenset[str], int]:
    """`(entries as lower-cased word tuples, their first words, longest entry in words)`, built
    once per process while the file is unchanged."""
    return _build_word_list(path, file_stamp(path))


@functools.lru_cache(maxsize=8)
def _build_word_list(
    path: str, stamp: object
) -> tuple[frozenset[tuple[str, ...]], frozenset[str], int]:
    entries = set()
    for line, entry in read_list_file(path, "path"):
        ws = tuple(w.lower() for w in words(entry))
        if not ws:
            raise ValueError(f"{path}:{line}: {entry!r} has no word characters")
        entries.add(ws)
    if not entries:
        raise ValueError(f"{path} lists no words; give a file with one word or phrase per line")
    return frozenset(entries), frozenset(e[0] for e in entries), max(map(len, entries))


@register_step
@dataclass(kw_only=True)
class URLBlocklist(Step):
    """Drop documents whose URL's host is a listed domain or a subdomain of one (reason
    "url_blocklist"). The URL is `meta[url_field]`; documents without one are kept and counted
    (note "no_url"): read it with `[read] meta_fields`, which takes "url" by default."""

    name: ClassVar[str] = "url_blocklist"

    # Blocked domains ("example.com" also blocks "www.example.com" unless subdomains=false).
    domains: list[str] = field(default_factory=list)
    # A file of more domains: one per line, "#" starts a comment.
    path: str = ""
    # Also block every subdomain of a listed domain.
    subdomains: bool = True
    url_field: str = "url"

    def __post_init__(self) -> None:
        if not self.domains and not self.path:
            raise ValueError("no domains to block; give `domains` or `path` (a file of domains)")
        _domain_set(tuple(self.domains), self.path)

    def setup(self) -> None:
        _domain_set(tuple(self.domains), self.path)

    def fingerprint(self) -> dict[str, Any]:
        return {**step_settings(self), "path_sha256": file_digest(self.path) if self.path else None}

    def blocked_by(self, url: str) -> str | None:
        """The listed domain that blocks `url`, or None."""
        blocked = _domain_set(tuple(self.domains), self.path)
        try:
            host = urlsplit(url if "//" in url else "//" + url).hostname
        except ValueError:  # a malformed URL, e.g. an invalid IPv6 host
            return None
        if not host:
            return None
        host = _ascii_host(host)
        if host in blocked:
            return host
        if self.subdomains:
            labels = host.split(".")
            for i in range(1, len(labels)):
                parent = ".".join(labels[i:])
                if parent in blocked:
                    return parent
        return None

    def process(self, doc: Document) -> Document | Rejected | Kept:
        url = doc.meta.get(self.url_field)
        if not isinstance(url, str) or not url.strip():
            return Kept(doc, "no_url")
        if domain := self.blocked_by(url):
            return Rejected("url_blocklist", f"{url} is on {domain}")
        return doc


@register_step
@dataclass(kw_only=True)
class Toxicity(Step):
    """Drop documents with listed words or phrases (whole words, case-insensitive): more than
    `max_count` hits, or hits making up more than `max_fraction` of the words (reason
    "toxicity"). The default, `max_count = 0`, is C4's rule: any hit drops the document."""

    name: ClassVar[str] = "toxicity"

    # Word list: one word or phrase per line, "#" comments; empty means the shipped en.txt.
    path: str = ""
    # Most hits allowed (None: no limit on the count).
    max_count: int | None = 0
    # Most hits as a fraction of the words (None: no limit on the fraction).
    max_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.max_count is None and self.max_fraction is None:
            raise ValueError("max_count and max_fraction are both unset; set at least one")
        if self.max_count is not None and self.max_count < 0:
            raise ValueError(f"max_count={self.max_count}; expected 0 or more")
        if self.max_fraction is not None and not 0 <= self.max_fraction <= 1:
            raise ValueError(f"max_fraction={self.max_fraction}; expected a fraction in [0, 1]")
        self._path = self.path or str(DEFAULT_WORDS)
        _word_list(self._path)

    def setup(self) -> None:
        _word_list(self._path)

    def fingerprint(self) -> dict[str, Any]:
        return {**step_settings(self), "path_sha256": file_digest(self._path)}

    def hits(self, ws: list[str]) -> list[str]:
        """The listed words and phrases among the lower-cased words `ws`, in order (a word is
        counted in one hit at most)."""
        entries, starts, longest = _word_list(self._path)
        found, i = [], 0
        while i < len(ws):
            if ws[i] not in starts:
                i += 1
                continue
            for n in range(min(longest, len(ws) - i), 0, -1):  # longest phrase first
                if tuple(ws[i : i + n]) in entries:
                    found.append(" ".join(ws[i : i + n]))
                    i += n
                    break
            else:
                i += 1
        return found

    def process(self, doc: Document) -> Document | Rejected:
        ws = words(doc.text.lower())
        found = self.hits(ws)
        if not found:
            return doc
        n_words = len(ws)
        too_many = self.max_count is not None and len(found) > self.max_count
        too_dense = self.max_fraction is not None and len(found) / n_words > self.max_fraction
        if too_many or too_dense:
            shown = ", ".join(sorted(set(found))[:5])
            return Rejected("toxicity", f"{len(found)} listed words in {n_words}: {shown}")
        return doc
