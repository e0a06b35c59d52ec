"""Repairing and normalizing text: `fix_unicode` (mojibake repair with ftfy, then NFC) and
`normalize_whitespace`.

Both keep the text's content and only undo damage done in transit: text decoded with the
wrong codec ("doesnâ€™t"), HTML entities left in plain text, control characters, ragged
whitespace. Mojibake repair is ftfy's (Speer 2019), the standard tool for it. Control
characters, line endings and NFC are handled by `lmforge.data.prepare.clean_text`, the same
function `lmforge data prepare` applies, so both stages agree on what clean text is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import ftfy

from lmforge.data.clean.base import Rejected, Step, register_step
from lmforge.data.clean.textutil import edited
from lmforge.data.document import Document
from lmforge.data.prepare import clean_text

_HTML_MODES = ("auto", "always", "never")
_MAYBE_DAMAGED = re.compile(r"[^\x00-\x7f]|&|\x1b")


@register_step
@dataclass(kw_only=True)
class FixUnicode(Step):
    """Repair mojibake and other Unicode damage with `ftfy.fix_text`, then NFC.

    The defaults keep everything a language model should learn to write: curly quotes stay
    curly (`uncurl_quotes = false`) and full-width characters stay full-width
    (`fix_character_width = false`; NFKC-style narrowing would rewrite Chinese and Japanese
    punctuation "，" into ","). Ligatures ("ﬁ" → "fi") are split, as they are typesetting, not
    text.
    """

    name: ClassVar[str] = "fix_unicode"

    # Undo mojibake: text that was encoded in one codec and decoded in another.
    fix_encoding: bool = True
    # Turn "&amp;" into "&": "auto" does it only when the text has no "<" (is not HTML).
    unescape_html: Literal["auto", "always", "never"] = "auto"
    # Replace curly quotes by straight ones (off: they are real text).
    uncurl_quotes: bool = False
    # Replace ligature characters ("ﬁ") by their letters ("fi").
    fix_latin_ligatures: bool = True
    # Replace full-width Latin letters and half-width katakana by their normal forms.
    fix_character_width: bool = False

    def __post_init__(self) -> None:
        if self.unescape_html not in _HTML_MODES:
            raise ValueError(f"unescape_html={self.unescape_html!r}; expected one of {_HTML_MODES}")
        config = ftfy.TextFixerConfig(
            fix_encoding=self.fix_encoding,
            unescape_html=self.unescape_html == "always",
            uncurl_quotes=self.uncurl_quotes,
            fix_latin_ligatures=self.fix_latin_ligatures,
            fix_character_width=self.fix_character_width,
            normalization=None,  # clean_text applies NFC
            explain=False,
        )
        self._configs = (config, config._replace(unescape_html=self.unescape_html != "never"))

    def fix(self, text: str) -> str:
        """`text` repaired by ftfy, line by line (as `ftfy.fix_text` does), skipping lines that
        are plain ASCII without "&" or ESC: ftfy cannot change those, and skipping them makes
        text with many short lines some 20 times faster."""
        if not _MAYBE_DAMAGED.search(text):
            return text
        # "auto": unescape HTML entities only when the document has no "<" (is not HTML).
        config = self._configs["<" not in text]
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for i, line in enumerate(lines):
            if _MAYBE_DAMAGED.search(line):
                lines[i] = ftfy.fix_text(line, config)
        return "\n".join(lines)

    def process(self, doc: Document) -> Document | Rejected:
        text, _ = clean_text(self.fix(doc.text))
        return edited(doc, text, self.name)


_RUN = re.compile(r"[^\S\n]+")  # runs of horizontal whitespace (Unicode spaces included)
_INNER_RUN = re.compile(r"(?<=\S)[^\S\n]+")  # the same, but not at the start of a line
_TRAILING = re.compile(r"[^\S\n]+$", re.MULTILINE)
_LEADING = re.compile(r"^[^\S\n]+", re.MULTILINE)


@register_step
@dataclass(kw_only=True)
class NormalizeWhitespace(Step):
    """Collapse runs of spaces and tabs to one space, strip spaces at line ends, keep at most
    `max_blank_lines` blank lines in a row, and strip the document (after `clean_text`:
    "\\n" line endings, no control characters, NFC)."""

    name: ClassVar[str] = "normalize_whitespace"

    # Most consecutive blank lines kept (1 keeps paragraph breaks; 0 removes blank lines).
    max_blank_lines: int = 1
    # Leave the whitespace at the start of lines as it is (for code and verse).
    keep_indentation: bool = False

    def __post_init__(self) -> None:
        if self.max_blank_lines < 0:
            raise ValueError(
                f"max_blank_lines={self.max_blank_lines}; expected 0 or more (1 keeps "
                "paragraph breaks)"
            )
        self._blank_runs = re.compile(f"\n{{{self.max_blank_lines + 2},}}")

    def process(self, doc: Document) -> Document | Rejected:
        text, _ = clean_text(doc.text)
        text = _TRAILING.sub("", text)
        if self.keep_indentation:
            text = _INNER_RUN.sub(" ", text).strip("\n")
        else:
            text = _LEADING.sub("", _RUN.sub(" ", text)).strip()
        text = self._blank_runs.sub("\n" * (self.max_blank_lines + 1), text)
        return edited(doc, text, self.name)
