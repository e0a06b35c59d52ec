"""`lmforge finetune seq2seq`: the JSONL reader, the scores, batching, and a tiny model that
learns to reverse word sequences, fine-tuned again from its own run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import shared
from lmforge.cli import main
from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.finetune.seq2seq import (
    Example,
    Seq2SeqTuneConfig,
    decode_examples,
    epoch_batches,
    finetune_seq2seq,
    lead_baseline,
    lead_sentences,
    one_line,
    read_seq2seq_jsonl,
    score_outputs,
)
from lmforge.infer.load import load_run

WORDS = "red blue green cat dog sun moon tree fish bird".split()
TINY = {
    "d_model": 64,
    "n_heads": 2,
    "n_encoder_layers": 2,
    "n_decoder_layers": 2,
    "max_seq_len": 32,
    "dropout": 0.0,
}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def _reverse_task(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
        rows.append({"source": " ".join(words), "target": " ".join(reversed(words))})
    return _write_jsonl(path, rows)


# ---------------------------------------------------------------- reading


def test_reader_names_file_and_line_of_each_kind_of_bad_line(tmp_path):
    good = {"source": "a b", "target": "b a"}
    cases = {
        "{not json\n": "not valid JSON",
        "[1, 2]\n": "a JSON list, not an object",
        json.dumps({"source": "a"}) + "\n": "no field 'target'",
        json.dumps({"source": "a", "target": None}) + "\n": "field 'target' is null",
        json.dumps({"source": "a", "target": "  "}) + "\n": "field 'target' is str",
        json.dumps({"source": 3, "target": "x"}) + "\n": "field 'source' is int",
    }
    for i, (bad, message) in enumerate(cases.items()):
        path = _write_jsonl(tmp_path / f"f{i}.jsonl", [good, "\n", bad, good])
        with pytest.raises(DataError) as e:
            read_seq2seq_jsonl(path)
        assert f"f{i}.jsonl:3: " in str(e.value) and message in str(e.value), str(e.value)
        examples, counts = read_seq2seq_jsonl(path, skip_bad=True)
        assert [x.line for x in examples] == [1, 4]
        assert counts == {"lines": 4, "examples": 2, "skipped_bad": 1, "blank_lines": 1}


def test_reader_on_real_samples_xsum_null_and_dialogsum_three_references():
    xsum = shared("summarization/xsum/small-test.jsonl")
    with pytest.raises(DataError, match=r"small-test\.jsonl:6: field 'summary' is null"):
        read_seq2seq_jsonl(xsum, "input_string", ["summary"])
    examples, counts = read_seq2seq_jsonl(xsum, "input_string", ["summary"], skip_bad=True)
    assert (len(examples), counts["skipped_bad"]) == (124, 1)

    dialogsum = shared("summarization/dialogsum/dialogsum.test.jsonl")
    fields = ["summary1", "summary2", "summary3"]
    examples, _ = read_seq2seq_jsonl(dialogsum, "dialogue", fields)
    assert len(examples) == 500 and all(len(e.references) == 3 for e in examples)
    # Turns are on one line each in the file; the example holds them on one line.
    assert "\n" not in examples[0].source and examples[0].source.startswith("#Person1#:")


def test_reader_names_the_line_that_is_not_utf8(tmp_path):
    good = json.dumps({"source": "a b", "target": "b a"}).encode() + b"\n"
    latin1 = '{"source": "caf\xe9", "target": "x"}\n'.encode("latin-1")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(good + latin1 + good)
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8 .*--skip-bad"):
        read_seq2seq_jsonl(path)
    examples, counts = read_seq2seq_jsonl(path, skip_bad=True)
    assert [e.line for e in examples] == [1, 3] and counts["skipped_bad"] == 1


# ---------------------------------------------------------------- scores


def test_scores_on_hand_checked_cases():
    # Unigrams: 2 of 3 shared -> P = R = F = 2/3; bigrams: "the cat" of 2 -> 1/2.
    summary, per_item = score_outputs(["the cat sat"], [["the cat ran"]])
    assert per_item[0]["rouge1"] == pytest.approx(200 / 3)
    assert per_item[0]["rouge2"] == pytest.approx(50.0)
    assert per_item[0]["rougeL"] == pytest.approx(200 / 3)
    # A prediction equal to its second reference scores 100 everywhere; the signatures say so.
    summary, _ = score_outputs(
        ["the dog runs in the park today"], [["a cat", "the dog runs in the park today"]]
    )
    assert summary["bleu"] == pytest.approx(100.0) and summary["chrf"] == pytest.approx(100.0)
    assert summary["rouge1"] == summary["rougeL"] == pytest.approx(100.0)
    assert "nrefs:2" in summary["bleu_signature"]
    # Porter stemming: "running" and "runs" both stem to "run".
    _, per_item = score_outputs(["dogs running"], [["dog runs"]])
    assert per_item[0]["rouge1"] == pytest.approx(100.0)


def test_lead_sentences_and_baseline():
    text = 'He said "stop." Then he left! Did she? #Person1#: hi\n#Person2#: bye'
    assert lead_sentences(text, 1) == 'He said "stop."'
    assert lead_sentences(text, 3) == 'He said "stop." Then he left! Did she?'
    assert lead_sentences("#Person1#: hi\n#Person2#: bye", 1) == "#Person1#: hi"
    result = lead_baseline([Example(source="A b c. D e.", references=["A b c."], line=1)], 1)
    assert result["bleu"] == pytest.approx(100.0) and result["rouge1"] == pytest.approx(100.0)


def test_lead_baseline_of_a_multi_line_dialogue_takes_its_first_turns(tmp_path):
    dialogue = "#Person1#: hi there\n#Person2#: hello you\n#Person1#: bye now"
    first_two = "#Person1#: hi there #Person2#: hello you"
    path = _write_jsonl(tmp_path / "d.jsonl", [{"source": dialogue, "target": first_two}])
    [example], _ = read_seq2seq_jsonl(path)
    assert example.source == one_line(dialogue)  # what the model reads
    result = lead_baseline([example], 2)
    assert result["rouge1"] == pytest.approx(100.0) and result["bleu"] == pytest.approx(100.0)


def test_epoch_batches_cover_every_example_and_respect_the_token_budget():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(2, 40, 300), rng.integers(2, 20, 300)
    batches = epoch_batches(src, tgt, seed=1, epoch=0, batch_size=16, max_tokens=400)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    for b in batches:
        assert len(b) == 1 or len(b) * (src[b].max() + tgt[b].max()) <= 400
    again = epoch_batches(src, tgt, seed=1, epoch=0, batch_size=16, max_tokens=400)
    assert all((a == b).all() for a, b in zip(batches, again))
    by_count = epoch_batches(src, tgt, seed=1, epoch=1, batch_size=16)
    assert sorted(len(b) for b in by_count)[-1] == 16 and len(by_count) == 19


def test_config_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="label_smoothing"):
        Seq2SeqTuneConfig(label_smoothing=1.5)
    train = _reverse_task(tmp_path / "train.jsonl", 20, 0)
    with pytest.raises(ConfigError, match="needs --from RUN"):
        finetune_seq2seq(Seq2SeqTuneConfig(), train, tmp_path / "out", progress=False)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory):
    """A tiny model trained from scratch to reverse word sequences (about 10 s on 2 cores)."""
    root = tmp_path_factory.mktemp("s2s")
    train = _reverse_task(root / "train.jsonl", 600, 0)
    test = _reverse_task(root / "test.jsonl", 40, 1)
    cfg = Seq2SeqTuneConfig(
        init="scratch", model=TINY, vocab_size=300, epochs=15, lr=3e-3, beam=2,
        lead_baseline=1, seed=0,
    )  # fmt: skip
    result = finetune_seq2seq(cfg, train, root / "run", test_file=test, progress=False)
    return root, result


@pytest.mark.slow
def test_tiny_model_learns_to_reverse_and_its_run_loads(reverse_run, capsys):
    root, result = reverse_run
    losses = [h["val_loss"] for h in result["history"]]
    assert losses[-1] < 0.3 * losses[0], losses
    test = result["test"]
    # The lead-1 baseline copies the source (one sentence): only the palindromic parts match.
    base = result["lead_baseline"]
    assert test["bleu"] > 40 and test["bleu"] > base["bleu"] + 25, (test["bleu"], base["bleu"])
    assert test["rougeL"] > 80 and test["rougeL"] > base["rougeL"] + 25
    assert test["rouge1"] >= test["rouge2"] and "nrefs:1" in test["bleu_signature"]
    run_dir = root / "run"
    eval_json = json.loads((run_dir / "eval.json").read_text())
    assert eval_json["test"]["bleu"] == pytest.approx(test["bleu"])
    rows = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 40 and {"prediction", "references", "rougeL"} <= set(json.loads(rows[0]))
    assert "| model |" in (run_dir / "report.md").read_text()

    run = load_run(run_dir, families={"seq2seq"})
    assert run.model.config.d_model == 64
    (root / "in.txt").write_text("red cat dog\n")
    assert main(["translate", str(run_dir), "--input", str(root / "in.txt"), "--no-progress"]) == 0
    assert capsys.readouterr().out == "dog cat red\n"
    code = main(
        [
            "eval",
            str(run_dir),
            "--bleu",
            "--split",
            "test",
            "--beam",
            "2",
            "--json",
            "--no-progress",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["bleu"] == pytest.approx(test["bleu"])
    # --rouge on the JSONL test file itself: the same outputs, so the same scores.
    code = main([
        "eval", str(run_dir), "--rouge", "--src", str(root / "test.jsonl"), "--beam", "2",
        "--json", "--no-progress",
    ])  # fmt: skip
    scored = json.loads(capsys.readouterr().out)
    assert code == 0 and scored["n"] == 40
    for name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"):
        assert scored[name] == pytest.approx(test[name]), name


@pytest.mark.slow
def test_test_decoding_cuts_sources_and_outputs_at_max_len(reverse_run):
    root, result = reverse_run
    # max_len 0: the model's 32 tokens, for the sources and (decode_max_len 0) the outputs.
    assert (result["test"]["max_len"], result["test"]["decode_max_len"]) == (32, 32)
    run = load_run(root / "run", families={"seq2seq"})
    tok = run.tokenizer
    ids = tok.encode(" ".join(WORDS))
    head = tok.decode(ids[:7])  # what max_len 8 keeps of it: 7 tokens, then EOS
    assert len(ids) == 10 and tok.encode(head) == ids[:7]
    cfg = Seq2SeqTuneConfig(max_len=8, beam=1)
    examples = [Example(" ".join(WORDS), ["-"], 1), Example(head, ["-"], 2)]
    outputs, stats = decode_examples(run, examples, cfg)
    assert outputs[0] == outputs[1] and stats["truncated"] == 1
    # At most 8 tokens with BOS (and EOS, when reached) by default, or decode_max_len's 4.
    assert stats["decode_max_len"] == 8 and len(tok.encode(outputs[0])) <= 7
    cfg = Seq2SeqTuneConfig(max_len=8, decode_max_len=4, beam=1)
    outputs, stats = decode_examples(run, examples, cfg)
    assert stats["decode_max_len"] == 4 and len(tok.encode(outputs[0])) <= 3


@pytest.mark.slow
def test_fine_tuning_from_the_run_starts_where_it_left_off(reverse_run, tmp_path, capsys):
    root, scratch = reverse_run
    new = _reverse_task(tmp_path / "more.jsonl", 100, 5)
    code = main([
        "finetune", "seq2seq", "--from", str(root / "run"), "--train", str(new),
        "--out", str(tmp_path / "ft"), "--epochs", "1", "--lr", "1e-4", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    ft = json.loads((tmp_path / "ft" / "eval.json").read_text())
    # One epoch at a small LR: its val loss is near the pretrained one, far below a fresh
    # model's after its first epoch.
    assert ft["history"][0]["val_loss"] < 0.5 * scratch["history"][0]["val_loss"]
    assert ft["start"].startswith(str(root / "run"))
    cfg = json.loads((tmp_path / "ft" / "checkpoints" / "index.json").read_text())
    assert cfg["best"].startswith("step-")


def test_cli_bad_line_is_one_line_with_file_and_line(tmp_path, capsys):
    train = _write_jsonl(tmp_path / "t.jsonl", [{"source": "a", "target": "b"}, {"src": "a"}])
    code = main([
        "finetune", "seq2seq", "--init", "scratch", "--train", str(train),
        "--out", str(tmp_path / "o"), "--no-progress",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "t.jsonl:2: no field 'source'" in err and "--skip-bad" in err


def test_without_val_the_kept_loss_is_a_train_loss_and_copies_of_train_are_counted(
    tmp_path, capsys
):
    train = _reverse_task(tmp_path / "train.jsonl", 40, 0)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    new = {"source": "fish fish bird", "target": "bird fish fish"}
    test = _write_jsonl(tmp_path / "test.jsonl", [rows[0], rows[5], new])
    recipe = tmp_path / "tiny.toml"
    recipe.write_text("[model]\n" + "".join(f"{k} = {v}\n" for k, v in TINY.items()))
    code = main([
        "finetune", "seq2seq", "--init", "scratch", "--model", str(recipe), "--vocab-size",
        "300", "--train", str(train), "--test", str(test), "--val-fraction", "0", "--epochs",
        "1", "--batch-size", "8", "--beam", "1", "--max-len", "12", "--out", str(tmp_path / "o"),
        "--no-progress",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "no validation set" in out and "val loss" not in out, out
    result = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert "best_val_loss" not in result and result["kept_train_loss"] > 0
    assert all("val_loss" not in h for h in result["history"])
    assert result["sources_in_train"] == {"test": 2}
    report = (tmp_path / "o" / "report.md").read_text()
    assert "no validation set: kept the last step" in report and "val loss" not in report
    assert "sources also in the training data (exact copies, counted, not removed): test 2" in (
        report
    )
    # With a validation file: its copies of training sources are counted too.
    val = _write_jsonl(tmp_path / "val.jsonl", [new, rows[3]])
    cfg = Seq2SeqTuneConfig(init="scratch", model=TINY, vocab_size=300, epochs=1, max_len=12)
    result = finetune_seq2seq(cfg, train, tmp_path / "v", val_file=val, progress=False)
    assert result["sources_in_train"] == {"val": 1} and result["best_val_loss"] > 0


@pytest.mark.slow
def test_fine_tuning_from_a_hugging_face_marian_folder(tmp_path):
    pytest.importorskip("transformers")
    from lmforge.export.hf import export_hf

    train = _reverse_task(tmp_path / "train.jsonl", 300, 2)
    post = dict(TINY, norm_position="post")  # Marian is post-norm
    cfg = Seq2SeqTuneConfig(init="scratch", model=post, vocab_size=300, epochs=6, lr=3e-3)
    first = finetune_seq2seq(cfg, train, tmp_path / "run", progress=False)
    export_hf(tmp_path / "run", tmp_path / "hf")
    ft_cfg = Seq2SeqTuneConfig(epochs=1, lr=1e-4)
    ft = finetune_seq2seq(ft_cfg, train, tmp_path / "ft", from_run=tmp_path / "hf", progress=False)
    provenance = json.loads((tmp_path / "ft" / "base" / "imported_from.json").read_text())
    assert provenance["model_type"] == "marian"
    # The imported weights are the trained ones: one more epoch at a small LR stays near the
    # trained model's val loss, far below the first epoch of training from scratch.
    assert ft["history"][0]["val_loss"] < first["history"][0]["val_loss"] - 0.8, (ft, first)
    assert ft["history"][0]["val_loss"] < first["best_val_loss"] + 0.2, (ft, first)


def test_a_non_finite_loss_stops_training_before_the_weights_change(tmp_path, monkeypatch):
    from lmforge.model.seq2seq import Seq2Seq

    train = _reverse_task(tmp_path / "train.jsonl", 40, 0)
    loss = Seq2Seq.loss
    monkeypatch.setattr(Seq2Seq, "loss", lambda self, *a: loss(self, *a) * float("nan"))
    cfg = Seq2SeqTuneConfig(init="scratch", model=TINY, vocab_size=300, epochs=1, max_len=12)
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        finetune_seq2seq(cfg, train, tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "checkpoints").exists()
