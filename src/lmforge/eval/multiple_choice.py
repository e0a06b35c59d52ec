"""Zero- and few-shot multiple-choice evaluation, scored as lm-evaluation-harness scores it.

A task is a JSONL file, one item per line: ``{"context": str, "choices": [str, ...],
"gold": int}``. Records of HellaSwag (`ctx`, `endings`, `label`), PIQA (`goal`, `sol1`,
`sol2`, `label`) and ARC (`question`, `choices.text`, `choices.label`, `answerKey`, in the
Hugging Face layout or the original one with `question.stem`) are read by adapters that build
the harness's prompts (`lm_eval/tasks/{hellaswag,piqa,arc}`), HellaSwag with its
`[title]`/`[header]`/double-space clean-up.

Each choice is a continuation of the context after one space (the harness's
`target_delimiter`), scored by `lmforge.eval.scoring`. Three accuracies, as in the harness:

- `acc`: the choice with the highest summed log-likelihood;
- `acc_norm`: log-likelihood divided by the choice's length in characters (what the
  harness's code divides by; its docs call it byte-length normalization);
- `acc_bytes`: divided by the choice's length in UTF-8 bytes (the harness's `acc_bytes`).

A server that returns no log-probabilities of a prompt (`lmforge.eval.endpoint.NoLogprobsError`)
cannot score choices, so with method "auto" (the default) the task is asked through generation
instead, and the result's `method` says so: the context is followed by the choices lettered
A., B., ... and "Answer:", the model writes greedily (up to 16 tokens, ending at a newline), and
its answer is read back as a letter or as the text of a choice (SQuAD normalization, the longest
choice that the answer starts with). A letter alone ("B", "(B)", "B.") is read as one; an answer
that only starts with one ("B. ...", "(B) ...", "B) ...", "B: ...") is first matched against the
choices' text, since "A man walks..." or "A: the dog" may be a choice's text after all. An answer
that names no choice is wrong, and counted (`unparsed`). Only `acc` exists then; few-shot
examples are shown in the same lettered form with their answer, and at most 26 choices can be
lettered. Method "generate" asks this way on purpose (any model), and "loglikelihood" never
falls back; the result's `method_reason` says which of the two ("requested" or "fallback").

With `num_fewshot` K, each item's context is preceded by K solved examples
(``context + " " + gold choice``, joined by blank lines, as the harness formats them), drawn
from a separate file or from the task itself without the item. The draw for item i uses a
generator seeded with (seed, i), so an item's prompt does not depend on `limit`, batching or
the other items (the harness draws from one generator in item order instead).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.eval.lm import EvalLM
from lmforge.eval.metrics import mean_stderr, normalize_answer
from lmforge.infer.generate import GenerationConfig

log = logging.getLogger(__name__)

MC_FORMATS = ("mc", "hellaswag", "piqa", "arc")
MC_METHODS = ("auto", "loglikelihood", "generate")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
GENERATE_METHOD = (
    "generation: choices lettered A., B., ... after the context, greedy answer (16 tokens at "
    "most, up to a newline) read back as a letter or as a choice's text"
)
_ANSWER = GenerationConfig(max_new_tokens=16, temperature=0.0, stop=("\n",))
# A letter that is the whole answer, maybe in parentheses or followed by punctuation.
_LETTER_ALONE = re.compile(r"\(?([A-Z])\)?[^\w\s]*")
# A letter that starts a longer answer: "(B) ...", "B. ...", "B) ...", "B: ...".
_LETTER_FIRST = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.):])\s")
TARGET_DELIMITER = " "  # between context and choice, as the harness's default
FEWSHOT_DELIMITER = "\n\n"  # between solved examples


class TaskError(ValueError):
    """A task file that cannot be read as the format asked for; names the file and line."""


@dataclass
class MCItem:
    context: str
    choices: list[str]
    gold: int
    source: str  # "file:line", for error messages and the per-item samples


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag clean-up: WikiHow's bracketed markup and double spaces go."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _from_mc(r: dict[str, Any]) -> tuple[str, list[str], int]:
    return r["context"], list(r["choices"]), r["gold"]


def _from_hellaswag(r: dict[str, Any]) -> tuple[str, list[str], int]:
    if "ctx_a" in r:
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    else:
        ctx = r["ctx"]
    query = hellaswag_preprocess(r["activity_label"] + ": " + ctx)
    return query, [hellaswag_preprocess(e) for e in r["endings"]], int(r["label"])


def _from_piqa(r: dict[str, Any]) -> tuple[str, list[str], int]:
    return f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"])


def _from_arc(r: dict[str, Any]) -> tuple[str, list[str], int]:
    question, choices = r["question"], r.get("choices")
    if isinstance(question, dict):  # the original ARC JSONL: question.stem, question.choices
        choices = {
            "text": [c["text"] for c in question["choices"]],
            "label": [c["label"] for c in question["choices"]],
        }
        question = question["stem"]
    labels = [str(x) for x in choices["label"]]
    key = str(r["answerKey"])
    if key not in labels:
        raise KeyError(f"answerKey {key!r} is not one of the choice labels {labels}")
    return f"Question: {question}\nAnswer:", list(choices["text"]), labels.index(key)


ADAPTERS = {"mc": _from_mc, "hellaswag": _from_hellaswag, "piqa": _from_piqa, "arc": _from_arc}
REQUIRED = {
    "mc": ("context", "choices", "gold"),
    "hellaswag": ("activity_label", "endings", "label"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "arc": ("question", "answerKey"),
}


def detect_format(record: dict[str, Any]) -> str | None:
    """The multiple-choice format a record looks like, or None (e.g. a generation record)."""
    if {"endings", "label"} <= record.keys() and ("ctx" in record or "ctx_a" in record):
        return "hellaswag"
    if {"goal", "sol1", "sol2"} <= record.keys():
        return "piqa"
    if {"question", "answerKey"} <= record.keys():
        return "arc"
    if {"context", "choices", "gold"} <= record.keys():
        return "mc"
    return None


def read_jsonl(path: str | Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line; bad JSON names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise TaskError(f"{path}:{lineno}: expected a JSON object, got {record!r:.60}")
            yield lineno, record


def read_records(path: str | Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """("file:line" or "file[i]", record) for a JSONL file or a .json array of objects."""
    path = Path(path)
    if path.suffix != ".json":
        for lineno, record in read_jsonl(path):
            yield f"{path}:{lineno}", record
        return
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise TaskError(f"{path}: expected a JSON array of objects (or JSONL, one a line)")
    for i, record in enumerate(data):
        yield f"{path}[{i}]", record


def load_mc_items(
    path: str | Path, fmt: str = "auto", *, limit: int | None = None
) -> tuple[list[MCItem], str]:
    """The items of a multiple-choice task file and the format they were read as."""
    if fmt not in ("auto", *MC_FORMATS):
        raise TaskError(f"unknown multiple-choice format {fmt!r}; use auto or {MC_FORMATS}")
    items: list[MCItem] = []
    for where, record in read_records(path):
        if limit is not None and len(items) >= limit:
            break
        if fmt == "auto":
            fmt = detect_format(record) or ""
            if not fmt:
                raise TaskError(
                    f"{where}: cannot tell the task format from the fields {sorted(record)}; "
                    'write {"context", "choices", "gold"} records or pass --format '
                    "hellaswag|piqa|arc"
                )
        missing = [k for k in REQUIRED[fmt] if k not in record]
        if missing:
            raise TaskError(f"{where}: a {fmt} record needs the fields {missing}")
        try:
            context, choices, gold = ADAPTERS[fmt](record)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TaskError(f"{where}: not a valid {fmt} record ({e})") from None
        if not isinstance(context, str) or not all(isinstance(c, str) for c in choices):
            raise TaskError(f"{where}: the context and every choice must be strings")
        if len(choices) < 2:
            raise TaskError(f"{where}: {len(choices)} choice(s); a question needs at least 2")
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise TaskError(
                f"{where}: gold is {gold!r}; it must be the index (0 to {len(choices) - 1}) "
                "of the right choice"
            )
        items.append(MCItem(context=context, choices=choices, gold=gold, source=where))
    if not items:
        raise TaskError(f"{path} holds no items")
    return items, fmt


def fewshot_prefix(
    index: int,
    k: int,
    pool: Sequence[MCItem],
    *,
    seed: int,
    exclude: MCItem | None = None,
) -> str:
    """K solved examples for item `index`, drawn from `pool` without `exclude` (by its
    file and line, so a pool read from the task file itself never shows an item itself)."""
    if k <= 0:
        return ""
    candidates = [p for p in pool if exclude is None or p.source != exclude.source]
    if len(candidates) < k:
        raise TaskError(
            f"{k} few-shot examples asked for, but only {len(candidates)} are available"
        )
    shots = random.Random(f"{seed}:{index}").sample(candidates, k)
    solved = [s.context + TARGET_DELIMITER + s.choices[s.gold] for s in shots]
    return FEWSHOT_DELIMITER.join(solved) + FEWSHOT_DELIMITER


def lettered_prompt(item: MCItem) -> str:
    """The context, the choices as "A. ...", one a line, and "Answer:" (generation method)."""
    if len(item.choices) > len(LETTERS):
        raise TaskError(
            f"{item.source}: {len(item.choices)} choices, but the generation method letters "
            f"them A to Z, so at most {len(LETTERS)}; score this task with method "
            "'loglikelihood' (--mc-method loglikelihood, on a checkpoint or a server that "
            "returns log-probabilities), or split the item's choices"
        )
    lines = [f"{LETTERS[j]}. {choice}" for j, choice in enumerate(item.choices)]
    return "\n".join([item.context, *lines, "Answer:"])


def _lettered(match: re.Match[str] | None, n_choices: int) -> int | None:
    """The index of the letter `match` found, if it is one of the `n_choices` shown."""
    if match is None:
        return None
    index = LETTERS.index(next(g for g in match.groups() if g))
    return index if index < n_choices else None


def read_answer(text: str, choices: Sequence[str]) -> int | None:
    """The choice a generated answer names: a letter alone, else a choice's text, else a
    letter the answer starts with ("B. ..."); None if none of these."""
    answer = text.strip()
    alone = _lettered(_LETTER_ALONE.fullmatch(answer), len(choices))
    if alone is not None:
        return alone
    said = normalize_answer(answer)
    named = [
        (len(c), j)
        for j, c in enumerate(map(normalize_answer, choices))
        if c and (said == c or said.startswith(c + " "))
    ]
    if named:
        return max(named)[1]
    return _lettered(_LETTER_FIRST.match(answer), len(choices))


def _evaluate_by_generation(
    lm: EvalLM,
    items: Sequence[MCItem],
    pool: Sequence[MCItem],
    *,
    num_fewshot: int,
    seed: int,
    progress: bool,
    fallback_cause: str | None = None,
) -> dict[str, Any]:
    """Ask for lettered answers; `fallback_cause` is why log-likelihood scoring was not used,
    None when generation was requested."""
    prompts = []
    for i, item in enumerate(items):
        shots = []
        if num_fewshot:
            candidates = [p for p in pool if p.source != item.source]
            if len(candidates) < num_fewshot:
                raise TaskError(
                    f"{num_fewshot} few-shot examples asked for, but only {len(candidates)} "
                    "are available"
                )
            drawn = random.Random(f"{seed}:{i}").sample(candidates, num_fewshot)
            shots = [f"{lettered_prompt(s)} {LETTERS[s.gold]}" for s in drawn]
        prompts.append(FEWSHOT_DELIMITER.join([*shots, lettered_prompt(item)]))
    outputs = lm.generate(prompts, _ANSWER, progress=progress)
    acc, samples, unparsed = [], [], 0
    for item, prompt, out in zip(items, prompts, outputs):
        pred = read_answer(out.text, item.choices)
        unparsed += pred is None
        acc.append(float(pred == item.gold))
        samples.append(
            {
                "source": item.source,
                "gold": item.gold,
                "pred": pred,
                "generated": out.text,
                "truncated": out.truncated,
                "context_chars": len(prompt),
            }
        )
    mean, stderr = mean_stderr(acc)
    result: dict[str, Any] = {
        "kind": "multiple_choice",
        "n": len(items),
        "method": "generate",
        "method_detail": GENERATE_METHOD,
        "method_reason": "requested" if fallback_cause is None else "fallback",
        "acc": mean,
        "acc_stderr": stderr,
        "acc_norm": None,
        "acc_bytes": None,
        "unparsed": unparsed,
        "num_fewshot": num_fewshot,
        "fewshot_seed": seed,
        "truncated": sum(s["truncated"] for s in samples),
        "chance": float(np.mean([1 / len(item.choices) for item in items])),
        "samples": samples,
    }
    if fallback_cause is not None:
        result["fallback_cause"] = fallback_cause
    return result


def evaluate_multiple_choice(
    lm: EvalLM,
    items: Sequence[MCItem],
    *,
    num_fewshot: int = 0,
    fewshot_items: Sequence[MCItem] | None = None,
    seed: int = 1234,
    batch_size: int = 16,
    progress: bool = False,
    method: str = "auto",
) -> dict[str, Any]:
    """acc, acc_norm and acc_bytes (with standard errors) of `lm` on `items`, and per-item rows.

    Few-shot examples come from `fewshot_items` when given, else from `items` without the
    item being asked. `method`: "loglikelihood" scores each choice; "generate" asks for a
    lettered answer (only `acc` then); "auto" scores, and asks instead where `lm` is a server
    that returns no log-probabilities.
    """
    from lmforge.eval.endpoint import NoLogprobsError

    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if method not in MC_METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(MC_METHODS)}")
    pool = fewshot_items if fewshot_items is not None else items
    by_generation = dict(num_fewshot=num_fewshot, seed=seed, progress=progress)
    if method == "generate":
        return _evaluate_by_generation(lm, items, pool, **by_generation)
    pairs: list[tuple[str, str]] = []
    contexts: list[str] = []
    for i, item in enumerate(items):
        ctx = fewshot_prefix(i, num_fewshot, pool, seed=seed, exclude=item) + item.context
        contexts.append(ctx)
        pairs.extend((ctx, TARGET_DELIMITER + choice) for choice in item.choices)
    try:
        scores = lm.loglikelihood(pairs, batch_size=batch_size, progress=progress)
    except NoLogprobsError as e:
        if method != "auto":
            raise
        log.warning("%s; asking for lettered answers instead (method: generate)", e)
        return _evaluate_by_generation(lm, items, pool, **by_generation, fallback_cause=str(e))

    acc, acc_norm, acc_bytes, samples = [], [], [], []
    truncated = 0
    pos = 0
    for item, ctx in zip(items, contexts):
        got = scores[pos : pos + len(item.choices)]
        pos += len(item.choices)
        lls = np.array([s.logprob for s in got])
        chars = np.array([float(len(c)) for c in item.choices])
        nbytes = np.array([float(len(c.encode("utf-8"))) for c in item.choices])
        pred = int(np.argmax(lls))
        pred_norm = int(np.argmax(lls / chars))
        pred_bytes = int(np.argmax(lls / nbytes))
        acc.append(float(pred == item.gold))
        acc_norm.append(float(pred_norm == item.gold))
        acc_bytes.append(float(pred_bytes == item.gold))
        truncated += any(s.truncated for s in got)
        samples.append(
            {
                "source": item.source,
                "gold": item.gold,
                "pred": pred,
                "pred_norm": pred_norm,
                "loglik": [s.logprob for s in got],
                "tokens": [s.tokens for s in got],
                "is_greedy": [s.is_greedy for s in got],
                "truncated": any(s.truncated for s in got),
                "context_chars": len(ctx),
            }
        )
    result: dict[str, Any] = {"kind": "multiple_choice", "n": len(items)}
    result["method"] = "loglikelihood"
    for name, values in (("acc", acc), ("acc_norm", acc_norm), ("acc_bytes", acc_bytes)):
        mean, stderr = mean_stderr(values)
        result[name] = mean
        result[f"{name}_stderr"] = stderr
    result.update(
        num_fewshot=num_fewshot,
        fewshot_seed=seed,
        truncated=truncated,
        chance=float(np.mean([1 / len(item.choices) for item in items])),
        samples=samples,
    )
    return result
