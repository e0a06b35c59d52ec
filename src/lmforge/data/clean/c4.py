"""`c4_quality`: the line-level heuristics that made C4 (Raffel et al. 2020, "Exploring the
Limits of Transfer Learning with a Unified Text-to-Text Transformer", section 2.2).

This step both edits and drops: it removes the lines that fail C4's rules and keeps the rest,
in order, and drops the whole document when it finds "lorem ipsum" or a "{" (code), or when
fewer than `min_sentences` sentences are left. It follows the order of the reference
implementation (TensorFlow Datasets `c4_utils.clean_page`): per line, strip it; drop it if a
word is longer than `max_word_length`; remove Wikipedia citation marks ("[1]", "[edit]",
"[citation needed]"); drop it unless it ends in terminal punctuation (and not "..."); drop it
if it has fewer than `min_words_per_line` words; drop the document on "lorem ipsum"; drop the
line if it mentions "javascript"; drop the document on "{"; drop the line if it mentions a
cookie or privacy policy; count its sentences.

Defaults: the paper says pages need 5 sentences and lines 3 words; the TFDS code that built
the released C4 uses the reverse (3 sentences, lines of 5 words). The defaults here follow
the paper; set `min_sentences = 3, min_words_per_line = 5` to reproduce the released corpus.
Sentences are counted with a regex (terminal punctuation followed by a space or the end),
not NLTK's Punkt model as in TFDS, so "Mr. Smith" counts as two. Words are counted as in
`textutil` (each CJK character a word), and the CJK full stops "。！？" count as terminal
punctuation, so Chinese and Japanese text is not removed wholesale; the remaining rules are
English-centric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from lmforge.data.clean.base import Rejected, Step, register_step
from lmforge.data.clean.textutil import edited, tokens
from lmforge.data.document import Document

_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_POLICY = [
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
    "use cookies",
]  # fmt: skip


@register_step
@dataclass(kw_only=True)
class C4Quality(Step):
    """C4's line filter and page filter. Reasons: "c4_lorem_ipsum", "c4_curly_brace",
    "c4_too_few_sentences"."""

    name: ClassVar[str] = "c4_quality"

    min_words_per_line: int = 3
    min_sentences: int = 5
    # Lines with a whitespace-separated word longer than this are dropped.
    max_word_length: int = 1000
    # A kept line must end with one of these (C4: period, "?", "!", end quote; plus CJK stops).
    end_marks: list[str] = field(
        default_factory=lambda: [".", "?", "!", '"', "”", "。", "？", "！"]
    )
    remove_citations: bool = True
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    drop_lorem_ipsum: bool = True
    drop_curly_brace: bool = True

    def __post_init__(self) -> None:
        for name in ("min_words_per_line", "min_sentences", "max_word_length"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}; expected 0 or more")
        if not self.end_marks or not all(self.end_marks):
            raise ValueError(f"end_marks={self.end_marks!r}; expected non-empty strings")
        marks = "".join(re.escape(m) for m in self.end_marks if m not in "\"”'’")
        # A sentence ends at terminal punctuation, maybe closed by quotes or brackets, before
        # a space or the end of the line.
        self._sentence_end = re.compile(rf"[{marks}]+[\"'”’)\]]*(?=\s|$)")
        self._end_marks = tuple(self.end_marks)

    def process(self, doc: Document) -> Document | Rejected:
        kept: list[str] = []
        sentences = 0
        for line in doc.text.split("\n"):
            line = line.strip()
            if any(len(w) > self.max_word_length for w in line.split()):
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if not line.endswith(self._end_marks) or line.endswith("..."):
                continue
            if len(tokens(line)) < self.min_words_per_line:
                continue
            lower = line.lower()
            if self.drop_lorem_ipsum and "lorem ipsum" in lower:
                return Rejected("c4_lorem_ipsum", f"line {line[:80]!r}")
            if self.drop_javascript_lines and "javascript" in lower:
                continue
            if self.drop_curly_brace and "{" in line:
                return Rejected("c4_curly_brace", f"line {line[:80]!r}")
            if self.drop_policy_lines and any(p in lower for p in _POLICY):
                continue
            sentences += max(1, len(self._sentence_end.findall(line)))
            kept.append(line)
        if sentences < self.min_sentences:
            return Rejected(
                "c4_too_few_sentences",
                f"{sentences} sentences in {len(kept)} kept lines < {self.min_sentences}",
            )
        return edited(doc, "\n".join(kept), self.name)
