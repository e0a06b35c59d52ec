"""`lmforge tokenizer ...`: train a vocabulary, encode a corpus into token shards."""

from __future__ import annotations

import argparse

from lmforge.cli import command


def _tokenizer_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a folder written by `lmforge data prepare` (its train split)")
    p.add_argument(
        "--kind",
        choices=["bpe", "char", "byte", "wordpiece", "unigram"],
        default="bpe",
        help="bpe: byte-level BPE (GPT-2); char: one token per character seen (unseen ones fall "
        "back to bytes); byte: the 256 byte values; wordpiece: BERT's WordPiece with [PAD] [UNK] "
        "[CLS] [SEP] [MASK] (for masked-LM models; text is normalized, so decoding is not "
        "exact); unigram: SentencePiece-style Unigram with byte fallback (decodes back to the "
        "text but for a leading space)",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="tokens in the vocabulary, specials included (bpe, wordpiece, unigram; unigram's "
        "counts its 256 byte tokens too)",
    )
    p.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        help="bpe and wordpiece: fewest occurrences for a pair to be merged",
    )
    p.add_argument(
        "--lowercase",
        action="store_true",
        help="wordpiece only: lowercase text before splitting it (as BERT uncased)",
    )
    p.add_argument(
        "--strip-accents",
        action="store_true",
        help="wordpiece only: remove accents before splitting text (é -> e, as BERT uncased)",
    )
    p.add_argument("--out", required=True, help="folder for tokenizer.json + tokenizer_meta.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "tokenizer",
    "train",
    help="train a BPE, char, byte, WordPiece or Unigram vocabulary on the train split",
    args=_tokenizer_train_args,
)
def cmd_tokenizer_train(a: argparse.Namespace) -> int:
    from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer_from_data

    cfg = TokenizerConfig(
        kind=a.kind,
        vocab_size=a.vocab_size,
        min_frequency=a.min_frequency,
        lowercase=a.lowercase,
        strip_accents=a.strip_accents,
    )
    tok = train_tokenizer_from_data(a.data, a.out, cfg, progress=not a.no_progress)
    print(f"{tok.kind} tokenizer with {tok.vocab_size:,} tokens written to {a.out}")
    return 0


def _tokenizer_encode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a folder written by `lmforge data prepare`")
    p.add_argument("--tokenizer", required=True, help="a folder written by `tokenizer train`")
    p.add_argument("--out", required=True, help="folder for the token shards and meta.json")
    p.add_argument(
        "--workers", type=int, default=None, help="encoding processes (default: min(4, CPUs))"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "tokenizer",
    "encode",
    help="encode every split into memory-mapped token shards",
    args=_tokenizer_encode_args,
)
def cmd_tokenizer_encode(a: argparse.Namespace) -> int:
    from lmforge.tokenizer.encode import encode_data

    meta = encode_data(a.data, a.tokenizer, a.out, workers=a.workers, progress=not a.no_progress)
    for split, info in meta["splits"].items():
        ratio = info["bytes"] / max(1, info["tokens"])
        print(f"{split:>5}: {info['tokens']:,} tokens ({ratio:.2f} bytes/token)")
    print(f"wrote {a.out}/meta.json ({meta['dtype']})")
    return 0
