"""Loading a trained run (model + tokenizer + config) for evaluation, generation and serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.model import build_model, model_config_from_dict, require_family
from lmforge.tokenizer.tokenizer import Tokenizer, load_tokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train.checkpoint import CheckpointError


@dataclass
class LoadedRun:
    model: Any  # the family's model class (GPT, Encoder, Seq2Seq, RNNLM)
    tokenizer: Tokenizer
    config: dict[str, Any]
    checkpoint: Path
    tgt_tokenizer: Tokenizer | None = None  # seq2seq with a separate target vocabulary

    @property
    def family(self) -> str:
        return self.model.config.family

    @property
    def target_tokenizer(self) -> Tokenizer:
        return self.tgt_tokenizer or self.tokenizer


def load_run(
    run_dir: str | Path,
    *,
    which: str = "best",
    device: str | torch.device = "cpu",
    families: set[str] | None = None,
    command: str = "this command",
) -> LoadedRun:
    """The model of checkpoint `which` ('best', 'last' or step-N) of a run, in eval mode.

    With `families`, a run of any other model family is refused with a message that says
    what `command` needs and what to use instead.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    ckpt_dir = ckpt.checkpoint_dir(run_dir, which)
    config = ckpt.read_config(ckpt_dir)
    if families is not None:
        require_family(config["model"], families, command)
    model = build_model(model_config_from_dict(config["model"]))
    ckpt.load_model_weights(model, ckpt_dir / "model.safetensors")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    saved = config.get("tokenizer", {}).get("fingerprint")
    if tokenizer.vocab_size > model.config.vocab_size or (saved and saved != tokenizer.fingerprint):
        raise CheckpointError(
            f"the tokenizer in {run_dir / 'tokenizer'} ({tokenizer.vocab_size} tokens) is not "
            f"the one {ckpt_dir.name} was trained with (vocab {model.config.vocab_size}); "
            "put the training tokenizer back or retrain"
        )
    tgt_tokenizer = None
    if (run_dir / "tokenizer-tgt").is_dir():
        tgt_tokenizer = load_tokenizer(run_dir / "tokenizer-tgt")
    model.to(device).eval()
    return LoadedRun(
        model=model,
        tokenizer=tokenizer,
        config=config,
        checkpoint=ckpt_dir,
        tgt_tokenizer=tgt_tokenizer,
    )
