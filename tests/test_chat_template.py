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
    turn_end,
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
# Asks differently when the caller gives tools or documents, as tool-calling templates do.
TOOLS = (
    "{% if tools is not none %}<|tools|>{{ tools | tojson }}\n{% endif %}"
    "{% if documents is not none %}<|documents|>\n{% endif %}" + DEFAULT_TEMPLATE
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


@pytest.mark.parametrize("source", [DEFAULT_TEMPLATE, CHATML, ZEPHYR, TOOLS])
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


def test_tools_and_documents_are_none_unless_given():
    # transformers always passes both, so `tools is not none` is false when none are given.
    t, eos = ChatTemplate(TOOLS), {"eos_token": "<e>"}
    assert t.render(MESSAGES[:1], special_tokens=eos) == "<|system|>\nYou answer briefly.<e>"
    got = t.render(MESSAGES[:1], special_tokens=eos, tools=[{"name": "f"}])
    assert got == '<|tools|>[{"name": "f"}]\n<|system|>\nYou answer briefly.<e>'


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


def test_marked_answer_also_in_the_prompt_masks_only_the_answer(tok):
    # Generative QA: the answer is a span of the context, so its text (and here its EOS
    # after it) occurs in the user turn first; only the assistant's copy is a target.
    msgs = [
        {"role": "user", "content": "Fruit: a ripe pear."},
        {"role": "assistant", "content": "a ripe pear."},
    ]
    ids, mask = encode_chat(tok, ChatTemplate(MARKED), msgs)
    prompt, _ = encode_chat(tok, ChatTemplate(MARKED), msgs[:1])
    prefix = len(prompt) + len("<|assistant|>\n")
    assert mask == [False] * prefix + [True] * (len("a ripe pear.") + 1)
    assert tok.decode(ids[prefix:]) == "a ripe pear.<|eos|>"


def test_marked_block_inside_a_macro_is_found(tok):
    # Jinja buffers a macro's output, so counting what has been output so far (as
    # transformers does) misplaces the block; its own place in the text does not move.
    t = ChatTemplate(
        "{% macro turn(m) %}{{ '<|' + m['role'] + '|>\\n' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}"
        "{% endgeneration %}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endmacro %}"
        "{% for m in messages %}{{ turn(m) }}{% endfor %}"
    )
    ids, mask = encode_chat(tok, t, MESSAGES)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Blue.<|eos|>A ripe pear.<|eos|>"


def test_marker_characters_in_a_message_are_refused(tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a\ue002b"}]
    with pytest.raises(ChatTemplateError, match="U\\+E002"):
        encode_chat(tok, ChatTemplate(MARKED), msgs)


def test_generation_block_output_twice_is_refused(tok):
    t = ChatTemplate(
        "{% for m in messages %}{% set turn %}{% generation %}{{ m['content'] }}"
        "{% endgeneration %}{% endset %}{{ turn }}{{ turn }}{% endfor %}",
        origin="twice.jinja",
    )
    with pytest.raises(ChatTemplateError, match="twice.jinja: .*other than once"):
        encode_chat(tok, t, MESSAGES)


@pytest.mark.parametrize(
    "tag",
    [
        "{% generation %}",
        "{%- generation %}",
        "{% generation -%}",
        "{%- generation -%}",
        "{%generation%}",
        "{%+ generation %}",
        "{%  generation\n%}",
    ],
)
def test_generation_markers_are_found_in_any_spelling(tok, tag):
    t = ChatTemplate(MARKED.replace("{% generation %}", tag))
    assert t.has_generation_markers
    ids, mask = encode_chat(tok, t, MESSAGES)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Blue.<|eos|>A ripe pear.<|eos|>"


def test_generation_spelled_in_a_comment_or_string_is_no_marker():
    assert not ChatTemplate("{# {% generation %} #}" + DEFAULT_TEMPLATE).has_generation_markers
    assert not ChatTemplate("{{ '{% generation %}' }}" + DEFAULT_TEMPLATE).has_generation_markers


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


def test_turn_end_is_a_stop_only_where_a_turn_ends_in_text(tok):
    # The default, Zephyr and the marked templates end an answer with the EOS token: generation
    # stops there by id. ChatML's <|im_end|> is text to this vocabulary: it must be a stop.
    for source in (DEFAULT_TEMPLATE, ZEPHYR, MARKED):
        assert turn_end(ChatTemplate(source), tok) is None, source
    assert turn_end(ChatTemplate(CHATML), tok) == "<|im_end|>"
    # A template that ends turns in nothing but a newline gives no stop.
    assert (
        turn_end(ChatTemplate("{% for m in messages %}{{ m.content }}\n{% endfor %}"), tok) is None
    )
