"""`lmforge tune`: hyperparameter search on Optuna."""

from __future__ import annotations

import argparse
import sys

from lmforge.cli import command, parse_overrides


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="the base recipe every trial starts from; none: the defaults")
    p.add_argument(
        "--space",
        help="the search-space TOML: [section] field = { low, high, log, step } or [choices] "
        "(see recipes/tune-space.toml); required unless --report",
    )
    p.add_argument(
        "--out",
        required=True,
        help="the sweep folder: study.db, trials/trial-NNNN/, best.toml, summary.json, plots/",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="finished trials the study ends with; running the command again resumes up to it",
    )
    p.add_argument(
        "--sampler",
        choices=["tpe", "random", "grid", "gp"],
        default="tpe",
        help="tpe: Bayesian (tree-structured Parzen); random; grid: every combination of the "
        "choices (float ranges need a step); gp: Bayesian with a Gaussian process",
    )
    p.add_argument(
        "--startup-trials",
        type=int,
        default=10,
        help="tpe/gp: random trials before the model of past trials guides the search",
    )
    p.add_argument(
        "--pruner",
        choices=["none", "median", "hyperband"],
        default="median",
        help="stop a trial early from its periodic val loss (every train.eval_interval steps): "
        "median: worse than the median of earlier trials at that step; hyperband: "
        "successive halving over several budgets",
    )
    p.add_argument(
        "--prune-startup",
        type=int,
        default=5,
        help="median: completed trials before any trial is pruned",
    )
    p.add_argument(
        "--prune-warmup", type=int, default=0, help="steps a trial runs before it can be pruned"
    )
    p.add_argument(
        "--max-steps",
        type=int,
        help="budget per trial in steps (sets train.max_steps; none: the recipe's)",
    )
    p.add_argument(
        "--max-time",
        type=float,
        help="budget per trial in training seconds (sets train.max_time_s; the LR schedule "
        "stretches to end there)",
    )
    p.add_argument(
        "--storage",
        help="an Optuna RDB URL shared by workers and machines, e.g. postgresql://u@host/db; "
        "none: sqlite:///OUT/study.db",
    )
    p.add_argument("--study-name", help="the study in the storage; none: OUT's folder name")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running trials at once, sharing the study (torch threads are split "
        "between them)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads per worker (0: CPUs / workers)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="start no new trial after this many seconds (0: no limit); resume later",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="sampler seed, for a sweep that can be repeated"
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        help="seconds between a running trial's heartbeats; a trial silent for 3x this long "
        "(its worker was killed) is marked interrupted and run again",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG and HTML plots")
    p.add_argument(
        "--report",
        action="store_true",
        help="run no trial: print the table of the study in --out (or --storage) and rewrite "
        "best.toml, summary.json and plots/",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.epilog = (
        "Recipe fields can be overridden for every trial as --SECTION.FIELD VALUE, e.g. "
        "--data.tokens runs/x/tokens --train.eval_interval 50. Watch the study with "
        "optuna-dashboard sqlite:///OUT/study.db."
    )


@command(
    "tune",
    help="search hyperparameters with Optuna; writes best.toml, a table and plots",
    args=_tune_args,
    overrides=True,
)
def cmd_tune(a: argparse.Namespace) -> int:
    import optuna
    from rich.console import Console

    from lmforge.tune.report import tally, trials_table, write_report
    from lmforge.tune.search import SweepError, TuneConfig, load_sweep, run_sweep, storage_url

    if not a.verbose:  # lmforge logs one line per trial; Optuna's own add tracebacks
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    if a.report:
        study = load_sweep(a.out, storage=a.storage or "", study_name=a.study_name or "")
        summary = write_report(study, a.out, plots=not a.no_plots)
    else:
        if not a.space:
            raise ValueError("give --space SPACE.toml (or --report to show an existing sweep)")
        overrides = parse_overrides(a.extra)
        if a.max_steps is not None:
            overrides["train.max_steps"] = a.max_steps
        if a.max_time is not None:
            overrides["train.max_time_s"] = a.max_time
        cfg = TuneConfig(
            space=a.space,
            out=a.out,
            recipe=a.recipe,
            overrides=overrides,
            n_trials=a.trials,
            sampler=a.sampler,
            startup_trials=a.startup_trials,
            pruner=a.pruner,
            prune_startup=a.prune_startup,
            prune_warmup=a.prune_warmup,
            storage=a.storage or "",
            study_name=a.study_name or "",
            workers=a.workers,
            threads=a.threads,
            timeout_s=a.timeout,
            seed=a.seed,
            heartbeat_s=a.heartbeat,
            plots=not a.no_plots,
        )
        try:
            summary = run_sweep(cfg, progress=not a.no_progress)
        except SweepError as e:
            print(f"lmforge: error: {e}", file=sys.stderr)
            return 1
        study = load_sweep(a.out, storage=cfg.storage, study_name=cfg.study_name)
    url = storage_url(TuneConfig(space="", out=a.out, storage=a.storage or ""))
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no need to squeeze the table into 80 columns
        console = Console(width=200)
    console.print(trials_table(study))
    c = tally(study.get_trials(deepcopy=False))
    console.print(
        f"{c['finished']} trials: {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed"
        + (f", {c['running']} still running" if c["running"] else "")
        + (f" ({c['interrupted']} interrupted and run again)" if c["interrupted"] else "")
    )
    for name, reason in summary.get("plots", {}).get("skipped", {}).items():
        console.print(f"plot {name} skipped: {reason}")
    best = summary["best"]
    if best is None:
        why = "see the reasons in the table" if c["finished"] else "run the command again"
        console.print(f"no trial completed: {why}")
        return 1
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in best["params"].items())  # fmt: skip
    console.print(f"best: trial {best['number']}, final val loss {best['value']:.4f} ({values})")
    console.print(
        f"wrote {summary['best_recipe']} (train it: lmforge train --recipe "
        f"{summary['best_recipe']} --out RUN), summary.json and plots/"
    )
    console.print(f"study: {url} (watch it: optuna-dashboard {url})")
    return 0
