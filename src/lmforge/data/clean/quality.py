"""Document-level quality filters: `length`, `repetition` and `gopher_quality`.

`repetition` and `gopher_quality` are the rules of Gopher's MassiveText (Rae et al. 2021,
"Scaling Language Models: Methods, Analysis & Insights from Training Gopher", appendix A.1.1,
"Quality filtering" and "Repetition removal"), with the paper's thresholds as defaults. They
are written here rather than taken from a library because the rules are a few lines of
arithmetic each, and the one library that packages them (datatrove) ties them to its own
document and pipeline classes.

Words are whitespace-separated tokens, as in the paper, with every CJK character a word of its
own (see `textutil`). Gopher's rules were made for English: the mean-word-length and stop-word
rules are skipped for text that is mostly CJK (`cjk_exempt`), and for other languages you
should give `stop_words` of that language or put a `language` step with `keep = ["en"]` first.
A document that arrives in parts (see `lmforge.data.document`) is judged part by part.
"""

from __future__ import annotations

import functools
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from lmforge.data.clean.base import Rejected, Step, register_step
from lmforge.data.clean.textutil import cjk_fraction, is_punctuation, tokens
from lmforge.data.document import Document

_BULLETS = ("•", "●", "○", "◦", "▪", "▫", "■", "□", "‣", "⁃", "▸", "►", "–", "—", "-", "*")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


@functools.cache
def _punctuation() -> tuple[frozenset[str], str]:
    """Every Unicode punctuation character, as a set and as a string (built once, ~0.1 s)."""
    chars = "".join(chr(c) for c in range(sys.maxunicode + 1) if is_punctuation(chr(c)))
    return frozenset(chars), chars


def _strip_punctuation(toks: list[str]) -> list[str]:
    """`toks` with leading and trailing punctuation stripped, empty results left out.

    Most tokens neither start nor end with punctuation; testing the two ends against a set
    first makes this about three times faster than stripping character by character."""
    punct, chars = _punctuation()
    stripped = [t if t[0] not in punct and t[-1] not in punct else t.strip(chars) for t in toks]
    return [t for t in stripped if t]


def duplicate_fractions(parts: list[str]) -> tuple[float, float]:
    """`(fraction of parts, fraction of characters)` in parts equal to an earlier part."""
    seen: set[str] = set()
    dup_count = dup_chars = total_chars = 0
    for part in parts:
        total_chars += len(part)
        if part in seen:
            dup_count += 1
            dup_chars += len(part)
        else:
            seen.add(part)
    if not parts:
        return 0.0, 0.0
    return dup_count / len(parts), dup_chars / max(total_chars, 1)


def top_ngram_fraction(toks: list[str], n: int) -> float:
    """The fraction of word characters in the most frequent word n-gram, counting all its
    occurrences (0 when no n-gram occurs twice)."""
    counts = Counter(zip(*(toks[i:] for i in range(n))))
    if not counts:
        return 0.0
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return sum(map(len, gram)) * count / max(sum(map(len, toks)), 1)


def duplicate_ngram_fraction(toks: list[str], n: int) -> float:
    """The fraction of word characters covered by word n-grams that occur more than once
    (every occurrence counts; a character covered by several such n-grams counts once)."""
    grams = list(zip(*(toks[i:] for i in range(n))))
    counts = Counter(grams)
    covered = dup_chars = 0  # tokens [0, covered) are already counted
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            for j in range(max(i, covered), i + n):
                dup_chars += len(toks[j])
            covered = i + n
    return dup_chars / max(sum(map(len, toks)), 1)


@register_step
@dataclass(kw_only=True)
class Length(Step):
    """Drop documents with too few or too many words or characters (`None`: no limit)."""

    name: ClassVar[str] = "length"

    min_words: int = 0
    max_words: int | None = None
    min_chars: int = 0
    max_chars: int | None = None

    def __post_init__(self) -> None:
        for lo, hi in (("min_words", "max_words"), ("min_chars", "max_chars")):
            low, high = getattr(self, lo), getattr(self, hi)
            if low < 0:
                raise ValueError(f"{lo}={low}; expected 0 or more")
            if high is not None and high < low:
                raise ValueError(f"{hi}={high} is below {lo}={low}")

    def process(self, doc: Document) -> Document | Rejected:
        chars = len(doc.text)
        if chars < self.min_chars:
            return Rejected("too_short", f"{chars} chars < min_chars {self.min_chars}")
        if self.max_chars is not None and chars > self.max_chars:
            return Rejected("too_long", f"{chars} chars > max_chars {self.max_chars}")
        if self.min_words or self.max_words is not None:
            n = len(tokens(doc.text))
            if n < self.min_words:
                return Rejected("too_short", f"{n} words < min_words {self.min_words}")
            if self.max_words is not None and n > self.max_words:
                return Rejected("too_long", f"{n} words > max_words {self.max_words}")
        return doc


@register_step
@dataclass(kw_only=True)
class Repetition(Step):
    """Gopher's repetition removal: drop documents made of repeated lines, paragraphs or
    n-grams. Reasons: "repetition_lines", "repetition_line_chars", "repetition_paragraphs",
    "repetition_paragraph_chars", "repetition_top_{n}gram", "repetition_dup_{n}gram"."""

    name: ClassVar[str] = "repetition"

    # Most lines / paragraphs that repeat an earlier one, as a fraction of all of them ...
    max_duplicate_lines: float = 0.30
    max_duplicate_paragraphs: float = 0.30
    # ... and as a fraction of the characters.
    max_duplicate_line_chars: float = 0.20
    max_duplicate_paragraph_chars: float = 0.20
    # [n, most]: the most frequent n-gram may cover at most this fraction of the characters.
    top_ngrams: list[tuple[int, float]] = field(
        default_factory=lambda: [(2, 0.20), (3, 0.18), (4, 0.16)]
    )
    # [n, most]: n-grams occurring more than once may cover at most this fraction.
    duplicate_ngrams: list[tuple[int, float]] = field(
        default_factory=lambda: [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    )

    def __post_init__(self) -> None:
        for name in ("max_duplicate_lines", "max_duplicate_paragraphs",
                     "max_duplicate_line_chars", "max_duplicate_paragraph_chars"):  # fmt: skip
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name}={v}; expected a fraction in [0, 1]")
        for name in ("top_ngrams", "duplicate_ngrams"):
            for n, most in getattr(self, name):
                if n < 1 or not 0 <= most <= 1:
                    raise ValueError(
                        f"{name} has [{n}, {most}]; expected [n, fraction] with n >= 1 and "
                        "the fraction in [0, 1], e.g. [[2, 0.2], [3, 0.18]]"
                    )

    def process(self, doc: Document) -> Document | Rejected:
        text = doc.text
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        paragraphs = [p.strip() for p in _BLANK_LINE.split(text) if p.strip()]
        for unit, parts, most, most_chars in (
            ("line", lines, self.max_duplicate_lines, self.max_duplicate_line_chars),
            ("paragraph", paragraphs, self.max_duplicate_paragraphs,
             self.max_duplicate_paragraph_chars),
        ):  # fmt: skip
            frac, char_frac = duplicate_fractions(parts)
            if frac > most:
                return Rejected(
                    f"repetition_{unit}s", f"{frac:.2f} of {unit}s are repeats > {most}"
                )
            if char_frac > most_chars:
                return Rejected(
                    f"repetition_{unit}_chars",
                    f"{char_frac:.2f} of characters in repeated {unit}s > {most_chars}",
                )
        toks = tokens(text)
        for n, most in self.top_ngrams:
            frac = top_ngram_fraction(toks, n)
            if frac > most:
                return Rejected(
                    f"repetition_top_{n}gram", f"top {n}-gram covers {frac:.2f} > {most}"
                )
        limits = sorted(self.duplicate_ngrams)
        for i, (n, most) in enumerate(limits):
            frac = duplicate_ngram_fraction(toks, n)
            if frac > most:
                return Rejected(
                    f"repetition_dup_{n}gram", f"repeated {n}-grams cover {frac:.2f} > {most}"
                )
            # Characters in repeated (n+1)-grams are also in repeated n-grams, so the fraction
            # only falls as n grows: below every later limit, no later n can fail.
            if all(frac <= later for _, later in limits[i + 1 :]):
                break
        return doc


@register_step
@dataclass(kw_only=True)
class GopherQuality(Step):
    """Gopher's quality filter. Reasons: "gopher_too_few_words", "gopher_too_many_words",
    "gopher_word_length", "gopher_hash_ratio", "gopher_ellipsis_ratio", "gopher_bullet_lines",
    "gopher_ellipsis_lines", "gopher_alpha_words", "gopher_stop_words"."""

    name: ClassVar[str] = "gopher_quality"

    min_words: int = 50
    max_words: int = 100_000
    # Mean length of words, punctuation stripped.
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    # Most "#" per word, and most ellipses ("..." or "…") per word.
    max_symbol_word_ratio: float = 0.1
    # Most lines starting with a bullet, and most lines ending in an ellipsis.
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    # Least fraction of words that have an alphabetic character.
    min_alpha_words: float = 0.8
    # At least `min_stop_words` of these must occur (distinct words, case-insensitive).
    stop_words: list[str] = field(default_factory=lambda: list(_GOPHER_STOP_WORDS))
    min_stop_words: int = 2
    # Skip the word-length and stop-word rules for mostly-CJK text, which has no spaces.
    cjk_exempt: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.min_words <= self.max_words:
            raise ValueError(
                f"min_words={self.min_words}, max_words={self.max_words}; expected "
                "0 <= min_words <= max_words"
            )
        if not 0 <= self.min_mean_word_length <= self.max_mean_word_length:
            raise ValueError(
                f"min_mean_word_length={self.min_mean_word_length}, max_mean_word_length="
                f"{self.max_mean_word_length}; expected 0 <= min <= max"
            )
        for name in ("max_bullet_lines", "max_ellipsis_lines", "min_alpha_words"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name}={v}; expected a fraction in [0, 1]")
        if self.min_stop_words > len(set(self.stop_words)):
            raise ValueError(
                f"min_stop_words={self.min_stop_words} but stop_words has only "
                f"{len(set(self.stop_words))} distinct words"
            )
        self._stop = frozenset(w.lower() for w in self.stop_words)

    def process(self, doc: Document) -> Document | Rejected:
        text = doc.text
        toks = tokens(text)
        n = len(toks)
        if n < self.min_words:
            return Rejected("gopher_too_few_words", f"{n} words < {self.min_words}")
        if n > self.max_words:
            return Rejected("gopher_too_many_words", f"{n} words > {self.max_words}")
        if n == 0:
            return doc
        bare = _strip_punctuation(toks)
        english_rules = not (self.cjk_exempt and cjk_fraction(toks) > 0.5)
        if english_rules and bare:
            mean = sum(map(len, bare)) / len(bare)
            if not self.min_mean_word_length <= mean <= self.max_mean_word_length:
                return Rejected(
                    "gopher_word_length",
                    f"mean word length {mean:.1f} outside [{self.min_mean_word_length}, "
                    f"{self.max_mean_word_length}]",
                )
        hashes = text.count("#") / n
        if hashes > self.max_symbol_word_ratio:
            return Rejected("gopher_hash_ratio", f"{hashes:.2f} '#' per word")
        ellipses = (text.count("...") + text.count("…")) / n
        if ellipses > self.max_symbol_word_ratio:
            return Rejected("gopher_ellipsis_ratio", f"{ellipses:.2f} ellipses per word")
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if lines:
            bullets = sum(line.startswith(_BULLETS) for line in lines) / len(lines)
            if bullets > self.max_bullet_lines:
                return Rejected("gopher_bullet_lines", f"{bullets:.2f} of lines are bullets")
            trailing = sum(line.endswith(("...", "…")) for line in lines) / len(lines)
            if trailing > self.max_ellipsis_lines:
                return Rejected(
                    "gopher_ellipsis_lines", f"{trailing:.2f} of lines end in an ellipsis"
                )
        # `any(map(...))` runs in C; a generator over the characters was a third of the step
        alpha = sum(1 for t in toks if t.isalpha() or any(map(str.isalpha, t))) / n
        if alpha < self.min_alpha_words:
            return Rejected("gopher_alpha_words", f"only {alpha:.2f} of words have a letter")
        if english_rules and self.min_stop_words:
            found = self._stop.intersection(w.lower() for w in bare)
            if len(found) < self.min_stop_words:
                return Rejected(
                    "gopher_stop_words",
                    f"{len(found)} of the stop words {sorted(self._stop)} < {self.min_stop_words}",
                )
        return doc
