"""`lmforge data pairs` (parallel text to sentence pairs) and `lmforge translate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lmforge.cli import _checkpoint_arg, _print_json, command


def _data_pairs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-src", required=True, help="source side of the training pairs")
    p.add_argument("--train-tgt", required=True, help="target side, line-aligned with --train-src")
    for split in ("val", "test"):
        p.add_argument(f"--{split}-src", help=f"source side of the {split} pairs (optional)")
        p.add_argument(f"--{split}-tgt", help=f"target side of the {split} pairs")
    p.add_argument("--out", required=True, help="folder for the pairs, meta.json and tokenizers")
    p.add_argument(
        "--kind",
        default="bpe",
        choices=["bpe", "unigram", "wordpiece", "char", "byte"],
        help="vocabulary to train on the training pairs (ignored with --tokenizer)",
    )
    p.add_argument("--vocab-size", type=int, default=8000, help="size of each vocabulary")
    p.add_argument(
        "--separate-vocab",
        action="store_true",
        help="one vocabulary per side instead of one shared by both (a shared one lets the "
        "model share its embeddings between encoder, decoder and output)",
    )
    p.add_argument("--tokenizer", help="reuse this tokenizer folder (shared) instead of training")
    p.add_argument(
        "--max-len",
        type=int,
        default=128,
        help="longest sentence in tokens, with EOS (and the target's BOS); the model's "
        "max_seq_len must be at least this",
    )
    p.add_argument(
        "--on-long",
        default="truncate",
        choices=["truncate", "error"],
        help="what a longer sentence gets: cut (counted in meta.json) or an error naming it",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "data",
    "pairs",
    help="encode line-aligned source/target files into sentence pairs for a seq2seq model",
    args=_data_pairs_args,
)
def cmd_data_pairs(a: argparse.Namespace) -> int:
    from lmforge.data.pairs import PairsConfig, prepare_pairs
    from lmforge.tokenizer.tokenizer import TokenizerConfig

    splits = {"train": (a.train_src, a.train_tgt)}
    for split in ("val", "test"):
        src, tgt = getattr(a, f"{split}_src"), getattr(a, f"{split}_tgt")
        if bool(src) != bool(tgt):
            raise ValueError(f"--{split}-src and --{split}-tgt go together: give both or neither")
        if src:
            splits[split] = (src, tgt)
    tokenizer = a.tokenizer or TokenizerConfig(kind=a.kind, vocab_size=a.vocab_size)
    cfg = PairsConfig(max_len=a.max_len, on_long=a.on_long, shared_vocab=not a.separate_vocab)
    meta = prepare_pairs(splits, a.out, cfg, tokenizer, progress=not a.no_progress)
    for name, s in meta["splits"].items():
        print(
            f"{name}: {s['pairs']:,} pairs ({s['src_tokens']:,} source, {s['tgt_tokens']:,} "
            f"target tokens); skipped {s['skipped_empty']} with an empty side; truncated "
            f"{s['truncated_src']} source, {s['truncated_tgt']} target"
        )
    vocab = "shared" if meta["shared_vocab"] else "separate"
    print(f"{vocab} vocabulary of {meta['vocab_size']:,} tokens; written to {a.out}")
    return 0


def decode_args(p: argparse.ArgumentParser) -> None:
    """Decoding options, shared by `translate` and `eval --bleu`."""
    d = p.add_argument_group("decoding")
    d.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy decoding")
    d.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        help="beam scores are log-probability / length**alpha; above 0 favours longer output",
    )
    d.add_argument(
        "--max-len", type=int, default=0, help="longest output in tokens (0 = the model's limit)"
    )
    d.add_argument(
        "--translate-batch-size", type=int, default=64, help="sentences decoded together"
    )
    d.add_argument(
        "--on-long",
        default="truncate",
        choices=["truncate", "error"],
        help="a source line longer than the model takes: cut it (with a warning count) or stop",
    )


def decode_config(a: argparse.Namespace) -> Any:
    from lmforge.infer.seq2seq_decode import DecodeConfig

    return DecodeConfig(beam_size=a.beam, length_penalty=a.length_penalty, max_len=a.max_len)


def _translate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory of a seq2seq model (`lmforge train`)")
    p.add_argument("--input", required=True, help="source text, one sentence per line (.gz ok)")
    p.add_argument("--output", help="write translations here (default: standard output)")
    decode_args(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _checkpoint_arg(p)


@command(
    "translate",
    help="translate a file line by line with a seq2seq run (greedy or beam search)",
    args=_translate_args,
)
def cmd_translate(a: argparse.Namespace) -> int:
    from lmforge.infer.load import load_run
    from lmforge.infer.translate import read_lines, translate_texts
    from lmforge.io import write_text_atomic
    from lmforge.train.trainer import resolve_device

    run = load_run(
        a.run,
        which=a.checkpoint,
        device=resolve_device(a.device),
        families={"seq2seq"},
        command="lmforge translate",
    )
    outputs, stats = translate_texts(
        run,
        read_lines(a.input),
        decode_config(a),
        batch_size=a.translate_batch_size,
        on_long=a.on_long,
        progress=not a.no_progress,
        where=a.input,
    )
    text = "".join(line + "\n" for line in outputs)
    if a.output:
        write_text_atomic(Path(a.output), text)
    else:
        sys.stdout.write(text)
    print(
        f"translated {stats['sentences']:,} lines in {stats['seconds']:.1f} s "
        f"({stats['sentences_per_s']:.1f} sentences/s); truncated {stats['truncated']}",
        file=sys.stderr,
    )
    return 0


def _sources_and_references(a: argparse.Namespace, run: Any, usage: str) -> tuple[str, str]:
    """--src and --ref as given, or the source and target files of the run's own --split."""
    from lmforge.data.pairs import read_pairs_meta
    from lmforge.train.trainer import resolve_tokens_dir

    if bool(a.src) != bool(a.ref):
        raise ValueError(f"--src and --ref go together: give {usage}, or neither for the split")
    if a.src:
        return a.src, a.ref
    meta = read_pairs_meta(resolve_tokens_dir(run.config["data"]["tokens"], Path(a.run)))
    if a.split not in meta["splits"]:
        raise ValueError(f"the run's pairs have no {a.split!r} split; pass {usage}")
    return meta["splits"][a.split]["source"], meta["splits"][a.split]["target"]


def eval_bleu(a: argparse.Namespace) -> int:
    """`lmforge eval RUN --bleu`: BLEU and chrF on a source file against its references."""
    from lmforge.eval.report import record_eval
    from lmforge.infer.load import load_run
    from lmforge.infer.translate import score_translation
    from lmforge.io import write_text_atomic
    from lmforge.train.trainer import resolve_device

    run = load_run(
        a.run,
        which=a.checkpoint,
        device=resolve_device(a.device),
        families={"seq2seq"},
        command="lmforge eval --bleu",
    )
    src, ref = _sources_and_references(a, run, "--src FILE --ref FILE")
    result = score_translation(
        run,
        src,
        ref,
        decode_config(a),
        batch_size=a.translate_batch_size,
        on_long=a.on_long,
        progress=not a.no_progress,
    )
    hypotheses = [row["hypothesis"] for row in result["samples"]]
    result["decoding"] = {"beam": a.beam, "length_penalty": a.length_penalty}
    result["checkpoint"] = run.checkpoint.name
    paths = record_eval(
        run.checkpoint,
        f"bleu:{Path(src).name}:beam{a.beam}-lp{a.length_penalty:g}",
        {"kind": "translation", **result},
        model={"kind": "checkpoint", "run": str(a.run), "checkpoint": run.checkpoint.name},
    )
    if a.output:
        write_text_atomic(Path(a.output), "".join(h + "\n" for h in hypotheses))
    if a.json:
        _print_json({k: v for k, v in result.items() if k != "samples"})
    else:
        print(
            f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  on {result['sentences']:,} "
            f"lines of {src} ({result['sentences_per_s']:.1f} sentences/s)"
        )
        print(f"  {result['bleu_signature']}")
        print(f"  {result['chrf_signature']}")
        print(f"wrote {paths['json']} and {paths['markdown'].name}")
    return 0


def eval_rouge(a: argparse.Namespace) -> int:
    """`lmforge eval RUN --rouge`: BLEU, chrF and ROUGE-1/2/L of a seq2seq run's outputs for a
    JSONL file (one or several reference fields), a --src/--ref pair, or the run's split."""
    from lmforge.data.pairs import read_parallel
    from lmforge.eval.report import record_eval
    from lmforge.finetune.seq2seq import (
        Example,
        Seq2SeqTuneConfig,
        evaluate_examples,
        read_seq2seq_jsonl,
    )
    from lmforge.infer.load import load_run
    from lmforge.io import write_text_atomic
    from lmforge.train.trainer import resolve_device

    run = load_run(
        a.run,
        which=a.checkpoint,
        device=resolve_device(a.device),
        families={"seq2seq"},
        command="lmforge eval --rouge",
    )
    src, ref = a.src, a.ref
    if src and Path(src).suffix == ".jsonl":
        fields = [f.strip() for f in (a.reference_field or "target").split(",") if f.strip()]
        examples, _ = read_seq2seq_jsonl(src, a.source_field, fields)
        ref = ",".join(fields)
    else:
        src, ref = _sources_and_references(a, run, "--src FILE.jsonl, or --src FILE --ref FILE")
        pairs, _, lines = read_parallel(src, ref)
        examples = [Example(source=s, references=[r], line=n) for (s, r), n in zip(pairs, lines)]
    cfg = Seq2SeqTuneConfig(
        beam=a.beam,
        length_penalty=a.length_penalty,
        decode_max_len=a.max_len,
        decode_batch_size=a.translate_batch_size,
    )
    result = evaluate_examples(run, examples, cfg, progress=not a.no_progress)
    result.update(source=str(src), reference=str(ref), checkpoint=run.checkpoint.name)
    paths = record_eval(
        run.checkpoint,
        f"rouge:{Path(src).name}:beam{a.beam}-lp{a.length_penalty:g}",
        {"kind": "translation", **result},
        model={"kind": "checkpoint", "run": str(a.run), "checkpoint": run.checkpoint.name},
    )
    if a.output:
        text = "".join(row["prediction"] + "\n" for row in result["samples"])
        write_text_atomic(Path(a.output), text)
    if a.json:
        _print_json({k: v for k, v in result.items() if k != "samples"})
    else:
        print(
            f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ROUGE-1/2/L "
            f"{result['rouge1']:.2f}/{result['rouge2']:.2f}/{result['rougeL']:.2f}  on "
            f"{result['n']:,} examples of {src}"
        )
        print(f"  {result['bleu_signature']}")
        print(f"wrote {paths['json']} and {paths['markdown'].name}")
    return 0
