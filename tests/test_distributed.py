"""Training on 2 processes (gloo, CPU) through torchrun: the same losses as one process, and
checkpoints that resume exactly at the same or another world size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES, config, losses
from lmforge.config import ConfigError
from lmforge.train.distributed import World
from lmforge.train.trainer import check_distributed, train

pytestmark = pytest.mark.slow

RUN = {
    **TINY_OVERRIDES,
    "model.n_layers": 2,  # FSDP shards each block: two of them, and the root
    "train.max_steps": 12,
    "train.log_interval": 1,
    "train.eval_interval": 6,
    "train.grad_accum_steps": 2,
    "train.keep_checkpoints": 5,
}


def torchrun_cmd(run_dir: Path, tokens: Path, extra: dict, *, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    args += ["-m", "lmforge", "train", "--out", str(run_dir), "--no-progress"]
    if resume:
        args.append("--resume")
    overrides = {"data.tokens": str(tokens), **RUN, **extra}
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value)]
    return args


def torchrun(run_dir: Path, tokens: Path, extra: dict | None = None, **kw) -> None:
    cmd = torchrun_cmd(run_dir, tokens, extra or {}, **kw)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}


def max_diff(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_tokens) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    train(config(tiny_tokens, **RUN), run_dir, progress=False)
    return run_dir


def cut_at(run_dir: Path, dst: Path, step: int = 6) -> Path:
    """A copy of `run_dir` as if it had stopped right after checkpoint `step`."""
    import shutil

    shutil.copytree(run_dir, dst)
    name = f"step-{step:07d}"
    for path in (dst / "checkpoints").glob("step-*"):
        if path.name != name:
            shutil.rmtree(path)
    index = {"last": name, "best": name, "history": [name]}
    (dst / "checkpoints" / "index.json").write_text(json.dumps(index))
    return dst


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_and_reshard_on_resume(tmp_path, tiny_tokens, single, strategy):
    two = tmp_path / "two"
    torchrun(two, tiny_tokens, {"distributed.strategy": strategy})
    # The same global batch, split over two ranks: the same curve up to summation order.
    assert max_diff(losses(two), losses(single)) < 1e-5
    assert max_diff(losses(two, "val_loss"), losses(single, "val_loss")) < 1e-5
    ckpt = two / "checkpoints" / "step-0000012"
    assert (ckpt / "model.safetensors").exists()  # consolidated, for eval/generate/serve
    assert len(list((ckpt / "sharded").glob("*.safetensors"))) == 2
    assert {p.name for p in ckpt.glob("rng-rank-*")} == {
        "rng-rank-0.safetensors",
        "rng-rank-1.safetensors",
    }
    assert json.loads((two / "config.json").read_text())["distributed"]["strategy"] == strategy

    # 2 -> 1: the sharded checkpoint resumes in one process.
    two_to_one = cut_at(two, tmp_path / "2to1")
    train(config(tiny_tokens, **RUN), two_to_one, resume=True, progress=False)
    assert losses(two_to_one) == pytest.approx(losses(two), abs=1e-5)
    assert max_diff(losses(two_to_one, "val_loss"), losses(two, "val_loss")) < 1e-5

    # 1 -> 2: a single-process checkpoint resumes on two processes.
    one_to_two = cut_at(single, tmp_path / "1to2")
    torchrun(one_to_two, tiny_tokens, {"distributed.strategy": strategy}, resume=True)
    assert max_diff(losses(one_to_two), losses(single)) < 1e-5
    assert max_diff(losses(one_to_two, "val_loss"), losses(single, "val_loss")) < 1e-5


def test_killed_two_process_run_resumes_exactly(tmp_path, tiny_tokens):
    extra = {
        "distributed.strategy": "fsdp",
        "train.max_steps": 40,
        "train.checkpoint_interval": 2,
        "train.eval_interval": 20,
    }
    full = tmp_path / "full"
    torchrun(full, tiny_tokens, extra)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        torchrun_cmd(killed, tiny_tokens, extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    index = killed / "checkpoints" / "index.json"
    deadline = time.monotonic() + 120
    while not index.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait()
    last = json.loads(index.read_text())["last"]
    assert last != "step-0000040", "the run finished before it could be killed"

    torchrun(killed, tiny_tokens, extra, resume=True)
    assert losses(killed) == losses(full)  # bit-identical from the checkpoint on
    assert losses(killed, "val_loss") == losses(full, "val_loss")


def test_settings_that_cannot_split_are_explained(tiny_tokens):
    two = World(rank=0, size=2)
    with pytest.raises(ConfigError, match="batch_size=5 does not divide among 2 processes"):
        check_distributed(config(tiny_tokens, **{"train.batch_size": 5}), two)
    fsdp_muon = {"distributed.strategy": "fsdp", "optim.name": "muon"}
    with pytest.raises(ConfigError, match="muon.*FSDP shards"):
        check_distributed(config(tiny_tokens, **fsdp_muon), two)
    with pytest.raises(ConfigError, match="nccl.*needs CUDA"):
        check_distributed(config(tiny_tokens, **{"distributed.backend": "nccl"}), two)
    check_distributed(config(tiny_tokens, **{"train.batch_size": 5}), World())  # one process
