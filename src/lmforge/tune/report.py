"""What a sweep leaves behind: a table of trials, the best config as a recipe, and plots.

Everything here reads the Optuna study alone (its trials, their user attributes and the
settings `search.py` stores on the study), so `lmforge tune --report` can rebuild it from the
storage at any time, and `optuna-dashboard` shows the same study live.

- `best.toml`: the sweep's base recipe with its overrides and the best trial's values, written
  with `tomli_w` (the TOML writer by the author of `tomli`; the standard library only reads
  TOML), so `lmforge train --recipe OUT/best.toml --out X` trains it as is.
- `plots/`: Optuna's own figures (optimization history, parameter importances, parallel
  coordinates) as PNG through matplotlib and as HTML through plotly. The HTML files share one
  `plotly.min.js` beside them, so they open offline.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from lmforge.config import apply_overrides
from lmforge.io import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

# The study user attribute where `search.py` keeps the sweep's settings.
SETTINGS_ATTR = "lmforge"
# The trial user attribute holding why a trial failed; trials failed without it were cut short
# (Ctrl-C, a worker killed) and do not count towards the sweep's trials.
ERROR_ATTR = "error"


def is_interrupted(trial: Any) -> bool:
    """A trial that failed because its worker stopped, not because of its configuration."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and ERROR_ATTR not in trial.user_attrs


def tally(trials: list[Any]) -> dict[str, int]:
    """Trials by outcome. `counted` is what `--trials` counts: finished or running trials."""
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "running": 0}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL:
            counts["interrupted" if is_interrupted(t) else "failed"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
    counts["finished"] = counts["complete"] + counts["pruned"] + counts["failed"]
    counts["counted"] = counts["finished"] + counts["running"]
    return counts


def best_trial(study: Any) -> Any | None:
    """The completed trial with the lowest objective, or None when no trial completed."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(done, key=lambda t: (t.value, t.number)) if done else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def trial_note(trial: Any) -> str:
    """Why a trial did not complete, in a few words."""
    from optuna.trial import TrialState

    if trial.state == TrialState.PRUNED:
        step = trial.last_step
        return f"pruned at step {step}" if step is not None else "pruned"
    if trial.state == TrialState.FAIL:
        if is_interrupted(trial):
            return "interrupted (Ctrl-C or worker stopped); a replacement runs"
        return str(trial.user_attrs[ERROR_ATTR])
    if trial.state == TrialState.RUNNING:
        return "running"
    if "retry_of" in trial.user_attrs:
        return f"rerun of trial {trial.user_attrs['retry_of']}"
    return ""


def trials_table(study: Any, *, title: str | None = None) -> Any:
    """A rich Table of every trial: outcome, losses, steps, time, searched values, notes."""
    from rich.table import Table

    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    names = list(settings.get("space", {})) or sorted(
        {name for t in study.get_trials(deepcopy=False) for name in t.params}
    )
    best = best_trial(study)
    table = Table(title=title or f"study {study.study_name}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("state")
    table.add_column("val loss", justify="right")
    table.add_column("best val", justify="right")
    table.add_column("steps", justify="right")
    table.add_column("time s", justify="right")
    short = [name.rsplit(".", 1)[-1] for name in names]
    for name, label in zip(names, short):
        # The field name alone where it is unambiguous: the table stays narrow.
        table.add_column(label if short.count(label) == 1 else name, justify="right")
    table.add_column("note", overflow="fold")
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        value = t.value if t.value is not None else attrs.get("last_val_loss")
        row = [
            str(t.number),
            t.state.name.lower(),
            _fmt(value) if value is not None else "",
            _fmt(attrs["best_val_loss"]) if "best_val_loss" in attrs else "",
            str(attrs.get("steps", t.last_step if t.last_step is not None else "")),
            f"{attrs['elapsed_s']:.1f}" if "elapsed_s" in attrs else "",
            *(_fmt(t.params[n]) if n in t.params else "" for n in names),
            trial_note(t),
        ]
        style = "bold green" if best is not None and t.number == best.number else None
        table.add_row(*row, style=style)
    return table


def best_recipe_text(study: Any) -> str | None:
    """The best trial's configuration as recipe TOML, or None when no trial completed."""
    import tomli_w

    best = best_trial(study)
    if best is None:
        return None
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    overrides = {**settings.get("overrides", {}), **best.params}
    data = apply_overrides(settings.get("recipe") or {}, overrides)
    tokens = data.get("data", {}).get("tokens")
    if isinstance(tokens, str) and not Path(tokens).is_absolute() and Path(tokens).exists():
        # Trials looked the tokens up from the directory the sweep ran in; an absolute path
        # lets the recipe run from anywhere on this machine.
        data["data"]["tokens"] = str(Path(tokens).resolve())
    header = [
        f"# The best configuration of sweep {study.study_name!r}: trial {best.number}, "
        f"{settings.get('objective', 'objective')} {best.value:.4f}.",
        f"# The base recipe {settings.get('recipe_path') or '(the defaults)'} with the sweep's",
        "# overrides and these searched values:",
        *(f"#   {k} = {_fmt(v)}" for k, v in best.params.items()),
        "# Train it: lmforge train --recipe THIS_FILE --out RUN_DIR (for a longer run, add",
        "# --train.max_steps N or --train.max_time_s S).",
    ]
    return "\n".join(header) + "\n\n" + tomli_w.dumps(data)


def write_plots(study: Any, plots_dir: str | Path) -> dict[str, Any]:
    """Optimization history, parameter importances and parallel coordinates, as PNG and HTML.

    Returns {"written": [paths], "skipped": {plot: reason}}: a figure that needs more
    completed trials than the study has is skipped with the reason, never a crash.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl
    from optuna.trial import TrialState

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = [
        name
        for name in {n for t in complete for n in t.params}
        if len({repr(t.params.get(name)) for t in complete}) > 1
    ]
    plots = {
        "history": (vis.plot_optimization_history, vis_mpl.plot_optimization_history, 1),
        "importance": (vis.plot_param_importances, vis_mpl.plot_param_importances, 2),
        "parallel": (vis.plot_parallel_coordinate, vis_mpl.plot_parallel_coordinate, 1),
    }
    written: list[str] = []
    skipped: dict[str, str] = {}
    for name, (plotly_fn, mpl_fn, needs) in plots.items():
        if len(complete) < needs:
            skipped[name] = f"needs {needs} completed trial(s), the study has {len(complete)}"
            continue
        if name == "importance" and not varied:
            skipped[name] = "no searched value differs between the completed trials"
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            fig = plotly_fn(study)
            html = plots_dir / f"{name}.html"
            with atomic_path(html) as tmp:
                fig.write_html(tmp, include_plotlyjs="directory")
            ax = mpl_fn(study)
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        png = plots_dir / f"{name}.png"
        with atomic_path(png) as tmp:
            figure.savefig(tmp, dpi=110)
        plt.close(figure)
        written += [str(png), str(html)]
    return {"written": written, "skipped": skipped}


def sweep_summary(study: Any) -> dict[str, Any]:
    """Counts by outcome and the best trial, as a JSON-ready dict."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    summary: dict[str, Any] = {
        "study": study.study_name,
        "objective": settings.get("objective"),
        "trials": tally(trials),
        "best": None,
    }
    if best is not None:
        summary["best"] = {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
        }
    return summary


def write_report(study: Any, out: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Write `best.toml`, `summary.json` and `plots/` into `out`; return the summary."""
    out = Path(out)
    summary = sweep_summary(study)
    text = best_recipe_text(study)
    if text is not None:
        write_text_atomic(out / "best.toml", text)
        summary["best_recipe"] = str(out / "best.toml")
    if plots:
        summary["plots"] = write_plots(study, out / "plots")
    write_json_atomic(out / "summary.json", summary)
    return summary
