"""lmforge tune: search spaces, sweeps on Optuna, failures, pruning, resume and workers."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY_OVERRIDES, losses
from lmforge.cli import main
from lmforge.config import ConfigError
from lmforge.tune.report import is_interrupted
from lmforge.tune.search import TuneConfig, load_sweep, prepare_sweep, run_sweep
from lmforge.tune.space import SpaceError, load_space, validate_space

ROOT = Path(__file__).resolve().parents[1]
# Ten steps, evaluated at 5 and 10: a trial takes a fraction of a second.
TUNE_OVERRIDES = {**TINY_OVERRIDES, "train.max_steps": 10, "train.eval_interval": 5}


def write_space(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def sweep(tmp_path: Path, tokens: Path, space: str, **kwargs) -> TuneConfig:
    overrides = {**TUNE_OVERRIDES, "data.tokens": str(tokens), **kwargs.pop("overrides", {})}
    # One torch thread: tiny models gain nothing from two, and a busy machine slows two a lot.
    options = {"out": str(tmp_path / "sweep"), "pruner": "none", "plots": False, "threads": 1}
    options.update(kwargs)
    return TuneConfig(
        space=write_space(tmp_path / "space.toml", space), overrides=overrides, **options
    )


def trials_of(out: Path):
    return load_sweep(out).get_trials(deepcopy=False)


# ---------------------------------------------------------------- spaces


def test_space_file_becomes_optuna_distributions(tmp_path):
    path = write_space(
        tmp_path / "space.toml",
        """
        [optim]
        lr = { low = 1e-4, high = 1e-2, log = true }
        weight_decay = { low = 0.0, high = 0.2, step = 0.1 }
        [schedule]
        warmup_steps = { low = 0, high = 20, step = 10 }
        kind = ["cosine", "wsd"]
        [model]
        depth = { choices = [1, 2] }
        """,
    )
    space = load_space(path)
    dists = {p.name: p.distribution() for p in space.params}
    assert dists["optim.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["schedule.warmup_steps"] == optuna.distributions.IntDistribution(0, 20, step=10)
    assert dists["schedule.kind"] == optuna.distributions.CategoricalDistribution(["cosine", "wsd"])
    grid = {p.name: p.grid_values() for p in space.params if p.name != "optim.lr"}
    assert grid == {
        "optim.weight_decay": [0.0, 0.1, 0.2],
        "schedule.warmup_steps": [0, 10, 20],
        "schedule.kind": ["cosine", "wsd"],
        "model.depth": [1, 2],
    }
    validate_space(space, ROOT / "recipes" / "tune-shakespeare.toml")  # depth is a shorthand
    with pytest.raises(SpaceError, match=r"optim.lr is a float range .* step"):
        space.grid()


def test_example_space_fits_the_example_recipe():
    space = load_space(ROOT / "recipes" / "tune-space.toml")
    validate_space(space, ROOT / "recipes" / "tune-shakespeare.toml")
    assert "optim.lr" in space.names and "model.n_layers" in space.names


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[optim]\nlrr = { low = 1e-4, high = 1e-2 }", r"optim\.lrr .*unknown field.*'lrr'"),
        ('[optim]\nlr = ["fast", "slow"]', r"optim\.lr = 'fast' .*expected a number"),
        ("[model]\ndropout = [0.0, 1.5]", r"model\.dropout = 1\.5 .*dropout must be in"),
        ("[optim]\nlr = { low = 1e-2, high = 1e-4 }", r"optim\.lr: low=0\.01 is above high"),
        ("[optim]\nlr = { low = 0.0, high = 1e-2, log = true }", r"optim\.lr: a log range"),
        ("[optim]\nlr = { low = 1e-4, hi = 1e-2 }", r"optim\.lr: unknown key\(s\) \['hi'\]"),
        ("[optim]\nlr = 3e-4", r"optim\.lr = 0\.0003: give a range .* belongs in the recipe"),
        ("[lr]\nlow = 1e-4\nhigh = 1e-2", r"'lr' at the top level: put each field under"),
        ("[optim]\nbetas = [[0.9, 0.95], [0.9, 0.99]]", r"optim\.betas: choice \[0\.9, 0\.95\]"),
        ("", r"the space is empty"),
    ],
)
def test_bad_space_is_an_error_naming_the_file_and_field(tmp_path, text, match):
    path = write_space(tmp_path / "bad.toml", text)
    with pytest.raises(SpaceError, match=match) as info:
        validate_space(load_space(path), None)
    assert str(path) in str(info.value)


def test_bad_space_stops_the_cli_before_any_trial(tmp_path, tiny_tokens, capsys):
    space = write_space(tmp_path / "space.toml", "[optim]\nlr = { low = 1e-4, high = 1e-2 }")
    out = tmp_path / "sweep"
    argv = ["tune", "--space", space, "--out", str(out), "--data.tokens", str(tiny_tokens)]
    assert main([*argv, "--sampler", "grid", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optim.lr is a float range" in err and "choices" in err
    assert not (out / "trials").exists()
    assert main([*argv, "--model.n_heads", "3", "--no-progress"]) == 2  # 32 wide: refused
    assert "recipe of the sweep does not load" in capsys.readouterr().err


def test_every_tune_option_is_explained(capsys):
    from lmforge.cli.tune import _tune_args

    parser = argparse.ArgumentParser()
    _tune_args(parser)
    undocumented = [a.dest for a in parser._actions if not a.help or len(a.help) < 15]
    assert undocumented == []
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--help"])
    assert exc.value.code == 0 and "optuna-dashboard" in capsys.readouterr().out


# ---------------------------------------------------------------- sweeps


def test_cli_sweep_writes_table_plots_and_a_best_recipe_that_trains(tmp_path, tiny_tokens, capsys):
    space = write_space(
        tmp_path / "space.toml",
        "[optim]\nlr = { low = 1e-3, high = 3e-2, log = true }\n"
        "[schedule]\nwarmup_steps = { low = 0, high = 5 }\n",
    )
    out = tmp_path / "sweep"
    overrides = [f"--{k}={v}" for k, v in {**TUNE_OVERRIDES, "data.tokens": tiny_tokens}.items()]
    argv = ["tune", "--space", space, "--out", str(out), "--trials", "3", "--sampler", "random"]
    assert main([*argv, "--pruner", "none", "--threads", "1", "--no-progress", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "3 trials: 3 complete, 0 pruned, 0 failed" in printed and "best: trial" in printed

    trials = trials_of(out)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        run_dir = out / "trials" / f"trial-{t.number:04d}"
        assert t.user_attrs["run_dir"] == str(run_dir)
        assert t.value == t.user_attrs["final_val_loss"] == losses(run_dir, "val_loss")[10]
        assert t.user_attrs["steps"] == 10
    best = min(trials, key=lambda t: t.value)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["number"] == best.number and summary["trials"]["complete"] == 3
    for name in ("history", "importance", "parallel"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
        assert "plotly" in (out / "plots" / f"{name}.html").read_text()[:5000]

    # The best recipe trains as is and lands on the best trial's loss (runs are deterministic;
    # the space has no dropout, whose masks depend on the trainer's first peak-FLOPs
    # measurement in a process drawing from torch's RNG).
    assert main(["train", "--recipe", str(out / "best.toml"), "--out", str(tmp_path / "best")]) == 0
    retrained = losses(tmp_path / "best", "val_loss")[10]
    assert retrained == pytest.approx(best.value, rel=1e-5)

    # The report re-prints the same study without running anything.
    assert main(["tune", "--out", str(out), "--report", "--no-plots"]) == 0
    assert f"best: trial {best.number}" in capsys.readouterr().out
    assert len(trials_of(out)) == 3


def test_study_is_readable_by_optuna_dashboard(tmp_path, tiny_tokens):
    dashboard = pytest.importorskip("optuna_dashboard")
    from wsgiref.util import setup_testing_defaults

    cfg = sweep(tmp_path, tiny_tokens, '[schedule]\nkind = ["cosine", "linear"]', n_trials=2)
    run_sweep(cfg, progress=False)
    app = dashboard.wsgi(f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")

    def get(path: str) -> dict:
        environ: dict = {"PATH_INFO": path}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
        assert status == ["200 OK"], (path, status, body[:200])
        return json.loads(body)

    (study,) = get("/api/studies")["study_summaries"]
    detail = get(f"/api/studies/{study['study_id']}")
    assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]


def test_failing_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(tmp_path, tiny_tokens):
    # Each value fits the recipe alone (48 wide); 64 wide with 3 heads does not, and lr 1e6
    # without clipping turns the loss into NaN.
    space = "[model]\nn_heads = [2, 3]\nd_model = [48, 64]\n[optim]\nlr = [3e-3, 1e6]\n"
    overrides = {"model.d_model": 48, "train.grad_clip": 0.0}
    cfg = sweep(tmp_path, tiny_tokens, space, sampler="grid", n_trials=8, overrides=overrides)
    summary = run_sweep(cfg, progress=False)
    assert summary["trials"] == {
        "complete": 3, "pruned": 0, "failed": 5, "interrupted": 0, "running": 0,
        "finished": 8, "counted": 8,
    }  # fmt: skip
    seen = set()
    for t in trials_of(tmp_path / "sweep"):
        p = t.params
        seen.add((p["model.n_heads"], p["model.d_model"], p["optim.lr"]))
        if p["model.d_model"] == 64 and p["model.n_heads"] == 3:
            assert t.state == TrialState.FAIL
            assert (
                "invalid config" in t.user_attrs["error"]
                and "not divisible" in t.user_attrs["error"]
            )
        elif p["optim.lr"] == 1e6:
            assert t.state == TrialState.FAIL
            assert t.user_attrs["error"].startswith("non-finite loss")
        else:
            assert t.state == TrialState.COMPLETE and math.isfinite(t.value)
    assert len(seen) == 8  # the whole grid, each point once
    assert summary["best"]["params"]["optim.lr"] == 3e-3


def test_out_of_memory_fails_the_trial_not_the_sweep(tmp_path, tiny_tokens, monkeypatch):
    import torch

    from lmforge.train import trainer

    real_train = trainer.train
    calls = []

    def train_once_oom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trainer, "train", train_once_oom)
    cfg = sweep(tmp_path, tiny_tokens, "[optim]\nlr = [1e-3, 3e-3]", sampler="grid", n_trials=2)
    summary = run_sweep(cfg, progress=False)
    first, second = trials_of(tmp_path / "sweep")
    assert first.state == TrialState.FAIL
    assert (
        first.user_attrs["error"]
        == "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"
    )
    assert second.state == TrialState.COMPLETE and summary["best"]["number"] == 1


def test_a_non_finite_final_val_loss_fails_the_trial_once(tmp_path, tiny_tokens, monkeypatch):
    from lmforge.train import trainer

    real_train = trainer.train

    def nan_at_the_end(*args, **kwargs):
        return {**real_train(*args, **kwargs), "final_val_loss": float("nan")}

    monkeypatch.setattr(trainer, "train", nan_at_the_end)
    cfg = sweep(tmp_path, tiny_tokens, "[optim]\nlr = [1e-3, 3e-3]", sampler="grid", n_trials=2)
    run_sweep(cfg, progress=False)
    trials = trials_of(tmp_path / "sweep")
    assert len(trials) == 2  # failed with a reason, not taken for interrupted and rerun
    assert all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["error"] == "non-finite final_val_loss: nan" for t in trials)


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruner_stops_trials_that_learn_slowly(tmp_path, tiny_tokens, pruner):
    # One good learning rate among tiny ones: whichever order the grid runs them in, the tiny
    # ones are worse at step 5 than what the finished trials had there.
    space = "[optim]\nlr = [1e-2, 1e-6, 2e-6, 3e-6]"
    cfg = sweep(
        tmp_path, tiny_tokens, space, sampler="grid", n_trials=4, pruner=pruner, prune_startup=1
    )
    summary = run_sweep(cfg, progress=False)
    trials = trials_of(tmp_path / "sweep")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.state, t.intermediate_values) for t in trials]
    for t in pruned:
        assert t.params["optim.lr"] < 1e-5
        assert t.last_step == 5 and t.user_attrs["steps"] == 5
        assert not (Path(t.user_attrs["run_dir"]) / "checkpoints" / "step-0000010").exists()
    assert summary["best"]["params"] == {"optim.lr": 1e-2}


def test_gp_sampler_runs(tmp_path, tiny_tokens):
    pytest.importorskip("scipy")
    space = "[optim]\nlr = { low = 1e-3, high = 3e-2, log = true }"
    cfg = sweep(tmp_path, tiny_tokens, space, sampler="gp", startup_trials=1, n_trials=3)
    assert run_sweep(cfg, progress=False)["trials"]["complete"] == 3


# ---------------------------------------------------------------- resume and workers


def test_resume_after_ctrl_c_reaches_the_exact_count(tmp_path, tiny_tokens, monkeypatch):
    from lmforge.train import trainer

    real_train = trainer.train
    calls = []

    def train_interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trainer, "train", train_interrupted_once)
    space = "[optim]\nlr = { low = 1e-3, high = 3e-2, log = true }"
    cfg = sweep(tmp_path, tiny_tokens, space, sampler="random", n_trials=4)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, progress=False)
    assert [t.state for t in trials_of(tmp_path / "sweep")] == [
        TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL,
    ]  # fmt: skip

    summary = run_sweep(cfg, progress=False)  # the same command again
    trials = trials_of(tmp_path / "sweep")
    assert summary["trials"]["finished"] == 4 and summary["trials"]["interrupted"] == 1
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    (cut,) = [t for t in trials if is_interrupted(t)]
    (rerun,) = [t for t in trials if t.user_attrs.get("retry_of") == cut.number]
    assert rerun.params == cut.params and rerun.state == TrialState.COMPLETE
    # Resumed draws are new ones, not a replay of the first run's.
    lrs = [t.params["optim.lr"] for t in trials if t is not rerun]
    assert len(set(lrs)) == len(lrs)


def test_changed_space_does_not_resume_into_the_old_study(tmp_path, tiny_tokens):
    cfg = sweep(tmp_path, tiny_tokens, "[optim]\nlr = [1e-3, 3e-3]")
    prepare_sweep(cfg)
    other = sweep(tmp_path, tiny_tokens, "[optim]\nlr = [1e-3, 1e-2]")
    with pytest.raises(ConfigError, match="was started with another space"):
        prepare_sweep(other)


@pytest.mark.slow
def test_two_workers_run_each_grid_point_exactly_once(tmp_path, tiny_tokens):
    # Five trials for two workers: a per-process trial count would overshoot to six.
    space = "[optim]\nlr = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]"
    cfg = sweep(tmp_path, tiny_tokens, space, sampler="grid", n_trials=5, workers=2)
    summary = run_sweep(cfg, progress=False)
    trials = trials_of(tmp_path / "sweep")
    assert summary["trials"]["complete"] == 5
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    assert sorted(t.params["optim.lr"] for t in trials) == [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]
    runs = sorted(p.name for p in (tmp_path / "sweep" / "trials").iterdir())
    assert runs == [f"trial-{n:04d}" for n in range(5)]
    for t in trials:  # trained once: one evaluation per eval step in its metrics
        assert sorted(losses(Path(t.user_attrs["run_dir"]), "val_loss")) == [5, 10]


@pytest.mark.slow
def test_sweep_resumes_after_its_process_is_killed(tmp_path, tiny_tokens):
    """kill -9 in the middle of a trial: its heartbeat goes stale, and a resumed sweep marks
    it interrupted, runs its values again and ends with exactly --trials finished trials."""
    space = write_space(tmp_path / "space.toml", "[optim]\nlr = { low = 1e-3, high = 3e-2 }")
    out = tmp_path / "sweep"
    overrides = {
        **TUNE_OVERRIDES,
        "data.tokens": tiny_tokens,
        "train.max_steps": 100,
        "train.eval_interval": 50,
    }
    argv = [
        sys.executable, "-m", "lmforge", "tune", "--space", space, "--out", str(out),
        "--trials", "2", "--sampler", "random", "--pruner", "none", "--heartbeat", "1",
        "--threads", "1", "--no-plots", "--no-progress",
        *(f"--{k}={v}" for k, v in overrides.items()),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trial_dir = out / "trials" / "trial-0000"
    deadline = time.monotonic() + 60
    while not (trial_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (t,) = trials_of(out)
    assert t.state == TrialState.RUNNING

    # The same sweep again (in this process): it runs trial 1 meanwhile, then finds trial 0
    # stale.
    cfg = TuneConfig(
        space=space, out=str(out), overrides={**overrides, "data.tokens": str(tiny_tokens)},
        n_trials=2, sampler="random", pruner="none", heartbeat_s=1, threads=1, plots=False,
    )  # fmt: skip
    run_sweep(cfg, progress=False)
    trials = trials_of(out)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2 and len(trials) == 3
    (cut,) = [t for t in trials if is_interrupted(t)]
    assert cut.number == 0
    assert any(t.user_attrs.get("retry_of") == 0 and t.params == cut.params for t in trials)
