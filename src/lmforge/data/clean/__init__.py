"""Cleaning, filtering and PII steps for the data pipeline (the contract is in `base`).

Importing this package registers every step, so recipes can name them:

| module | steps |
|---|---|
| `normalize` | fix_unicode, normalize_whitespace |
| `classical` | lowercase, strip_punctuation, remove_stopwords, stem, lemmatize |
| `quality` | length, repetition, gopher_quality |
| `c4` | c4_quality |
| `language` | language |
| `blocklist` | url_blocklist, toxicity |
| `pii` | pii |
"""

from lmforge.data.clean import blocklist, c4, classical, language, normalize, pii, quality
from lmforge.data.clean.base import (
    STEPS,
    Kept,
    Rejected,
    Step,
    build_step,
    register_step,
    step_settings,
)

__all__ = [
    "STEPS",
    "Kept",
    "Rejected",
    "Step",
    "blocklist",
    "build_step",
    "c4",
    "classical",
    "language",
    "normalize",
    "pii",
    "quality",
    "register_step",
    "step_settings",
]
