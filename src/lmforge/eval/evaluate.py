"""`lmforge eval`: loss, perplexity and bits per byte of a trained run on a data split.

Every token of the split is scored once, in non-overlapping context windows, so the numbers
are those of the whole split rather than of a sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.data.loader import TokenWindows
from lmforge.infer.load import load_run
from lmforge.tokenizer.encode import read_token_meta
from lmforge.train.metrics import evaluate_loss
from lmforge.train.trainer import resolve_device, resolve_tokens_dir


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    which: str = "best",
    tokens: str | Path | None = None,
    batch_size: int = 64,
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
    encoded_with = read_token_meta(tokens_dir)["tokenizer_fingerprint"]
    if encoded_with != run.tokenizer.fingerprint:
        raise ValueError(
            f"the tokens in {tokens_dir} were encoded with another tokenizer than {run_dir}'s; "
            f"encode the text again with `lmforge tokenizer encode DATA --tokenizer "
            f"{run_dir / 'tokenizer'} --out DIR` and pass --tokens DIR"
        )
    windows = TokenWindows(tokens_dir, split, run.model.config.max_seq_len)
    token_bytes = torch.as_tensor(run.tokenizer.token_bytes, dtype=torch.long, device=dev)
    result = evaluate_loss(
        run.model,
        windows,
        device=dev,
        batch_size=batch_size,
        max_tokens=max_tokens,
        token_bytes=token_bytes,
    )
    return {"split": split, "checkpoint": run.checkpoint.name, **result}
