"""`language`: identify a document's language, note it in `meta`, and keep only listed ones.

The detector is Lingua (Stahl, `lingua-language-detector`), which ships its n-gram models
inside the wheel (no download at run time), knows 75 languages, is deterministic, and runs in
Rust. It was chosen on measurements on this machine (2 shared cores), on 17 languages of the
UDHR (`shared/data/multilingual-udhr`, 473 paragraphs of 40+ characters) and on the 300
documents of `web-text/c4_demo.jsonl` (whole documents, about 2.5 KB each):

| detector | load | memory | UDHR paragraphs right | whole UDHR texts right | C4 docs/s |
|---|---|---|---|---|---|
| langdetect 1.0.9 (seed 0) | 0.3 s | 77 MB | 93.9 % | 16/17 (Chinese → "ko") | 230-260 |
| py3langid 0.4 | 1.3 s | 130 MB | 98.7 % | 17/17 | 700-1100 |
| lingua 2.1, low accuracy | 0.2-1 s | 100 MB | 99.8 % | 17/17 | 180-200 |
| lingua 2.1, high accuracy | 9 s | 1.3 GB | 100 % | 17/17 | about 190 |

Lingua's low-accuracy mode (trigram models only) is the default: the most accurate at a
memory cost every worker can afford; "high" loads the 1- to 5-gram models, is better on very
short text, and costs 1.3 GB per worker. Its time grows with the text, so only the first
`max_chars` characters are examined (2,000 by default: the same language as the whole text
on all 300 C4 documents, at 250-340 docs/s). py3langid is 3-5 times faster but less accurate;
langdetect is both slower and less accurate and needs a fixed seed to be deterministic.

Writes `meta["lang"]` (ISO 639-1, "und" when no language is found, e.g. for text without
letters) and `meta["lang_score"]` (Lingua's confidence of that language, 0-1).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

from lmforge.data.clean.base import Rejected, Step, register_step
from lmforge.data.document import Document

UNKNOWN = "und"


@functools.lru_cache(maxsize=2)
def _detector(accuracy: str) -> LanguageDetector:
    builder = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
    if accuracy == "low":
        builder = builder.with_low_accuracy_mode()
    return builder.build()


def known_languages() -> list[str]:
    """ISO 639-1 codes of the languages the detector knows."""
    return sorted(lang.iso_code_639_1.name.lower() for lang in Language.all())


def detect_language(text: str, accuracy: str = "low") -> tuple[str, float]:
    """`(ISO 639-1 code, confidence)` of `text`; `("und", 0.0)` when nothing is detected."""
    best = _detector(accuracy).compute_language_confidence_values(text)[0]
    if best.value <= 0:
        return UNKNOWN, 0.0
    return best.language.iso_code_639_1.name.lower(), float(best.value)


@register_step
@dataclass(kw_only=True)
class LanguageID(Step):
    """Note the language in `meta["lang"]`/`meta["lang_score"]`; drop documents not in `keep`
    (reason "language") or detected with a confidence below `min_score` ("language_score")."""

    name: ClassVar[str] = "language"

    # ISO 639-1 codes to keep; empty keeps every language and only annotates.
    keep: list[str] = field(default_factory=list)
    # Least confidence (0-1) of the detected language to keep a document.
    min_score: float = 0.0
    # "low": trigram models, fast, 100 MB; "high": all n-gram models, 1.3 GB, best on short text.
    accuracy: Literal["low", "high"] = "low"
    # Only the first this many characters are examined.
    max_chars: int = 2_000

    def __post_init__(self) -> None:
        known = known_languages()
        unknown = [code for code in self.keep if code not in known]
        if unknown:
            raise ValueError(f"keep has unknown language codes {unknown}; known: {known}")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score={self.min_score}; expected a confidence in [0, 1]")
        if self.accuracy not in ("low", "high"):
            raise ValueError(f"accuracy={self.accuracy!r}; expected 'low' or 'high'")
        if self.max_chars < 1:
            raise ValueError(f"max_chars={self.max_chars}; expected 1 or more")
        self._keep = frozenset(self.keep)

    def setup(self) -> None:
        _detector(self.accuracy)

    def process(self, doc: Document) -> Document | Rejected:
        lang, score = detect_language(doc.text[: self.max_chars], self.accuracy)
        if self._keep and lang not in self._keep:
            return Rejected("language", f"lang={lang} score={score:.2f}")
        if score < self.min_score:
            return Rejected("language_score", f"lang={lang} score={score:.2f} < {self.min_score}")
        meta = {**doc.meta, "lang": lang, "lang_score": round(score, 4)}
        return dataclasses.replace(doc, meta=meta)
