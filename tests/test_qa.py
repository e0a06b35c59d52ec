"""Extractive QA: SQuAD reading and its errors, windowed features, scoring, and a tiny model
that learns to point at answers."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from conftest import shared
from lmforge.cli import main
from lmforge.data.document import DataError
from lmforge.finetune import squad
from lmforge.finetune.qa import QAConfig, finetune_qa, load_qa
from lmforge.model import WrongFamilyError
from lmforge.model.encoder import Encoder, EncoderConfig
from lmforge.tokenizer.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer_from_texts
from lmforge.train.checkpoint import save_checkpoint


def wordpiece(texts: list[str], out: Path, vocab_size: int = 2000) -> Tokenizer:
    cfg = TokenizerConfig(kind="wordpiece", vocab_size=vocab_size, lowercase=True)
    return train_tokenizer_from_texts(texts, out, cfg, progress=False)


def encoder_run(root: Path, texts: list[str], **model) -> Path:
    """A run directory holding an untrained tiny encoder and a wordpiece vocabulary."""
    tok = wordpiece(texts, root / "tokenizer", vocab_size=300)
    model = {"n_layers": 1, "d_model": 32, **model}
    cfg = EncoderConfig(vocab_size=tok.vocab_size, n_heads=2, max_seq_len=64, **model)
    torch.manual_seed(0)
    config = {
        "model": asdict(cfg),
        "tokenizer": {"kind": tok.kind, "fingerprint": tok.fingerprint},
    }
    save_checkpoint(root, step=1, model=Encoder(cfg), config=config, is_best=True)
    return root


@pytest.mark.parametrize(
    ("name", "questions", "unaligned", "lost_count"),
    [("squad-v2/small.json", 626, 0, 0), ("xquad/xquad.en.json", 1190, 1, 1)],
)
def test_features_map_every_answer_back_to_its_text(
    tmp_path, name, questions, unaligned, lost_count
):
    path = shared(f"qa/{name}")
    qs = squad.read_squad(path)
    assert len(qs) == questions
    tok = wordpiece(list(dict.fromkeys(q.context for q in qs)), tmp_path / "tok")
    # Short windows, so that most contexts are cut into several overlapping ones.
    feats, counts = squad.build_features(qs, tok, max_len=96, doc_stride=24, max_query_len=24)
    assert counts["windows"] == len(feats) > 2 * len(qs)
    assert counts["answers_not_token_aligned"] == unaligned
    found: dict[int, str] = {}
    for f in feats:
        q = qs[f.question]
        assert f.ids[0] == tok.cls_id and f.ids[-1] == tok.sep_id and len(f.ids) <= 96
        assert f.types[0] == 0 and f.types[-1] == 1 and len(f.types) == len(f.ids)
        if f.start:  # the window holds the whole answer: its tokens spell the answer
            a, b = f.offsets[f.start][0], f.offsets[f.end][1]
            found[f.question] = q.context[a:b]
        elif q.answerable:  # pointed at [CLS]: the answer is not wholly inside this window
            s = q.starts[0]
            inside = [o for o in f.offsets if o is not None]
            assert not (inside[0][0] <= s and q.starts[0] + len(q.answers[0]) <= inside[-1][1])
    answerable = [i for i, q in enumerate(qs) if q.answerable]
    # An answer longer than the overlap can straddle every window boundary; any other is found.
    lost = [i for i in answerable if i not in found]
    assert len(lost) == lost_count
    assert all(len(tok.encode(qs[i].answers[0])) > 24 for i in lost)
    exact = sum(found[i] == qs[i].answers[0] for i in found)
    assert exact == len(found) - unaligned
    for i in found:  # the unaligned ones are covered by whole tokens around them
        assert qs[i].answers[0] in found[i]


def write_squad(path: Path, qas: list[dict], context: str = "Paris is in France.") -> Path:
    doc = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context,
                                                                      "qas": qas}]}]}  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def test_malformed_records_name_the_file_and_question(tmp_path):
    ok = {"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]}
    assert squad.read_squad(write_squad(tmp_path / "ok.json", [ok]))[0].answers == ("France",)
    cases = [
        ([{**ok, "answers": [{"text": "France", "answer_start": 3}]}], "q1: answer_start 3"),
        ([{**ok, "is_impossible": True}], "question id q1 is marked is_impossible"),
        ([{**ok, "answers": []}], "question id q1 has no answers"),
        ([ok, ok], "question id q1 occurs twice"),
        ([{"id": "q9", "answers": []}], "question id q9 has no 'question'"),
    ]  # fmt: skip
    for qas, message in cases:
        path = write_squad(tmp_path / "bad.json", qas)
        with pytest.raises(DataError, match=message) as e:
            squad.read_squad(path)
        assert str(path) in str(e.value)
    (tmp_path / "broken.json").write_text('{"data": [\n')
    with pytest.raises(DataError, match=r"broken.json:2: not valid JSON"):
        squad.read_squad(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(DataError, match="no 'data' field; is this SQuAD-format JSON"):
        squad.read_squad(tmp_path / "other.json")


def test_scores_on_hand_checked_cases():
    assert squad.qa_scores("The Eiffel Tower!", ["eiffel tower"]) == (100.0, 100.0)
    em, f1 = squad.qa_scores("Paris France", ["Paris", "Lyon"])  # P 1/2, R 1 -> F1 2/3
    assert em == 0.0 and f1 == pytest.approx(200 / 3)
    assert squad.qa_scores("", []) == (100.0, 100.0)  # v2: no answer, rightly
    assert squad.qa_scores("Paris", []) == (0.0, 0.0)
    assert squad.qa_scores("", ["Paris"]) == (0.0, 0.0)
    assert squad.qa_scores("", ["the"]) == (100.0, 100.0)  # a reference that normalizes away
    q = [
        squad.Question("a", "?", "c", ("Paris",), (0,), "-"),
        squad.Question("b", "?", "c", (), (), "-"),
    ]
    result = squad.score(q, ["Paris France", ""])
    assert result["exact_match"] == 50.0 and result["f1"] == pytest.approx((200 / 3 + 100) / 2)
    assert result["has_answer_questions"] == 1 and result["no_answer_f1"] == 100.0
    # Null minus span: 1.0 for the answerable one, 3.0 for the other; any t in [1, 3) answers
    # the first with its span and the second with "" (F1 both right).
    spans = [
        {"text": "Paris", "score": 2.0, "null_score": 3.0},
        {"text": "Lyon", "score": 1.0, "null_score": 4.0},
    ]
    t = squad.best_null_threshold(q, spans)
    assert 1.0 <= t < 3.0
    assert squad.predictions(spans, t) == ["Paris", ""]
    assert squad.predictions(spans, None) == ["Paris", "Lyon"]


def synthetic_squad(path: Path, n: int, seed: int) -> Path:
    """Contexts of filler words holding a number and a name (or not); the questions ask for
    one of them, and are unanswerable when the context lacks it."""
    rng = random.Random(seed)
    filler = "the a of and river town old new north south was is in on".split()
    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    paragraphs = []
    for k in range(n):
        words = [rng.choice(filler) for _ in range(rng.randint(8, 16))]
        has = {"number": rng.random() < 0.7, "person": rng.random() < 0.7}
        answer = {"number": str(rng.randint(10, 99)), "person": rng.choice(names)}
        for kind in has:
            if has[kind]:
                words.insert(rng.randrange(len(words) + 1), answer[kind])
        context = " ".join(words)
        qas = []
        for kind in has:
            qa: dict = {"id": f"{seed}-{k}-{kind}", "question": f"what is the {kind} ?"}
            if has[kind]:
                at = f" {context} ".index(f" {answer[kind]} ")
                qa["answers"] = [{"text": answer[kind], "answer_start": at}]
            else:
                qa |= {"answers": [], "is_impossible": True}
            qas.append(qa)
        paragraphs.append({"context": context, "qas": qas})
    doc = {"version": "v2.0", "data": [{"title": "synthetic", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow
def test_tiny_encoder_learns_to_point_at_answers(tmp_path, capsys):
    train = synthetic_squad(tmp_path / "train.json", 100, seed=0)
    test = synthetic_squad(tmp_path / "test.json", 20, seed=1)
    texts = [p["context"] for p in json.loads(train.read_text())["data"][0]["paragraphs"]]
    run = encoder_run(tmp_path / "run", [*texts, "what is the number ? what is the person ?"])
    cfg = QAConfig(epochs=20, batch_size=16, lr=3e-3, head_lr=3e-3, evals_per_epoch=1)
    result = finetune_qa(cfg, run, train, tmp_path / "qa", test_file=test, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "qa" / "metrics.jsonl").open()]
    assert sum(losses[-5:]) < 0.2 * sum(losses[:5]), (losses[:5], losses[-5:])  # 3.2 -> 0.1
    assert result["null_answers"] is True
    test_m = result["test"]
    assert test_m["questions"] == 40 and test_m["no_answer_questions"] == 10
    assert test_m["f1"] > 85, test_m  # a constant answer scores at most 25; measured 98
    for name in ("model.safetensors", "qa.json", "eval.json", "report.md", "predictions-test.json"):
        assert (tmp_path / "qa" / name).exists(), name
    rows = json.loads((tmp_path / "qa" / "predictions-test.json").read_text())
    assert len(rows) == 40 and {"id", "prediction", "references", "f1"} <= set(rows[0])

    model = load_qa(tmp_path / "qa")  # the saved model answers alike
    questions = squad.read_squad(test)
    for q, row in zip(questions[:6], rows[:6]):
        assert model.answer(q.question, q.context)["answer"] == row["prediction"]
    q = next(q for q, row in zip(questions, rows) if row["prediction"])
    assert main(["qa", str(tmp_path / "qa"), "--context", q.context, "--question",
                 q.question]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == rows[questions.index(q)]["prediction"]


def test_scratch_and_bad_bases_are_explained(tmp_path, tiny_run, capsys):
    train = synthetic_squad(tmp_path / "train.json", 8, seed=0)
    cfg = QAConfig(epochs=1, batch_size=4, val_fraction=0.25, init="scratch")  # 2 paragraphs
    with pytest.raises(WrongFamilyError, match="finetune qa needs a bert model"):
        finetune_qa(cfg, tiny_run, train, tmp_path / "qa", progress=False)
    texts = [p["context"] for p in json.loads(train.read_text())["data"][0]["paragraphs"]]
    run = encoder_run(tmp_path / "run", texts)
    result = finetune_qa(cfg, run, train, tmp_path / "qa", progress=False)
    assert result["init"] == "scratch" and result["val"]["questions"] == 4
    code = main(["finetune", "qa", "--from", str(run), "--train", str(train),
                 "--out", str(tmp_path / "qa"), "--no-progress"])  # fmt: skip
    assert code == 2 and "already holds a QA model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="doc_stride and max_len must be >= 0, got -1"):
        QAConfig(doc_stride=-1)
