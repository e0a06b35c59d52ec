"""Task evaluation: likelihood scoring, multiple choice, generation, metrics, reports, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import SHARED_DATA
from lmforge.cli import main
from lmforge.eval.generation import GenerationTaskConfig, evaluate_generation, load_generation_items
from lmforge.eval.harness import generation_config, rolling_loglikelihood
from lmforge.eval.lm import Generated, LocalLM
from lmforge.eval.metrics import (
    bleu,
    chrf,
    exact_match,
    mean_stderr,
    normalize_answer,
    parse_metrics,
    rouge_scores,
    token_f1,
)
from lmforge.eval.multiple_choice import (
    MCItem,
    TaskError,
    evaluate_multiple_choice,
    fewshot_prefix,
    hellaswag_preprocess,
    load_mc_items,
)
from lmforge.eval.report import read_eval, record_eval
from lmforge.eval.scoring import encode_pair, score_pairs, sequence_logprobs, split_pair
from lmforge.infer.generate import GenerationConfig, complete
from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer

HELLASWAG = SHARED_DATA / "hellaswag-sample" / "hellaswag.jsonl"
XQUAD = SHARED_DATA / "qa" / "xquad" / "xquad.en.json"
SQUAD2 = SHARED_DATA / "qa" / "squad-v2" / "small.json"
CNN = SHARED_DATA / "summarization" / "cnn_dailymail" / "test.jsonl"
needs_data = pytest.mark.skipif(not HELLASWAG.exists(), reason="../shared/data is not present")


@pytest.fixture(scope="module")
def local(tiny_run) -> LocalLM:
    return LocalLM.from_run(tiny_run, device="cpu")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------- scoring, checked by hand


class Bigram(nn.Module):
    """Logits at each position depend only on the token there: log-probs known in closed form."""

    def __init__(self, table: torch.Tensor, max_seq_len: int) -> None:
        super().__init__()
        self.table = nn.Parameter(table)
        self.config = type("Cfg", (), {"max_seq_len": max_seq_len})()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]  # (B, T, V)


@pytest.fixture(scope="module")
def byte_tok():
    return train_tokenizer([], TokenizerConfig(kind="byte"))


def test_loglik_equals_the_hand_computed_value(byte_tok):
    V = byte_tok.vocab_size
    # A uniform model: every token costs log V, so a continuation of n bytes scores -n log V.
    uniform = Bigram(torch.zeros(V, V), max_seq_len=16)
    (s,) = score_pairs(uniform, byte_tok, [("Answer: ", "Paris")])
    assert s.tokens == len(" Paris")  # the context's trailing space moved onto the continuation
    assert s.logprob == pytest.approx(-6 * math.log(V), abs=1e-5)  # fp32 log-softmax
    # A model that predicts "a" after "b" with probability p: the score is that log p.
    table = torch.zeros(V, V)
    a, b = byte_tok.encode("a")[0], byte_tok.encode("b")[0]
    table[b, a] = 5.0
    p = math.exp(5.0) / (math.exp(5.0) + V - 1)
    model = Bigram(table, max_seq_len=16)
    good, bad = score_pairs(model, byte_tok, [("b", "a"), ("b", "c")])
    assert good.logprob == pytest.approx(math.log(p), abs=1e-6) and good.is_greedy
    assert bad.logprob == pytest.approx(math.log((1 - p) / (V - 1)), abs=1e-6)
    assert not bad.is_greedy
    # A continuation longer than the window is scored in rolling windows: each token once.
    long = "b" + "ab" * 20  # 41 bytes, window 16
    (s,) = score_pairs(model, byte_tok, [("x", long)])
    after_b = {"a": math.log(p)}  # after "b": "a" is likely, the rest share 1 - p
    want = sum(
        after_b.get(nxt, math.log((1 - p) / (V - 1))) if prev == "b" else -math.log(V)
        for prev, nxt in zip("x" + long, long)
    )
    assert s.tokens == 41 and s.truncated and s.logprob == pytest.approx(want, abs=1e-4)


def test_loglik_matches_a_direct_forward_pass(local):
    model, tok = local.model, local.tokenizer
    ctx_ids, cont_ids = encode_pair(tok, "ROMEO: ", "What light")
    assert split_pair("ROMEO: ", "What light") == ("ROMEO:", " What light")
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]), dim=-1)[0]
    want = sum(float(logp[len(ctx_ids) - 1 + j, t]) for j, t in enumerate(cont_ids))
    (got,) = local.loglikelihood([("ROMEO: ", "What light")])
    assert got.logprob == pytest.approx(want, abs=1e-5) and not got.truncated
    # Too long a context keeps its last max_seq_len + 1 tokens (the harness's truncation).
    long_ctx = "KING HENRY:" * 10
    ctx_ids, cont_ids = encode_pair(tok, long_ctx, " Ay")
    seq = torch.tensor([(ctx_ids + cont_ids)[-65:]])
    with torch.no_grad():
        logp = torch.log_softmax(model(seq[:, :-1]), dim=-1)[0]
    want = sum(float(logp[-3 + j, t]) for j, t in enumerate(cont_ids))
    (got,) = local.loglikelihood([(long_ctx, " Ay")])
    assert got.truncated and got.logprob == pytest.approx(want, abs=1e-5)
    # Per-token log-probs (the server's `logprobs`) agree with the same forward pass.
    scored = sequence_logprobs(model, ctx_ids[:10], top=2)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx_ids[:9]])), dim=-1)[0]
    assert scored.logprobs[0] is None
    assert scored.logprobs[1:] == pytest.approx([float(logp[i, t]) for i, t in
                                                 enumerate(ctx_ids[1:10])], abs=1e-5)  # fmt: skip
    assert scored.top[3][0][0] == int(logp[2].argmax())


def test_rolling_loglikelihood_and_harness_generation_settings(local):
    text = "ROMEO: But soft"
    ids = [local.tokenizer.eos_id, *local.tokenizer.encode(text)]
    with torch.no_grad():
        logp = torch.log_softmax(local.model(torch.tensor([ids[:-1]])), dim=-1)[0]
    want = sum(float(logp[i, t]) for i, t in enumerate(ids[1:]))
    assert rolling_loglikelihood(local, text) == pytest.approx(want, abs=1e-4)
    cfg = generation_config({"until": ["\n\n", "Q:"], "max_gen_toks": 7, "do_sample": False})
    assert cfg.stop == ("\n\n", "Q:") and cfg.max_new_tokens == 7 and cfg.temperature == 0
    assert (
        generation_config({"until": "x", "do_sample": True, "temperature": 0.5}).temperature == 0.5
    )


def test_harness_adapter_says_how_to_install_lm_eval(local):
    from lmforge.eval.harness import LMForgeLM

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'lmforge\[harness\]'"):
            LMForgeLM(local=local)
        return
    lm = LMForgeLM(local=local)  # with lm-eval installed: requests as the harness sends them
    request = type("Instance", (), {"args": ("ROMEO: ", "What light")})()
    ((logprob, _),) = lm.loglikelihood([request], disable_tqdm=True)
    assert logprob == pytest.approx(local.loglikelihood([("ROMEO: ", "What light")])[0].logprob)


# ---------------------------------------------------------------- multiple choice


@needs_data
def test_hellaswag_sample_is_read_as_the_harness_reads_it():
    items, fmt = load_mc_items(HELLASWAG)
    assert fmt == "hellaswag" and len(items) == 1000
    assert [sum(i.gold == g for i in items) for g in range(4)] == [267, 228, 266, 239]
    assert all(len(i.choices) == 4 and "[" not in i.context for i in items)
    wikihow = items[3]  # a WikiHow row: [header]/[title]/[step] markup
    assert wikihow.context.startswith(
        "Sports and Fitness: How to bowl the leg spinner's variations. To bowl a googly,"
    )
    raw = json.loads(HELLASWAG.read_text().splitlines()[3])["endings"][0]
    assert hellaswag_preprocess(raw) == (
        " If you're outside, the batsman only looks at the batsman as they dribble.. If "
        "you're inside, the batsman lets you line up the batsman with you."
    )


@needs_data
def test_hellaswag_batched_equals_one_at_a_time(local, tmp_path):
    items, _ = load_mc_items(HELLASWAG, limit=50)
    one = evaluate_multiple_choice(local, items, batch_size=1)
    many = evaluate_multiple_choice(local, items, batch_size=16)
    for a, b in zip(one["samples"], many["samples"]):
        # Padded and unpadded rows run different matmul blockings: equal to float32
        # rounding of a sum of per-token log-probs, and the predictions exactly.
        assert a["loglik"] == pytest.approx(b["loglik"], rel=1e-7, abs=1e-6)
        assert a["pred"] == b["pred"] and a["pred_norm"] == b["pred_norm"]
    for key in ("acc", "acc_norm", "acc_bytes"):
        assert one[key] == many[key] and 0.0 <= one[key] <= 1.0
        assert one[f"{key}_stderr"] == pytest.approx(
            math.sqrt(one[key] * (1 - one[key]) / 49), abs=1e-12
        )
    assert one["n"] == 50 and one["chance"] == 0.25
    # Char-level contexts of 100+ characters do not fit the 64-token window: all are cut.
    assert one["truncated"] == 50
    assert all(s["tokens"] == [len(c) + 1 for c in it.choices]
               for s, it in zip(one["samples"], items))  # fmt: skip
    # Cut short, the rows fit the window with room to spare and differ in length, so batches
    # are padded: padding must not change a score.
    short = [MCItem(context=it.context[-(10 + k % 25):], choices=[c[:20] for c in it.choices],
                    gold=it.gold, source=it.source) for k, it in enumerate(items)]  # fmt: skip
    one = evaluate_multiple_choice(local, short, batch_size=1)
    many = evaluate_multiple_choice(local, short, batch_size=16)
    assert one["truncated"] == 0 and len({s["context_chars"] for s in one["samples"]}) == 25
    for a, b in zip(one["samples"], many["samples"]):
        # Padded and unpadded rows run different matmul blockings: equal to float32
        # rounding of a sum of per-token log-probs, and the predictions exactly.
        assert a["loglik"] == pytest.approx(b["loglik"], rel=1e-7, abs=1e-6)
    assert (one["acc"], one["acc_norm"]) == (many["acc"], many["acc_norm"])


def test_a_trained_model_prefers_the_letters_it_was_trained_on(local):
    # Twenty steps on Shakespeare teach letter frequencies: English beats rare letters.
    items = [
        MCItem(context="ROMEO:", choices=["QXZ", "the"], gold=1, source="t:1"),
        MCItem(context="And", choices=["the", "xqj"], gold=0, source="t:2"),
        MCItem(context="I will", choices=["zq", "go"], gold=1, source="t:3"),
    ]
    result = evaluate_multiple_choice(local, items)
    assert result["acc"] == 1.0 and result["acc_norm"] == 1.0


def test_piqa_arc_and_plain_records(tmp_path):
    record = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}
    piqa = write_jsonl(tmp_path / "piqa.jsonl", [record])
    (item,), fmt = load_mc_items(piqa)
    assert fmt == "piqa" and item.context == "Question: Open a jar\nAnswer:"
    assert item.choices == ["twist the lid", "eat the lid"] and item.gold == 0
    arc = write_jsonl(tmp_path / "arc.jsonl", [
        {"question": "2+2?", "choices": {"text": ["3", "4"], "label": ["A", "B"]},
         "answerKey": "B"},
        {"question": {"stem": "1+1?", "choices": [{"text": "2", "label": "1"},
                                                  {"text": "5", "label": "2"}]},
         "answerKey": "1"},
    ])  # fmt: skip
    items, fmt = load_mc_items(arc)
    assert fmt == "arc" and [i.gold for i in items] == [1, 0]
    as_array = tmp_path / "arc.json"  # a JSON array reads the same as JSONL
    as_array.write_text(json.dumps([json.loads(line) for line in arc.read_text().splitlines()]))
    assert [i.context for i in load_mc_items(as_array)[0]] == [i.context for i in items]
    assert load_mc_items(as_array)[0][1].source.endswith("arc.json[1]")
    assert items[1].context == "Question: 1+1?\nAnswer:" and items[1].choices == ["2", "5"]
    plain = write_jsonl(tmp_path / "t.jsonl", [{"context": "a", "choices": ["b", "c"], "gold": 1}])
    assert load_mc_items(plain)[1] == "mc"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"context": "a", "choices": ["b", "c"], "gold": 2}, "gold is 2"),
        ({"context": "a", "choices": ["b"], "gold": 0}, "at least 2"),
        ({"context": "a", "choices": ["b", 3], "gold": 0}, "must be strings"),
        ({"text": "what?"}, "cannot tell the task format"),
        (
            {
                "question": "q",
                "choices": {"text": ["x", "y"], "label": ["A", "B"]},
                "answerKey": "C",
            },
            "answerKey 'C'",
        ),  # fmt: skip
    ],
)
def test_bad_items_name_the_file_and_line(tmp_path, record, message):
    good = {"context": "a", "choices": ["b", "c"], "gold": 0}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record] if "context" in record else [record])
    line = 2 if "context" in record else 1
    with pytest.raises(TaskError, match=message) as e:
        load_mc_items(path)
    assert f"bad.jsonl:{line}" in str(e.value)


def test_fewshot_draws_are_deterministic_and_leave_the_item_out():
    pool = [
        MCItem(context=f"q{i}", choices=["x", "y"], gold=i % 2, source=f"t.jsonl:{i + 1}")
        for i in range(9)
    ]
    # The item as read again from the same file (as the task is when it is its own pool):
    # another object, the same file and line.
    item = MCItem(context="q3", choices=["x", "y"], gold=1, source="t.jsonl:4")
    a = fewshot_prefix(3, 4, pool, seed=1, exclude=item)
    assert a == fewshot_prefix(3, 4, pool, seed=1, exclude=pool[3])
    assert a != fewshot_prefix(3, 4, pool, seed=2, exclude=pool[3])
    shots = a.split("\n\n")[:-1]
    assert len(shots) == 4 and "q3 y" not in shots and a.endswith("\n\n")
    assert all(s in {f"q{i} {'xy'[i % 2]}" for i in range(9)} for s in shots)
    with pytest.raises(TaskError, match="only 8 are available"):
        fewshot_prefix(0, 9, pool, seed=1, exclude=pool[0])


def test_limit_never_changes_an_items_few_shot_prompt(local, tmp_path):
    from lmforge.eval.tasks import TaskConfig, evaluate_task

    records = [{"context": f"q{i}:", "choices": [" a", " b"], "gold": i % 2} for i in range(12)]
    task = write_jsonl(tmp_path / "t.jsonl", records)
    full = evaluate_task(local, TaskConfig(task=task, num_fewshot=3))
    first = evaluate_task(local, TaskConfig(task=task, num_fewshot=3, limit=4))
    assert first["samples"] == full["samples"][:4]  # same shots, same prompts, same scores


# ---------------------------------------------------------------- metrics, checked by hand


def test_squad_exact_match_and_f1():
    assert normalize_answer("The  Cat's, hat!") == "cats hat"
    assert exact_match("Paris.", ["paris"]) == 100.0
    assert exact_match("in Paris", ["Paris", "Lyon"]) == 0.0
    # pred {cat, sat}, ref {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(80.0)
    assert token_f1("dog", ["a cat sat down", "dog"]) == 100.0  # the best reference counts
    assert token_f1("the", ["a"]) == 0.0  # both normalize to nothing in common


def test_bleu_chrf_and_rouge():
    same = bleu(["the cat sat on the mat"], [["the cat sat on the mat"]])
    assert same["bleu"] == pytest.approx(100.0)
    assert same["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert bleu(["xyz uvw"], [["the cat sat on the mat"]])["bleu"] == 0.0
    assert chrf(["the cat"], [["the cat"]])["chrf"] == pytest.approx(100.0)
    two_refs = bleu(["a b c d", "e f g h"], [["a b c d"], ["x", "e f g h"]])
    assert two_refs["bleu"] == pytest.approx(100.0) and "nrefs:var" in two_refs["bleu_signature"]
    r = rouge_scores("the cat sat on the mat", ["the cat was on the mat"])
    # unigrams: 5 of 6 shared; bigrams: "the cat", "on the", "the mat" of 5; LCS: 5 of 6
    assert r["rouge1"] == pytest.approx(500 / 6)
    assert r["rouge2"] == pytest.approx(60.0)
    assert r["rougeL"] == pytest.approx(500 / 6)
    assert rouge_scores("cats", ["cat"])["rouge1"] == 100.0  # Porter stemming
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == (0.5, pytest.approx(math.sqrt(1 / 3 / 4)))
    with pytest.raises(ValueError, match="unknown metric 'blue'"):
        parse_metrics("bleu,blue")


# ---------------------------------------------------------------- generation tasks


class Canned:
    """An EvalLM that answers with fixed texts, to check the scoring path by hand."""

    def __init__(self, texts):
        self.texts, self.prompts = texts, []

    def generate(self, prompts, cfg, *, progress=False):
        self.prompts += prompts
        return [Generated(text=t, finish_reason="stop") for t in self.texts]


def test_generation_task_prompts_decodes_and_scores(local, tmp_path):
    cfg = GenerationTaskConfig(template="Q: {{ q }}{% if hint %} ({{ hint }}){% endif %}\nA:")
    path = write_jsonl(tmp_path / "qa.jsonl", [
        {"q": "capital of France?", "hint": "", "answers": ["paris"]},
        {"q": "largest city in Rhone?", "hint": "a city", "answers": ["Lyon", "Lyons"]},
        {"q": "unanswerable?", "hint": "", "answers": []},  # no reference: skipped, counted
    ])  # fmt: skip
    items, info = load_generation_items(path, cfg)
    assert len(items) == 2 and info["skipped"] == 1 and info["reference_field"] == "answers"
    assert [i.prompt for i in items] == [
        "Q: capital of France?\nA:", "Q: largest city in Rhone? (a city)\nA:"]  # fmt: skip
    canned = Canned([" Paris.\n", "in Lyon"])
    result = evaluate_generation(canned, items, cfg)
    # "in lyon" vs "lyon": P = 1/2, R = 1, F1 = 2/3
    assert [s["exact_match"] for s in result["samples"]] == [100.0, 0.0]
    assert [s["f1"] for s in result["samples"]] == pytest.approx([100.0, 200 / 3])
    assert result["exact_match"] == 50.0 and result["f1"] == pytest.approx(250 / 3)
    # Few-shot: solved examples (prompt + " " + first reference) before the prompt.
    canned = Canned(["x", "y"])
    evaluate_generation(canned, items, GenerationTaskConfig(template=cfg.template, num_fewshot=1))
    assert canned.prompts[0] == items[1].prompt + " Lyon\n\n" + items[0].prompt
    # The checkpoint writes what `complete` writes for the same settings.
    result = evaluate_generation(local, items, GenerationTaskConfig(max_new_tokens=6))
    want = complete(local.model, local.tokenizer, items[0].prompt,
                    GenerationConfig(max_new_tokens=6, temperature=0, stop=("\n\n",)))  # fmt: skip
    assert result["samples"][0]["prediction"] == want.text.strip()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"q": "a", "answer": "x"}, {"answer": "y"}])
    with pytest.raises(TaskError, match=r"bad\.jsonl:2.*'q'"):
        load_generation_items(bad, GenerationTaskConfig(template="{{ q }}"))
    with pytest.raises(TaskError, match="does not parse"):
        load_generation_items(bad, GenerationTaskConfig(template="{{ q "))
    with pytest.raises(TaskError, match="no --template given"):
        load_generation_items(bad, GenerationTaskConfig())


@needs_data
def test_squad_and_summarization_files(local):
    items, info = load_generation_items(XQUAD, GenerationTaskConfig())
    assert len(items) == 1190 and info["skipped"] == 0
    first = json.loads(XQUAD.read_text())["data"][0]["paragraphs"][0]
    assert (
        items[0].prompt == f"{first['context']}\n\nQuestion: {first['qas'][0]['question']}\nAnswer:"
    )
    items, info = load_generation_items(SQUAD2, GenerationTaskConfig())
    assert len(items) == 293 and info["skipped"] == 333  # unanswerable questions: no reference
    assert max(len(i.references) for i in items) == 4
    cfg = GenerationTaskConfig(
        template="{{ article[:40] }}\n\nSummary:", metrics=("rouge", "bleu", "chrf"),
        max_new_tokens=8,
    )  # fmt: skip
    items, info = load_generation_items(CNN, cfg, limit=3)
    assert info["reference_field"] == "highlights"
    result = evaluate_generation(local, items, cfg)
    assert result["n"] == 3 and result["bleu_signature"].startswith("nrefs:1")
    for key in ("rouge1", "rouge2", "rougeL", "bleu", "chrf"):
        assert 0.0 <= result[key] <= 100.0


# ---------------------------------------------------------------- reports and the CLI


def test_results_merge_into_eval_json_by_task(tmp_path):
    model = {"kind": "checkpoint", "run": "r", "checkpoint": "step-1"}
    record_eval(tmp_path, "a", {"kind": "multiple_choice", "n": 2, "acc": 0.5,
                                "samples": [{"x": 1}, {"x": 2}]}, model=model)  # fmt: skip
    record_eval(tmp_path, "b", {"kind": "generation", "n": 1, "f1": 80.0}, model=model)
    record_eval(tmp_path, "a", {"kind": "multiple_choice", "n": 3, "acc": 1.0}, model=model)
    data = read_eval(tmp_path)
    assert sorted(data["results"]) == ["a", "b"] and data["results"]["a"]["n"] == 3
    assert (tmp_path / "eval-samples" / "a.jsonl").read_text().count("\n") == 2
    md = (tmp_path / "eval.md").read_text()
    assert "| a | multiple_choice | 3 | acc | 1.0000 |" in md and "| b | generation" in md
    # Lettered answers by generation go beside a log-likelihood score, never over it.
    by_generation = {"kind": "multiple_choice", "n": 3, "acc": 0.0, "method": "generate",
                     "method_reason": "requested", "samples": [{"x": 3}]}  # fmt: skip
    written = record_eval(tmp_path, "a", by_generation, model=model)
    data = read_eval(tmp_path)
    assert sorted(data["results"]) == ["a", "a-generate", "b"] and data["results"]["a"]["acc"] == 1
    assert written["samples"] == tmp_path / "eval-samples" / "a-generate.jsonl"
    md = (tmp_path / "eval.md").read_text()
    assert "| a-generate | multiple_choice | 3 | acc (generate) | 0.0000 |" in md
    assert "| a | multiple_choice | 3 | acc | 1.0000 |" in md
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match="eval.json is not valid JSON"):
        record_eval(tmp_path, "c", {"kind": "generation", "n": 1}, model=model)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@needs_data
def test_eval_command_writes_json_and_markdown_beside_the_checkpoint(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, out, err = run_cli(capsys, "eval", run, "--task", HELLASWAG, "--limit", "20",
                             "--no-progress", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 20 and result["format"] == "hellaswag" and 0 <= result["acc"] <= 1
    ckpt = next((run / "checkpoints").glob("step-*"))
    code, out, _ = run_cli(capsys, "eval", run, "--split", "test")
    assert code == 0 and "wrote" in out
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "ROMEO:", "answer": "hi"}])
    code, out, _ = run_cli(capsys, "eval", run, "--task", gen, "--metrics", "em,f1,rouge",
                           "--max-new-tokens", "5", "--no-progress")  # fmt: skip
    assert code == 0 and "exact_match" in out and "rougeL" in out
    data = json.loads((ckpt / "eval.json").read_text())
    assert sorted(data["results"]) == ["gen", "hellaswag", "split:test"]
    assert data["results"]["hellaswag"]["model"]["checkpoint"] == ckpt.name
    md = (ckpt / "eval.md").read_text()
    assert "| hellaswag | multiple_choice | 20 | acc_norm |" in md and "split:test" in md
    assert len((ckpt / "eval-samples" / "hellaswag.jsonl").read_text().splitlines()) == 20
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["b", "c"], "gold": 5}])
    code, _, err = run_cli(capsys, "eval", run, "--task", bad)
    assert code == 2 and "bad.jsonl:1" in err and "gold is 5" in err
    code, _, err = run_cli(capsys, "eval", run, "--task", gen, "--metrics", "bluerouge")
    assert code == 2 and "unknown metric" in err


def test_eval_help_explains_the_task_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    flags = "--task --format --num-fewshot --limit --batch-size --template --metrics "
    flags += "--max-new-tokens --endpoint --model --fewshot-from --reference-field --stop"
    for flag in flags.split():
        assert flag in out
