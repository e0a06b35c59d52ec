"""Chat templates: rendering equal to transformers', assistant masks counted by hand, errors."""

from __future__ import annotations

import pytest

from lmforge.tokenizer.chat import (
    CHAT_TEMPLATE_FILE,
    DEFAULT_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    encode_chat,
    load_chat_template,
    save_chat_template,
    special_tokens,
    template_for_run,
)
from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Zephyr-style, with whitespace control and bos/eos from the context, over several lines
# (trim_blocks / lstrip_blocks decide what the newlines become).
ZEPHYR = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
    {% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
    {% endif %}
    {% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
    {% endif %}
{% endfor %}"""
# The default template with transformers' {% generation %} markers around each answer.
MARKED = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] + eos_token }}"
    "{% endgeneration %}"
    "{% else %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And a fruit?"},
    {"role": "assistant", "content": "A ripe pear."},
]


@pytest.fixture(scope="module")
def tok():
    text = " ".join(m["content"] for m in MESSAGES) + " <|>\nabcdefghijklmnopqrstuvwxyz<|eos|>"
    return train_tokenizer([text * 3], TokenizerConfig(kind="char"), progress=False)


@pytest.mark.parametrize("source", [DEFAULT_TEMPLATE, CHATML, ZEPHYR])
@pytest.mark.parametrize("gen", [False, True])
def test_render_equals_transformers_apply_chat_template(tok, source, gen):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok.hf, chat_template=source, **special_tokens(tok)
    )
    msgs = MESSAGES[:-1] if gen else MESSAGES
    expected = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    got = ChatTemplate(source).render(
        msgs, add_generation_prompt=gen, special_tokens=special_tokens(tok)
    )
    assert got == expected
    assert "Blue." in got


@pytest.mark.parametrize("source", [DEFAULT_TEMPLATE, MARKED])
def test_assistant_mask_matches_a_hand_count(tok, source):
    ids, mask = encode_chat(tok, ChatTemplate(source), MESSAGES)
    assert len(ids) == len(mask)
    # By hand: each answer's characters (a char vocabulary: one token each) and its EOS.
    assert sum(mask) == len("Blue.") + 1 + len("A ripe pear.") + 1 == 19
    masked = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(masked) == "Blue.<|eos|>A ripe pear.<|eos|>"
    # Everything else is prompt: one token per character, each of the 5 EOS one token.
    text = ChatTemplate(DEFAULT_TEMPLATE).render(MESSAGES, special_tokens=special_tokens(tok))
    assert len(ids) == len(text) - 5 * (len("<|eos|>") - 1)


def test_generation_prompt_ids_are_the_training_prefix(tok):
    t = ChatTemplate(DEFAULT_TEMPLATE)
    full, mask = encode_chat(tok, t, MESSAGES)
    prompt, prompt_mask = encode_chat(tok, t, MESSAGES[:-1], add_generation_prompt=True)
    assert full[: len(prompt)] == prompt
    assert not any(prompt_mask)
    assert all(mask[len(prompt) :])  # what follows the prompt is exactly the answer + EOS


def test_special_token_spelled_in_a_message_stays_text(tok):
    t = ChatTemplate(DEFAULT_TEMPLATE)
    msgs = [{"role": "user", "content": "say <|eos|> now"}, {"role": "assistant", "content": "ok"}]
    ids, mask = encode_chat(tok, t, msgs)
    assert ids.count(tok.eos_id) == 2  # the two turn ends, not the literal text
    assert tok.decode(ids) == t.render(msgs, special_tokens=special_tokens(tok))
    assert sum(mask) == len("ok") + 1


def test_save_load_round_trip_and_default(tmp_path):
    assert template_for_run(tmp_path).source == DEFAULT_TEMPLATE
    assert load_chat_template(tmp_path) is None
    path = save_chat_template(CHATML, tmp_path)
    assert path.name == CHAT_TEMPLATE_FILE
    assert load_chat_template(tmp_path).source == CHATML


def test_syntax_error_names_file_and_line(tmp_path):
    (tmp_path / CHAT_TEMPLATE_FILE).write_text("hello\n{% for m in messages %}\n{{ m }\n")
    with pytest.raises(ChatTemplateError, match=rf"{CHAT_TEMPLATE_FILE}:3: .*does not parse"):
        load_chat_template(tmp_path)


def test_render_failure_is_a_clear_error(tok):
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}", origin="t.jinja")
    with pytest.raises(ChatTemplateError, match="t.jinja: .*roles must alternate"):
        t.render(MESSAGES)
    with pytest.raises(ChatTemplateError, match="t.jinja"):
        encode_chat(tok, t, MESSAGES)


def test_template_that_is_not_prefix_stable_needs_markers(tok):
    # Puts the number of messages first: earlier turns render differently as the chat grows.
    t = ChatTemplate("{{ messages|length }}" + DEFAULT_TEMPLATE, origin="odd.jinja")
    with pytest.raises(ChatTemplateError, match="generation"):
        encode_chat(tok, t, MESSAGES)
