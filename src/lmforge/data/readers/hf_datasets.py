"""Hugging Face `datasets` saved with `save_to_disk`, read with `datasets.load_from_disk`.

A `Dataset` folder holds `dataset_info.json` and `state.json` beside its Arrow files; a
`DatasetDict` folder holds `dataset_dict.json` and one such folder per split, read in the
order the dict lists them. `load_from_disk` memory-maps the Arrow files, and rows are read in
batches of the text (and `id`, and `meta_fields`) columns only, so nothing is loaded whole. The
text column is `text_field`, as for JSONL; `meta["split"]` names the split of a `DatasetDict`.

`datasets` is a large dependency, so it is the optional extra `lmforge[hf]`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.config import ConfigError
from lmforge.data.document import DataError, Document
from lmforge.data.readers.base import ReadContext
from lmforge.data.readers.files import plain_meta, text_ok

_BATCH = 1024


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def require_datasets(path: Path) -> None:
    """Raise a `ConfigError` (a missing package, not bad input: no run should go on without
    the data) when `datasets` is not installed to read the saved dataset at `path`."""
    if importlib.util.find_spec("datasets") is None:  # without the cost of importing it
        raise _missing(path)


def _missing(path: Path) -> ConfigError:
    return ConfigError(
        f"{path} is a Hugging Face dataset folder; reading it needs the `datasets` "
        "package: pip install 'lmforge[hf]'"
    )


def _load(path: Path) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise _missing(path) from e
    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, JSON errors, ...
        raise DataError(f"{path}: not a readable saved dataset ({type(e).__name__}: {e})") from e


def _rows(
    ds: Any, name: str, split: str | None, ctx: ReadContext, number: list[int]
) -> Iterator[Document]:
    """Documents of one dataset; `number` counts the rows of all splits (see `ctx.owns`)."""
    field = ctx.options.text_field
    if field not in ds.column_names:
        cols = ", ".join(map(repr, ds.column_names)) or "none"
        ctx.bad_file(
            name,
            f"no column {field!r} (columns: {cols})",
            "pass --text-field NAME to read another column, or --on-bad-record skip",
        )
        return
    has_id = "id" in ds.column_names and field != "id"
    meta_cols = [f for f in ctx.options.meta_fields if f in ds.column_names and f != "id"]
    columns = [field, *(["id"] if has_id else []), *meta_cols]
    meta = {"split": split} if split is not None else {}
    row = 0
    for batch in ds.select_columns(columns).iter(batch_size=_BATCH):
        texts = batch[field]
        ids = batch["id"] if has_id else [None] * len(texts)
        for i, (text, rid) in enumerate(zip(texts, ids, strict=True)):
            row += 1
            number[0] += 1
            if not ctx.owns(number[0] - 1):
                continue
            where = f"{name}:{row}"
            if text_ok(ctx, where, text):
                doc_id = where if rid is None else str(rid)
                values = plain_meta({f: batch[f][i] for f in meta_cols})
                yield Document(text=text, id=doc_id, source=where, meta={**values, **meta})


def read_hf_dataset(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """Documents of a saved `Dataset`, or of every split of a saved `DatasetDict`."""
    loaded = _load(path)
    number = [0]
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):
        if loaded.num_rows == 0:
            ctx.empty(str(path))
        yield from _rows(loaded, str(path), None, ctx, number)
        return
    for split, ds in loaded.items():
        if ds.num_rows == 0:
            ctx.empty(f"{path}[{split}]")
        yield from _rows(ds, f"{path}[{split}]", split, ctx, number)
