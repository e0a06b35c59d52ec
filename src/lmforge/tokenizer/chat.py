"""Chat templates: how a conversation becomes the text (and token ids) a model reads.

A template is Jinja, stored beside the vocabulary as `tokenizer/chat_template.jinja`, the file
`transformers` 5 keeps it in (and `lmforge export hf` / `import hf` copy both ways), so a run's
template travels with it to Hugging Face and back. It is rendered the way
`PreTrainedTokenizerFast.apply_chat_template(messages, tokenize=False)` renders it: jinja2's
`ImmutableSandboxedEnvironment` with `trim_blocks`/`lstrip_blocks`, the `loopcontrols`
extension, `raise_exception`, `strftime_now` and a `tojson` filter, and `messages`,
`add_generation_prompt`, `tools` and `documents` (None unless given) and the special tokens
(`bos_token`, `eos_token`, ...) in the context.
Fine-tuning (`lmforge finetune sft`), `lmforge generate --chat` and the served chat endpoint
all go through `render`/`encode_chat` here, so a model is asked in the format it was taught.

`DEFAULT_TEMPLATE` is for runs that have none. It spells roles as plain text (`<|user|>`) and
ends every turn with the vocabulary's own EOS, so it needs no new vocabulary entries and
generation stops where a turn ends.

Written here rather than called through `transformers`: that would make transformers a run-time
dependency of training and serving for ~20 lines of environment setup, and lmforge needs two
things it does not give. Token ids: the rendered text is encoded piece by piece, cut at every
special token the template emits and at every assistant turn's edges, so the ids of a prompt
ending in the generation prompt are exactly the ids the model saw before each answer in
training; a special token's spelling inside a message stays ordinary text (as everywhere in
lmforge, data never injects an EOS). The assistant mask: the characters of each assistant turn
are found by rendering prefixes of the conversation (the text of turns 1..i with the generation
prompt, then with turn i), or by `{% generation %}` ... `{% endgeneration %}` markers where the
template has them, as transformers' `return_assistant_tokens_mask` reads them (each block's
output is fenced in private-use characters while rendering, so its place is read off the text,
not searched for, and stays right inside macros, where transformers' offsets do not).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lmforge.io import write_text_atomic
from lmforge.tokenizer.tokenizer import Tokenizer

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # the name export/hf.py copies both ways
ROLES = ("system", "user", "assistant")

# Roles as plain-text markers and the vocabulary's EOS after every turn: no new tokens.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Private-use characters that stand in for a special token's spelling inside a message while
# the rendered text is cut at the template's own special tokens.
_ESC_OPEN, _ESC_CLOSE = "\ue000", "\ue001"
# Private-use characters fenced around each `{% generation %}` block's output while the
# assistant mask is found, so the block's place is read off the text rather than searched for
# (an answer is often also in the prompt: SQuAD's is a span of the context).
_GEN_OPEN, _GEN_CLOSE = "\ue002", "\ue003"


class ChatTemplateError(ValueError):
    """A chat template that does not parse or does not render, or a conversation it refuses."""


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    # transformers' own filter: unlike jinja's, it does not escape HTML characters.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment():
    """The sandbox transformers renders chat templates in, with its generation tracker."""
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTracker(Extension):
        """`{% generation %}...{% endgeneration %}` outputs its body; while
        `environment.generation_blocks` is a list, it also appends the body there and fences
        it in `_GEN_OPEN` ... `_GEN_CLOSE`."""

        tags = {"generation"}

        def __init__(self, environment):
            super().__init__(environment)
            environment.extend(generation_blocks=None)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_record", [], [], lineno=lineno)
            return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _record(self, caller):
            text = caller()
            blocks = self.environment.generation_blocks
            if blocks is None:
                return text
            blocks.append(text)
            return f"{_GEN_OPEN}{text}{_GEN_CLOSE}"

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTracker, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass
class ChatTemplate:
    """A compiled chat template and where it came from (for error messages)."""

    source: str
    origin: str = "<default chat template>"

    def __post_init__(self) -> None:
        from jinja2 import nodes
        from jinja2.exceptions import TemplateSyntaxError

        self._env = _environment()
        try:
            tree = self._env.parse(self.source)
        except TemplateSyntaxError as e:
            raise ChatTemplateError(
                f"{self.origin}:{e.lineno}: chat template does not parse: {e.message}; fix the "
                "Jinja there (transformers' chat templates are the reference)"
            ) from None
        self._template = self._env.from_string(tree)
        # From the parsed template, not its text: any whitespace control, no comments or strings.
        self.has_generation_markers = any(
            isinstance(block.call, nodes.Call)
            and isinstance(block.call.node, nodes.ExtensionAttribute)
            and block.call.node.name == "_record"
            for block in tree.find_all(nodes.CallBlock)
        )

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = False,
        special_tokens: dict[str, str] | None = None,
        **extra: Any,
    ) -> str:
        """The conversation as text, exactly as transformers' `apply_chat_template` gives it."""
        return self._render(messages, add_generation_prompt, special_tokens or {}, None, extra)

    def _render(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool,
        special_tokens: dict[str, str],
        blocks: list[str] | None,
        extra: dict[str, Any],
    ) -> str:
        """The text; with `blocks`, each generation block's output is appended there and fenced
        in `_GEN_OPEN` ... `_GEN_CLOSE` in the text."""
        from jinja2.exceptions import TemplateError

        self._env.generation_blocks = blocks
        try:
            # transformers always passes tools and documents, so `tools is not none` is false
            # unless the caller gives some.
            return self._template.render(
                {
                    "tools": None,
                    "documents": None,
                    **special_tokens,
                    **extra,
                    "messages": list(messages),
                    "add_generation_prompt": add_generation_prompt,
                }
            )
        except TemplateError as e:
            raise ChatTemplateError(
                f"{self.origin}: chat template failed to render a conversation of "
                f"{len(messages)} message(s) (roles {[m.get('role') for m in messages]}): "
                f"{type(e).__name__}: {e}"
            ) from None
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise ChatTemplateError(
                f"{self.origin}: chat template failed to render: {type(e).__name__}: {e}"
            ) from None
        finally:
            self._env.generation_blocks = None


def load_chat_template(tokenizer_dir: str | Path) -> ChatTemplate | None:
    """The template saved in `tokenizer_dir` (chat_template.jinja), or None if there is none."""
    path = Path(tokenizer_dir) / CHAT_TEMPLATE_FILE
    if not path.is_file():
        return None
    return ChatTemplate(path.read_text(encoding="utf-8"), origin=str(path))


def template_for_run(tokenizer_dir: str | Path) -> ChatTemplate:
    """The run's own template, or `DEFAULT_TEMPLATE` when it has none."""
    return load_chat_template(tokenizer_dir) or ChatTemplate(DEFAULT_TEMPLATE)


def save_chat_template(template: ChatTemplate | str, tokenizer_dir: str | Path) -> Path:
    """Write the template as `tokenizer_dir/chat_template.jinja` (atomically)."""
    source = template.source if isinstance(template, ChatTemplate) else template
    path = Path(tokenizer_dir) / CHAT_TEMPLATE_FILE
    write_text_atomic(path, source)
    return path


def turn_end(template: ChatTemplate, tokenizer: Tokenizer) -> str | None:
    """The text the template puts after an assistant's message, as a stop string, unless it is
    (or begins with) an end-of-generation token, where generation stops anyway.

    A template that ends turns in text (ChatML's `<|im_end|>` spelled in a vocabulary that has
    no such token) teaches the model to write that text; without this stop, generation would
    run on into a made-up next turn.
    """
    mark = "\ue004"  # private use: never in a template's own text
    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": mark}]
    try:
        text = template._render(messages, False, special_tokens(tokenizer), None, {})
    except ChatTemplateError:
        return None  # a template that cannot render this pair has no one turn end to read
    if text.count(mark) != 1:
        return None
    end = text.split(mark, 1)[1].strip()
    ends = {tokenizer.id_to_token(i) for i in tokenizer.eos_ids} - {None}
    if not end or any(end.startswith(e) for e in ends):
        return None
    return end


def special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """`bos_token`, `eos_token`, ... for the template context (as transformers passes them)."""
    return {f"{role}_token": text for role, text in tokenizer.special_roles.items() if text}


def _escape(messages: Sequence[dict[str, Any]], specials: list[str]) -> list[dict[str, Any]]:
    """Messages whose text no longer spells a special token (see `_encode_text`)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            for i, token in enumerate(specials):
                content = content.replace(token, f"{_ESC_OPEN}{i}{_ESC_CLOSE}")
            m = {**m, "content": content}
        out.append(m)
    return out


def _unescape(text: str, specials: list[str]) -> str:
    for i, token in enumerate(specials):
        text = text.replace(f"{_ESC_OPEN}{i}{_ESC_CLOSE}", token)
    return text


def _encode_text(tokenizer: Tokenizer, text: str, specials: list[str]) -> list[int]:
    """Ids of rendered text: the template's special tokens become their ids, the rest is
    encoded as ordinary text (escaped specials from messages back to their spelling)."""
    ids: list[int] = []
    rest = text
    while rest:
        hits = [(rest.find(t), t) for t in specials if rest.find(t) >= 0]
        if not hits:
            ids += tokenizer.encode(_unescape(rest, specials))
            break
        at, token = min(hits, key=lambda h: (h[0], -len(h[1])))
        if at:
            ids += tokenizer.encode(_unescape(rest[:at], specials))
        ids.append(tokenizer.token_to_id(token))
        rest = rest[at + len(token) :]
    return ids


def _assistant_spans_by_prefix(
    template: ChatTemplate, messages: list[dict[str, Any]], tokens: dict[str, str]
) -> tuple[str, list[tuple[int, int]]]:
    """The text and the character span of each assistant turn in it, found by rendering
    prefixes of the conversation."""
    full = template._render(messages, False, tokens, None, {})
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = template._render(messages[:i], True, tokens, None, {})
        upto = template._render(messages[: i + 1], False, tokens, None, {})
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ChatTemplateError(
                f"{template.origin}: rendering the conversation up to assistant turn {i} is not "
                "a prefix of rendering all of it, so the assistant's tokens cannot be found; "
                "wrap the assistant content in {% generation %}...{% endgeneration %}"
            )
        spans.append((len(before), len(upto)))
    return full, spans


def _assistant_spans_by_markers(
    template: ChatTemplate, messages: list[dict[str, Any]], tokens: dict[str, str]
) -> tuple[str, list[tuple[int, int]]]:
    """The text and the character span of each `{% generation %}` block in it, read off the
    fences the blocks put around their output."""
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, str) and (_GEN_OPEN in content or _GEN_CLOSE in content):
            raise ChatTemplateError(
                f"message {i} ({m.get('role')}) holds the private-use character U+E002 or "
                "U+E003, which lmforge marks generation blocks with; remove it from the data"
            )
    blocks: list[str] = []
    fenced = template._render(messages, False, tokens, blocks, {})
    # Each block's output must be in the text once: not nested in another, not dropped or
    # repeated (a `{% set %}` block output twice, say).
    fences = "".join(c for c in fenced if c in (_GEN_OPEN, _GEN_CLOSE))
    if fences != (_GEN_OPEN + _GEN_CLOSE) * len(blocks):
        raise ChatTemplateError(
            f"{template.origin}: a {{% generation %}} block's output is nested in another, "
            "or appears other than once in the rendered text; the assistant's tokens cannot "
            "be found"
        )
    text: list[str] = []
    spans: list[tuple[int, int]] = []
    length = start = 0
    for piece in re.split(f"([{_GEN_OPEN}{_GEN_CLOSE}])", fenced):
        if piece == _GEN_OPEN:
            start = length
        elif piece == _GEN_CLOSE:
            spans.append((start, length))
        else:
            text.append(piece)
            length += len(piece)
    return "".join(text), spans


def encode_chat(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per id, whether it is an assistant token
    (the ones fine-tuning computes its loss on: each answer and the EOS that ends it).

    The text is encoded in pieces cut at the edges of every assistant turn, so a prompt that
    ends in the generation prompt encodes to the same ids training put before the answer.
    An imported model that expects BOS first gets it when the template does not emit one.
    """
    tokens = special_tokens(tokenizer)
    specials = sorted({t for t in tokens.values()}, key=len, reverse=True)
    safe = _escape(messages, specials)
    if add_generation_prompt or not any(m.get("role") == "assistant" for m in messages):
        text, spans = template._render(safe, add_generation_prompt, tokens, None, {}), []
    elif template.has_generation_markers:
        text, spans = _assistant_spans_by_markers(template, safe, tokens)
    else:
        text, spans = _assistant_spans_by_prefix(template, safe, tokens)
    ids: list[int] = []
    mask: list[bool] = []
    pos = 0
    for start, end in [*spans, (len(text), len(text))]:
        for piece, is_assistant in ((text[pos:start], False), (text[start:end], True)):
            piece_ids = _encode_text(tokenizer, piece, specials) if piece else []
            ids += piece_ids
            mask += [is_assistant] * len(piece_ids)
        pos = end
    if tokenizer.add_bos and tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id]:
        ids, mask = [tokenizer.bos_id, *ids], [False, *mask]
    return ids, mask
