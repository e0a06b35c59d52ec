"""Multiple choice by generation: against a server without logprobs, and against `lmforge serve`.

The stub is a minimal OpenAI-shaped `/v1/completions` (httpx transport, no network) that
refuses logprobs or returns none, and answers each lettered prompt with a canned text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import serving
from lmforge.cli import main
from lmforge.eval.endpoint import EndpointLM, NoLogprobsError
from lmforge.eval.lm import LocalLM
from lmforge.eval.multiple_choice import MCItem, TaskError, evaluate_multiple_choice, read_answer
from lmforge.eval.report import record_eval
from lmforge.eval.tasks import TaskConfig, run_task
from lmforge.serve.app import ServeConfig, build_app

ITEMS = [
    MCItem(context="2 + 2 =", choices=["3", "4", "5"], gold=1, source="t:1"),
    MCItem(context="The sky is", choices=["blue", "green"], gold=0, source="t:2"),
    MCItem(context="Ice is", choices=["hot", "cold", "loud"], gold=1, source="t:3"),
    MCItem(context="Fire is", choices=["wet", "hot"], gold=1, source="t:4"),
]
# What the stub's "model" answers to each item's lettered prompt: a letter, a letter with
# punctuation, a choice's text, and something that names no choice.
ANSWERS = {
    "2 + 2 =": " B",
    "The sky is": " (A) because",
    "Ice is": " Cold, of course",
    "Fire is": " ?",
}


def stub(*, refuse: bool, log: list[dict]) -> EndpointLM:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        log.append(body)
        if body.get("logprobs") is not None and refuse:
            error = {"message": "logprobs are not supported", "type": "invalid_request_error"}
            return httpx.Response(400, json={"error": error})
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        for i, prompt in enumerate(prompts):
            if body.get("logprobs") is not None:
                text = prompt  # echoed, but with no logprobs
            else:
                last = prompt.split("\n\n")[-1]  # the item asked, after any few-shot examples
                text = next(a for ctx, a in ANSWERS.items() if last.startswith(ctx))
            choices.append({"text": text, "index": i, "logprobs": None, "finish_reason": "stop"})
        return httpx.Response(200, json={"id": "x", "object": "text_completion", "created": 0,
                                         "model": "m", "choices": choices})  # fmt: skip

    client = openai.OpenAI(
        base_url="http://stub/v1", api_key="x", max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )  # fmt: skip
    return EndpointLM("http://stub/v1", "m", client=client)


@pytest.mark.parametrize("refuse", [True, False], ids=["refuses-logprobs", "returns-none"])
def test_a_server_without_logprobs_is_asked_for_lettered_answers(refuse):
    log: list[dict] = []
    r = evaluate_multiple_choice(stub(refuse=refuse, log=log), ITEMS, num_fewshot=1)
    assert r["method"] == "generate" and "lettered" in r["method_detail"]
    assert r["method_reason"] == "fallback" and "log-probabilities" in r["fallback_cause"]
    assert [s["pred"] for s in r["samples"]] == [1, 0, 1, None]
    assert r["acc"] == 0.75 and r["unparsed"] == 1
    assert r["acc_norm"] is None and r["acc_bytes"] is None
    asked = [b for b in log if b.get("logprobs") is None]
    assert len(asked) == len(ITEMS)
    assert all(b["temperature"] == 0 and b["stop"] == ["\n"] for b in asked)
    prompt = asked[0]["prompt"]
    # One solved example in the same form, then the item with its choices lettered.
    shot, item = prompt.split("\n\n")
    assert item == "2 + 2 =\nA. 3\nB. 4\nC. 5\nAnswer:"
    assert shot.endswith(
        "Answer: " + "ABC"[next(i.gold for i in ITEMS if shot.startswith(i.context))]
    )
    # method="loglikelihood" never falls back: the server's refusal is the error.
    with pytest.raises(NoLogprobsError, match="log-probabilities"):
        evaluate_multiple_choice(stub(refuse=refuse, log=[]), ITEMS, method="loglikelihood")


def test_answers_are_read_as_letters_or_choice_text():
    choices = ["New York", "New York City", "Boston"]
    assert read_answer(" C", choices) == 2
    assert read_answer("(b) no", choices) is None  # letters are capitals, as they are shown
    assert read_answer("B.", choices) == 1
    assert read_answer(" new york city, of course", choices) == 1  # the longest that fits
    assert read_answer("The Boston", choices) == 2  # SQuAD normalization drops articles
    assert read_answer("D", choices) is None and read_answer("", choices) is None
    assert read_answer("(C)", choices) == 2 and read_answer("A: New York", choices) == 0
    assert read_answer("B) because", choices) == 1 and read_answer("C. Boston", choices) == 2

    # A capital that starts a sentence is no letter: the choice's text is matched first, and
    # a letter followed by a space alone names nothing.
    choices = ["a cat sleeps", "A man walks to the store", "the dog"]
    assert read_answer(" A man walks to the store", choices) == 1
    assert read_answer(" A: the dog", choices) == 2  # "A:" as in Q:/A:, then the choice
    assert read_answer(" A. cat sleeps", choices) == 0 and read_answer(" B man", choices) is None
    nine = [f"option {i}" for i in range(9)]
    assert read_answer("I think it is option 3", nine) is None
    assert read_answer("I", nine) == 8 and read_answer("I. option 3", nine) == 8


def test_more_choices_than_letters_are_refused_by_generation():
    many = MCItem(context="Pick", choices=[f"c{i}" for i in range(27)], gold=0, source="t:9")
    log: list[dict] = []
    with pytest.raises(TaskError, match=r"t:9: 27 choices.*A to Z, so at most 26.*loglikelihood"):
        evaluate_multiple_choice(stub(refuse=True, log=log), [ITEMS[0], many])
    with pytest.raises(TaskError, match="t:9: 27 choices"):  # as a few-shot example too
        evaluate_multiple_choice(stub(refuse=True, log=[]), ITEMS[:1], num_fewshot=1,
                                 fewshot_items=[many], method="generate")  # fmt: skip
    assert not [b for b in log if b.get("logprobs") is None]  # refused before asking


@pytest.fixture(scope="module")
def base_url(tiny_run: Path) -> Iterator[str]:
    app = build_app(tiny_run, ServeConfig(model_name="tiny", max_tokens_limit=64, device="cpu"))
    with serving(app) as url:
        yield url


def test_our_server_gives_logprobs_so_auto_scores_each_choice(base_url):
    r = evaluate_multiple_choice(EndpointLM(base_url), ITEMS[:2])
    assert r["method"] == "loglikelihood" and r["acc_norm"] is not None


def test_generation_method_against_our_server_equals_in_process(base_url, tiny_run, tmp_path):
    there = evaluate_multiple_choice(EndpointLM(base_url), ITEMS, method="generate")
    here = evaluate_multiple_choice(LocalLM.from_run(tiny_run, device="cpu"), ITEMS,
                                    method="generate")  # fmt: skip
    assert [s["generated"] for s in there["samples"]] == [s["generated"] for s in here["samples"]]
    assert there["acc"] == here["acc"] and there["unparsed"] == here["unparsed"]

    # Recorded with the method named, and printed by the CLI without the missing metrics.
    task = tmp_path / "t.jsonl"
    task.write_text("".join(
        json.dumps({"context": i.context, "choices": i.choices, "gold": i.gold}) + "\n"
        for i in ITEMS
    ))  # fmt: skip
    result, paths = run_task(tmp_path / "out", TaskConfig(task=str(task), mc_method="generate"),
                             endpoint=base_url, model="tiny")  # fmt: skip
    assert result["method"] == "generate" and result["method_reason"] == "requested"
    report = paths["markdown"].read_text()
    assert "- method: generation: choices lettered" in report and "acc_norm" not in report
    assert "| t-generate | multiple_choice | 4 | acc (generate) |" in report
    assert "- generation was requested (--mc-method generate)" in report


def test_eval_command_falls_back_and_says_so(tmp_path, capsys, monkeypatch):
    from lmforge.eval import tasks

    log: list[dict] = []
    monkeypatch.setattr(tasks, "open_lm", lambda target, **kw: (stub(refuse=True, log=log),
                                                                 Path(target)))  # fmt: skip
    task = tmp_path / "t.jsonl"
    task.write_text("".join(
        json.dumps({"context": i.context, "choices": i.choices, "gold": i.gold}) + "\n"
        for i in ITEMS
    ))  # fmt: skip
    # An earlier log-likelihood score of the same task, which the fallback must not replace.
    scored = {"kind": "multiple_choice", "n": 4, "method": "loglikelihood", "acc": 0.5}
    record_eval(tmp_path / "out", "t", scored, model={"kind": "endpoint"})
    code = main(["eval", str(tmp_path / "out"), "--task", str(task), "--endpoint", "http://stub",
                 "--model", "m", "--no-progress"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("t-generate (4 items, 0-shot): acc 0.7500") and "acc_norm" not in out
    assert "scored by generation: choices lettered" in out and "1 answers named no choice" in out
    results = json.loads((tmp_path / "out" / "eval.json").read_text())["results"]
    assert results["t"]["method"] == "loglikelihood" and results["t"]["acc"] == 0.5
    entry = results["t-generate"]
    assert entry["method"] == "generate" and entry["unparsed"] == 1
    assert entry["method_reason"] == "fallback" and "log-probabilities" in entry["fallback_cause"]
    report = (tmp_path / "out" / "eval.md").read_text()
    assert "| t | multiple_choice | 4 | acc | 0.5000 |" in report
    assert "| t-generate | multiple_choice | 4 | acc (generate) | 0.7500 |" in report
    assert "- generation was the fallback of --mc-method auto: multiple-choice scoring" in report
    assert (tmp_path / "out" / "eval-samples" / "t-generate.jsonl").is_file()
