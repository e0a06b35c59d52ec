"""Generation tasks: prompts from a template, completions scored against references.

A task is a JSONL file of records (any fields) or a SQuAD-format JSON file (flattened to one
record per question: `context`, `question`, `answers`, `id`, `title`). The prompt is a Jinja
template over a record's fields, e.g. ``"{{ article }}\\n\\nTL;DR:"``; the references are a
field holding a string or a list of strings (or SQuAD's ``{"text": [...]}``).

Templates are Jinja rather than `str.format` because Jinja is what prompt and chat templates
are written in elsewhere (lm-evaluation-harness's `doc_to_text`, the `chat_template` that
`transformers` and instruction tuning store with a tokenizer), it has conditionals for
optional fields (``{% if input %}``), and a sandboxed environment with strict undefined
variables turns a typo into an error naming the field, where `str.format` would also let a
template reach object attributes.

With `num_fewshot` K, K solved examples (``prompt + " " + first reference``, blank lines
between) precede each prompt, drawn as multiple choice draws them. Decoding is greedy unless
a temperature is given, and stops at EOS, at a stop string (default: a blank line, the
harness's default) or after `max_new_tokens`.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.eval.lm import EvalLM
from lmforge.eval.metrics import parse_metrics, score_generations
from lmforge.eval.multiple_choice import (
    FEWSHOT_DELIMITER,
    TARGET_DELIMITER,
    TaskError,
    read_records,
)
from lmforge.infer.generate import GenerationConfig

log = logging.getLogger(__name__)

# Tried in order when no reference field is named.
REFERENCE_FIELDS = (
    "references", "reference", "answers", "answer", "target", "output", "summary", "highlights",
)  # fmt: skip
SQUAD_TEMPLATE = "{{ context }}\n\nQuestion: {{ question }}\nAnswer:"


@dataclass(kw_only=True)
class GenerationTaskConfig:
    """How to prompt, decode and score a generation task."""

    template: str = ""  # Jinja over a record's fields; "" = "{{ prompt }}" (SQuAD: question)
    reference_field: str = ""  # "" = the first of REFERENCE_FIELDS a record has
    metrics: tuple[str, ...] = ("exact_match", "f1")
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = (FEWSHOT_DELIMITER,)
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    strip: bool = True  # score the completion with surrounding whitespace removed

    def __post_init__(self) -> None:
        self.metrics = parse_metrics(self.metrics)
        if self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        self.generation_config()  # validates max_new_tokens, temperature, top_k, top_p

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(self.stop),
        )


@dataclass
class GenerationItem:
    prompt: str
    references: list[str]
    source: str


def _squad_records(path: Path, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article["paragraphs"]):
            for q, qa in enumerate(para["qas"]):
                answers = [x["text"] for x in qa.get("answers", [])]
                where = f"{path}:data[{a}].paragraphs[{p}].qas[{q}]"
                record = {
                    "id": qa.get("id"),
                    "title": article.get("title", ""),
                    "context": para["context"],
                    "question": qa["question"],
                    "answers": answers,
                }
                out.append((where, record))
    return out


def read_generation_records(path: str | Path) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """(where, record) pairs of a JSONL task or a SQuAD JSON file, and whether it was SQuAD."""
    path = Path(path)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            try:
                return _squad_records(path, data), True
            except (KeyError, TypeError) as e:
                raise TaskError(f"{path}: not SQuAD-format JSON (missing {e})") from None
    return list(read_records(path)), False


def _references(value: Any) -> list[str] | None:
    if isinstance(value, dict) and "text" in value:  # SQuAD in the Hugging Face layout
        value = value["text"]
    if isinstance(value, str):
        return [value] if value.strip() else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        refs = [v for v in value if v.strip()]
        return refs or None
    return None


def build_template(source: str):
    """A sandboxed Jinja template; unknown variables are errors, not empty strings."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TaskError(
            f"the prompt template does not parse (line {e.lineno}: {e.message})"
        ) from None


def load_generation_items(
    path: str | Path, cfg: GenerationTaskConfig, *, limit: int | None = None
) -> tuple[list[GenerationItem], dict[str, Any]]:
    """Render each record's prompt and collect its references; info says what was used."""
    import jinja2

    records, is_squad = read_generation_records(path)
    if not records:
        raise TaskError(f"{path} holds no records")
    source = cfg.template or (SQUAD_TEMPLATE if is_squad else "")
    if not source:
        if "prompt" not in records[0][1]:
            raise TaskError(
                f"{records[0][0]}: no --template given and the records have no 'prompt' field; "
                f"write a Jinja template over their fields {sorted(records[0][1])}, e.g. "
                "--template '{{ article }}\\n\\nTL;DR:'"
            )
        source = "{{ prompt }}"
    template = build_template(source)
    ref_field = cfg.reference_field
    if not ref_field:
        ref_field = next((f for f in REFERENCE_FIELDS if f in records[0][1]), "")
        if not ref_field:
            raise TaskError(
                f"{records[0][0]}: no reference field found among {sorted(records[0][1])}; "
                f"name it with --reference-field (looked for {', '.join(REFERENCE_FIELDS)})"
            )
    items: list[GenerationItem] = []
    skipped = 0
    for where, record in records:
        if limit is not None and len(items) >= limit:
            break
        if ref_field not in record:
            raise TaskError(f"{where}: the record has no reference field {ref_field!r}")
        refs = _references(record[ref_field])
        if refs is None:
            skipped += 1  # e.g. XSum's row with "summary": null: nothing to score against
            log.warning("%s: skipped, %r holds no reference text", where, ref_field)
            continue
        try:
            prompt = template.render(**record)
        except jinja2.UndefinedError as e:
            raise TaskError(
                f"{where}: the template uses a field the record lacks ({e.message}); "
                f"its fields are {sorted(record)}"
            ) from None
        except jinja2.TemplateError as e:
            raise TaskError(f"{where}: the template failed to render ({e})") from None
        items.append(GenerationItem(prompt=prompt, references=refs, source=where))
    if not items:
        raise TaskError(f"{path}: no record has a reference to score against")
    info = {"template": source, "reference_field": ref_field, "skipped": skipped}
    return items, info


def fewshot_prompt(
    index: int,
    item: GenerationItem,
    pool: Sequence[GenerationItem],
    *,
    k: int,
    seed: int,
    exclude_self: bool,
) -> str:
    """The item's prompt after `k` solved examples drawn for it from `pool`."""
    if k <= 0:
        return item.prompt
    candidates = [p for p in pool if not (exclude_self and p.source == item.source)]
    if len(candidates) < k:
        raise TaskError(f"{k} few-shot examples asked for, only {len(candidates)} available")
    shots = random.Random(f"{seed}:{index}").sample(candidates, k)
    solved = [s.prompt + TARGET_DELIMITER + s.references[0] for s in shots]
    return FEWSHOT_DELIMITER.join(solved) + FEWSHOT_DELIMITER + item.prompt


def evaluate_generation(
    lm: EvalLM,
    items: Sequence[GenerationItem],
    cfg: GenerationTaskConfig,
    *,
    fewshot_items: Sequence[GenerationItem] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate a completion per item and score it with `cfg.metrics`; per-item rows too."""
    pool = fewshot_items if fewshot_items is not None else items
    prompts = [
        fewshot_prompt(
            i,
            item,
            pool,
            k=cfg.num_fewshot,
            seed=cfg.fewshot_seed,
            exclude_self=True,
        )
        for i, item in enumerate(items)
    ]
    outputs = lm.generate(prompts, cfg.generation_config(), progress=progress)
    predictions = [o.text.strip() if cfg.strip else o.text for o in outputs]
    summary, per_item = score_generations(
        predictions, [item.references for item in items], cfg.metrics
    )
    samples = [
        {
            "source": item.source,
            "prediction": pred,
            "references": item.references,
            "finish_reason": out.finish_reason,
            "truncated": out.truncated,
            **scores,
        }
        for item, pred, out, scores in zip(items, predictions, outputs, per_item)
    ]
    return {
        "kind": "generation",
        "n": len(items),
        **summary,
        "metrics": list(cfg.metrics),
        "num_fewshot": cfg.num_fewshot,
        "decoding": {
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "top_k": cfg.top_k,
            "top_p": cfg.top_p,
            "seed": cfg.seed,
            "stop": list(cfg.stop),
        },
        "truncated": sum(o.truncated for o in outputs),
        "samples": samples,
    }
