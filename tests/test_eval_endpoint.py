"""Evaluating over HTTP: the server's echo/logprobs, and endpoint scores equal in-process ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from conftest import serving
from lmforge.cli import main
from lmforge.eval.endpoint import EndpointError, EndpointLM
from lmforge.eval.generation import GenerationTaskConfig, evaluate_generation, load_generation_items
from lmforge.eval.lm import LocalLM
from lmforge.eval.multiple_choice import MCItem, evaluate_multiple_choice
from lmforge.serve.app import ServeConfig, build_app

MODEL = "tiny"


@pytest.fixture(scope="module")
def base_url(tiny_run: Path) -> Iterator[str]:
    """`lmforge serve` of the tiny run on a free local port, in a background thread."""
    app = build_app(tiny_run, ServeConfig(model_name=MODEL, max_tokens_limit=64, device="cpu"))
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def local(tiny_run: Path) -> LocalLM:
    return LocalLM.from_run(tiny_run, device="cpu")


def forward_logprobs(local: LocalLM, text: str) -> list[float]:
    ids = local.tokenizer.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(local.model(torch.tensor([ids[:-1]])), dim=-1)[0]
    return [float(logp[i, t]) for i, t in enumerate(ids[1:])]


def test_echo_with_logprobs_scores_the_prompt(client, local):
    prompt = "ROMEO: O, she doth"
    out = client.completions.create(
        model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=0, temperature=0
    )
    (choice,) = out.choices
    lp = choice.logprobs
    assert choice.text == prompt
    assert lp.tokens == list(prompt)  # a character tokenizer: one token per character
    assert lp.text_offset == list(range(len(prompt)))
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts it
    assert lp.token_logprobs[1:] == pytest.approx(forward_logprobs(local, prompt), abs=1e-4)
    assert all(len(top) == 2 and max(top.values()) >= v
               for top, v in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]))  # fmt: skip


def test_logprobs_of_a_greedy_completion(client, local):
    out = client.completions.create(
        model=MODEL, prompt="KING:", logprobs=1, max_tokens=6, temperature=0
    )
    (choice,) = out.choices
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == len(choice.text)
    assert lp.text_offset == [len("KING:") + i for i in range(len(choice.text))]
    # Greedy decoding picks the likeliest token: each token is its own top-1.
    assert all(list(top) == [tok] for top, tok in zip(lp.top_logprobs, lp.tokens))
    want = forward_logprobs(local, "KING:" + choice.text)[len("KING:") - 1 :]
    assert lp.token_logprobs == pytest.approx(want, abs=1e-4)


def test_logprobs_requests_are_validated(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="ROMEO:", logprobs=6, max_tokens=1)
    assert e.value.body["param"] == "logprobs" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="stream") as e:
        client.completions.create(
            model=MODEL, prompt="ROMEO:", logprobs=1, max_tokens=1, stream=True
        )
    assert e.value.body["param"] == "logprobs"


SHORT_TASK = [
    MCItem(context="ROMEO:", choices=["the", "QXZ", "my lord"], gold=0, source="t:1"),
    MCItem(context="KING HENRY: ", choices=["And", "xqj"], gold=0, source="t:2"),
    MCItem(context="I will", choices=["zq", "go", "speak"], gold=1, source="t:3"),
    MCItem(context="Nay,", choices=["good", "sir", "kkk"], gold=2, source="t:4"),
]


def test_endpoint_multiple_choice_equals_in_process(base_url, local):
    endpoint = EndpointLM(base_url)  # no /v1 and no model name: both are found
    assert endpoint.model == MODEL and endpoint.base_url.endswith("/v1")
    there = evaluate_multiple_choice(endpoint, SHORT_TASK, batch_size=3, num_fewshot=1)
    here = evaluate_multiple_choice(local, SHORT_TASK, batch_size=3, num_fewshot=1)
    for a, b in zip(there["samples"], here["samples"]):
        assert a["loglik"] == pytest.approx(b["loglik"], abs=1e-4)
        assert a["tokens"] == b["tokens"] and a["is_greedy"] == b["is_greedy"]
    for key in ("acc", "acc_norm", "acc_bytes"):
        assert there[key] == here[key]


def test_endpoint_generation_equals_in_process(base_url, local, tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": p, "answer": "my lord"}) + "\n" for p in ("ROMEO:", "Ay,"))
    )
    cfg = GenerationTaskConfig(max_new_tokens=8, metrics=("exact_match", "f1", "chrf"))
    items, _ = load_generation_items(path, cfg)
    there = evaluate_generation(EndpointLM(base_url, MODEL), items, cfg)
    here = evaluate_generation(local, items, cfg)
    assert [s["prediction"] for s in there["samples"]] == [s["prediction"] for s in here["samples"]]
    assert there["chrf"] == here["chrf"] and there["f1"] == here["f1"]


def canned_server(handler) -> EndpointLM:
    transport = httpx.MockTransport(handler)
    client = openai.OpenAI(
        base_url="http://fake/v1", api_key="x", max_retries=0,
        http_client=httpx.Client(transport=transport),
    )  # fmt: skip
    return EndpointLM("http://fake/v1", "m", client=client)


def test_a_server_without_prompt_logprobs_is_named(tmp_path):
    def no_logprobs(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        choices = [{"text": p, "index": i, "logprobs": None, "finish_reason": "length"}
                   for i, p in enumerate(body["prompt"])]  # fmt: skip
        return httpx.Response(200, json={"id": "x", "object": "text_completion", "created": 0,
                                         "model": "m", "choices": choices})  # fmt: skip

    # Without the generation fallback (tests/test_endpoint_fallback.py), the refusal is named.
    with pytest.raises(EndpointError, match="needs the server to return log-probabilities"):
        evaluate_multiple_choice(canned_server(no_logprobs), SHORT_TASK, method="loglikelihood")

    def refuses(request: httpx.Request) -> httpx.Response:
        error = {"message": "logprobs are not supported", "type": "invalid_request_error"}
        return httpx.Response(400, json={"error": error})

    with pytest.raises(EndpointError, match="echo=true with logprobs.*not supported"):
        evaluate_multiple_choice(canned_server(refuses), SHORT_TASK, method="loglikelihood")


def test_eval_command_against_an_endpoint(base_url, tmp_path, capsys):
    task = tmp_path / "short.jsonl"
    task.write_text("".join(
        json.dumps({"context": i.context, "choices": i.choices, "gold": i.gold}) + "\n"
        for i in SHORT_TASK
    ))  # fmt: skip
    out_dir = tmp_path / "results"
    code = main(["eval", str(out_dir), "--task", str(task), "--endpoint", f"{base_url}/v1",
                 "--model", MODEL, "--no-progress"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("short (4 items, 0-shot): acc ")
    entry = json.loads((out_dir / "eval.json").read_text())["results"]["short"]
    assert entry["model"] == {"kind": "endpoint", "url": f"{base_url}/v1", "model": MODEL}
    assert "endpoint" in (out_dir / "eval.md").read_text()
    code = main(["eval", str(out_dir), "--task", str(task), "--endpoint", base_url,
                 "--model", "gpt-4"])  # fmt: skip
    assert code == 2 and "does not exist" in capsys.readouterr().err
