"""Instruction SFT: readers, packing without leaks, loss masks, and a run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import shared
from lmforge.data.document import DataError
from lmforge.finetune.instructions import read_conversations
from lmforge.finetune.sft import (
    IGNORE,
    SFTConfig,
    answer,
    encode_examples,
    finetune_sft,
    is_adapter_run,
    load_sft_model,
    make_batch,
    pack,
    prompt_ids,
)
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.chat import DEFAULT_TEMPLATE, ChatTemplate, template_for_run

# ------------------------------------------------------------------ readers


def test_alpaca_demo_reads_every_record_with_its_line():
    convs, summary = read_conversations(shared("instructions/alpaca_en_demo.json"))
    assert summary == {"format": "alpaca", "records": 999, "skipped": 0}
    assert convs[0].where.endswith("alpaca_en_demo.json:2")
    assert [m["role"] for m in convs[0].messages] == ["user", "assistant"]
    with_input = [c for c in convs if "\n\n" in c.messages[0]["content"]]
    assert with_input  # instruction + input joined by a blank line


def test_squad_becomes_generative_qa_and_counts_unanswerable():
    convs, summary = read_conversations(shared("qa/squad-v2/small.json"))
    assert summary == {"format": "squad", "records": 293, "skipped": 333}
    assert "Question: " in convs[0].messages[0]["content"]
    assert convs[0].messages[1]["content"] == convs[0].references[0]


def test_bad_alpaca_record_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",\n   "input": ""}\n]\n'
    )
    with pytest.raises(DataError, match=r"bad.json:3: field 'output' is missing"):
        read_conversations(path)


def test_bad_message_role_names_file_line_and_index(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:3: messages\[1\]\.role is 'bot'"):
        read_conversations(path)


# ------------------------------------------------------------ packed attention


@pytest.mark.parametrize(
    "fields",
    [
        dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_heads=1),
        dict(pos_emb="learned"),
        dict(pos_emb="sinusoidal"),
    ],
)
def test_packed_row_logits_equal_each_example_alone(fields):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=50, n_layers=2, n_heads=2, d_model=32, max_seq_len=24, **fields)
    )
    model.eval()
    docs = [torch.randint(0, 50, (n,)) for n in (7, 5, 9)]
    row = torch.cat(docs)[None]  # (1, 21)
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        packed = model(row, doc_ids=doc_ids)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
        plain = model(row)[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    # Without doc_ids the row is one causal sequence: the later examples see the earlier ones.
    assert not torch.allclose(plain[7:], alone[7:], atol=1e-3)
    torch.testing.assert_close(plain[:7], alone[:7], atol=1e-5, rtol=0)


def test_pack_fills_rows_within_capacity_and_uses_each_example_once():
    lengths = [5, 9, 3, 7, 2, 10, 4]
    rows = pack(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    # First fit, by hand: 5+3+2 fill a row; 9, 7, 10 and 4 cannot share (9+..., 7+4 > 10).
    assert rows == [[0, 2, 4], [1], [3], [5], [6]]


# ------------------------------------------------------------------ tiny runs


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 1-layer char GPT run (untrained) with the checkpoint layout of `lmforge train`."""
    from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer
    from lmforge.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("sft-base")
    convs, _ = read_conversations(shared("instructions/alpaca_en_demo.json"))
    text = "".join(m["content"] for c in convs[:200] for m in c.messages) + "<|>\n"
    tok = train_tokenizer([text], TokenizerConfig(kind="char"), progress=False)
    tok.save(root / "tokenizer")
    model_cfg = dict(vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=32, max_seq_len=96)
    torch.manual_seed(0)
    config = {
        "model": {"family": "gpt", **model_cfg},
        "tokenizer": {"fingerprint": tok.fingerprint},
    }
    save_checkpoint(root, step=0, model=GPT(GPTConfig(**model_cfg)), config=config)
    return root


def _short_alpaca(tmp_path, n: int):
    """The first n alpaca_en_demo records whose output is under 120 characters."""
    records = json.loads(shared("instructions/alpaca_en_demo.json").read_text())
    short = [r for r in records if len(r["output"]) < 120 and not r["input"]][:n]
    path = tmp_path / "short.json"
    path.write_text(json.dumps(short, indent=1))
    return path, short


def test_loss_mask_counts_and_truncation_counts(base_run, tmp_path):
    from lmforge.tokenizer.tokenizer import load_tokenizer

    tok = load_tokenizer(base_run / "tokenizer")
    path, records = _short_alpaca(tmp_path, 30)
    convs, _ = read_conversations(path)
    template = ChatTemplate(DEFAULT_TEMPLATE)
    examples, counts = encode_examples(tok, template, convs, max_len=10_000)
    # A char vocabulary: an answer is one token per character, plus the EOS that ends it.
    assert [sum(e.mask) for e in examples] == [len(r["output"]) + 1 for r in records]
    assert counts == {"examples": 30, "truncated": 0, "skipped_too_long": 0, "skipped_no_target": 0}
    # Targets are the next tokens: the batch holds every assistant token but a first one.
    _, tgt, doc_ids = make_batch(examples, pack([len(e.ids) - 1 for e in examples], 400), 0, True)
    assert int((tgt != IGNORE).sum()) == sum(len(r["output"]) + 1 for r in records)
    assert doc_ids is not None and int(doc_ids.max()) >= 1  # rows hold several examples
    lengths = [len(e.ids) for e in examples]
    cut, cut_counts = encode_examples(tok, template, convs, max_len=120)
    assert cut_counts["truncated"] + cut_counts["skipped_no_target"] == sum(
        n > 120 for n in lengths
    )
    assert all(len(e.ids) <= 120 for e in cut)
    _, skip_counts = encode_examples(tok, template, convs, max_len=120, overlong="skip")
    assert skip_counts["skipped_too_long"] == sum(n > 120 for n in lengths)
    # Cut from the left, the prompt's start goes and every (short) answer stays whole.
    left, left_counts = encode_examples(tok, template, convs, max_len=120, side="left")
    assert left_counts["skipped_no_target"] == 0
    assert [sum(e.mask) for e in left] == [len(r["output"]) + 1 for r in records]


@pytest.mark.slow
def test_sft_run_end_to_end_loss_falls_and_chat_generates(base_run, tmp_path, capsys):
    from lmforge.cli import main
    from lmforge.infer.load import load_run

    path, _ = _short_alpaca(tmp_path, 60)
    cfg = SFTConfig(epochs=4, batch_size=4, lr=3e-3, val_fraction=0.2, samples=2, device="cpu")
    out = tmp_path / "sft"
    result = finetune_sft(cfg, base_run, path, out, progress=False)
    assert result["val_loss_after"] < result["val_loss_before"] - 0.5
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (out / "tokenizer" / "chat_template.jinja").read_text() == DEFAULT_TEMPLATE
    train = result["data"]["train"]  # 48 after the 20% split; a 96-token context cuts many
    assert train["examples"] + train["skipped_no_target"] == 48 and train["truncated"] > 0
    assert len(result["samples"]) == 2
    run = load_run(out)  # an ordinary run: generate, serve, eval and export read it
    assert run.config["finetune"]["task"] == "sft"
    code = main(["generate", str(out), "--chat", "--prompt", "Name a colour.",
                 "--max-new-tokens", "8", "--temperature", "0"])  # fmt: skip
    # The CLI asks in the run's template and prints what the library's greedy answer is.
    expected = answer(run.model, run.tokenizer, template_for_run(out / "tokenizer"),
                      [{"role": "user", "content": "Name a colour."}], 8)  # fmt: skip
    assert code == 0 and capsys.readouterr().out == expected + "\n"
    # Exported to Hugging Face, the template comes along and transformers asks the same way.
    transformers = pytest.importorskip("transformers")
    from lmforge.export.hf import export_hf

    export_hf(out, tmp_path / "hf")
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    msgs = [{"role": "user", "content": "Name a colour."}]
    hf_ids = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)
    ids = prompt_ids(run.tokenizer, template_for_run(out / "tokenizer"), msgs, 1000)
    assert list(hf_ids["input_ids"]) == ids


@pytest.mark.slow
def test_lora_adapters_only_run_loads_back(base_run, tmp_path):
    from lmforge.finetune.lora import LoRAConfig
    from lmforge.train.checkpoint import checkpoint_dir, load_model_weights

    path, _ = _short_alpaca(tmp_path, 20)
    lora = LoRAConfig(targets=["q_proj", "v_proj", "up_proj"], rank=4)
    cfg = SFTConfig(epochs=1, batch_size=4, lr=1e-2, lora=lora, samples=0, device="cpu")
    out = tmp_path / "lora"
    result = finetune_sft(cfg, base_run, path, out, progress=False)
    assert len(result["lora_targets"]) == 3
    assert is_adapter_run(out) and (out / "adapters.safetensors").is_file()
    assert not (out / "checkpoints").exists()
    model, base = load_sft_model(out)
    original = GPT(model.config)
    load_model_weights(original, checkpoint_dir(base_run) / "model.safetensors")
    assert base == base_run.resolve()
    changed = {
        k for k, v in model.state_dict().items() if not torch.equal(v, original.state_dict()[k])
    }
    assert changed == {"blocks.0.attn.q_proj.weight", "blocks.0.attn.v_proj.weight",
                       "blocks.0.mlp.up_proj.weight"}  # fmt: skip


def test_cli_bad_record_is_one_line_exit_2(base_run, tmp_path, capsys):
    from lmforge.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x", "output": 3}\n')
    code = main(["finetune", "sft", "--from", str(base_run), "--data", str(path),
                 "--out", str(tmp_path / "o"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bad.jsonl:2: field 'output' is a int" in err and "\n" not in err
