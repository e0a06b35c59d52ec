"""Where a fine-tuning run starts: `--from runs/x` or `--from path/to/hf-dir`.

Every `lmforge finetune <task>` takes either an lmforge run directory or a local Hugging Face
model folder. A folder is imported once, through the same `import hf` adapters a user would run
by hand, into `<out>/base/`, so the fine-tuned result records what it started from and the
import can be inspected, served or evaluated on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.tokenizer.tokenizer import Tokenizer


class BaseModelError(ValueError):
    """`--from` names neither an lmforge run nor a Hugging Face model folder."""


def is_run_dir(path: Path) -> bool:
    """A run written by `lmforge train`, `import hf` or a fine-tuning command."""
    return (path / "checkpoints").is_dir() and (path / "tokenizer").is_dir()


def is_hf_dir(path: Path) -> bool:
    """A Hugging Face model folder: config.json naming a model_type, beside its weights."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def resolve_base(source: str | Path, out_dir: str | Path) -> Path:
    """The run directory to fine-tune from: `source` itself when it is a run, else `source`
    imported as a Hugging Face folder into `out_dir/base` (reused if already imported)."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise BaseModelError(f"--from {source}: no such run directory or Hugging Face folder")
    if is_run_dir(source):
        return source
    if is_hf_dir(source):
        base = out_dir / "base"
        if is_run_dir(base):
            try:
                provenance = json.loads((base / "imported_from.json").read_text("utf-8"))
            except (OSError, ValueError):
                provenance = {}
            imported_from = provenance.get("hf_dir")
            if imported_from == str(source.resolve()):
                return base
            raise BaseModelError(
                f"{base} already holds an import of {imported_from}, not {source}; "
                "give a fresh --out"
            )
        from lmforge.export.hf import import_hf

        import_hf(source, base)
        return base
    raise BaseModelError(
        f"--from {source}: neither an lmforge run (checkpoints/ and tokenizer/) nor a Hugging "
        "Face model folder (config.json with a model_type); train one with `lmforge train` or "
        "give a folder saved with transformers' save_pretrained"
    )


def load_base_model(
    run: Path, families: set[str], command: str, init: str = "pretrained"
) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """The model of `run`'s best checkpoint (refused unless of one of `families`), its
    tokenizer and its config; with `init` "scratch", the same architecture freshly initialised
    (the baseline that shows what pretraining transfers)."""
    from lmforge.model import build_model, model_config_from_dict, require_family
    from lmforge.tokenizer.tokenizer import load_tokenizer
    from lmforge.train import checkpoint as ckpt

    ckpt_dir = ckpt.checkpoint_dir(run, "best")
    config = ckpt.read_config(ckpt_dir)
    require_family(config["model"], families, command)
    model = build_model(model_config_from_dict(config["model"]))
    if init == "pretrained":
        ckpt.load_model_weights(model, ckpt_dir / "model.safetensors")
    return model, load_tokenizer(run / "tokenizer"), config
