"""Loading a trained run (model + tokenizer + config) for evaluation, generation and serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.tokenizer import Tokenizer, load_tokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train.checkpoint import CheckpointError


@dataclass
class LoadedRun:
    model: GPT
    tokenizer: Tokenizer
    config: dict[str, Any]
    checkpoint: Path


def load_run(
    run_dir: str | Path, *, which: str = "best", device: str | torch.device = "cpu"
) -> LoadedRun:
    """The model of checkpoint `which` ('best', 'last' or step-N) of a run, in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    ckpt_dir = ckpt.checkpoint_dir(run_dir, which)
    config = ckpt.read_config(ckpt_dir)
    model = GPT(GPTConfig(**config["model"]))
    ckpt.load_model_weights(model, ckpt_dir / "model.safetensors")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    saved = config.get("tokenizer", {}).get("fingerprint")
    if tokenizer.vocab_size > model.config.vocab_size or (saved and saved != tokenizer.fingerprint):
        raise CheckpointError(
            f"the tokenizer in {run_dir / 'tokenizer'} ({tokenizer.vocab_size} tokens) is not "
            f"the one {ckpt_dir.name} was trained with (vocab {model.config.vocab_size}); "
            "put the training tokenizer back or retrain"
        )
    model.to(device).eval()
    return LoadedRun(model=model, tokenizer=tokenizer, config=config, checkpoint=ckpt_dir)
