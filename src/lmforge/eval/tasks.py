"""One call from a task file to a recorded result: what `lmforge eval --task` runs.

Chooses the kind of task from `--format` (or the first record's fields), loads the items and
any few-shot pool, evaluates them on a checkpoint or an endpoint, and records the result with
`lmforge.eval.report` (in the checkpoint folder, or the given folder for an endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.eval.generation import (
    GenerationTaskConfig,
    evaluate_generation,
    load_generation_items,
    read_generation_records,
)
from lmforge.eval.lm import EvalLM, LocalLM
from lmforge.eval.multiple_choice import (
    MC_FORMATS,
    detect_format,
    evaluate_multiple_choice,
    load_mc_items,
)
from lmforge.eval.report import record_eval, task_key

TASK_FORMATS = ("auto", *MC_FORMATS, "generation")


@dataclass(kw_only=True)
class TaskConfig:
    """What to evaluate and how; generation-only settings live in `generation`."""

    task: str
    format: str = "auto"
    num_fewshot: int = 0
    fewshot_from: str | None = None  # a file of solved examples (default: the task itself)
    seed: int = 1234  # few-shot draws
    limit: int | None = None  # the first N items only
    batch_size: int = 16  # multiple choice: requests per forward pass (or per HTTP request)
    name: str = ""  # the key in eval.json; "" = the file name (+ "-Kshot")
    # Multiple choice: auto (log-likelihood; generation if a server gives no logprobs),
    # loglikelihood or generate (`lmforge.eval.multiple_choice`).
    mc_method: str = "auto"
    generation: GenerationTaskConfig = field(default_factory=GenerationTaskConfig)

    def __post_init__(self) -> None:
        if self.format not in TASK_FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(TASK_FORMATS)}")
        if self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.generation.num_fewshot = self.num_fewshot
        self.generation.fewshot_seed = self.seed
        self.name = self.name or task_key(self.task, self.num_fewshot)


def task_kind(path: str | Path, fmt: str = "auto") -> str:
    """'multiple_choice' or 'generation', from `fmt` or the first record of the file."""
    if fmt in MC_FORMATS:
        return "multiple_choice"
    if fmt == "generation":
        return "generation"
    records, _ = read_generation_records(path)
    first = records[0][1] if records else {}
    if isinstance(first, dict) and detect_format(first):
        return "multiple_choice"
    return "generation"


def evaluate_task(lm: EvalLM, cfg: TaskConfig, *, progress: bool = False) -> dict[str, Any]:
    """Evaluate `lm` on the task file of `cfg`; the result includes per-item `samples`."""
    kind = task_kind(cfg.task, cfg.format)
    if kind == "multiple_choice":
        items, fmt = load_mc_items(cfg.task, cfg.format, limit=cfg.limit)
        # Shots come from the whole file (or --fewshot-from), so an item's prompt does not
        # depend on --limit.
        pool = load_mc_items(cfg.fewshot_from or cfg.task, fmt)[0] if cfg.num_fewshot else None
        result = evaluate_multiple_choice(
            lm,
            items,
            num_fewshot=cfg.num_fewshot,
            fewshot_items=pool,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=progress,
            method=cfg.mc_method,
        )
        return {"task_file": str(cfg.task), "format": fmt, **result}
    items, info = load_generation_items(cfg.task, cfg.generation, limit=cfg.limit)
    pool = None
    if cfg.num_fewshot:
        pool, _ = load_generation_items(cfg.fewshot_from or cfg.task, cfg.generation)
    result = evaluate_generation(lm, items, cfg.generation, fewshot_items=pool, progress=progress)
    return {"task_file": str(cfg.task), "format": "generation", **info, **result}


def open_lm(
    target: str | Path,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    api_key: str = "unused",
    checkpoint: str = "best",
    device: str = "auto",
) -> tuple[EvalLM, Path]:
    """The model to evaluate and the folder its results are recorded in.

    Without `endpoint`, `target` is a run directory and results go to the checkpoint's folder;
    with one, `target` is the folder for the results (created if missing).
    """
    if endpoint:
        from lmforge.eval.endpoint import EndpointLM

        return EndpointLM(endpoint, model, api_key=api_key), Path(target)
    lm = LocalLM.from_run(target, which=checkpoint, device=device)
    return lm, lm.run.checkpoint


def run_task(
    target: str | Path,
    cfg: TaskConfig,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    api_key: str = "unused",
    checkpoint: str = "best",
    device: str = "auto",
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate and record: the result (without samples) and the paths written."""
    lm, dest = open_lm(
        target, endpoint=endpoint, model=model, api_key=api_key, checkpoint=checkpoint,
        device=device,
    )  # fmt: skip
    result = evaluate_task(lm, cfg, progress=progress)
    paths = record_eval(dest, cfg.name, result, model=lm.describe())
    result = {k: v for k, v in result.items() if k != "samples"}
    return result, paths
