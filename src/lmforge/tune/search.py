"""Hyperparameter search: an Optuna study whose trials are `lmforge train` runs.

Optuna does the searching: its samplers (TPE, random, grid, Gaussian process), its pruners
(median, Hyperband) fed with each periodic validation loss through `train(on_eval=...)`, its
RDB storage (SQLite by default) that lets a sweep resume and several processes or machines
share one study, and its heartbeat that marks the trials of a killed worker as failed.

What is written here is the thin layer Optuna leaves to its user:

- the objective: one trial = one training run in `OUT/trials/trial-NNNN/`, its summary kept as
  trial user attributes, any failure (NaN loss, out of memory, a config that does not
  validate) recorded with its reason while the sweep goes on;
- an exact trial count. `study.optimize(n_trials=N)` counts the trials of one process, and
  `MaxTrialsCallback` stops a process only after a trial ends, so N workers overshoot by up
  to N - 1. Here each worker starts a trial (`optimize(n_trials=1)`) only after counting the
  study's finished and running trials under a lock file in OUT, and releases the lock once
  the trial exists. Workers on one machine therefore never start a trial too many; workers on
  other machines (another OUT, same `--storage`) still stop at the count, but two starting at
  the same instant can overshoot it by one each.
- resume: trials cut short (Ctrl-C, a killed worker whose heartbeat went stale) are recorded
  as failed without a reason, do not count, and their values are queued to run again, so
  running the same command again ends with exactly `--trials` finished trials.
"""

from __future__ import annotations

import fcntl
import logging
import math
import multiprocessing
import os
import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.config import ConfigError, load_toml
from lmforge.tune.report import (
    ERROR_ATTR,
    SETTINGS_ATTR,
    is_interrupted,
    tally,
    trial_note,
    write_report,
)
from lmforge.tune.space import SearchSpace, SpaceError, load_space, validate_space

log = logging.getLogger(__name__)

OBJECTIVE = "final_val_loss"  # what a trial minimises: the val loss at the end of its budget


class SweepError(RuntimeError):
    """A sweep that could not run to its end (a worker process died)."""


class TrialFailed(Exception):
    """Raised by the objective to record a trial as failed with a reason."""


def storage_url(cfg: TuneConfig) -> str:
    """`--storage`, or a SQLite file `study.db` in the sweep's folder."""
    return cfg.storage or f"sqlite:///{Path(cfg.out).resolve() / 'study.db'}"


def open_storage(cfg: TuneConfig) -> Any:
    """Optuna's RDB storage with a heartbeat, so a killed worker's trials end up failed."""
    import optuna

    url = storage_url(cfg)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        # Workers write to one file: wait for its lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 120}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=cfg.heartbeat_s,
            grace_period=3 * cfg.heartbeat_s,
        )


def build_sampler(cfg: TuneConfig, space: SearchSpace, seed: int) -> Any:
    """The Optuna sampler `cfg.sampler` names."""
    import optuna

    if cfg.sampler == "grid":
        # Every worker must shuffle the grid the same way: one seed for all.
        return optuna.samplers.GridSampler(space.grid(), seed=cfg.seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "gp":
        try:
            import scipy  # noqa: F401
        except ImportError as e:
            raise ConfigError("--sampler gp needs scipy: pip install scipy") from e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.startup_trials)
    # constant_liar: parallel workers treat running trials as bad, so they spread out.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=cfg.startup_trials, constant_liar=cfg.workers > 1
    )


def build_pruner(cfg: TuneConfig, max_steps: int, eval_interval: int, timed: bool) -> Any:
    """The Optuna pruner `cfg.pruner` names; the resource is the training step."""
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.prune_startup, n_warmup_steps=cfg.prune_warmup
        )
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(eval_interval, cfg.prune_warmup, 1),
            # With a time budget the steps a trial reaches vary: let Optuna take them from the
            # completed trials.
            max_resource="auto" if timed else max_steps,
            reduction_factor=3,
        )
    return optuna.pruners.NopPruner()


def sweep_settings(cfg: TuneConfig, space: SearchSpace) -> dict[str, Any]:
    """What makes two invocations the same sweep: the recipe's content, overrides and space."""
    return {
        "recipe_path": str(cfg.recipe) if cfg.recipe else None,
        "recipe": load_toml(cfg.recipe) if cfg.recipe else {},
        "overrides": dict(cfg.overrides),
        "space": space.to_dict(),
        "objective": OBJECTIVE,
    }


def _check_same_sweep(study: Any, settings: dict[str, Any], cfg: TuneConfig) -> None:
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        return
    changed = [k for k in ("recipe", "overrides", "space") if stored.get(k) != settings[k]]
    if changed:
        raise ConfigError(
            f"study {study.study_name!r} in {storage_url(cfg)} was started with another "
            f"{' and '.join(changed)}; resume it with the same recipe, overrides and space, or "
            "start a new sweep with another --out or --study-name"
        )


def _worker_seed(cfg: TuneConfig, worker: int, n_existing: int) -> int:
    # A resumed sweep or a second worker must not replay the random draws of the first.
    return (cfg.seed * 1_000_003 + worker * 7919 + n_existing * 104_729) % (2**32)


def open_study(cfg: TuneConfig, space: SearchSpace, *, worker: int = 0) -> Any:
    """Create the study, or load it (checking it is the same sweep); sampler per worker."""
    import optuna

    storage = open_storage(cfg)
    name = cfg.study_name or Path(cfg.out).resolve().name
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
        n_existing = len(existing.get_trials(deepcopy=False))
    except KeyError:
        n_existing = 0
    run_cfg = _base_run_config(cfg)
    tc = run_cfg.train
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=build_sampler(cfg, space, _worker_seed(cfg, worker, n_existing)),
        pruner=build_pruner(cfg, tc.max_steps, tc.eval_interval, tc.max_time_s > 0),
    )
    settings = sweep_settings(cfg, space)
    _check_same_sweep(study, settings, cfg)
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, settings)
    return study


def _base_run_config(cfg: TuneConfig) -> Any:
    from lmforge.train.trainer import load_run_config

    return load_run_config(cfg.recipe, cfg.overrides)


def _requeue_interrupted(study: Any, space: SearchSpace) -> None:
    """Queue the values of trials cut short, once each, so the sweep still runs them.

    A trial cut short while its values were being drawn (some missing) is not queued: the
    sampler draws a new one in its place.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if is_interrupted(t) and t.number not in retried and set(t.params) == set(space.names):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            log.info("trial %d was interrupted; its values are queued to run again", t.number)


class _ClaimLock:
    """An exclusive lock file, so the workers of one machine count and start trials in turn."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._held = False

    def acquire(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._held = True

    def release(self) -> None:
        if self._held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held = False

    def close(self) -> None:
        self.release()
        os.close(self._fd)


class _Objective:
    """One trial: sample the space, train in OUT/trials/trial-NNNN, return the final val loss."""

    def __init__(self, cfg: TuneConfig, space: SearchSpace, lock: _ClaimLock) -> None:
        self.cfg = cfg
        self.space = space
        self.lock = lock

    def __call__(self, trial: Any) -> float:
        import optuna
        import torch

        from lmforge.train.trainer import load_run_config, train

        # The trial now exists and counts: let the next worker claim its own.
        self.lock.release()
        run_dir = Path(self.cfg.out) / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        max_steps = math.inf

        def on_eval(step: int, val_loss: float) -> None:
            trial.report(val_loss, step)
            # The last evaluation of a step budget ends the run anyway: let it complete.
            if step < max_steps and trial.should_prune():
                trial.set_user_attr("last_val_loss", val_loss)
                trial.set_user_attr("steps", step)
                raise optuna.TrialPruned(f"val loss {val_loss:.4f} at step {step}")

        try:
            values = self.space.suggest(trial)
            try:
                run_cfg = load_run_config(self.cfg.recipe, {**self.cfg.overrides, **values})
            except ConfigError as e:
                raise TrialFailed(f"invalid config: {e}") from e
            if not run_cfg.train.max_time_s:
                max_steps = run_cfg.train.max_steps
            summary = train(run_cfg, run_dir, progress=False, on_eval=on_eval)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            raise  # recorded as failed without a reason: interrupted, run again on resume
        except TrialFailed as e:
            trial.set_user_attr(ERROR_ATTR, str(e))
            raise
        except FloatingPointError as e:
            trial.set_user_attr(ERROR_ATTR, f"non-finite loss: {e}")
            raise TrialFailed(str(e)) from e
        except (torch.OutOfMemoryError, MemoryError) as e:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            trial.set_user_attr(ERROR_ATTR, f"out of memory: {str(e).splitlines()[0][:200]}")
            raise TrialFailed(str(e)) from e
        except Exception as e:  # any other failure of one configuration must not stop a sweep
            trial.set_user_attr(ERROR_ATTR, f"{type(e).__name__}: {e}")
            raise TrialFailed(str(e)) from e
        for key, value in summary.items():
            if isinstance(value, (int, str)) or (isinstance(value, float) and math.isfinite(value)):
                trial.set_user_attr("n_params" if key == "params" else key, value)
        value = float(summary[OBJECTIVE])
        if not math.isfinite(value):  # a failure with a reason, never "interrupted" (rerun)
            trial.set_user_attr(ERROR_ATTR, f"non-finite {OBJECTIVE}: {value}")
            raise TrialFailed(f"non-finite {OBJECTIVE}: {value}")
        return value


def _log_trial(study: Any, trial: Any) -> None:
    note = trial_note(trial)
    value = f" val loss {trial.value:.4f}" if trial.value is not None else ""
    log.info(
        "trial %d %s%s%s", trial.number, trial.state.name.lower(), value, f": {note}" * bool(note)
    )


def run_worker(
    cfg: TuneConfig,
    space: SearchSpace,
    *,
    worker: int = 0,
    on_trial: Any = None,
    started_at: float | None = None,
) -> None:
    """Run trials until the study holds `cfg.n_trials`, or `cfg.timeout_s` after `started_at`
    (a `time.time()`; default: now) has passed."""
    import optuna
    import torch

    threads = cfg.threads or (max(1, _cpu_count() // cfg.workers) if cfg.workers > 1 else 0)
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    study = open_study(cfg, space, worker=worker)
    lock = _ClaimLock(Path(cfg.out) / ".claim.lock")
    objective = _Objective(cfg, space, lock)
    callbacks = [_log_trial] + ([on_trial] if on_trial else [])
    started_at = time.time() if started_at is None else started_at
    deadline = started_at + cfg.timeout_s if cfg.timeout_s else math.inf
    try:
        while time.time() < deadline:
            lock.acquire()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                _requeue_interrupted(study, space)
                counts = tally(study.get_trials(deepcopy=False))
                if counts["counted"] >= cfg.n_trials:
                    if counts["running"] == 0:
                        return
                    # Others' trials are still running: wait, and take over if they die.
                    lock.release()
                    time.sleep(min(1.0, cfg.heartbeat_s))
                    continue
                # The objective releases the lock once the new trial is in the storage.
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=callbacks)
            finally:
                lock.release()
    finally:
        lock.close()
        torch.set_num_threads(threads_before)  # in-process sweeps leave the caller's setting


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_process(
    cfg: TuneConfig, space: SearchSpace, worker: int, levels: tuple, started_at: float
) -> None:
    import optuna

    # SIGTERM ends the trial like Ctrl-C: recorded as interrupted, run again on resume.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=levels[0], format=f"%(levelname)s worker {worker}: %(message)s")
    optuna.logging.set_verbosity(levels[1])
    try:
        run_worker(cfg, space, worker=worker, started_at=started_at)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def load_sweep(out: str | Path, *, storage: str = "", study_name: str = "") -> Any:
    """The study of an existing sweep (for `lmforge tune --report`)."""
    import optuna

    cfg = TuneConfig(space="", out=str(out), storage=storage, study_name=study_name)
    url = storage_url(cfg)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise ConfigError(f"{url.removeprefix('sqlite:///')} does not exist: no sweep ran in {out}")
    name = study_name or Path(out).resolve().name
    storage = open_storage(cfg)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise ConfigError(
            f"{url} holds no study named {name!r} (it holds {names}); pass --study-name NAME"
        ) from None


def _check_out(cfg: TuneConfig, study: Any) -> None:
    trials_dir = Path(cfg.out) / "trials"
    if not study.get_trials(deepcopy=False) and trials_dir.exists() and any(trials_dir.iterdir()):
        raise ConfigError(
            f"{trials_dir} holds runs from another study; choose another --out or remove it"
        )


def _check_grid(cfg: TuneConfig, space: SearchSpace) -> None:
    if cfg.sampler != "grid":
        return
    size = math.prod(len(v) for v in space.grid().values())
    if cfg.n_trials > size:
        raise SpaceError(
            f"{space.source}: the grid has {size} points, fewer than --trials {cfg.n_trials}; "
            f"pass --trials {size} (or fewer: a random part of the grid), or add values"
        )


def prepare_sweep(cfg: TuneConfig) -> tuple[SearchSpace, Any]:
    """Check everything a trial needs before any runs; return the space and the study."""
    from lmforge.tokenizer.encode import read_token_meta
    from lmforge.train.trainer import resolve_tokens_dir

    space = load_space(cfg.space)
    validate_space(space, cfg.recipe, cfg.overrides)
    _check_grid(cfg, space)
    run_cfg = _base_run_config(cfg)
    # Every trial would fail the same way on missing tokens: say so once, now.
    read_token_meta(resolve_tokens_dir(run_cfg.data.tokens, Path(cfg.out) / "trials" / "x"))
    study = open_study(cfg, space)
    _check_out(cfg, study)
    return space, study


def run_sweep(cfg: TuneConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the sweep to `cfg.n_trials` trials; write the report; return its summary.

    With `cfg.workers > 1` the trials run in that many processes sharing the study's storage,
    started with multiprocessing's "spawn": a script that calls this needs the usual
    `if __name__ == "__main__":` guard.
    """
    import optuna
    from optuna.trial import TrialState
    from tqdm.contrib.logging import logging_redirect_tqdm

    started_at = time.time()  # --timeout counts from here, checks and worker start-up included
    space, study = prepare_sweep(cfg)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        done = tally(study.get_trials(deepcopy=False))["finished"]
        bar = tqdm(total=cfg.n_trials, initial=min(done, cfg.n_trials), desc="tune", unit="trial")

    def update_bar(*_: Any) -> None:
        if bar is not None:
            trials = study.get_trials(deepcopy=False)
            counts = tally(trials)
            bar.n = min(counts["finished"], cfg.n_trials)
            best = [t.value for t in trials if t.state == TrialState.COMPLETE]
            bar.set_postfix(
                best=f"{min(best):.4f}" if best else "-",
                pruned=counts["pruned"],
                failed=counts["failed"],
            )

    try:
        # Log lines go above the progress bar instead of through it.
        with logging_redirect_tqdm() if bar is not None else nullcontext():
            if cfg.workers == 1:
                run_worker(cfg, space, on_trial=update_bar, started_at=started_at)
            else:
                _run_processes(cfg, space, update_bar, started_at)
    finally:
        if bar is not None:
            bar.close()
    study = optuna.load_study(study_name=study.study_name, storage=open_storage(cfg))
    return write_report(study, cfg.out, plots=cfg.plots)


def _run_processes(cfg: TuneConfig, space: SearchSpace, update_bar: Any, started_at: float) -> None:
    import optuna

    # spawn, not fork: a forked child inherits torch's OpenMP pool and can hang in it.
    ctx = multiprocessing.get_context("spawn")
    levels = (logging.getLogger().getEffectiveLevel(), optuna.logging.get_verbosity())
    procs = [
        ctx.Process(
            target=_worker_process,
            args=(cfg, space, i, levels, started_at),
            name=f"tune-worker-{i}",
        )
        for i in range(cfg.workers)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            update_bar()
            for p in procs:
                p.join(timeout=1.0 / len(procs))
    except KeyboardInterrupt:
        for p in procs:  # they got the same Ctrl-C: let them record their trials
            p.join(timeout=30)
        raise
    update_bar()
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if bad:
        raise SweepError(
            f"worker(s) exited with an error: {bad}; their log is above. Run the same command "
            "again to resume the sweep"
        )


@dataclass(kw_only=True)
class TuneConfig:
    """A sweep: the base recipe, the space file, and how Optuna searches it."""

    space: str  # the search-space TOML
    out: str  # the sweep folder: study.db, trials/, best.toml, plots/
    recipe: str | None = None  # the base recipe (None: the defaults)
    overrides: dict[str, Any] = field(default_factory=dict)  # `section.field` on the recipe
    n_trials: int = 20  # finished trials the study ends with (interrupted ones do not count)
    sampler: Literal["tpe", "random", "grid", "gp"] = "tpe"
    startup_trials: int = 10  # tpe/gp: random trials before the model guides the search
    pruner: Literal["none", "median", "hyperband"] = "median"
    prune_startup: int = 5  # median: completed trials before any is pruned
    prune_warmup: int = 0  # steps a trial runs before it can be pruned
    storage: str = ""  # an RDB URL; "" = sqlite:///OUT/study.db
    study_name: str = ""  # "" = the name of the OUT folder
    workers: int = 1  # processes sharing the study
    threads: int = 0  # torch threads per worker; 0 = CPUs / workers (PyTorch's default for 1)
    timeout_s: float = 0.0  # start no trial after this many seconds; 0 = no limit
    seed: int = 0  # sampler seed (each worker and each resume derive their own from it)
    heartbeat_s: int = 10  # a worker silent for 3x this long has its trial marked interrupted
    plots: bool = True

    def __post_init__(self) -> None:
        for name in ("n_trials", "workers", "heartbeat_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"tune: {name} must be positive, got {getattr(self, name)}")
        for name in ("startup_trials", "prune_startup", "prune_warmup", "threads", "timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"tune: {name} must be >= 0, got {getattr(self, name)}")
        choices = {
            "sampler": ("tpe", "random", "grid", "gp"),
            "pruner": ("none", "median", "hyperband"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"tune: {name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if self.storage and "://" not in self.storage:
            raise ConfigError(
                f"tune: storage {self.storage!r} is not a database URL; e.g. "
                "sqlite:///runs/sweep/study.db or postgresql://user@host/db"
            )
