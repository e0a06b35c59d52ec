"""Shared fixtures: paths to the real corpora and a tiny trained run built once per session."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

# Real corpora beside the checkout (../shared/data); tests that need one skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(rel: str) -> Path:
    """A file of ../shared/data; the test skips when the folder is not beside the checkout."""
    path = SHARED_DATA / rel
    if not path.exists():
        pytest.skip(f"shared data file {path} not available")
    return path


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yield its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    """Tiny Shakespeare, from the copy bundled in the package (always present)."""
    from lmforge.corpora import corpus_path

    return corpus_path("tinyshakespeare").read_text(encoding="utf-8")


def make_tokens(root: Path, text: str, kind: str = "char") -> Path:
    """Prepare, train a tokenizer and encode `text`; return the tokens folder."""
    from lmforge.data.prepare import PrepareConfig, prepare_corpus
    from lmforge.tokenizer.encode import encode_data
    from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer_from_data

    corpus = root / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    prepare_corpus([corpus], root / "data", PrepareConfig(val_fraction=0.1, test_fraction=0.1))
    train_tokenizer_from_data(
        root / "data", root / "tokenizer", TokenizerConfig(kind=kind, vocab_size=300)
    )
    encode_data(root / "data", root / "tokenizer", root / "tokens", workers=1)
    return root / "tokens"


TINY_OVERRIDES = {
    "model.n_layers": 1,
    "model.n_heads": 2,
    "model.d_model": 32,
    "model.max_seq_len": 64,
    "train.max_steps": 20,
    "train.batch_size": 4,
    "train.eval_interval": 20,
    "train.log_interval": 10,
    "optim.lr": 3e-3,
    "schedule.warmup_steps": 2,
}


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """{step: value} of one metric from a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r[key] for r in map(json.loads, lines) if key in r}


def config(tokens: Path, **extra):
    """The tiny run config on `tokens`, with `section.field` overrides."""
    from lmforge.train.trainer import load_run_config

    return load_run_config(None, {"data.tokens": str(tokens), **TINY_OVERRIDES, **extra})


@pytest.fixture(scope="session")
def tiny_tokens(tmp_path_factory, shakespeare_text) -> Path:
    """Char-level tokens of the first 50 KB of Tiny Shakespeare."""
    return make_tokens(tmp_path_factory.mktemp("tiny"), shakespeare_text[:50_000])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_tokens) -> Path:
    """A run directory with a 1-layer model trained for 20 steps."""
    from lmforge.train.trainer import load_run_config, train

    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_run_config(None, {"data.tokens": str(tiny_tokens), **TINY_OVERRIDES})
    train(cfg, run_dir, progress=False)
    return run_dir


def perturb(model, seed: int = 0) -> None:
    """Move every 1-D parameter (biases, norm gains) and every all-zero matrix (attention
    gates) off its init, so parity tests compare weights that a mapping could not get right
    by leaving zeros and ones in place."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 or (p.dim() == 2 and not p.any()):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
