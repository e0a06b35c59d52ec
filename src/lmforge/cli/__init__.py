"""The `lmforge` command: one subcommand table, each entry a thin call into the library.

Every stage reads and writes plain artifacts in a run directory, so each command can be
re-run on its own. The table is filled by the stage modules beside this one (`data`,
`tokenizer`, `train`, `tune`, `eval`, `infer`, `finetune`, `export`), in the order `--help`
lists them. Errors that come from bad input are printed as one line (no traceback)
and exit with status 2; `LMFORGE_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lmforge import __version__

# Subcommands register here: (path, help, add_arguments, run, takes --section.field overrides).
COMMANDS: list[tuple[tuple[str, ...], str, Callable, Callable, bool]] = []


def command(
    *path: str,
    help: str,
    args: Callable[[argparse.ArgumentParser], None],
    overrides: bool = False,
) -> Callable:
    """Register `fn` as `lmforge PATH...`, with `args` adding its flags; `overrides`: it also
    takes recipe overrides (`--train.max_steps 100`), handed over as `a.extra`."""

    def register(fn: Callable) -> Callable:
        COMMANDS.append((path, help, args, fn, overrides))
        return fn

    return register


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


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


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", default="best", help="best, last, or a folder name like step-0001000"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


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
    for path, help_text, add_arguments, run, overrides in COMMANDS:
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
        sub.set_defaults(handler=run, takes_overrides=overrides)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args.takes_overrides:
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
        # Under torchrun every rank may fail; say which, or the lines look like repeats.
        rank = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"lmforge: error{rank}: {message}", file=sys.stderr)
        return 2


# The stage modules fill COMMANDS as they are imported; they need the names above.
_STAGES = ("data", "tokenizer", "train", "tune", "translate", "eval", "infer", "finetune", "export")
for _stage in _STAGES:
    importlib.import_module(f"lmforge.cli.{_stage}")
