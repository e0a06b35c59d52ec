"""Text classification on an encoder body: [CLS] pooling, padding masked, the whole path."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmforge.cli import main
from lmforge.config import ConfigError
from lmforge.finetune.classify import (
    ClassifyConfig,
    SequenceClassifier,
    _batch,
    encode_texts,
    finetune_classifier,
    load_classifier,
)
from lmforge.model.encoder import Encoder, EncoderConfig
from lmforge.tokenizer.tokenizer import load_tokenizer
from test_qa import encoder_run

WORDS = "the a film was is of and story actor plot scene music".split()


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Filler words with one cue word; the cue decides the label."""
    rng = random.Random(seed)
    cues = {"pos": ["great", "fine", "superb"], "neg": ["awful", "dull", "poor"]}
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(cues[label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(vocab_size=50, n_layers=1, n_heads=2, d_model=32, max_seq_len=32)
    return Encoder(cfg)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_padding_never_changes_an_encoder_prediction(pool):
    model = SequenceClassifier(tiny_encoder(), num_classes=3, pool=pool).eval()
    short, long = [2, 7, 8, 3], [2, 9, 10, 11, 12, 13, 3]
    ids, lengths = _batch([short, long], pad_id=0, device=torch.device("cpu"))
    together = model(ids, lengths)
    alone = model(torch.tensor([short]), torch.tensor([4]))
    torch.testing.assert_close(together[0], alone[0])
    h = model.body.hidden_states(torch.tensor([short]))  # (1, T, C)
    pooled = h[0, 0] if pool == "cls" else h[0].mean(0)
    torch.testing.assert_close(alone[0], model.head(pooled))


def test_encoder_inputs_and_pools(tmp_path):
    run = encoder_run(tmp_path / "run", [r["text"] for r in sentiment_rows(50, 0)])
    tok = load_tokenizer(run / "tokenizer")
    [seq] = encode_texts(tok, [" ".join(WORDS * 3)], 10, encoder=True)
    assert len(seq) == 10 and seq[0] == tok.cls_id and seq[-1] == tok.sep_id
    assert seq[1:-1] == tok.encode(" ".join(WORDS * 3))[:8]
    assert SequenceClassifier(tiny_encoder(), 2, "auto").pool == "cls"
    with pytest.raises(ConfigError, match="pool='last' does not fit an encoder"):
        SequenceClassifier(tiny_encoder(), 2, "last")


@pytest.mark.slow
def test_encoder_classifier_loss_falls_and_it_learns(tmp_path, capsys):
    rows = sentiment_rows(400, 0)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = encoder_run(tmp_path / "run", [r["text"] for r in rows])
    cfg = ClassifyConfig(test_fraction=0.2, epochs=3, batch_size=16, lr=3e-3, head_lr=3e-3)
    result = finetune_classifier(cfg, run, data, tmp_path / "cls", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "cls" / "metrics.jsonl").open()]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), (losses[:5], losses[-5:])
    assert result["test"]["accuracy"] > 0.9, result["test"]  # chance is 0.5
    meta = json.loads((tmp_path / "cls" / "classifier.json").read_text())
    assert meta["pool"] == "cls" and meta["model"]["family"] == "bert"

    clf = load_classifier(tmp_path / "cls")  # the saved classifier predicts alike
    texts = ["the film was superb", "the plot was dull and the music poor"]
    labels = [label for label, _ in clf.predict(texts)]
    assert labels == ["pos", "neg"]
    assert main(["classify", str(tmp_path / "cls"), *texts]) == 0
    printed = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == labels
