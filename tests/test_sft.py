"""Instruction SFT: readers, packing without leaks, loss masks, and a run end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import perturb, shared
from lmforge.data.document import DataError
from lmforge.finetune.instructions import read_conversations
from lmforge.finetune.sft import (
    IGNORE,
    Example,
    SFTConfig,
    answer,
    encode_examples,
    finetune_sft,
    is_adapter_run,
    load_sft_model,
    make_batch,
    pack,
    prompt_ids,
    restore_trainable,
    trainable_state,
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


@pytest.mark.parametrize(
    "record, fmt",
    [
        ({"instruction": "Name a colour.", "output": "Blue."}, "alpaca"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
         "messages"),
    ],
)  # fmt: skip
def test_jsonl_of_one_record_is_read_as_jsonl(tmp_path, record, fmt):
    # The whole file parses as one JSON object, yet it is not SQuAD's.
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record) + "\n")
    convs, summary = read_conversations(path)
    assert summary == {"format": fmt, "records": 1, "skipped": 0}
    assert convs[0].where.endswith("one.jsonl:1")
    with pytest.raises(DataError, match="one.jsonl: not SQuAD JSON"):
        read_conversations(path, "squad")


# ------------------------------------------------------------ packed attention


@pytest.mark.parametrize(
    "fields",
    [
        dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_heads=1),
        dict(pos_emb="learned"),
        dict(pos_emb="sinusoidal"),
        dict(pos_emb="rope", canon_kernel=3),
    ],
)
def test_packed_row_logits_equal_each_example_alone(fields):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=50, n_layers=2, n_heads=2, d_model=32, max_seq_len=24, **fields)
    )
    perturb(model)  # Canon taps start at zero; the mask between documents must matter
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


@pytest.mark.parametrize("fields", [dict(pos_emb="rope", n_kv_heads=1), dict(pos_emb="learned")])
def test_padded_packed_batch_logits_equal_each_example_alone(fields):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=50, n_layers=2, n_heads=2, d_model=32, max_seq_len=24, **fields)
    )
    model.eval()
    lengths = [8, 6, 12, 4, 5, 3, 7]
    examples = [
        Example(torch.randint(1, 50, (n,)).tolist(), [True] * n, f"x:{i}")
        for i, n in enumerate(lengths)
    ]
    # Rows laid out differently: two examples then padding, two that fill the longest row,
    # three short ones then padding.
    rows = [[0, 1], [2, 6], [3, 4, 5]]
    ids, _, doc_ids = make_batch(examples, rows, pad_id=0, packed=True)
    assert ids.shape == (3, 17) and int((doc_ids == -1).sum()) == 17 - 12 + 17 - 9
    with torch.no_grad():
        packed = model(ids, doc_ids=doc_ids)
        for b, row in enumerate(rows):
            at = 0
            for i in row:
                x = torch.tensor(examples[i].ids[:-1])[None]
                alone = model(x)[0]
                torch.testing.assert_close(
                    packed[b, at : at + len(alone)], alone, atol=1e-5, rtol=0
                )
                at += len(alone)


def test_pack_fills_rows_within_capacity_and_uses_each_example_once():
    lengths = [5, 9, 3, 7, 2, 10, 4]
    rows = pack(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    # First fit, by hand: 5+3+2 fill a row; 9, 7, 10 and 4 cannot share (9+..., 7+4 > 10).
    assert rows == [[0, 2, 4], [1], [3], [5], [6]]
    assert pack([], 10) == [] and pack([10], 10) == [[0]]
    with pytest.raises(ValueError, match="example 1 has 11 tokens"):
        pack([3, 11], 10)


def _first_fit_by_scanning(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        r = next((r for r, free in enumerate(room) if n <= free), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(capacity)
        rows[r].append(i)
        room[r] -= n
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_pack_is_first_fit(seed):
    rng = random.Random(seed)
    capacity = rng.choice([8, 64, 100])
    lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 300))]
    assert pack(lengths, capacity) == _first_fit_by_scanning(lengths, capacity)


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
    # Targets are the next tokens: each assistant token (EOS included) is the target of the
    # token before it, the prompt's last for the first, so the batch holds all of them.
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


def test_template_refusing_a_record_names_its_file_and_line(base_run, tmp_path):
    from lmforge.tokenizer.tokenizer import load_tokenizer

    path = tmp_path / "chat.jsonl"
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    odd = {"messages": [{"role": "assistant", "content": "yo"}]}
    path.write_text(json.dumps(ok) + "\n" + json.dumps(odd) + "\n")
    convs, _ = read_conversations(path)
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user speaks first') }}"
        "{% endif %}" + DEFAULT_TEMPLATE,
        origin="t.jinja",
    )
    tok = load_tokenizer(base_run / "tokenizer")
    with pytest.raises(DataError, match=r"chat.jsonl:2: t.jinja: .*user speaks first"):
        encode_examples(tok, template, convs, max_len=96)


def test_padding_and_target_shares_are_of_all_positions(base_run, tmp_path):
    from lmforge.tokenizer.tokenizer import load_tokenizer

    path, _ = _short_alpaca(tmp_path, 8)
    tok = load_tokenizer(base_run / "tokenizer")
    convs, _ = read_conversations(path)
    examples, _ = encode_examples(tok, ChatTemplate(DEFAULT_TEMPLATE), convs, max_len=96)
    cfg = SFTConfig(epochs=1, batch_size=8, packing=False, val_fraction=0, samples=0, device="cpu")
    result = finetune_sft(cfg, base_run, path, tmp_path / "sft", progress=False)
    # One step of every example, one per row, padded to the longest.
    assert result["steps"] == 1
    lengths = [len(e.ids) - 1 for e in examples]
    positions = len(examples) * max(lengths)
    assert result["padding_share"] == round(1 - sum(lengths) / positions, 3)
    targets = sum(sum(e.mask[1:]) for e in examples)
    assert result["target_share"] == round(targets / positions, 3)
    assert result["padding_share"] + result["target_share"] < 1  # the prompts are neither


def test_non_finite_loss_stops_before_the_weights_change(base_run, tmp_path, monkeypatch):
    from lmforge.finetune import sft

    seen = {}
    load_base, batch_loss = sft.load_base_model, sft.batch_loss

    def keep_model(*args, **kwargs):
        model, tok, config = load_base(*args, **kwargs)
        seen["model"], seen["before"] = model, trainable_state(model)
        return model, tok, config

    def nan_loss(*args):
        loss, n = batch_loss(*args)
        return loss * float("nan"), n

    monkeypatch.setattr(sft, "load_base_model", keep_model)
    monkeypatch.setattr(sft, "batch_loss", nan_loss)
    path, _ = _short_alpaca(tmp_path, 4)
    cfg = SFTConfig(epochs=1, batch_size=2, val_fraction=0, samples=0, device="cpu")
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        finetune_sft(cfg, base_run, path, tmp_path / "sft", progress=False)
    after = trainable_state(seen["model"])
    assert all(torch.equal(after[name], value) for name, value in seen["before"].items())


def test_best_state_copies_and_restores_only_what_trains():
    from lmforge.finetune.lora import LoRAConfig, apply_lora

    model = GPT(GPTConfig(vocab_size=50, n_layers=2, n_heads=2, d_model=32, max_seq_len=16))
    apply_lora(model, LoRAConfig(targets=["q_proj"], rank=2))
    state = trainable_state(model)
    # The adapters of both layers, not the frozen base weights they adapt.
    assert sorted(state) == [f"blocks.{i}.attn.q_proj.lora_{ab}" for i in (0, 1) for ab in "ab"]
    frozen = model.blocks[0].attn.q_proj.base.weight.detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    restore_trainable(model, state)
    assert all(torch.equal(p, state[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert torch.equal(model.blocks[0].attn.q_proj.base.weight, frozen)


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
