"""The `lmforge` command: one subcommand table, each entry a thin call into the library.

Every stage reads and writes plain artifacts in a run directory, so each command can be
re-run on its own. Errors that come from bad input are printed as one line (no traceback)
and exit with status 2; `LMFORGE_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmforge import __version__

# Subcommands register here: (path, help, add_arguments, run).
COMMANDS: list[tuple[tuple[str, ...], str, Callable, Callable]] = []


def command(*path: str, help: str, args: Callable[[argparse.ArgumentParser], None]) -> Callable:
    """Register `fn` as `lmforge PATH...`, with `args` adding its flags."""

    def register(fn: Callable) -> Callable:
        COMMANDS.append((path, help, args, fn))
        return fn

    return register


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# ---------------------------------------------------------------- data


def _data_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        help="files or folders of .txt/.md, .jsonl/.json, .parquet, .csv/.tsv "
        "(optionally .gz/.bz2/.zst compressed); folders are read recursively",
    )
    p.add_argument(
        "--builtin",
        metavar="NAME",
        help="use a corpus bundled with lmforge instead of (or besides) INPUTS: tinyshakespeare",
    )
    p.add_argument("--out", required=True, help="output folder for JSONL shards + manifest.json")
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of documents for validation"
    )
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of documents for test")
    p.add_argument(
        "--text-field", default="text", help="field/column holding the text in JSONL/CSV/Parquet"
    )
    p.add_argument(
        "--on-bad-record",
        choices=["skip", "fail"],
        default="skip",
        help="a JSONL line that is not JSON or lacks the text field: skip and count it, or stop",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "data",
    "prepare",
    help="read, clean and split a corpus into JSONL shards",
    args=_data_prepare_args,
)
def cmd_data_prepare(a: argparse.Namespace) -> int:
    from lmforge.corpora import corpus_path
    from lmforge.data.prepare import PrepareConfig, prepare_corpus

    inputs = list(a.inputs)
    if a.builtin:
        inputs.append(str(corpus_path(a.builtin)))
    if not inputs:
        raise ValueError("give input files or folders, or --builtin tinyshakespeare")
    cfg = PrepareConfig(
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
        text_field=a.text_field,
        on_bad_record=a.on_bad_record,
    )
    manifest = prepare_corpus(inputs, a.out, cfg, progress=not a.no_progress)
    for split, info in manifest["splits"].items():
        print(
            f"{split:>5}: {info['documents']:,} documents, {info['chars']:,} characters, "
            f"{info['bytes']:,} bytes"
        )
    print(f"wrote {a.out}/manifest.json")
    return 0


# ---------------------------------------------------------------- tokenizer


def _tokenizer_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a folder written by `lmforge data prepare` (its train split)")
    p.add_argument(
        "--kind",
        choices=["bpe", "char", "byte"],
        default="bpe",
        help="bpe: byte-level BPE; char: one token per character seen (unseen ones fall back "
        "to bytes); byte: the 256 byte values",
    )
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument(
        "--min-frequency", type=int, default=2, help="BPE: fewest occurrences for a merge"
    )
    p.add_argument("--out", required=True, help="folder for tokenizer.json + tokenizer_meta.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "tokenizer",
    "train",
    help="train a BPE, char or byte vocabulary on the train split",
    args=_tokenizer_train_args,
)
def cmd_tokenizer_train(a: argparse.Namespace) -> int:
    from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer_from_data

    cfg = TokenizerConfig(kind=a.kind, vocab_size=a.vocab_size, min_frequency=a.min_frequency)
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


# ---------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="a TOML recipe (see recipes/); defaults apply without one")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's last checkpoint (without --recipe: with the run's own "
        "config.json)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.epilog = (
        "Any recipe field can be overridden as --SECTION.FIELD VALUE, for example "
        "--optim.lr 3e-4 --train.max_steps 500 --model.n_layers 6 --data.tokens runs/x/tokens. "
        "Sections: data, model, optim, schedule, train, distributed. "
        "Several processes: torchrun --nproc-per-node N -m lmforge train ... "
        "(--distributed.strategy ddp|fsdp; train.batch_size is the global batch)."
    )


def parse_overrides(extra: Sequence[str]) -> dict[str, Any]:
    """`--a.b value` / `--a.b=value` pairs into {"a.b": value}."""
    from lmforge.config import ConfigError, parse_override_value

    out: dict[str, Any] = {}
    items = list(extra)
    while items:
        key = items.pop(0)
        if not key.startswith("--") or "." not in key:
            raise ConfigError(
                f"unrecognised argument {key!r}; overrides look like --train.max_steps 100"
            )
        key = key[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif items:
            value = items.pop(0)
        else:
            raise ConfigError(f"override --{key} needs a value")
        out[key.replace("-", "_")] = parse_override_value(value)
    return out


@command(
    "train",
    help="train a model from a recipe; writes checkpoints, metrics and plots",
    args=_train_args,
)
def cmd_train(a: argparse.Namespace) -> int:
    from lmforge.train.trainer import load_run_config, train

    base = None
    saved = Path(a.out) / "config.json"
    if a.resume and not a.recipe and saved.exists():
        base = json.loads(saved.read_text(encoding="utf-8"))  # continue the run as it was set up
    cfg = load_run_config(a.recipe, parse_overrides(a.extra), base=base)
    summary = train(cfg, a.out, resume=a.resume, progress=not a.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 speaks for the run
    world = f" x {summary['world_size']} processes" if summary["world_size"] > 1 else ""
    print(
        f"trained {summary['steps']} steps ({summary['tokens_seen']:,} tokens) in "
        f"{summary['elapsed_s']:.0f}s on {summary['device']}{world} ({summary['dtype']}): "
        f"val loss {summary['final_val_loss']:.4f} (best {summary['best_val_loss']:.4f})"
    )
    print(f"checkpoints in {a.out}/checkpoints, loss curve in {a.out}/loss.png")
    return 0


# ---------------------------------------------------------------- model


def _model_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="a TOML recipe (its [model] table); defaults without one")
    p.add_argument(
        "--vocab-size",
        type=int,
        help="vocabulary size, when the recipe takes it from the tokenizer (model.vocab_size = 0)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="sequences per step for the memory estimate (default: recipe)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.epilog = "Recipe fields can be overridden as --SECTION.FIELD VALUE, e.g. --model.depth 8."


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


@command(
    "model", "info", help="parameters by group, FLOPs per token and memory of a recipe's model",
    args=_model_info_args,
)  # fmt: skip
def cmd_model_info(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console
    from rich.table import Table

    from lmforge.model.info import model_info
    from lmforge.train.trainer import load_run_config

    cfg = load_run_config(a.recipe, parse_overrides(a.extra))
    model_cfg = cfg.model
    if a.vocab_size:
        model_cfg = replace(model_cfg, vocab_size=a.vocab_size)
    if model_cfg.vocab_size == 0:
        raise ValueError(
            "the recipe takes model.vocab_size from the tokenizer; pass --vocab-size N"
        )
    batch = (a.batch_size or cfg.train.batch_size) * cfg.train.grad_accum_steps
    info = model_info(model_cfg, batch_size=batch)
    if a.json:
        _print_json(info)
        return 0
    table = Table(title=f"{a.recipe or 'default config'}: {_human(info['params']['total'])} params")
    table.add_column("parameters")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for group, n in info["params"]["by_group"].items():
        table.add_row(group, f"{n:,}", f"{n / info['params']['total']:.1%}")
    table.add_row("total", f"{info['params']['total']:,}", "")
    table.add_row("non-embedding", f"{info['params']['non_embedding']:,}", "")
    console = Console()
    console.print(table)
    console.print(
        f"FLOPs per token (train, fwd+bwd): {_human(info['flops_per_token'])}; per step of "
        f"{batch} x {info['seq_len']} tokens: {_human(info['flops_per_step'])}"
    )
    for precision, mem in info["memory_estimate"].items():
        console.print(
            f"memory estimate ({precision} activations): "
            f"weights+grads+AdamW {_human(mem['weights_grads_adamw_bytes'], 'B')}, "
            f"activations {_human(mem['activations_bytes'], 'B')}, "
            f"total {_human(mem['total_bytes'], 'B')}"
        )
    return 0


# ---------------------------------------------------------------- eval


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", default="best", help="best, last, or a folder name like step-0001000"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `lmforge train`")
    p.add_argument("--split", default="test", help="train, val or test")
    p.add_argument("--tokens", help="token shards to score (default: the run's own)")
    p.add_argument("--max-tokens", type=int, help="score only the first N tokens of the split")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _checkpoint_arg(p)


@command("eval", help="loss, perplexity and bits-per-byte of a run on a split", args=_eval_args)
def cmd_eval(a: argparse.Namespace) -> int:
    from lmforge.eval.evaluate import evaluate_run

    r = evaluate_run(
        a.run,
        split=a.split,
        which=a.checkpoint,
        tokens=a.tokens,
        batch_size=a.batch_size,
        max_tokens=a.max_tokens,
        device=a.device,
    )
    if a.json:
        _print_json(r)
    else:
        print(
            f"{r['split']} ({r['tokens']:,} tokens, {r['checkpoint']}): loss {r['loss']:.4f}  "
            f"perplexity {r['perplexity']:.3f}  "
            f"bits/byte {r.get('bits_per_byte', float('nan')):.4f}"
        )
    return 0


# ---------------------------------------------------------------- generate


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = wilder")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = all)")
    p.add_argument(
        "--top-p", type=float, default=1.0, help="sample among the likeliest tokens summing to p"
    )
    p.add_argument(
        "--stop", action="append", default=[], help="stop before this string (repeatable)"
    )
    p.add_argument("--seed", type=int, help="random seed, for a reproducible sample")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `lmforge train`")
    p.add_argument("--prompt", default="", help="text to continue (default: start a document)")
    _sampling_args(p)
    p.add_argument("--no-cache", action="store_true", help="recompute the context each step")
    _checkpoint_arg(p)


@command("generate", help="sample text from a run, streamed to stdout", args=_generate_args)
def cmd_generate(a: argparse.Namespace) -> int:
    from lmforge.infer.generate import (
        Completion,
        GenerationConfig,
        prepare_for_decoding,
        stream_text,
    )
    from lmforge.infer.load import load_run
    from lmforge.train.trainer import resolve_device

    run = load_run(a.run, which=a.checkpoint, device=resolve_device(a.device))
    prepare_for_decoding(run.model)
    cfg = GenerationConfig(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        stop=tuple(a.stop),
        seed=a.seed,
        use_cache=not a.no_cache,
    )
    sys.stdout.write(a.prompt)
    for piece in stream_text(run.model, run.tokenizer, a.prompt, cfg):
        if isinstance(piece, Completion):
            break
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


# ---------------------------------------------------------------- serve


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `lmforge train`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument(
        "--max-prompt-tokens", type=int, default=0, help="longest prompt accepted (0 = context)"
    )
    p.add_argument(
        "--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask"
    )
    p.add_argument("--model-name", help="the model id reported by /v1/models (default: run name)")
    _checkpoint_arg(p)


@command(
    "serve", help="serve a run over HTTP (/generate and OpenAI-compatible /v1)", args=_serve_args
)
def cmd_serve(a: argparse.Namespace) -> int:
    from lmforge.serve.app import ServeConfig, serve

    cfg = ServeConfig(
        host=a.host,
        port=a.port,
        max_prompt_tokens=a.max_prompt_tokens,
        max_tokens_limit=a.max_tokens_limit,
        model_name=a.model_name or Path(a.run).resolve().name,
        checkpoint=a.checkpoint,
        device=a.device,
    )
    serve(a.run, cfg)
    return 0


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Raw text to a trained, evaluated and served language model.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, help_text, add_arguments, run in COMMANDS:
        parent = subparsers
        for i, name in enumerate(path[:-1]):
            key = " ".join(path[: i + 1])
            if key not in groups:
                group = parent.add_parser(name, help=f"{name} stage commands")
                groups[key] = group.add_subparsers(dest=f"{name}_command", required=True)
            parent = groups[key]
        sub = parent.add_parser(
            path[-1],
            help=help_text,
            description=help_text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        add_arguments(sub)
        sub.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.handler not in (cmd_train, cmd_model_info):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, FloatingPointError) as e:
        if os.environ.get("LMFORGE_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lmforge: error: {message}", file=sys.stderr)
        return 2
