"""Fine-tuning: LoRA adapters (only they train, merge is exact), labelled-data reading and its
errors, and a classifier that learns a separable task from a pretrained run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import SHARED_DATA
from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.finetune import labeled
from lmforge.finetune.classify import (
    ClassifyConfig,
    SequenceClassifier,
    _batch,
    _splits,
    classification_metrics,
    finetune_classifier,
    load_classifier,
    pad_id,
)
from lmforge.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapters,
    merge_lora,
    save_adapters,
)
from lmforge.model.gpt import GPT, GPTConfig


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, n_layers=2, n_heads=2, d_model=32, max_seq_len=16))


def train_adapters(model: GPT, steps: int = 5) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x).view(-1, 50), x.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_lora_trains_only_adapters_and_merges_exactly(tmp_path):
    model = tiny_gpt()
    x = torch.randint(0, 50, (2, 16))
    before = model(x).detach()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = apply_lora(model, LoRAConfig(targets=["q_proj", "blocks.*.mlp.down_proj"], rank=4))
    assert wrapped == [
        "blocks.0.attn.q_proj",
        "blocks.0.mlp.down_proj",
        "blocks.1.attn.q_proj",
        "blocks.1.mlp.down_proj",
    ]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{ab}" for m in wrapped for ab in "ab"}
    assert torch.equal(model(x), before)  # B starts at zero: exactly the base model

    train_adapters(model)
    tuned = model(x).detach()
    assert not torch.allclose(tuned, before)
    for name, value in model.state_dict().items():  # the base weights never moved
        plain = name.replace(".base.", ".")
        if plain in base:
            assert torch.equal(value, base[plain]), name

    save_adapters(model, tmp_path / "adapters", LoRAConfig(targets=wrapped, rank=4))
    size = (tmp_path / "adapters" / "adapters.safetensors").stat().st_size
    assert size < sum(v.numel() * 4 for v in base.values()) / 5  # a small file

    reloaded = tiny_gpt()
    load_adapters(reloaded, tmp_path / "adapters")
    assert torch.equal(reloaded(x), tuned)

    assert merge_lora(model) == 4
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(base)  # plain Linear names again
    torch.testing.assert_close(model(x), tuned, atol=1e-5, rtol=1e-5)


def test_lora_never_wraps_a_tied_lm_head():
    model = tiny_gpt()  # tie_embeddings: lm_head.weight is tok_emb.weight
    wrapped = apply_lora(model, LoRAConfig(targets=["*"]))
    assert "lm_head" not in wrapped and len(wrapped) == 12  # 6 Linear layers in each block
    merge_lora(model)
    assert model.lm_head.weight is model.tok_emb.weight


def test_lora_pattern_that_matches_nothing_is_explained():
    with pytest.raises(ConfigError, match=r"\['query'\] match no Linear.*blocks.0.attn.q_proj"):
        apply_lora(tiny_gpt(), LoRAConfig(targets=["q_proj", "query"]))
    with pytest.raises(ValueError, match="rank must be positive"):
        LoRAConfig(rank=0)


def test_read_labeled_files_and_their_errors(tmp_path):
    sst = labeled.read_labeled(
        SHARED_DATA / "classification/sst2/test.tsv", text_field="sentence", label_field="label"
    )
    assert len(sst) == 872 and {e.label for e in sst} == {"0", "1"}
    agnews = labeled.read_labeled(
        SHARED_DATA / "classification/agnews/test.tsv",
        text_field="0",
        label_field="1",
        header=False,
    )
    assert len(agnews) == 7600
    assert {e.label for e in agnews} == {"World", "Sports", "Business", "Sci/Tech"}

    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,label\nhello,a\n".encode())
    assert labeled.read_labeled(bom) == [labeled.Example("hello", "a", f"{bom}:2")]
    with pytest.raises(DataError, match="no column 'text'.*columns are: sentence, label"):
        labeled.read_labeled(SHARED_DATA / "classification/sst2/test.tsv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no field 'label'"):
        labeled.read_labeled(bad)

    train = [labeled.Example("t", label, f"f:{i}") for i, label in enumerate("aab")]
    with pytest.raises(DataError, match=r"\['c'\] have no training examples"):
        labeled.label_set(train, ["a", "b", "c"])
    test = [labeled.Example("t", "a", "t:1"), labeled.Example("t", "z", "t:2")]
    with pytest.raises(DataError, match=r"test file has labels.*\{'z': 1\} \(first at t:2\)"):
        labeled.check_labels(test, ["a", "b"], "test")


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_padding_never_changes_a_prediction(pool):
    model = SequenceClassifier(tiny_gpt(), num_classes=3, pool=pool).eval()
    short, long = [5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]
    alone = model(torch.tensor([short]), torch.tensor([3]))
    ids, lengths = _batch([short, long], pad_id=0, device=torch.device("cpu"))
    together = model(ids, lengths)
    torch.testing.assert_close(together[0], alone[0], atol=1e-6, rtol=1e-5)
    if pool == "mean":  # the mean of the real positions' hidden states, by hand
        h = model.body.hidden_states(torch.tensor([short]))[0]
        torch.testing.assert_close(alone[0], model.head(h.mean(0)), atol=1e-6, rtol=1e-5)


def test_repeated_texts_never_straddle_a_held_out_split():
    sms = SHARED_DATA / "classification/sms-spam/SMSSpamCollection.tsv"
    cfg = ClassifyConfig(text_field="SMS", label_field="Label", test_fraction=0.2)
    labels, splits, audit = _splits(cfg, sms, None, None)
    assert labels == ["ham", "spam"]
    assert audit["train_repeats_removed"] >= 403  # 684 rows hold only 281 distinct texts
    assert audit["test_texts_also_in_train"] == audit["val_texts_also_in_train"] == 0
    sizes = sum(len(split) for split in splits.values())
    assert sizes == 5574 - audit["train_repeats_removed"]


def test_any_tokenizer_can_pad():
    class NoPad:
        pad_id, eos_id = None, 7

    assert pad_id(NoPad()) == 7
    NoPad.eos_id = None
    assert pad_id(NoPad()) == 0


def test_metrics_on_a_hand_checked_case():
    # gold: a a b b c ; pred: a b b b a
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_classifier_learns_a_separable_task(tmp_path, tiny_run, shakespeare_text, lora):
    lines = sorted({line for line in shakespeare_text.splitlines() if 15 < len(line) < 40})
    rng = random.Random(0)
    rows = []
    for line in rng.sample(lines, 600):  # a property of every character: robust to learn
        label = rng.choice(["upper", "lower"])
        rows.append({"text": line.upper() if label == "upper" else line.lower(), "label": label})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ClassifyConfig(
        test_fraction=0.2,
        epochs=3,
        batch_size=16,
        lr=1e-2 if lora else 5e-3,  # adapters start at zero and take a higher LR
        head_lr=5e-3,
        lora=LoRAConfig(targets=["q_proj", "v_proj", "o_proj"], rank=8) if lora else None,
    )
    result = finetune_classifier(cfg, tiny_run, data, tmp_path / "cls", progress=False)
    assert result["labels"] == ["lower", "upper"]
    assert result["test"]["examples"] == 120
    assert result["test"]["accuracy"] > 0.95, result["test"]  # chance is 0.5; measured 1.0
    for name in ("model.safetensors", "report.md", "confusion-test.png", "eval.json"):
        assert (tmp_path / "cls" / name).exists(), name
    assert (tmp_path / "cls" / "adapters.safetensors").exists() == lora
    assert result["data"]["train_repeats_removed"] == 0

    clf = load_classifier(tmp_path / "cls")  # the saved model (adapters merged) predicts alike
    predictions = clf.predict([r["text"] for r in rows])
    agree = sum(label == r["label"] for (label, _), r in zip(predictions, rows)) / len(rows)
    assert agree > 0.95
    if lora:  # the base run plus the small adapter file (which holds the head) rebuild it
        from lmforge.finetune.base import load_base_model

        body, _, _ = load_base_model(tiny_run, {"gpt"}, "test")
        rebuilt = SequenceClassifier(body, 2, "last")
        _, extra = load_adapters(body, tmp_path / "cls")
        rebuilt.load_state_dict(extra, strict=False)
        x, lengths = torch.tensor([[5, 6, 7, 8]]), torch.tensor([4])
        torch.testing.assert_close(rebuilt.eval()(x, lengths), clf.model(x, lengths))
