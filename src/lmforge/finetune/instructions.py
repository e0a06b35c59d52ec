"""Reading instruction-tuning data as conversations: Alpaca, `messages` JSONL and SQuAD.

Every format becomes a list of `Conversation`s (OpenAI-style `messages`, each with where it
came from), which a chat template then renders:

- `alpaca`: a JSON array or JSONL of {instruction, input, output} (optionally `system`):
  user = instruction (+ a blank line + input), assistant = output.
- `messages`: JSONL of {"messages": [{role, content}, ...]}, roles system/user/assistant.
- `squad`: SQuAD v1.1 / v2.0 JSON: user = context + question (`squad_prompt`), assistant =
  the first answer; unanswerable questions are skipped and counted.

A bad record is an error naming the file and line (JSONL, and the line where a JSON array's
element starts) or the SQuAD record's path, and the field at fault. Written here because the
checks are the point: `datasets` would load the same files but report a missing field as a
schema cast error without the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.data.document import DataError

Format = Literal["auto", "alpaca", "messages", "squad"]
FORMATS = ("auto", "alpaca", "messages", "squad")
MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    where: str  # "file:line" or a SQuAD record's path
    references: list[str] = field(default_factory=list)  # every gold answer (SQuAD)


def squad_prompt(context: str, question: str) -> str:
    """The user turn of a generative QA example (also what `eval` asks with)."""
    return f"{context.strip()}\n\nQuestion: {question.strip()}"


def _json_array_items(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line, element) of a top-level JSON array, so errors can name an element's line."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(0)
    if text[i : i + 1] != "[":
        raise DataError(f"{path}: expected a JSON array of records")
    i = skip(i + 1)
    if text[i : i + 1] == "]":
        return items
    while True:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        items.append((text.count("\n", 0, i) + 1, value))
        i = skip(end)
        if text[i : i + 1] == "]":
            return items
        if text[i : i + 1] != ",":
            line = text.count("\n", 0, i) + 1
            raise DataError(f"{path}:{line}: expected ',' or ']' between array elements")
        i = skip(i + 1)


def _jsonl_items(path: Path, text: str) -> list[tuple[int, Any]]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); one object per line") from None
    return items


def _field(record: dict[str, Any], name: str, where: str, *, required: bool = True) -> str:
    value = record.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if name not in record else f"a {type(value).__name__}"
        raise DataError(
            f"{where}: field {name!r} is {got}; an Alpaca record needs string fields "
            "'instruction' and 'output' (and optionally 'input', 'system')"
        )
    return value


def alpaca_conversation(record: Any, where: str) -> Conversation:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    instruction = _field(record, "instruction", where)
    extra = _field(record, "input", where, required=False)
    output = _field(record, "output", where)
    system = _field(record, "system", where, required=False)
    if not instruction.strip() or not output.strip():
        empty = "instruction" if not instruction.strip() else "output"
        raise DataError(f"{where}: field {empty!r} is empty")
    user = instruction.strip() + (f"\n\n{extra.strip()}" if extra.strip() else "")
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Conversation(messages, where)


def messages_conversation(record: Any, where: str) -> Conversation:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise DataError(f"{where}: expected an object with a 'messages' list")
    messages = []
    for i, m in enumerate(record["messages"]):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"{at} is not an object with 'role' and 'content'")
        if m.get("role") not in MESSAGE_ROLES:
            raise DataError(
                f"{at}.role is {m.get('role')!r}; expected one of {', '.join(MESSAGE_ROLES)}"
            )
        if not isinstance(m.get("content"), str):
            raise DataError(f"{at}.content must be a string, got {type(m.get('content')).__name__}")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: no non-empty assistant message to learn from")
    return Conversation(messages, where)


def squad_conversations(path: Path, data: dict[str, Any]) -> tuple[list[Conversation], int]:
    """One conversation per answerable question, and how many unanswerable ones were skipped."""
    from lmforge.eval.generation import read_generation_records
    from lmforge.eval.multiple_choice import TaskError

    try:
        records, _ = read_generation_records(path)
    except TaskError as e:
        raise DataError(str(e)) from None
    out, skipped = [], 0
    for where, r in records:
        answers = [a for a in r["answers"] if isinstance(a, str) and a.strip()]
        if not answers:
            skipped += 1
            continue
        messages = [
            {"role": "user", "content": squad_prompt(r["context"], r["question"])},
            {"role": "assistant", "content": answers[0]},
        ]
        out.append(Conversation(messages, where, references=answers))
    return out, skipped


def _is_squad(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("data"), list)


def detect_format(path: Path, items: list[tuple[int, Any]] | None, data: Any) -> str:
    if _is_squad(data):
        return "squad"
    first = items[0][1] if items else None
    if isinstance(first, dict) and "messages" in first:
        return "messages"
    if isinstance(first, dict) and "instruction" in first:
        return "alpaca"
    raise DataError(
        f"{path}: cannot tell the format (first record has fields "
        f"{sorted(first) if isinstance(first, dict) else type(first).__name__}); give "
        "--format alpaca (instruction/input/output), messages or squad"
    )


def read_conversations(path: str | Path, fmt: Format = "auto") -> tuple[list[Conversation], dict]:
    """Conversations of an instruction file and a summary ({"format", "records", "skipped"})."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    stripped = text.lstrip()
    data, items = None, None
    if stripped.startswith("{") and fmt in ("auto", "squad"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSONL whose first line is an object
        # Only SQuAD is one JSON object; another (a JSONL file of one record) is read as JSONL.
        data = whole if _is_squad(whole) else None
    if fmt == "squad" and data is None:
        raise DataError(f"{path}: not SQuAD JSON (an object with a 'data' list)")
    if data is None:
        items = _json_array_items(path, text) if stripped.startswith("[") else None
        items = items if items is not None else _jsonl_items(path, text)
        if not items:
            raise DataError(f"{path}: holds no records")
    if fmt == "auto":
        fmt = detect_format(path, items, data)
    skipped = 0
    if fmt == "squad":
        conversations, skipped = squad_conversations(path, data)
    else:
        convert = alpaca_conversation if fmt == "alpaca" else messages_conversation
        conversations = [convert(record, f"{path}:{line}") for line, record in items]
    if not conversations:
        raise DataError(f"{path}: holds no usable {fmt} records")
    return conversations, {"format": fmt, "records": len(conversations), "skipped": skipped}
