"""`resolve_base`: where every `lmforge finetune <task> --from X` starts; `fit`, the step loop
of classification and QA.

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


def test_fit_keeps_the_best_validated_step_and_stops_on_nan(tmp_path):
    from lmforge.finetune.base import fit

    torch.manual_seed(0)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": 0.1, "initial_lr": 0.1}])
    weights_at, scores = {}, iter([0.1, 0.9, 0.5, 0.2])  # the 2nd validation scores best

    def batch_loss(chunk):
        return torch.nn.functional.mse_loss(model(x[chunk]), y[chunk])

    def validate():
        weights_at[len(weights_at) + 1] = model.weight.detach().clone()
        return {"score": next(scores)}

    common = dict(
        n_examples=64, epochs=2, batch_size=16, warmup_fraction=0.0, grad_clip=1.0,
        evals_per_epoch=2, seed=0, keep_best="score", metrics_path=tmp_path / "m.jsonl",
        progress=False, desc="t",
    )  # fmt: skip
    fitted = fit(model, optimizer, batch_loss, validate=validate, **common)
    assert fitted.steps == 8 and fitted.best_step == 4  # validations at steps 2, 4, 6, 8
    assert torch.equal(model.weight, weights_at[2])
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))
    assert [r.get("val_score") for r in lines[1::2]] == [0.1, 0.9, 0.5, 0.2]
    assert lines[-1]["loss"] < lines[0]["loss"]

    before = model.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        fit(model, optimizer, lambda chunk: batch_loss(chunk) * float("nan"), validate=None,
            **common)  # fmt: skip
    assert torch.equal(model.weight, before)
