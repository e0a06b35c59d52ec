"""Labelled text for classification: TSV, CSV and JSONL files in, (text, label) pairs out.

Columns are named by header (`--text-field sentence --label-field label`) or, for files with
no header row, by 0-based index (`--text-field 0 --label-field 1 --no-header`). Labels are
kept as strings; their order (and so the class ids) is the sorted set of training labels, or
the list the user gives. Every problem names the file and line.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.document import DataError


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    where: str  # "file:line", for error messages


def _column(header: list[str] | None, field: str, path: Path) -> int:
    if header is None:
        if not field.isdigit():
            raise DataError(
                f"{path}: the file has no header row (--no-header), so columns are numbers; "
                f"got {field!r}, expected e.g. 0"
            )
        return int(field)
    if field in header:
        return header.index(field)
    if field.isdigit():
        return int(field)
    raise DataError(f"{path}: no column {field!r} in the header; columns are: {', '.join(header)}")


def read_labeled(
    path: str | Path, *, text_field: str = "text", label_field: str = "label", header: bool = True
) -> list[Example]:
    """Every (text, label) of a .tsv/.csv/.jsonl file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    suffix = path.suffix.lower()
    examples: list[Example] = []
    # utf-8-sig: a byte-order mark must not become part of the first column's name.
    with open(path, encoding="utf-8-sig", newline="") as f:
        if suffix in (".jsonl", ".json"):
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not a JSON object ({e.msg})") from None
                missing = [k for k in (text_field, label_field) if k not in record]
                if missing:
                    raise DataError(
                        f"{path}:{n}: no field {missing[0]!r}; the record has: {', '.join(record)}"
                    )
                examples.append(
                    Example(str(record[text_field]), str(record[label_field]), f"{path}:{n}")
                )
        elif suffix in (".tsv", ".csv"):
            # QUOTE_NONE for TSV: the texts hold stray quotes (SST-2 does), tabs never occur.
            reader = (
                csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                if suffix == ".tsv"
                else csv.reader(f)
            )
            names = next(reader, None) if header else None
            if header and names is None:
                raise DataError(f"{path} is empty")
            ti, li = _column(names, text_field, path), _column(names, label_field, path)
            first = 2 if header else 1
            for n, row in enumerate(reader, first):
                if not row:
                    continue
                if max(ti, li) >= len(row):
                    raise DataError(
                        f"{path}:{n}: {len(row)} column(s), expected at least {max(ti, li) + 1}"
                    )
                examples.append(Example(row[ti], row[li].strip(), f"{path}:{n}"))
        else:
            raise DataError(f"{path}: expected a .tsv, .csv or .jsonl file of labelled text")
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def label_set(train: list[Example], given: list[str] | None = None) -> list[str]:
    """The class names, in class-id order; every one must have training examples."""
    counts = Counter(e.label for e in train)
    labels = list(given) if given else sorted(counts)
    empty = [label for label in labels if counts[label] == 0]
    if empty:
        raise DataError(
            f"class(es) {empty} have no training examples; remove them from --labels or add "
            "examples"
        )
    unknown = sorted(set(counts) - set(labels))
    if unknown:
        raise DataError(f"training labels {unknown} are not in --labels {labels}")
    if len(labels) < 2:
        raise DataError(f"only one class ({labels}) in the training data; need two or more")
    return labels


def check_labels(examples: list[Example], labels: list[str], name: str) -> None:
    """Refuse a split whose labels the training data never had, naming them."""
    unknown = Counter(e.label for e in examples if e.label not in labels)
    if unknown:
        first = next(e.where for e in examples if e.label in unknown)
        raise DataError(
            f"the {name} file has labels the training file does not: "
            f"{dict(unknown)} (first at {first}); training labels are {labels}"
        )


def normalized(text: str) -> str:
    """The form two texts must share to count as the same example: case and spacing folded."""
    return " ".join(text.casefold().split())


def deduplicate(examples: list[Example]) -> tuple[list[Example], int]:
    """The examples with every repeated text (after `normalized`) after its first removed."""
    seen: set[str] = set()
    kept = []
    for e in examples:
        key = normalized(e.text)
        if key not in seen:
            seen.add(key)
            kept.append(e)
    return kept, len(examples) - len(kept)


def overlap(examples: list[Example], train: list[Example]) -> int:
    """How many `examples` have a text that also occurs in `train`."""
    seen = {normalized(e.text) for e in train}
    return sum(normalized(e.text) in seen for e in examples)


def sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """`n` examples drawn at random by `seed` (all of them when n is 0 or too large)."""
    if not n or n >= len(examples):
        return examples
    return random.Random(seed).sample(examples, n)


def stratified_split(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(kept, held out): `fraction` of every class held out, chosen by `seed`."""
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    kept, held = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n = round(len(group) * fraction)
        held += group[:n]
        kept += group[n:]
    rng.shuffle(kept)
    return kept, held
