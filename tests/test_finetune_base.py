"""`resolve_base`: where every `lmforge finetune <task> --from X` starts.

A run directory is used as it is; a Hugging Face folder (GPT-2, Llama, BERT) is imported once
into `<out>/base` and reused; anything else is a clear error. The HF folders are written by
`export hf` from tiny random runs built in the test (no downloads).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import to_dict
from lmforge.corpora import corpus_path
from lmforge.model.encoder import Encoder, EncoderConfig
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from lmforge.train.checkpoint import save_checkpoint
from lmforge.train.trainer import RunConfig

transformers = pytest.importorskip("transformers")

from lmforge.export import hf as hf_export  # noqa: E402
from lmforge.export.hf import InteropError, export_hf  # noqa: E402
from lmforge.finetune.base import BaseModelError, resolve_base  # noqa: E402
from lmforge.infer.load import load_run  # noqa: E402

LLAMA = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)


@pytest.fixture(scope="module")
def text() -> str:
    return corpus_path("tinyshakespeare").read_text(encoding="utf-8")[:20_000]


@pytest.fixture(scope="module")
def bpe(text) -> Tokenizer:
    return train_tokenizer([text], TokenizerConfig(kind="bpe", vocab_size=300))


def make_run(root: Path, tok: Tokenizer, model: torch.nn.Module) -> Path:
    tok.save(root / "tokenizer")
    config = to_dict(RunConfig(model=model.config))
    config["tokenizer"] = {"kind": tok.kind, "fingerprint": tok.fingerprint}
    save_checkpoint(root, step=1, model=model, config=config)
    return root


def gpt_run(root: Path, tok: Tokenizer, **kw) -> Path:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=32, max_seq_len=32)
    cfg = GPTConfig(**{**to_dict(cfg), **kw})
    return make_run(root, tok, GPT(cfg))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, bpe, text) -> dict[str, Path]:
    """GPT-2, Llama and BERT folders as transformers saves them."""
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for name, kw in (("gpt2", {}), ("llama", LLAMA)):
        dirs[name] = root / name
        export_hf(gpt_run(root / f"run-{name}", bpe, **kw), dirs[name])
    wp = train_tokenizer(text.splitlines(), TokenizerConfig(kind="wordpiece", vocab_size=300))
    enc = Encoder(EncoderConfig(vocab_size=wp.vocab_size, n_layers=1, d_model=32, n_heads=2))
    dirs["bert"] = root / "bert"
    export_hf(make_run(root / "run-bert", wp, enc), dirs["bert"])
    return dirs


def test_a_run_directory_is_used_as_it_is(bpe, tmp_path):
    run = gpt_run(tmp_path / "run", bpe)
    assert resolve_base(run, tmp_path / "out") == run
    assert resolve_base(str(run), tmp_path / "out") == run
    assert not (tmp_path / "out").exists()  # nothing imported, nothing written


@pytest.mark.parametrize("name,family", [("gpt2", "gpt"), ("llama", "gpt"), ("bert", "bert")])
def test_hf_folder_is_imported_once_into_base(name, family, hf_dirs, tmp_path, monkeypatch):
    hf_dir, out = hf_dirs[name], tmp_path / "ft"
    base = resolve_base(hf_dir, out)
    assert base == out / "base"
    run = load_run(base)
    assert run.family == family
    provenance = json.loads((base / "imported_from.json").read_text())
    assert provenance == {"hf_dir": str(hf_dir.resolve()), "model_type": name}
    hf = transformers.AutoConfig.from_pretrained(hf_dir)
    assert run.model.config.vocab_size == hf.vocab_size

    # A second call (a resumed or repeated fine-tune) reuses the import without redoing it.
    def no_import(*args, **kwargs):
        raise AssertionError("imported again")

    monkeypatch.setattr(hf_export, "import_hf", no_import)
    assert resolve_base(hf_dir, out) == base
    assert resolve_base(Path(str(hf_dir) + "/"), out) == base  # the same folder, spelled otherwise


def test_another_folder_into_the_same_out_is_refused(hf_dirs, tmp_path):
    resolve_base(hf_dirs["gpt2"], tmp_path / "ft")
    with pytest.raises(
        BaseModelError, match=r"ft/base already holds an import of .*gpt2.*fresh --out"
    ):
        resolve_base(hf_dirs["llama"], tmp_path / "ft")


def test_missing_unsupported_and_unknown_sources_are_named(hf_dirs, tmp_path):
    with pytest.raises(BaseModelError, match=r"--from .*nowhere: no such run directory"):
        resolve_base(tmp_path / "nowhere", tmp_path / "ft")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    with pytest.raises(BaseModelError, match=r"notes: neither an lmforge run .* save_pretrained"):
        resolve_base(tmp_path / "notes", tmp_path / "ft")
    small = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    transformers.GPTNeoXConfig(**small).save_pretrained(tmp_path / "neox")
    with pytest.raises(InteropError, match=r"model_type='gpt_neox'.*lmforge imports gpt2"):
        resolve_base(tmp_path / "neox", tmp_path / "ft")
    assert not (tmp_path / "ft" / "base").exists()  # a failed import leaves nothing behind
    # A folder that is only half a run (a crash while copying) is not taken for one.
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    with pytest.raises(BaseModelError, match="neither an lmforge run"):
        resolve_base(tmp_path / "half", tmp_path / "ft")
