"""The contract every data-pipeline step follows, and the registry recipes name steps from.

A step is a small `@dataclass(kw_only=True)` whose fields are its settings (so a recipe table
maps onto it one to one, like every other lmforge config) with one method, `process`, that
takes a `Document` and returns either the document (its text or meta possibly changed), a
`Rejected` saying why it was dropped, or a `Kept` document with a note for the report (what the
step could not judge, such as a document with no URL for a URL filter). Steps hold no
per-corpus state, so the pipeline can run them in any number of worker processes; a step that
needs an expensive resource (a language model, a word list) loads it in `setup`, which each
worker calls once before the first document. Steps that must see the whole corpus
(deduplication) are stages of the pipeline, not steps.

Recipes name steps by their registered name:

    [[steps]]
    name = "language"
    keep = ["en", "de"]

`build_step({"name": "language", "keep": ["en"]})` gives the configured step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from lmforge.config import ConfigError, from_dict
from lmforge.data.document import Document


@dataclass(frozen=True)
class Rejected:
    """A dropped document: `reason` is a short stable key for counting ("too_short",
    "language"), `detail` a human-readable note for the rejected file ("lang=fr p=0.98")."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Kept:
    """A document a step let through with a short stable `note` that the pipeline counts per
    step, like drop reasons ("no_url": the URL filter had nothing to check)."""

    doc: Document
    note: str


@dataclass(kw_only=True)
class Step:
    """Base class of every pipeline step; subclasses set `name` and implement `process`."""

    name: ClassVar[str] = ""

    def setup(self) -> None:
        """Load what the step needs once per worker process (models, word lists)."""

    def process(self, doc: Document) -> Document | Rejected | Kept:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What the step's results depend on, for the pipeline to tell whether finished work
        can be reused: its settings, plus (in steps that read a file named in a setting, such
        as a word list) a hash of that file's content, so that editing the file redoes it."""
        return step_settings(self)


STEPS: dict[str, type[Step]] = {}


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make `cls` available to recipes under `cls.name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`")
    if cls.name in STEPS and STEPS[cls.name] is not cls:
        raise TypeError(f"two steps are named {cls.name!r}: {STEPS[cls.name]} and {cls}")
    STEPS[cls.name] = cls
    return cls


def build_step(table: dict[str, Any], where: str = "steps") -> Step:
    """A configured step from a recipe table `{"name": ..., **settings}`."""
    table = dict(table)
    name = table.pop("name", None)
    if name is None:
        raise ConfigError(f"[{where}]: every step needs a `name`; known steps: {sorted(STEPS)}")
    if name not in STEPS:
        raise ConfigError(f"[{where}]: unknown step {name!r}; known steps: {sorted(STEPS)}")
    return from_dict(STEPS[name], table, f"{where}.{name}")


def step_settings(step: Step) -> dict[str, Any]:
    """The recipe table of a configured step (the inverse of `build_step`)."""
    return {"name": step.name, **dataclasses.asdict(step)}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (for `Step.fingerprint`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
