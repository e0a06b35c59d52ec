"""The model families through the one spine: recipes, `lmforge train`, checkpoints, eval, and
the translation path (sentence pairs, `lmforge translate`, `lmforge eval --bleu`)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_OVERRIDES as TINY
from conftest import losses, make_tokens, shared
from lmforge.cli import main
from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.data.loader import open_shards
from lmforge.data.pairs import PairBatches, PairsConfig, prepare_pairs, read_parallel
from lmforge.tokenizer.tokenizer import TokenizerConfig
from lmforge.train.trainer import load_run_config, train

COMMON = {
    "train.batch_size": 8,
    "train.log_interval": 5,
    "optim.lr": 3e-3,
    "schedule.warmup_steps": 5,
}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- sentence pairs


def test_parallel_files_of_different_lengths_name_the_line(tmp_path):
    src = _write(tmp_path / "a.en", ["one", "two", "three"])
    tgt = _write(tmp_path / "a.de", ["eins", "zwei"])
    with pytest.raises(DataError, match=r"a\.de ends after line 2 but .*a\.en has 1 more"):
        read_parallel(src, tgt)


def test_empty_lines_are_skipped_and_counted_and_gzip_is_read(tmp_path):
    src = tmp_path / "a.en.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write("one\n\nthree\nfour\n")
    tgt = _write(tmp_path / "a.de", ["eins", "zwei", "drei", "  "])
    pairs, skipped, lines = read_parallel(src, tgt)
    assert pairs == [("one", "eins"), ("three", "drei")]
    assert skipped == 2
    assert lines == [1, 3]


def test_long_sentences_are_truncated_and_counted_or_refused(tmp_path):
    src = _write(tmp_path / "s.txt", ["a b", "", "a b c d e f g h i j k l m n o p"])
    tgt = _write(tmp_path / "t.txt", ["x", "z", "y"])
    tok = TokenizerConfig(kind="byte")
    meta = prepare_pairs({"train": (src, tgt)}, tmp_path / "p", PairsConfig(max_len=8), tok)
    assert meta["splits"]["train"]["truncated_src"] == 1
    assert meta["splits"]["train"]["longest_src"] == 31
    with pytest.raises(DataError, match=r"s\.txt, line 3: 31 tokens, more than the 7"):
        prepare_pairs(
            {"train": (src, tgt)},
            tmp_path / "q",
            PairsConfig(max_len=8, on_long="error"),
            tok,
        )


def test_pair_batches_put_eos_after_the_source_and_bos_eos_around_the_target(tmp_path):
    src = _write(tmp_path / "s.txt", ["ab", "abcd", "a"])
    tgt = _write(tmp_path / "t.txt", ["xyz", "x", "xy"])
    prepare_pairs(
        {"train": (src, tgt)}, tmp_path / "p", PairsConfig(), TokenizerConfig(kind="byte")
    )
    data = PairBatches(tmp_path / "p", "train", pad_id=2, bos_id=0, eos_id=1)
    s, t_in, t_out = data.collate([0, 1])
    ab, xyz = data.source(0), data.target(0)
    assert s[0].tolist() == [*ab, 1, 2, 2]  # padded to "abcd" + EOS
    assert t_in[0].tolist() == [0, *xyz]
    assert t_out[0].tolist() == [*xyz, 1]
    x = data.target(1)
    assert t_in[1].tolist() == [0, *x, 2, 2]  # the EOS is never an input
    assert t_out[1].tolist() == [*x, 1, 2, 2]
    a = data.batch(2, seed=1, step=5)
    b = data.batch(2, seed=1, step=5)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_pairs_longer_than_the_model_takes_are_a_config_error(tmp_path):
    src = _write(tmp_path / "s.txt", ["ab"])
    prepare_pairs(
        {"train": (src, src)},
        tmp_path / "p",
        PairsConfig(max_len=100),
        TokenizerConfig(kind="byte"),
    )
    with pytest.raises(DataError, match="model.max_seq_len = 100"):
        PairBatches(tmp_path / "p", "train", pad_id=2, bos_id=0, eos_id=1, max_len=64)


# ---------------------------------------------------------------- training each family


@pytest.fixture(scope="module")
def multi30k_pairs(tmp_path_factory) -> Path:
    """The first 3,000 Multi30k pairs (and 200 for val and test), a shared BPE vocabulary."""
    root = tmp_path_factory.mktemp("m30k")
    m30k = shared("translation/multi30k")
    files = {}
    for split, name, n in (("train", "train", 3000), ("val", "val", 200), ("test", "val", 200)):
        for lang in ("en", "de"):
            with gzip.open(m30k / f"{name}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f).rstrip("\n") for _ in range(n)]
            files[(split, lang)] = _write(root / f"{split}.{lang}", lines)
    splits = {s: (files[(s, "en")], files[(s, "de")]) for s in ("train", "val", "test")}
    prepare_pairs(
        splits,
        root / "pairs",
        PairsConfig(max_len=48),
        TokenizerConfig(kind="bpe", vocab_size=1000),
        progress=False,
    )
    return root / "pairs"


SEQ2SEQ = {
    "model.family": "seq2seq",
    "model.n_encoder_layers": 1,
    "model.n_decoder_layers": 1,
    "model.n_heads": 2,
    "model.d_model": 64,
    "model.max_seq_len": 48,
    "model.dropout": 0.0,
    "train.max_steps": 60,
    "train.eval_interval": 30,
    **COMMON,
}


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory, multi30k_pairs) -> Path:
    run_dir = tmp_path_factory.mktemp("s2s-run")
    train(load_run_config(None, {"data.tokens": str(multi30k_pairs), **SEQ2SEQ}), run_dir)
    return run_dir


def test_seq2seq_trains_on_sentence_pairs(seq2seq_run):
    train_loss = losses(seq2seq_run)
    assert train_loss[60] < train_loss[5] - 1.0
    val = losses(seq2seq_run, "val_loss")
    assert val[60] < val[30]
    config = json.loads((seq2seq_run / "config.json").read_text())
    assert config["model"]["family"] == "seq2seq"
    assert config["model"]["vocab_size"] == 1000  # taken from the pairs' tokenizer


def test_translate_and_bleu_through_the_cli(seq2seq_run, multi30k_pairs, tmp_path, capsys):
    src = multi30k_pairs.parent / "test.en"
    out = tmp_path / "out.de"
    args = ["--beam", "2", "--no-progress", "--device", "cpu"]
    assert (
        main(["translate", str(seq2seq_run), "--input", str(src), "--output", str(out), *args]) == 0
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200 and sum(bool(line) for line in lines) > 150
    assert main(["eval", str(seq2seq_run), "--bleu", "--split", "test", "--json", *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sentences"] == 200
    assert "tok:13a" in result["bleu_signature"]
    assert 0.0 <= result["bleu"] <= 100.0 and result["chrf"] > 5.0  # some characters right
    # The split loss of a seq2seq run is measured on its pairs.
    assert main(["eval", str(seq2seq_run), "--split", "val", "--json", "--device", "cpu"]) == 0
    split = json.loads(capsys.readouterr().out)
    assert split["loss"] == pytest.approx(losses(seq2seq_run, "val_loss")[60], rel=1e-4)


def test_a_checkpoint_of_another_family_is_refused_clearly(seq2seq_run, tiny_run, capsys):
    assert main(["generate", str(seq2seq_run), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "lmforge generate needs a gpt or rnn model, but this run is a 'seq2seq'" in err
    assert "lmforge translate" in err
    assert main(["translate", str(tiny_run), "--input", "x.txt"]) == 2
    assert "needs a seq2seq model, but this run is a 'gpt' model" in capsys.readouterr().err


def test_data_of_the_wrong_kind_is_refused(multi30k_pairs, tiny_tokens, tmp_path):
    with pytest.raises(
        ConfigError, match="holds sentence pairs, which only model.family='seq2seq'"
    ):
        train(load_run_config(None, {"data.tokens": str(multi30k_pairs)}), tmp_path / "a")
    with pytest.raises(DataError, match="a seq2seq model trains on sentence pairs"):
        train(load_run_config(None, {"data.tokens": str(tiny_tokens), **SEQ2SEQ}), tmp_path / "b")


RNN = {
    "model.family": "rnn",
    "model.n_layers": 1,
    "model.d_model": 64,
    "model.max_seq_len": 32,
    "train.max_steps": 60,
    "train.eval_interval": 30,
    **COMMON,
}


def test_rnn_trains_evaluates_and_generates(tiny_tokens, tmp_path, capsys):
    run_dir = tmp_path / "rnn"
    summary = train(load_run_config(None, {"data.tokens": str(tiny_tokens), **RNN}), run_dir)
    train_loss = losses(run_dir)
    assert train_loss[60] < train_loss[5] - 0.5
    assert "val_bpb" in json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert main(["eval", str(run_dir), "--split", "val", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == pytest.approx(summary["final_val_loss"], rel=1e-5)
    val_tokens = sum(len(s) for s in open_shards(tiny_tokens, "val"))
    assert result["tokens"] == val_tokens - 1  # every target token once, tails included
    assert main(["generate", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_masked_lm_trains_and_reports_masked_accuracy(tmp_path_factory, shakespeare_text, capsys):
    root = tmp_path_factory.mktemp("bert")
    tokens = make_tokens(root, shakespeare_text[:50_000], kind="wordpiece")
    run_dir = root / "run"
    overrides = {
        "model.family": "bert",
        "model.n_layers": 1,
        "model.n_heads": 2,
        "model.d_model": 64,
        "model.max_seq_len": 32,
        "model.dropout": 0.0,
        "train.max_steps": 100,
        "train.eval_interval": 50,
        **COMMON,
        "train.batch_size": 32,  # ~150 masked tokens a batch: a loss that is not all noise
        "train.log_interval": 10,
    }
    train(load_run_config(None, {"data.tokens": str(tokens), **overrides}), run_dir)
    # A 64-wide model in 100 steps learns little more than which pieces are common (the
    # unigram entropy of this vocabulary is 5.2 nats); the synthetic task in test_encoder.py
    # shows the encoder learning from context.
    train_loss, val_loss = losses(run_dir), losses(run_dir, "val_loss")
    assert train_loss[100] < train_loss[10] - 0.2
    assert val_loss[100] < val_loss[50]
    assert 0.0 < losses(run_dir, "val_masked_accuracy")[100] < 1.0
    assert main(["eval", str(run_dir), "--split", "test", "--device", "cpu"]) == 0
    assert "masked-token accuracy" in capsys.readouterr().out


def test_masked_lm_needs_a_mask_token(tiny_tokens, tmp_path):
    cfg = load_run_config(None, {"data.tokens": str(tiny_tokens), "model.family": "bert"})
    with pytest.raises(ConfigError, match="needs a tokenizer with a mask token.*--kind wordpiece"):
        train(cfg, tmp_path / "run")


def test_a_recipe_field_of_another_family_is_named(tiny_tokens):
    with pytest.raises(
        ConfigError, match=r"unknown field\(s\) \['n_encoder_layers'\] in \[model\]"
    ):
        load_run_config(None, {"model.family": "rnn", "model.n_encoder_layers": 2})
    with pytest.raises(ConfigError, match="model.family='lstm' is not one of"):
        load_run_config(None, {"model.family": "lstm"})


def test_sources_reach_the_encoder_as_in_training(seq2seq_run):
    from lmforge.infer.load import load_run
    from lmforge.infer.translate import encode_sources

    run = load_run(seq2seq_run)
    ids, cut = encode_sources(run, ["A dog runs.", "", "word " * 100])
    eos = run.model.config.eos_id
    assert ids[0] == [*run.tokenizer.encode("A dog runs."), eos]  # EOS last, as PairBatches
    assert ids[1] == []
    assert len(ids[2]) == run.model.config.max_seq_len and ids[2][-1] == eos and cut == 1
    with pytest.raises(DataError, match=r"in\.txt, line 3: \d+ tokens, more than the model's"):
        encode_sources(run, ["a", "b", "word " * 100], on_long="error", where="in.txt")


def test_a_run_saved_before_families_resumes(tiny_tokens, tmp_path):
    """config.json files written before `[model] family` existed have no such key."""
    run_dir = tmp_path / "old"
    cfg = load_run_config(None, {"data.tokens": str(tiny_tokens), **TINY, "train.max_steps": 10})
    train(cfg, run_dir, progress=False)
    for path in run_dir.rglob("config.json"):
        data = json.loads(path.read_text())
        del data["model"]["family"]
        path.write_text(json.dumps(data))
    more = load_run_config(None, {"data.tokens": str(tiny_tokens), **TINY, "train.max_steps": 20})
    assert train(more, run_dir, resume=True, progress=False)["steps"] == 20


@pytest.mark.parametrize(
    "recipe", ["translate-multi30k", "bert-mlm", "lstm-shakespeare", "shakespeare-char"]
)
def test_each_family_recipe_loads_and_sizes_its_model(recipe, capsys):
    root = Path(__file__).resolve().parents[1] / "recipes"
    cfg = load_run_config(root / f"{recipe}.toml")
    assert main(["model", "info", "--recipe", str(root / f"{recipe}.toml"), "--vocab-size",
                 "8000", "--json"]) == 0  # fmt: skip
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["total"] > 1_000_000 and info["flops_per_token"] > 0
    assert cfg.model.family == {"translate-multi30k": "seq2seq", "bert-mlm": "bert",
                                "lstm-shakespeare": "rnn"}.get(recipe, "gpt")  # fmt: skip
