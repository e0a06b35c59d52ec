"""How the pipeline's map tasks run: in this process, in local worker processes, or with dask.

Every engine calls the same task function with the same arguments, and a task writes its own
results to disk, so the engines differ only in where the function runs; the pipeline's output
is the same whichever ran it. The local engine uses `concurrent.futures` with spawned
processes (spawn rather than fork: the parent may hold threads, such as the progress bar's).
The dask engine runs the tasks as `dask.delayed` calls on dask's local process scheduler, or,
given `dask_address`, on a `dask.distributed` cluster; dask is an optional dependency
(`pip install lmforge[dask]`), imported only here and only when asked for. On a cluster the
output folder must be on a file system that every worker sees.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from tqdm import tqdm

from lmforge.config import ConfigError

log = logging.getLogger(__name__)

# Where `report_progress` sends document counts in this process (set per worker).
_sink: Callable[[int], None] | None = None


def report_progress(n: int) -> None:
    """Called by a running task: `n` more documents read."""
    if _sink is not None:
        _sink(n)


def _init_worker(q: Any) -> None:
    global _sink
    _sink = q.put


def run_tasks(
    fn: Callable[[Any, Any], dict],
    tasks: Sequence[Any],
    spec: Any,
    *,
    engine: str = "local",
    workers: int = 1,
    dask_address: str = "",
    progress: bool = False,
) -> list[dict]:
    """Run `fn(task, spec)` for every task; return the results (in no particular order).

    When a task fails, tasks not yet started are cancelled, running ones finish (their work is
    kept for the next run), and the first error is raised.
    """
    if not tasks:
        return []
    if engine == "dask":
        return _run_dask(fn, tasks, spec, workers, dask_address, progress)
    bar = tqdm(desc="map", unit="doc", disable=not progress, dynamic_ncols=True)
    done = 0

    def task_done() -> None:
        nonlocal done
        done += 1
        bar.set_postfix_str(f"tasks {done}/{len(tasks)}")

    bar.set_postfix_str(f"tasks 0/{len(tasks)}")
    try:
        if workers == 1 or len(tasks) == 1:
            return _run_here(fn, tasks, spec, bar, task_done)
        return _run_pool(fn, tasks, spec, workers, bar, task_done)
    finally:
        bar.close()


def _run_here(fn, tasks, spec, bar, task_done) -> list[dict]:
    global _sink
    _sink = bar.update
    try:
        results = []
        for t in tasks:
            results.append(fn(t, spec))
            task_done()
        return results
    finally:
        _sink = None


def _drain(q: Any, bar: tqdm) -> None:
    while True:
        try:
            bar.update(q.get_nowait())
        except queue_module.Empty:
            return


def _run_pool(fn, tasks, spec, workers, bar, task_done) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    results, error = [], None
    with ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(q,),
    ) as pool:
        pending = {pool.submit(fn, t, spec) for t in tasks}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(q, bar)
                for f in finished:
                    if f.cancelled():
                        continue
                    if f.exception() is not None:
                        if error is None:
                            error = f.exception()
                            for p in pending:
                                p.cancel()
                        continue
                    results.append(f.result())
                    task_done()
        except BaseException:
            for p in pending:
                p.cancel()
            raise
    _drain(q, bar)
    if error is not None:
        raise error
    return results


def _run_dask(fn, tasks, spec, workers: int, address: str, progress: bool) -> list[dict]:
    try:
        import dask
    except ImportError as e:
        raise ConfigError(
            "engine = 'dask' needs dask, which is not installed: pip install 'lmforge[dask]'"
        ) from e
    bar = tqdm(total=len(tasks), desc="map (dask)", unit="task", disable=not progress)
    try:
        if address:
            try:
                from distributed import Client, as_completed
            except ImportError as e:
                raise ConfigError(
                    "dask_address needs dask.distributed: pip install 'lmforge[dask]' distributed"
                ) from e
            results = []
            with Client(address) as client:
                log.info("running %d map tasks on the dask cluster at %s", len(tasks), address)
                futures = client.map(fn, tasks, spec=spec, pure=False)
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.update(1)
            return results
        from dask.callbacks import Callback

        class _Progress(Callback):
            def _posttask(self, key, result, dsk, state, worker_id) -> None:
                bar.update(1)

        calls = [dask.delayed(fn, pure=False)(t, spec) for t in tasks]
        with _Progress():
            return list(dask.compute(*calls, scheduler="processes", num_workers=workers))
    finally:
        bar.close()
