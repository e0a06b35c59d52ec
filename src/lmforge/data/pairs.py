"""Parallel text for translation: aligned source/target files in, token pairs on disk, batches out.

`prepare_pairs` reads line-aligned files (line i of the source is translated by line i of the
target; `.gz` read as it is), trains one shared vocabulary on both sides or one per side, and
writes each split as four arrays (`{split}.src.npy`, `{split}.tgt.npy` with every sentence's ids
end to end, and their `.off.npy` offsets) plus `meta.json`:

    pairs/
      meta.json              counts, lengths, what was skipped or cut, the tokenizers' fingerprints
      tokenizer/             the source (or shared) vocabulary
      tokenizer-tgt/         the target vocabulary, when the two are separate
      train.src.npy  train.src.off.npy  train.tgt.npy  train.tgt.off.npy  (val, test alike)

Sentences are stored without specials; a batch puts EOS after the source and BOS ... EOS
around the target, so `max_len` counts those too. `PairBatches` cuts an epoch into batches of
sentences of similar length (less padding, as fairseq and OpenNMT do) in an order drawn from
(seed, epoch): the batch of a step depends on nothing else, so a resumed run sees what the
uninterrupted run would have.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.document import DataError
from lmforge.io import atomic_path, write_json_atomic
from lmforge.tokenizer.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

META_FILE = "meta.json"
FORMAT = "lmforge-pairs"


@dataclass(kw_only=True)
class PairsConfig:
    max_len: int = 128  # longest sentence in tokens, with its EOS (and the target's BOS)
    on_long: str = "truncate"  # or "error": what a longer sentence gets
    shared_vocab: bool = True  # one vocabulary for both sides (needed to share embeddings)

    def __post_init__(self) -> None:
        if self.max_len < 3:
            raise ValueError(f"max_len must be at least 3 (BOS, a token, EOS), got {self.max_len}")
        if self.on_long not in ("truncate", "error"):
            raise ValueError(f"on_long must be 'truncate' or 'error', got {self.on_long!r}")


def _open_lines(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", newline=None)


def read_parallel(
    src_path: str | Path, tgt_path: str | Path
) -> tuple[list[tuple[str, str]], int, list[int]]:
    """The (source, target) sentence pairs of two aligned files, how many were skipped, and
    the line number of each pair kept.

    A pair with an empty side is skipped and counted; files of different lengths are an
    error naming the line where one of them ends.
    """
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    pairs: list[tuple[str, str]] = []
    numbers: list[int] = []
    skipped = 0
    with _open_lines(src_path) as fs, _open_lines(tgt_path) as ft:
        line = 0
        while True:
            try:
                s, t = fs.readline(), ft.readline()
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{src_path} / {tgt_path}, line {line + 1}: not valid UTF-8 ({e})"
                ) from None
            if not s or not t:
                if s or t:
                    longer, shorter = (src_path, tgt_path) if s else (tgt_path, src_path)
                    rest = sum(1 for _ in (fs if s else ft)) + 1
                    raise DataError(
                        f"{shorter} ends after line {line} but {longer} has {rest} more "
                        f"line(s) from line {line + 1}: the files must be line-aligned "
                        "translations of each other"
                    )
                break
            line += 1
            s, t = s.strip(), t.strip()
            if not s or not t:
                skipped += 1
                continue
            pairs.append((s, t))
            numbers.append(line)
    if not pairs:
        raise DataError(f"{src_path} and {tgt_path} hold no sentence pairs")
    return pairs, skipped, numbers


def _encode_side(
    tok: Tokenizer, texts: list[str], limit: int, on_long: str, where: str, lines: list[int]
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Ids end to end, offsets, how many were truncated, and the longest length seen."""
    ids = tok.encode_batch(texts)
    truncated, longest = 0, 0
    for i, seq in enumerate(ids):
        longest = max(longest, len(seq))
        if len(seq) > limit:
            if on_long == "error":
                raise DataError(
                    f"{where}, line {lines[i]}: {len(seq)} tokens, more than the {limit} that "
                    f"max_len allows; raise --max-len or pass --on-long truncate"
                )
            ids[i] = seq[:limit]
            truncated += 1
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((t for s in ids for t in s), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets, truncated, longest


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array, allow_pickle=False)


def prepare_pairs(
    splits: dict[str, tuple[str | Path, str | Path]],
    out_dir: str | Path,
    cfg: PairsConfig,
    tokenizer: TokenizerConfig | str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode aligned files into pair arrays under `out_dir`; return its meta.

    `splits` maps a split name (train, val, test) to its (source, target) files; `train` is
    required. `tokenizer` is a config to train new vocabularies on the train split, or the
    folder of an existing one to reuse (then shared on both sides).
    """
    if "train" not in splits:
        raise DataError("prepare_pairs needs a 'train' split (source and target files)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {name: read_parallel(*files) for name, files in splits.items()}
    train_pairs = texts["train"][0]
    if isinstance(tokenizer, TokenizerConfig):
        if cfg.shared_vocab:
            both = (s for pair in train_pairs for s in pair)
            src_tok = tgt_tok = train_tokenizer(
                both, tokenizer, progress=progress, length=2 * len(train_pairs)
            )
        else:
            src_tok = train_tokenizer(
                (s for s, _ in train_pairs), tokenizer, progress=progress, length=len(train_pairs)
            )
            tgt_tok = train_tokenizer(
                (t for _, t in train_pairs), tokenizer, progress=progress, length=len(train_pairs)
            )
    else:
        if not cfg.shared_vocab:
            raise DataError(
                "an existing --tokenizer is shared by both sides; drop --separate-vocab"
            )
        src_tok = tgt_tok = load_tokenizer(tokenizer)
    if tgt_tok is not src_tok:
        for role in ("bos", "eos", "pad"):
            if getattr(src_tok, f"{role}_id") != getattr(tgt_tok, f"{role}_id"):
                raise DataError(
                    f"the source and target vocabularies give {role} different ids; the model "
                    "uses one id for each special token on both sides"
                )
    src_tok.save(out / "tokenizer")
    if tgt_tok is not src_tok:
        tgt_tok.save(out / "tokenizer-tgt")

    meta: dict[str, Any] = {
        "format": FORMAT,
        "tokenizer_dir": str((out / "tokenizer").resolve()),
        "tokenizer_fingerprint": src_tok.fingerprint,
        "vocab_size": src_tok.vocab_size,
        "shared_vocab": tgt_tok is src_tok,
        "tgt_tokenizer_fingerprint": tgt_tok.fingerprint,
        "tgt_vocab_size": tgt_tok.vocab_size,
        "max_len": cfg.max_len,
        "splits": {},
    }
    for name, (pairs, skipped, lines) in texts.items():
        src_path, tgt_path = splits[name]
        src, src_off, src_cut, src_max = _encode_side(
            src_tok, [s for s, _ in pairs], cfg.max_len - 1, cfg.on_long, str(src_path), lines
        )
        tgt, tgt_off, tgt_cut, tgt_max = _encode_side(
            tgt_tok, [t for _, t in pairs], cfg.max_len - 2, cfg.on_long, str(tgt_path), lines
        )
        for side, flat, off in (("src", src, src_off), ("tgt", tgt, tgt_off)):
            _save_npy(out / f"{name}.{side}.npy", flat)
            _save_npy(out / f"{name}.{side}.off.npy", off)
        meta["splits"][name] = {
            # Absolute, so that `lmforge eval --bleu` finds them from any directory.
            "source": str(Path(src_path).resolve()),
            "target": str(Path(tgt_path).resolve()),
            "pairs": len(pairs),
            "skipped_empty": skipped,
            "truncated_src": src_cut,
            "truncated_tgt": tgt_cut,
            "src_tokens": int(src_off[-1]),
            "tgt_tokens": int(tgt_off[-1]),
            "longest_src": src_max,
            "longest_tgt": tgt_max,
        }
        if skipped:
            log.warning("%s: skipped %d pair(s) with an empty side", name, skipped)
        if src_cut or tgt_cut:
            log.warning(
                "%s: truncated %d source and %d target sentence(s) to max_len=%d",
                name,
                src_cut,
                tgt_cut,
                cfg.max_len,
            )
    write_json_atomic(out / META_FILE, meta)
    return meta


def read_pairs_meta(pairs_dir: str | Path) -> dict[str, Any]:
    path = Path(pairs_dir) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path} does not exist: {pairs_dir} holds no sentence pairs; run "
            "`lmforge data pairs` first"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); run `lmforge data pairs` again") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(
            f"{path} was not written by `lmforge data pairs`; a seq2seq model trains on "
            "sentence pairs, not on the token shards of `lmforge tokenizer encode`"
        )
    return meta


def is_pairs_dir(path: str | Path) -> bool:
    try:
        read_pairs_meta(path)
    except DataError:
        return False
    return True


class PairBatches:
    """One split's sentence pairs as padded (src, tgt_in, tgt_out) batches."""

    def __init__(
        self,
        pairs_dir: str | Path,
        split: str,
        *,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        max_len: int | None = None,
    ) -> None:
        pairs_dir = Path(pairs_dir)
        meta = read_pairs_meta(pairs_dir)
        if split not in meta["splits"]:
            raise DataError(
                f"{pairs_dir} has no {split!r} split (it has {sorted(meta['splits'])}); pass "
                f"--{split}-src/--{split}-tgt to `lmforge data pairs`"
            )
        if max_len is not None and meta["max_len"] > max_len:
            raise DataError(
                f"{pairs_dir} holds sentences of up to {meta['max_len']} tokens but the model "
                f"takes {max_len}; set model.max_seq_len = {meta['max_len']} or prepare the "
                f"pairs with --max-len {max_len}"
            )

        def load(name: str) -> np.ndarray:
            return np.load(pairs_dir / f"{split}.{name}.npy", mmap_mode="r", allow_pickle=False)

        self.split = split
        self.src, self.src_off = load("src"), load("src.off")
        self.tgt, self.tgt_off = load("tgt"), load("tgt.off")
        self.src_len = np.diff(self.src_off) + 1  # with EOS
        self.tgt_len = np.diff(self.tgt_off) + 1  # with BOS (inputs) or EOS (targets)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self._epoch_cache: tuple[tuple[int, int, int], list[np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.src_off) - 1

    @property
    def target_tokens(self) -> int:
        return int(self.tgt_len.sum())

    def source(self, i: int) -> list[int]:
        return self.src[self.src_off[i] : self.src_off[i + 1]].tolist()

    def target(self, i: int) -> list[int]:
        return self.tgt[self.tgt_off[i] : self.tgt_off[i + 1]].tolist()

    def collate(self, index: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded src (B, S), tgt_in (B, T), tgt_out (B, T) of the pairs `index`."""
        index = list(index)
        s_len = int(max(self.src_len[i] for i in index))
        t_len = int(max(self.tgt_len[i] for i in index))
        src = np.full((len(index), s_len), self.pad_id, dtype=np.int64)
        tgt = np.full((len(index), t_len + 1), self.pad_id, dtype=np.int64)
        for row, i in enumerate(index):
            s, t = self.source(i), self.target(i)
            src[row, : len(s) + 1] = [*s, self.eos_id]
            tgt[row, : len(t) + 2] = [self.bos_id, *t, self.eos_id]
        tgt_in, tgt_out = tgt[:, :-1].copy(), tgt[:, 1:].copy()
        tgt_in[tgt_in == self.eos_id] = self.pad_id  # the EOS is only ever a target
        return torch.from_numpy(src), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out)

    def _epoch(self, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
        key = (batch_size, seed, epoch)
        if self._epoch_cache is None or self._epoch_cache[0] != key:
            rng = np.random.default_rng([seed, epoch, 1])
            order = rng.permutation(len(self))
            # Sort within pools of 100 batches by length, cut into batches, shuffle them.
            pool = 100 * batch_size
            batches = []
            for p in range(0, len(order), pool):
                chunk = order[p : p + pool]
                chunk = chunk[np.lexsort((self.tgt_len[chunk], self.src_len[chunk]))]
                batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
            batches = [b for b in batches if len(b) == batch_size] or batches
            rng.shuffle(batches)
            self._epoch_cache = (key, batches)
        return self._epoch_cache[1]

    def batch(
        self, batch_size: int, *, seed: int, step: int, shard: tuple[int, int] = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training batch of `step` (epochs follow each other); rank `shard[0]` of
        `shard[1]` takes its equal part of the rows."""
        per_epoch = max(1, len(self) // batch_size)
        batches = self._epoch(batch_size, seed, step // per_epoch)
        rows = batches[step % per_epoch % len(batches)]
        part, parts = shard
        if len(rows) % parts:
            raise ValueError(f"a batch of {len(rows)} cannot be cut into {parts} equal parts")
        n = len(rows) // parts
        return self.collate(rows[part * n : (part + 1) * n])

    def sequential(
        self, batch_size: int, *, max_pairs: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every pair once (the first `max_pairs`), in batches of similar length."""
        n = min(len(self), max_pairs) if max_pairs else len(self)
        order = np.argsort(self.src_len[:n], kind="stable")
        for b in range(0, n, batch_size):
            yield self.collate(order[b : b + batch_size])
