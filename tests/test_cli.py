"""The `lmforge` command end to end, and the bad inputs a user meets, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES
from lmforge.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def overrides(**extra) -> list[str]:
    items = {**TINY_OVERRIDES, **extra}
    return [x for k, v in items.items() for x in (f"--{k}", str(v))]


@pytest.mark.slow
def test_every_stage_from_the_command_line(tmp_path, capsys, shakespeare_text):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):  # many documents: split by hash
        (corpus / f"part{i}.txt").write_text(shakespeare_text[i * 4000 : (i + 1) * 4000])
    run = tmp_path / "run"
    steps = [
        ("data", "prepare", corpus, "--out", run / "data", "--val-fraction", "0.2",
         "--test-fraction", "0.2", "--no-progress"),
        ("tokenizer", "train", run / "data", "--kind", "bpe", "--vocab-size", "300",
         "--out", run / "tokenizer", "--no-progress"),
        ("tokenizer", "encode", run / "data", "--tokenizer", run / "tokenizer",
         "--out", run / "tokens", "--workers", "1", "--no-progress"),
        ("train", "--out", run, "--no-progress", *overrides()),
    ]  # fmt: skip
    for step in steps:
        code, out, err = run_cli(capsys, *step)
        assert code == 0, (step, err)
    assert "val loss" in out
    code, out, _ = run_cli(capsys, "eval", run, "--split", "test", "--json")
    result = json.loads(out)
    assert code == 0 and result["tokens"] > 0 and 0 < result["bits_per_byte"] < 8
    code, out, _ = run_cli(
        capsys, "generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1"
    )
    assert code == 0 and out.startswith("ROMEO:") and len(out) > len("ROMEO:\n")
    code, out2, _ = run_cli(
        capsys, "generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1"
    )
    assert out2 == out  # a seed makes the sample reproducible


def test_help_explains_every_command(capsys):
    for cmd in (["data", "prepare"], ["tokenizer", "train"], ["tokenizer", "encode"], ["train"],
                ["eval"], ["generate"], ["serve"], ["model", "info"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "--" in out and "show this help" in out


def test_empty_corpus_is_one_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    code, _, err = run_cli(capsys, "data", "prepare", empty, "--out", tmp_path / "d")
    assert code == 2
    assert "lmforge: error:" in err and "empty.txt" in err and "Traceback" not in err


def test_folder_without_readable_files(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "image.png").write_bytes(b"\x89PNG")
    code, _, err = run_cli(capsys, "data", "prepare", folder, "--out", tmp_path / "d")
    assert code == 2 and "folder" in err


def test_bad_jsonl_line_skipped_or_fatal(tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "good one"}\nnot json\n{"text": "another good one"}\n')
    code, out, _ = run_cli(capsys, "data", "prepare", src, "--out", tmp_path / "ok")
    assert code == 0
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["read_report"]["bad_records"] == 1
    assert "docs.jsonl:2" in manifest["read_report"]["bad_record_examples"][0]
    args = ("data", "prepare", src, "--out", tmp_path / "ok", "--on-bad-record", "fail")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "docs.jsonl:2" in err
    assert json.loads((tmp_path / "ok" / "manifest.json").read_text()) == manifest  # intact


def test_missing_text_field_names_the_keys(tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"body": "text under another name"}\n')
    args = ("data", "prepare", src, "--out", tmp_path / "d", "--on-bad-record", "fail")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "body" in err and "--text-field" in err


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 20)
    code, _, _ = run_cli(capsys, "data", "prepare", src, "--out", tmp_path / "d")
    assert code == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["read_report"]["replaced_bytes_total"] == 20


def test_tokenizer_that_does_not_match_the_model(tiny_run, tiny_tokens, tmp_path, capsys):
    import shutil

    from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    bigger = train_tokenizer(["some other text " * 50], TokenizerConfig(kind="bpe", vocab_size=600))
    bigger.save(run / "tokenizer")
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "not the one" in err and "tokenizer" in err


def test_truncated_checkpoint_through_eval(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = next((run / "checkpoints").glob("step-*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "truncated or corrupt" in err and "model.safetensors" in err


def test_eval_without_a_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in err


def test_unknown_override_is_explained(tiny_tokens, tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "train", "--out", tmp_path / "r", "--data.tokens", tiny_tokens, "--optim.lrr", "1"
    )
    assert code == 2 and "lrr" in err and "known fields" in err


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_model_info_command(capsys):
    code, out, _ = run_cli(
        capsys, "model", "info", "--recipe", RECIPES / "nanogpt-cpu.toml", "--vocab-size", "65",
        "--json", "--model.n_layers", "2",
    )  # fmt: skip
    info = json.loads(out)
    assert code == 0 and info["params"]["by_group"]["attention"] == 2 * (4 * 128 * 128 + 512)
    code, _, err = run_cli(capsys, "model", "info", "--recipe", RECIPES / "nanogpt-cpu.toml")
    assert code == 2 and "--vocab-size" in err


def test_fast_recipe_loads_with_its_canon_layers_and_attention_gates(capsys):
    code, out, _ = run_cli(
        capsys, "model", "info", "--recipe", RECIPES / "shakespeare-char-fast.toml",
        "--vocab-size", "65", "--json",
    )  # fmt: skip
    info = json.loads(out)
    groups = info["params"]["by_group"]
    assert code == 0 and groups["canon"] == 4 * 2 * 3 * 128  # 4 blocks, 2 layers, 3 taps
    assert info["seq_len"] == 128  # a step trains on 128-token windows (train.seq_len)
    # q, o; k, v of 2 heads; a gate of 4 heads
    assert groups["attention"] == 4 * (2 * 128 * 128 + 2 * 128 * 64 + 4 * 128)


def test_resume_from_the_command_line_reuses_the_runs_config(tmp_path, tiny_tokens, capsys):
    run = tmp_path / "run"
    args = ["train", "--out", run, "--no-progress", "--data.tokens", tiny_tokens]
    code, _, err = run_cli(capsys, *args, *overrides(**{"train.max_steps": 4}))
    assert code == 0, err
    # No recipe and no model flags: the run's own config.json is the starting point.
    code, out, err = run_cli(
        capsys, "train", "--out", run, "--resume", "--no-progress", "--train.max_steps", "6"
    )
    assert code == 0, err
    assert "trained 6 steps" in out


def test_eval_refuses_tokens_from_another_tokenizer(tiny_run, tmp_path, capsys, shakespeare_text):
    from conftest import make_tokens

    other = make_tokens(tmp_path, shakespeare_text[:20_000], kind="byte")
    code, _, err = run_cli(capsys, "eval", tiny_run, "--tokens", other)
    assert code == 2 and "another tokenizer" in err
