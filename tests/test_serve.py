"""The HTTP server, driven over a real socket by the official `openai` client and by httpx."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import serving
from lmforge.infer.generate import GenerationConfig, complete
from lmforge.infer.load import load_run
from lmforge.serve.app import ServeConfig, build_app

MODEL = "tiny-shakespeare"
MAX_TOKENS_LIMIT = 48
CONTEXT = 64  # model.max_seq_len of the tiny_run fixture


@pytest.fixture(scope="module")
def base_url(tiny_run: Path) -> Iterator[str]:
    """`lmforge serve` of the tiny run on a free local port, in a background thread."""
    cfg = ServeConfig(model_name=MODEL, max_tokens_limit=MAX_TOKENS_LIMIT, device="cpu")
    app = build_app(tiny_run, cfg)
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as c:
        yield c


def test_serve_config_rejects_bad_values():
    with pytest.raises(ValueError, match="max_tokens_limit"):
        ServeConfig(max_tokens_limit=0)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        ServeConfig(max_prompt_tokens=-1)
    with pytest.raises(ValueError, match="model_name"):
        ServeConfig(model_name="")


def test_models_list_and_health(client, http):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "lmforge"
    assert client.models.retrieve(MODEL).id == MODEL
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


def test_greedy_completion_matches_library(client, tiny_run):
    out = client.completions.create(
        model=MODEL, prompt="ROMEO:", max_tokens=20, temperature=0, seed=1
    )
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.model == MODEL
    (choice,) = out.choices
    assert choice.index == 0 and choice.logprobs is None
    assert out.usage.prompt_tokens == len("ROMEO:")  # char tokenizer
    if choice.finish_reason == "length":
        assert out.usage.completion_tokens == 20
    else:
        assert choice.finish_reason == "stop" and out.usage.completion_tokens <= 20
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    # The server answers what the library answers for the same settings.
    run = load_run(tiny_run, device="cpu")
    want = complete(
        run.model, run.tokenizer, "ROMEO:", GenerationConfig(max_new_tokens=20, temperature=0)
    )
    assert choice.text == want.text


def test_stream_concatenates_to_the_same_text(client):
    kwargs = dict(model=MODEL, prompt="ROMEO:", max_tokens=20, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    with_choices = [c for c in chunks if c.choices]
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert with_choices[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert "".join(c.choices[0].text for c in with_choices) == whole.choices[0].text
    assert len(with_choices) > 2  # it really streamed, piece by piece
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_raw_stream_is_server_sent_events(http):
    body = {"model": MODEL, "prompt": "KING", "max_tokens": 5, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: ") :])
    assert last["object"] == "text_completion" and last["choices"][0]["finish_reason"]


def test_stop_strings_are_honoured(client):
    base = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0)
    text = base.choices[0].text
    stop = text[5:7]  # a stop string the greedy continuation is known to contain
    first = text.find(stop)
    out = client.completions.create(
        model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0, stop=[stop, "\x00"]
    )
    assert out.choices[0].text == text[:first]
    assert out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text[:first]


def test_echo_and_seeded_sampling(client):
    out = client.completions.create(
        model=MODEL, prompt="ROMEO:", max_tokens=5, temperature=0, echo=True
    )
    assert out.choices[0].text.startswith("ROMEO:")
    kwargs = dict(model=MODEL, prompt="ROMEO:", max_tokens=20, temperature=1.0)
    a = client.completions.create(**kwargs, seed=7, extra_body={"top_k": 10})
    b = client.completions.create(**kwargs, seed=7, extra_body={"top_k": 10})
    assert a.choices[0].text == b.choices[0].text
    # top_k is an extension of OpenAI's API; top_k=1 samples the greedy continuation.
    greedy = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=20, temperature=0)
    top1 = client.completions.create(**kwargs, extra_body={"top_k": 1})
    assert top1.choices[0].text == greedy.choices[0].text


def test_openai_errors(client):
    with pytest.raises(openai.BadRequestError, match=str(MAX_TOKENS_LIMIT)) as e:
        client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=MAX_TOKENS_LIMIT + 1)
    assert e.value.body["param"] == "max_tokens"
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match=f"limit of {CONTEXT} tokens"):
        client.completions.create(model=MODEL, prompt="x" * (CONTEXT + 1), max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="ROMEO:", temperature=2.5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="ROMEO:", top_p=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.completions.create(model=MODEL, prompt="ROMEO:", n=2)
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="ROMEO:")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"model": MODEL}, "prompt"),  # missing prompt
        ({"model": MODEL, "prompt": 3}, "prompt"),
        ({"model": MODEL, "prompt": "a", "max_tokens": "many"}, "max_tokens"),
        ({"model": MODEL, "prompt": "a", "top_k": -1}, "top_k"),
        ({"model": MODEL, "prompt": []}, "prompt"),
        ([1, 2], None),  # not an object
    ],
)
def test_invalid_requests_are_400_in_openai_shape(http, payload, param):
    r = http.post("/v1/completions", json=payload)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param


def test_malformed_json_is_400(http):
    for path in ("/v1/completions", "/generate"):
        r = http.post(path, content=b'{"prompt": ', headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert "JSON" in r.json()["error"]["message"]
    r = http.get("/no/such/route")
    assert r.status_code == 404 and "error" in r.json()


def test_several_prompts_are_answered_in_order(client):
    out = client.completions.create(
        model=MODEL, prompt=["ROMEO:", "JULIET:"], max_tokens=4, temperature=0
    )
    assert [c.index for c in out.choices] == [0, 1]
    single = client.completions.create(model=MODEL, prompt="JULIET:", max_tokens=4, temperature=0)
    assert out.choices[1].text == single.choices[0].text


def test_generate_endpoint(http, client):
    r = http.post("/generate", json={"text": "ROMEO:", "max_new_tokens": 20, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == "ROMEO:"
    same = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=20, temperature=0)
    assert body["completion"] == same.choices[0].text
    assert body["finish_reason"] == same.choices[0].finish_reason
    assert body["usage"]["total_tokens"] == same.usage.total_tokens
    r = http.post("/generate", json={"text": "ROMEO:", "max_new_tokens": MAX_TOKENS_LIMIT + 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_new_tokens"
    r = http.post("/generate", json={"max_new_tokens": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "text"


def test_requests_are_served_one_at_a_time_without_errors(base_url):
    body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 10, "temperature": 0}
    results: list[httpx.Response] = []

    def call() -> None:
        with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as c:
            results.append(c.post("/v1/completions", json=body))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 4
    assert len({r.json()["choices"][0]["text"] for r in results}) == 1


# ---------------------------------------------------------------- chat


def _chat_reference(run_dir: Path, messages: list[dict], max_new_tokens: int):
    """What the library answers greedily to `messages` in the run's chat template."""
    from lmforge.tokenizer.chat import encode_chat, template_for_run

    run = load_run(run_dir, device="cpu")
    template = template_for_run(run_dir / "tokenizer")
    ids, _ = encode_chat(run.tokenizer, template, messages, add_generation_prompt=True)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0)
    return ids, complete(run.model, run.tokenizer, ids, cfg)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}]


def test_chat_answers_in_the_runs_template(client, tiny_run):
    out = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    (choice,) = out.choices
    assert choice.message.role == "assistant" and choice.index == 0
    ids, want = _chat_reference(tiny_run, CHAT, 12)
    assert choice.message.content == want.text and choice.finish_reason == want.finish_reason
    assert out.usage.prompt_tokens == len(ids) and len(ids) > len("Be brief.Who?")
    # "developer" is OpenAI's newer name for "system"; text parts are joined.
    parts = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Wh"}, {"type": "text", "text": "o?"}],
        },
    ]
    again = client.chat.completions.create(
        model=MODEL, messages=parts, max_tokens=12, temperature=0
    )
    assert again.choices[0].message.content == want.text


def test_chat_stream_concatenates_to_the_same_answer(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_uses_a_template_saved_with_the_run(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "tokenizer" / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    app = build_app(run, ServeConfig(model_name=MODEL, device="cpu"))
    with serving(app) as url:
        chat = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
        out = chat.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    ids, want = _chat_reference(run, CHAT, 8)
    # the char tokenizer: one id a character of the rendered template
    assert (
        out.usage.prompt_tokens == len(ids) == len("[system] Be brief.\n[user] Who?\n[assistant] ")
    )
    assert out.choices[0].message.content == want.text


def test_chat_errors(client, http):
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model=MODEL, messages=CHAT, n=2)
    with pytest.raises(openai.BadRequestError, match="only text parts"):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        )
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x" * 200}], max_tokens=4
        )
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match=str(MAX_TOKENS_LIMIT)):
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1000)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=CHAT)
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and "messages[0].role" in r.json()["error"]["message"]


def test_chat_stops_where_the_template_ends_a_turn_in_text(tiny_run, tmp_path, monkeypatch):
    import shutil

    import lmforge.serve.app as served

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "tokenizer" / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    seen = []
    real = served.complete

    def spy(model, tokenizer, prompt, gen):
        seen.append(gen.stop)
        return real(model, tokenizer, prompt, gen)

    monkeypatch.setattr(served, "complete", spy)
    with serving(build_app(run, ServeConfig(model_name=MODEL, device="cpu"))) as url:
        chat = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
        hi = [{"role": "user", "content": "Hi"}]  # 52 ChatML tokens, within 64
        chat.chat.completions.create(model=MODEL, messages=hi, max_tokens=4, stop=["zz"])
        chat.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=4)
    # The chat turn ends at <|im_end|> (text to this char vocabulary); plain completions do not.
    assert seen == [("zz", "<|im_end|>"), ()]
