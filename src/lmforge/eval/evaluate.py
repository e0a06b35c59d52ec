"""`lmforge eval`: what a trained run scores on a data split, whatever its model family.

Every token of the split is scored once (in non-overlapping context windows for a GPT, in
carried-state streams for an RNN), so the numbers are those of the whole split rather than of a
sample: loss, perplexity and bits per byte for the language models, MLM loss and masked-token
accuracy for a masked LM (fixed masks), target-token loss for a seq2seq model on its pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.infer.load import load_run
from lmforge.train import distributed as D
from lmforge.train.objectives import build_objective
from lmforge.train.trainer import (
    load_run_config,
    read_data_meta,
    resolve_device,
    resolve_tokens_dir,
)


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    which: str = "best",
    tokens: str | Path | None = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate checkpoint `which` of `run_dir` on `split` of its token shards (or `tokens`)."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    run = load_run(run_dir, which=which, device=dev)
    tokens_dir = (
        Path(tokens) if tokens else resolve_tokens_dir(run.config["data"]["tokens"], run_dir)
    )
    encoded_with = read_data_meta(tokens_dir, run.family)["tokenizer_fingerprint"]
    if encoded_with != run.tokenizer.fingerprint:
        again = (
            f"`lmforge data pairs ... --tokenizer {run_dir / 'tokenizer'} --out DIR`"
            if run.family == "seq2seq"
            else f"`lmforge tokenizer encode DATA --tokenizer {run_dir / 'tokenizer'} --out DIR`"
        )
        raise ValueError(
            f"the data in {tokens_dir} was encoded with another tokenizer than {run_dir}'s; "
            f"encode the text again with {again} and pass --tokens DIR"
        )
    # The run's own eval batch size by default: an RNN reads the split as that many streams,
    # so only then does this loss equal the val loss logged in training.
    overrides: dict[str, Any] = {"data.val_split": split}
    if batch_size:
        overrides["train.eval_batch_size"] = batch_size
    cfg = load_run_config(base=run.config, overrides=overrides)
    objective = build_objective(cfg, tokens_dir, run.tokenizer, dev, train=False)
    result = objective.evaluate(run.model, autocast=None, max_tokens=max_tokens, world=D.World())
    return {"split": split, "checkpoint": run.checkpoint.name, **result}
