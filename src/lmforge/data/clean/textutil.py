"""Small text helpers the cleaning steps share: splitting text into words, reading word lists,
and handing back an edited document.

Words are found with a Unicode-aware regex, not a linguistic tokenizer, on purpose: the
quality heuristics (Gopher, C4) were defined on whitespace-separated words, and a regex is
fast, deterministic and needs no model. Scripts written without spaces would otherwise come
out as one huge "word" per sentence, so every Han character, kana and CJK symbol counts as a
word of its own (a Chinese word averages 1.5 characters, so counts stay roughly comparable).
Thai, Lao, Khmer and Burmese are also written without spaces and are not split this way:
their word counts are far too low, so run length and quality filters on them only with
thresholds chosen for them.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from pathlib import Path

from lmforge.data.clean.base import Rejected
from lmforge.data.document import Document

# Han (with extensions and compatibility forms), kana, bopomofo and CJK symbols.
CJK = (
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303c\u3040-\u30ff\u3100-\u312f"
    "\u31a0-\u31bf\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
)
_CJK_CHAR = re.compile(f"[{CJK}]")

# Whitespace-separated tokens (punctuation included, as Gopher and C4 count them), with every
# CJK character a token of its own.
_TOKEN = re.compile(rf"[{CJK}]|[^\s{CJK}]+")

# Words proper: runs of letters/digits, with inner apostrophes ("don't", "l'homme").
WORD = re.compile(rf"[{CJK}]|[^\W{CJK}]+(?:['’][^\W{CJK}]+)*")


def tokens(text: str) -> list[str]:
    """Whitespace-separated tokens of `text`, each CJK character a token of its own."""
    return _TOKEN.findall(text)


def words(text: str) -> list[str]:
    """The words of `text` (letters and digits only, no punctuation)."""
    return WORD.findall(text)


def cjk_fraction(toks: list[str]) -> float:
    """The fraction of `toks` that are single CJK characters."""
    if not toks:
        return 0.0
    return sum(1 for t in toks if len(t) == 1 and _CJK_CHAR.match(t)) / len(toks)


def is_punctuation(ch: str) -> bool:
    """Whether `ch` is in a Unicode punctuation category (Pc, Pd, Ps, Pe, Pi, Pf, Po)."""
    return unicodedata.category(ch).startswith("P")


def edited(doc: Document, text: str, step: str) -> Document | Rejected:
    """`doc` with `text` (a new Document; the input is never changed), or a rejection when
    the step left nothing but whitespace."""
    if not text.strip():
        return Rejected("empty", f"{step} left no text")
    if text == doc.text:
        return doc
    return dataclasses.replace(doc, text=text, meta=dict(doc.meta))


def file_stamp(path: str) -> tuple[int, int] | None:
    """`(modification time, size)` of a file, to key caches of what was read from it."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def read_list_file(path: str, field: str) -> tuple[tuple[int, str], ...]:
    """`(line number, entry)` for every entry of a one-per-line list file (blank lines and
    `#` comments skipped). Read once per process while the file is unchanged; errors name the
    file and the setting `field`."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"{field}: list file {path} does not exist; give the path of a text file with one "
            "entry per line"
        )
    stat = p.stat()
    return _read_list_file(str(p.resolve()), stat.st_mtime_ns, stat.st_size, field)


@functools.lru_cache(maxsize=32)
def _read_list_file(path: str, mtime_ns: int, size: int, field: str) -> tuple[tuple[int, str], ...]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{field}: list file {path} is not UTF-8 ({e}); convert it with iconv -t UTF-8"
        ) from e
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            out.append((number, entry))
    return tuple(out)
