"""Classical text preprocessing: `lowercase`, `strip_punctuation`, `remove_stopwords`, `stem`
and `lemmatize`, each its own step and each off unless a recipe lists it.

These are the steps NLP tutorials teach, and they made sense for bag-of-words models (TF-IDF,
naive Bayes, topic models), where "Running", "runs" and "ran" should count as one feature and
"the" carries no signal. A generative language model is the opposite case: it must learn to
*write* text, with its capitals, punctuation, function words and inflections, so every one of
these steps destroys information the model is trained to produce. LLM pretraining pipelines
(C4, Gopher's MassiveText, FineWeb, Dolma) therefore keep text raw and only repair and filter
it. Use these for classifiers, retrieval baselines, or to study what they remove.

Libraries (all ship their data, nothing is downloaded at run time): stop words from the
`stop-words` package (NLTK's lists need a corpus download); Snowball stemmers from
`snowballstemmer` (Porter 1980, Snowball 2001); lemmas from `simplemma`, a dictionary-based
lemmatizer for 50+ languages (Barbaresi 2021). Words are found with `textutil.WORD`, a Unicode
regex; punctuation is every character in a Unicode P* category.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import simplemma
import snowballstemmer
import stop_words
from simplemma.strategies.dictionaries.dictionary_factory import SUPPORTED_LANGUAGES

from lmforge.data.clean.base import Rejected, Step, register_step
from lmforge.data.clean.textutil import WORD, edited, is_punctuation
from lmforge.data.document import Document

# ISO 639-1 codes of the Snowball stemmers (names are accepted too).
_SNOWBALL = {
    "ar": "arabic", "ca": "catalan", "cs": "czech", "da": "danish", "de": "german",
    "el": "greek", "en": "english", "eo": "esperanto", "es": "spanish", "et": "estonian",
    "eu": "basque", "fa": "persian", "fi": "finnish", "fr": "french", "ga": "irish",
    "hi": "hindi", "hu": "hungarian", "hy": "armenian", "id": "indonesian", "it": "italian",
    "lt": "lithuanian", "nb": "norwegian", "ne": "nepali", "nl": "dutch", "no": "norwegian",
    "pl": "polish", "pt": "portuguese", "ro": "romanian", "ru": "russian", "sr": "serbian",
    "st": "sesotho", "sv": "swedish", "ta": "tamil", "tr": "turkish", "yi": "yiddish",
}  # fmt: skip


@functools.lru_cache(maxsize=4)
def _punctuation_table(replacement: str) -> dict[int, str | None]:
    """`str.translate` table replacing every Unicode punctuation character (built once)."""
    return {c: replacement or None for c in range(sys.maxunicode + 1) if is_punctuation(chr(c))}


@functools.lru_cache(maxsize=16)
def _stop_words(language: str) -> frozenset[str]:
    return frozenset(w.lower() for w in stop_words.get_stop_words(language))


@functools.lru_cache(maxsize=16)
def _stem_function(algorithm: str) -> Callable[[str], str]:
    """The stemmer's word function, memoized: word frequencies are Zipfian, so most calls
    repeat a word seen before (this makes the pure-Python stemmers about 10x faster)."""
    return functools.lru_cache(maxsize=1 << 16)(snowballstemmer.stemmer(algorithm).stemWord)


@register_step
@dataclass(kw_only=True)
class Lowercase(Step):
    """Lower-case the text (`casefold` for caseless matching: "Straße" → "strasse")."""

    name: ClassVar[str] = "lowercase"

    # str.casefold instead of str.lower: more aggressive, for matching rather than reading.
    casefold: bool = False

    def process(self, doc: Document) -> Document | Rejected:
        text = doc.text.casefold() if self.casefold else doc.text.lower()
        return edited(doc, text, self.name)


@register_step
@dataclass(kw_only=True)
class StripPunctuation(Step):
    """Remove every punctuation character (Unicode categories Pc, Pd, Ps, Pe, Pi, Pf, Po, so
    "«", "¿" and "。" too; symbols such as "$" and "+" are kept)."""

    name: ClassVar[str] = "strip_punctuation"

    # What each punctuation character becomes ("" deletes it; " " keeps "a.b" two words).
    replacement: str = ""

    def setup(self) -> None:
        _punctuation_table(self.replacement)

    def process(self, doc: Document) -> Document | Rejected:
        text = doc.text.translate(_punctuation_table(self.replacement))
        return edited(doc, text, self.name)


@register_step
@dataclass(kw_only=True)
class RemoveStopwords(Step):
    """Remove stop words (matched case-insensitively as whole words) and the spaces after them.

    The lists are the `stop-words` package's, which are long (its English list has over a
    thousand entries, merged from several sources); give `words` to use your own instead.
    """

    name: ClassVar[str] = "remove_stopwords"

    # ISO 639-1 code or English name of a language the stop-words package has a list for.
    language: str = "en"
    # Your own stop words; when given, they replace the package's list.
    words: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        known = stop_words.LANGUAGE_MAPPING
        if not self.words and self.language not in known and self.language not in known.values():
            raise ValueError(
                f"language={self.language!r} has no stop-word list; expected one of "
                f"{sorted(known)}, or give your own `words`"
            )
        self._pattern = re.compile(rf"({WORD.pattern})[^\S\n]*")
        self._own = frozenset(w.lower() for w in self.words)

    def setup(self) -> None:
        if not self._own:
            _stop_words(self.language)

    def process(self, doc: Document) -> Document | Rejected:
        stop = self._own or _stop_words(self.language)
        text = self._pattern.sub(lambda m: "" if m[1].lower() in stop else m[0], doc.text)
        return edited(doc, text, self.name)


@register_step
@dataclass(kw_only=True)
class Stem(Step):
    """Replace every word by its Snowball stem, lower-cased ("Running dogs" → "run dog");
    everything between words is kept."""

    name: ClassVar[str] = "stem"

    # ISO 639-1 code or Snowball name ("english", "porter" for the original Porter stemmer).
    language: str = "en"

    def __post_init__(self) -> None:
        algorithms = snowballstemmer.algorithms()
        algorithm = _SNOWBALL.get(self.language, self.language)
        if algorithm not in algorithms:
            raise ValueError(
                f"language={self.language!r} has no Snowball stemmer; expected one of "
                f"{sorted(_SNOWBALL)} or {algorithms}"
            )
        self._algorithm = algorithm

    def setup(self) -> None:
        _stem_function(self._algorithm)

    def process(self, doc: Document) -> Document | Rejected:
        stem = _stem_function(self._algorithm)
        # Snowball algorithms are defined on lower-case input.
        text = WORD.sub(lambda m: stem(m[0].lower()), doc.text)
        return edited(doc, text, self.name)


@register_step
@dataclass(kw_only=True)
class Lemmatize(Step):
    """Replace every word by its dictionary form with simplemma ("mice went" → "mouse go");
    words it does not know are kept as they are."""

    name: ClassVar[str] = "lemmatize"

    # ISO 639-1 code of a language simplemma has a dictionary for.
    language: str = "en"

    def __post_init__(self) -> None:
        if self.language not in SUPPORTED_LANGUAGES:
            raise ValueError(
                f"language={self.language!r} has no simplemma dictionary; expected one of "
                f"{sorted(SUPPORTED_LANGUAGES)}"
            )

    def setup(self) -> None:
        simplemma.lemmatize("a", lang=self.language)  # loads the dictionary (about 1 s)

    def process(self, doc: Document) -> Document | Rejected:
        lang = self.language
        text = WORD.sub(lambda m: simplemma.lemmatize(m[0], lang=lang), doc.text)
        return edited(doc, text, self.name)
