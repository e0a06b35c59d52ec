"""`pii`: replace e-mail addresses, phone numbers, IP addresses and credit-card numbers by
placeholders ("<EMAIL>", "<PHONE>", "<IP>", "<CREDIT_CARD>"), counting each kind in
`meta["pii"]`.

Pretraining pipelines do this with regular expressions (datatrove's `PIIFormatter`, BigCode's
StarCoder PII pass, Dolma's PII tagger): the formats are regular, a regex costs microseconds
per document, and its mistakes are easy to see. NER-based tools (Microsoft Presidio, scrubadub)
also find names and addresses, but need spaCy models (a download) and run about a thousand
times slower, which does not fit a pipeline over gigabytes. The patterns are written for few
false positives, since a placeholder in the middle of a price or a year damages the text:

- e-mail: `local@domain.tld`, ASCII only.
- IP: IPv4 dotted quads (each octet 0-255, not part of a longer dotted number, not glued to a
  letter as in "v1.2.3.4") and IPv6 addresses, both checked with `ipaddress`; an IPv6
  candidate needs a digit, so "a::b" in C++ or Ruby code stays. Version numbers written like
  "version 1.2.3.4" are valid IPv4 addresses and are replaced.
- credit card: 13-19 digits, maybe grouped by single spaces or hyphens, that pass the Luhn
  check (about 1 in 10 random digit strings do, so long numeric IDs are sometimes caught).
- phone: international numbers ("+44 20 7946 0958", "+49 (0)30 1234567", 8-15 digits);
  North American numbers with the area code, in parentheses or with one separator used
  throughout ("(212) 555-0123", "212.555.0123"), where area code and exchange do not start
  with 0 or 1, as the numbering plan requires; European national numbers with a trunk "0" and
  separators ("030 12345678", "01 23 45 67 89", "020 7946 0958", 9-12 digits). Unformatted
  digit runs ("2125550123") are not taken as phone numbers, and neither are years, dates,
  prices or times.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from lmforge.data.clean.base import Rejected, Step, register_step
from lmforge.data.document import Document

KINDS = ("email", "credit_card", "ip", "phone")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"(?<![\w.])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)(?!\w|[.,]\d)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})"
    r"(?![\w:]|\.\d)"
)
_PHONE = re.compile(
    # +44 20 7946 0958, +49 (0)30 1234567: digit groups need a separator (or a ")") before
    # them, which keeps backtracking linear on long digit runs.
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\)|(?:[ .-]|(?<=\)))\d{1,8}){1,6}(?![\w-]|[.,]\d)"
    r"|(?<![\w+.-])(?:1[ .-]?)?"  # optional NANP country code
    r"(?:\(\s?[2-9]\d\d\s?\)\s?[2-9]\d\d[ .-]?\d{4}"  # (212) 555-0123
    r"|[2-9]\d\d(?P<sep>[ .-])[2-9]\d\d(?P=sep)\d{4})"  # 212-555-0123, 212.555.0123
    r"(?![\w-]|[.,]\d)"
    r"|(?<![\w+.,/-])0\d{1,4}(?:[ /-]\d{2,8}){1,4}(?![\w-]|[.,/]\d)"  # 030 12345678
)


def luhn_valid(digits: str) -> bool:
    """Whether the digit string passes the Luhn checksum (every payment card number does)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(match: re.Match) -> bool:
    digits = re.sub(r"\D", "", match[0])
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _is_ipv6(match: re.Match) -> bool:
    if not any(c.isdigit() for c in match[0]):
        return False
    try:
        ipaddress.IPv6Address(match[0])
    except ValueError:
        return False
    return True


def _is_phone(match: re.Match) -> bool:
    digits = sum(c.isdigit() for c in match[0])
    if match[0].startswith("+"):
        return 8 <= digits <= 15
    if match[0].startswith("0"):
        return 9 <= digits <= 12
    return True


_PATTERNS: dict[str, tuple[re.Pattern, Callable[[re.Match], bool] | None]] = {
    "email": (_EMAIL, None),
    "credit_card": (_CARD, _is_card),
    "ip": (_IPV6, _is_ipv6),
    "ip4": (_IPV4, None),
    "phone": (_PHONE, _is_phone),
}


@register_step
@dataclass(kw_only=True)
class PII(Step):
    """Replace personal data by placeholders; `meta["pii"]` counts replacements per kind
    (only kinds that were found; no key when nothing was). Never drops a document."""

    name: ClassVar[str] = "pii"

    # What to replace, any of "email", "credit_card", "ip", "phone".
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    email_placeholder: str = "<EMAIL>"
    phone_placeholder: str = "<PHONE>"
    ip_placeholder: str = "<IP>"
    credit_card_placeholder: str = "<CREDIT_CARD>"

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"kinds has unknown {unknown}; expected some of {list(KINDS)}")
        if not self.kinds:
            raise ValueError(f"kinds is empty; expected some of {list(KINDS)}")

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """`(text with placeholders, {kind: replacements})`."""
        counts: dict[str, int] = {}
        # Fixed order: a card number or an IP must not be half-eaten by the phone pattern.
        for key, (pattern, valid) in _PATTERNS.items():
            kind = "ip" if key == "ip4" else key
            if kind not in self.kinds:
                continue
            placeholder = getattr(self, f"{kind}_placeholder")
            n = 0

            def replace(m: re.Match, valid=valid, placeholder=placeholder) -> str:
                nonlocal n
                if valid is not None and not valid(m):
                    return m[0]
                n += 1
                return placeholder

            text = pattern.sub(replace, text)
            if n:
                counts[kind] = counts.get(kind, 0) + n
        return text, counts

    def process(self, doc: Document) -> Document | Rejected:
        text, counts = self.scrub(doc.text)
        if not counts:
            return doc
        return dataclasses.replace(doc, text=text, meta={**doc.meta, "pii": counts})
