"""Turning a prepared data dir into flat token files the trainer memory-maps.

Each JSONL shard `{split}-NNNNN.jsonl` becomes `{split}-NNNNN.bin`: the ids of its records
concatenated, with the EOS id after every record that ends a document (a record with
`"last": false` continues in the next one and gets none). The files are raw little-endian
uint16 (uint32 when the vocabulary has more than 65536 ids). `meta.json` beside them says how to
read them:

    {"dtype": "uint16", "vocab_size": 4096, "eos_id": 1,
     "tokenizer_fingerprint": "<sha256>", "tokenizer_dir": "/abs/path", "data_dir": "/abs/path",
     "splits": {"train": {"tokens": n, "documents": n, "bytes": n,
                          "shards": [{"file": "train-00000.bin", "tokens": n}]}}}
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.io import write_json_atomic
from lmforge.tokenizer.tokenizer import (
    SPLITS,
    Tokenizer,
    load_tokenizer,
    read_records,
    split_shards,
)

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
# Records are sent to workers in batches of about this much text: big enough to amortise the
# inter-process hop, small enough to keep every worker busy and memory bounded.
_BATCH_BYTES = 1 << 20
_BATCH_RECORDS = 4096


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned dtype that holds every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _dtype_from_name(name: str, path: Path) -> np.dtype:
    if name not in ("uint16", "uint32"):
        raise ValueError(f"{path} has dtype={name!r}; expected 'uint16' or 'uint32'")
    return np.dtype(name).newbyteorder("<")


def _encode_records(tok: Tokenizer, texts: list[str], ends: list[bool], dtype: str) -> np.ndarray:
    eos = tok.eos_id
    out: list[int] = []
    for ids, end in zip(tok.encode_batch(texts), ends, strict=True):
        out.extend(ids)
        if end:
            out.append(eos)
    return np.asarray(out, dtype=np.dtype(dtype).newbyteorder("<"))


_worker_tok: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    # Each worker is one process of a pool; tokenizers' own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _worker_tok
    _worker_tok = load_tokenizer(tokenizer_dir)


def _worker_encode(texts: list[str], ends: list[bool], dtype: str) -> np.ndarray:
    assert _worker_tok is not None, "worker was not initialised"
    return _encode_records(_worker_tok, texts, ends, dtype)


class _Done:
    """A finished in-process result, shaped like multiprocessing's AsyncResult."""

    def __init__(self, value: np.ndarray) -> None:
        self._value = value

    def get(self) -> np.ndarray:
        return self._value


def _batches(path: Path) -> Iterator[tuple[list[str], list[bool], int]]:
    texts: list[str] = []
    ends: list[bool] = []
    size = 0
    for text, end, line_bytes in read_records(path):
        texts.append(text)
        ends.append(end)
        size += line_bytes
        if size >= _BATCH_BYTES or len(texts) >= _BATCH_RECORDS:
            yield texts, ends, size
            texts, ends, size = [], [], 0
    if texts:
        yield texts, ends, size


def encode_data(
    data_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Encode every split of `data_dir` with the tokenizer in `tokenizer_dir` into `out_dir`.

    `workers`: processes to encode with (default min(4, cpus)); 0 or 1 encodes in this process.
    Returns the meta written to `out_dir/meta.json`.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    tok = load_tokenizer(tokenizer_dir)
    inputs = {split: split_shards(data_dir, split) for split in SPLITS}
    inputs = {split: shards for split, shards in inputs.items() if shards}
    if not inputs:
        raise FileNotFoundError(
            f"no JSONL shards ({'/'.join(SPLITS)}-*.jsonl) in data dir {data_dir}; "
            f"run `lmforge data prepare` first"
        )
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    dtype = token_dtype(tok.vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)

    pool = None
    if workers > 1:
        # spawn, not fork: forking a process whose tokenizers thread pool already ran deadlocks.
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_dir),))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(p.stat().st_size for shards in inputs.values() for p in shards)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="encoding")

    splits_meta: dict[str, dict[str, Any]] = {}
    # Results are consumed in submission order, so each shard's batches are written in order;
    # the window bounds how much text and how many ids are in flight.
    pending: deque[tuple[Any, ...]] = deque()
    open_shards: list[dict[str, Any]] = []
    window = 2 * max(workers, 1)

    def finish_one() -> None:
        item = pending.popleft()
        if item[0] == "batch":
            _, state, result, n_bytes = item
            ids = result.get()
            state["file"].write(ids.tobytes())
            state["tokens"] += len(ids)
            if bar is not None:
                bar.update(n_bytes)
        else:
            _, state, split = item
            state["file"].close()
            os.replace(state["tmp"], state["path"])
            open_shards.remove(state)
            splits_meta[split]["shards"].append(
                {"file": state["path"].name, "tokens": state["tokens"]}
            )
            splits_meta[split]["tokens"] += state["tokens"]

    try:
        for split, shards in inputs.items():
            splits_meta[split] = {"tokens": 0, "documents": 0, "bytes": 0, "shards": []}
            for i, shard in enumerate(shards):
                path = out_dir / f"{split}-{i:05d}.bin"
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                state = {"path": path, "tmp": tmp, "file": open(tmp, "wb"), "tokens": 0}
                open_shards.append(state)
                for texts, ends, n_bytes in _batches(shard):
                    splits_meta[split]["documents"] += sum(ends)
                    splits_meta[split]["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
                    if pool is None:
                        result = _Done(_encode_records(tok, texts, ends, dtype.name))
                    else:
                        result = pool.apply_async(_worker_encode, (texts, ends, dtype.name))
                    pending.append(("batch", state, result, n_bytes))
                    while len(pending) > window:
                        finish_one()
                pending.append(("end", state, split))
        while pending:
            finish_one()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
        for state in open_shards:  # only left over after an error
            state["file"].close()
            state["tmp"].unlink(missing_ok=True)

    meta = {
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "tokenizer_fingerprint": tok.fingerprint,
        "tokenizer_dir": str(Path(tokenizer_dir).resolve()),
        "data_dir": str(data_dir.resolve()),
        "splits": splits_meta,
    }
    write_json_atomic(out_dir / META_FILE, meta)
    # Shards of an earlier, larger encoding into the same folder are no longer listed: remove.
    listed = {shard["file"] for m in splits_meta.values() for shard in m["shards"]}
    for stale in out_dir.glob("*-[0-9][0-9][0-9][0-9][0-9].bin"):
        if stale.name not in listed:
            stale.unlink()
    for split, m in splits_meta.items():
        logger.info(
            "%s: %d documents, %d bytes -> %d tokens (%.2f bytes/token) in %d shards",
            split,
            m["documents"],
            m["bytes"],
            m["tokens"],
            m["bytes"] / max(m["tokens"], 1),
            len(m["shards"]),
        )
    return meta


def read_token_meta(tokens_dir: str | os.PathLike) -> dict[str, Any]:
    """The `meta.json` of an encoded token dir."""
    path = Path(tokens_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {tokens_dir} holds no encoded tokens; "
            f"run `lmforge tokenizer encode` first"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); run `lmforge tokenizer encode` again"
        ) from e
    if not isinstance(meta, dict) or "splits" not in meta or "dtype" not in meta:
        raise ValueError(f"{path} lacks 'dtype'/'splits'; run `lmforge tokenizer encode` again")
    return meta


def open_split(tokens_dir: str | os.PathLike, split: str) -> list[np.ndarray]:
    """Read-only memory maps of one split's token shards, in order.

    An empty shard comes back as an empty (non-memmap) array, since an empty file cannot be mapped.
    """
    tokens_dir = Path(tokens_dir)
    meta = read_token_meta(tokens_dir)
    if split not in meta["splits"]:
        available = ", ".join(meta["splits"]) or "none"
        raise KeyError(
            f"split {split!r} is not in {tokens_dir / META_FILE} (available: {available}); "
            f"was the data prepared with a {split} split?"
        )
    dtype = _dtype_from_name(meta["dtype"], tokens_dir / META_FILE)
    arrays: list[np.ndarray] = []
    for shard in meta["splits"][split]["shards"]:
        path = tokens_dir / shard["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run `lmforge tokenizer encode` again")
        size = path.stat().st_size
        if size % dtype.itemsize or size // dtype.itemsize != shard["tokens"]:
            raise ValueError(
                f"{path} is {size} bytes but meta.json says {shard['tokens']} {dtype.name} "
                f"tokens ({shard['tokens'] * dtype.itemsize} bytes): the file is truncated or "
                f"stale; run `lmforge tokenizer encode` again"
            )
        if size == 0:
            arrays.append(np.zeros(0, dtype=dtype))
        else:
            arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return arrays
