"""Where evaluation results go: `eval.json`, `eval.md` and per-item samples, side by side.

Every evaluation of a checkpoint is recorded in that checkpoint's folder
(`runs/x/checkpoints/step-N/`), because a score belongs to a set of weights and `best` may
point elsewhere tomorrow; an evaluation of an endpoint is recorded in the folder named on the
command line. Results are merged into `eval.json`, keyed by task (`split:test`,
`hellaswag`, `hellaswag-5shot`, ...), so evaluating another task adds to the file and
evaluating the same task again replaces its entry. Multiple choice answered by generation
(lettered choices, `lmforge.eval.multiple_choice`) is keyed `KEY-generate` and its metrics are
labelled so in the table (`acc (generate)`): its accuracy is not comparable with one from
log-likelihood scoring, and a fallback against a server without logprobs must not replace a
log-likelihood score of the same task. `eval.md` is regenerated from the whole `eval.json`
each time, and each task's per-item rows go to `eval-samples/KEY.jsonl`.

Each write goes to a temporary name and is renamed into place, under an advisory lock
(`fcntl`, where the platform has it) so two evaluations finishing at once do not drop each
other's entries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.io import write_json_atomic, write_text_atomic

EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
SAMPLES_DIR = "eval-samples"

# (metric, stderr key) shown in the summary table for each kind of result.
_TABLE_METRICS = {
    "split": [("loss", None), ("perplexity", None), ("bits_per_byte", None),
              ("masked_accuracy", None)],
    "translation": [("bleu", None), ("chrf", None)],
    "multiple_choice": [("acc", "acc_stderr"), ("acc_norm", "acc_norm_stderr"),
                        ("acc_bytes", "acc_bytes_stderr")],
    "generation": [("exact_match", "exact_match_stderr"), ("f1", "f1_stderr"),
                   ("bleu", None), ("chrf", None), ("rouge1", "rouge1_stderr"),
                   ("rouge2", "rouge2_stderr"), ("rougeL", "rougeL_stderr")],
}  # fmt: skip


SPLIT_NAMES = {"train", "val", "valid", "validation", "dev", "test", "small-test"}
GENERATE_SUFFIX = "-generate"  # the key suffix of multiple choice answered by generation


def task_key(task_file: str | Path, num_fewshot: int = 0) -> str:
    """The default key of a task file's results: its name, plus `-Kshot` when few-shot.

    A file named after a split (cnn_dailymail/test.jsonl) is keyed with its folder too
    (`cnn_dailymail-test`), since "test" alone says nothing.
    """
    path = Path(task_file)
    name = path.name
    for suffix in (".jsonl", ".json"):
        name = name.removesuffix(suffix)
    if name in SPLIT_NAMES and path.parent.name:
        name = f"{path.parent.name}-{name}"
    return name + (f"-{num_fewshot}shot" if num_fewshot else "")


def _by_generation(result: dict[str, Any]) -> bool:
    """Multiple choice answered by generation rather than by scoring each choice."""
    return result.get("kind") == "multiple_choice" and result.get("method") == "generate"


def result_key(key: str, result: dict[str, Any]) -> str:
    """The key `result` is stored under: `key`, plus `-generate` for multiple choice answered
    by generation, so that it never replaces a log-likelihood score of the same task."""
    if _by_generation(result) and not key.endswith(GENERATE_SUFFIX):
        return key + GENERATE_SUFFIX
    return key


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the atomic rename still protects the file
        yield
        return
    with open(dest / f".{EVAL_JSON}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_eval(dest_dir: str | Path) -> dict[str, Any]:
    """The `eval.json` of a folder ({"results": {}} when there is none yet)."""
    path = Path(dest_dir) / EVAL_JSON
    if not path.exists():
        return {"results": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); move it aside and evaluate again"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path} has no 'results' object; move it aside and evaluate again")
    return data


def record_eval(
    dest_dir: str | Path, key: str, result: dict[str, Any], *, model: dict[str, Any]
) -> dict[str, Path]:
    """Merge `result` into dest_dir/eval.json under `result_key(key, result)`, rewrite eval.md,
    write the samples.

    A `samples` list in `result` goes to eval-samples/KEY.jsonl rather than into eval.json.
    Returns the paths written.
    """
    key = result_key(key, result)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    entry = {k: v for k, v in result.items() if k != "samples"}
    entry["model"] = model
    entry["evaluated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    written: dict[str, Path] = {}
    samples = result.get("samples")
    if samples is not None:
        path = dest / SAMPLES_DIR / f"{_safe_name(key)}.jsonl"
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        write_text_atomic(path, text)
        entry["samples_file"] = str(path.relative_to(dest))
        written["samples"] = path
    with _locked(dest):
        data = read_eval(dest)
        data["results"][key] = entry
        data["lmforge_version"] = __version__
        write_json_atomic(dest / EVAL_JSON, data)
        write_text_atomic(dest / EVAL_MD, render_markdown(data, title=str(dest)))
    written.update(json=dest / EVAL_JSON, markdown=dest / EVAL_MD)
    return written


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _model_line(model: dict[str, Any]) -> str:
    if model.get("kind") == "endpoint":
        return f"endpoint {model.get('url')} (model `{model.get('model')}`)"
    return f"checkpoint `{model.get('checkpoint')}` of `{model.get('run')}`"


def _details(key: str, r: dict[str, Any]) -> list[str]:
    lines = [f"### {key}", "", f"- model: {_model_line(r.get('model', {}))}"]
    lines.append(f"- evaluated: {r.get('evaluated_at', '?')}")
    kind = r.get("kind")
    if kind == "split":
        lines.append(f"- {r.get('tokens', 0):,} tokens of the `{r.get('split')}` split")
    elif kind == "translation":
        dec = r.get("decoding", {})
        lines.append(f"- `{r.get('source')}` against `{r.get('reference')}`")
        lines.append(
            f"- {r.get('n', 0):,} lines; beam {dec.get('beam')}, length penalty "
            f"{dec.get('length_penalty')}; {r.get('truncated', 0)} source lines cut to fit"
        )
        for name in ("bleu_signature", "chrf_signature"):
            lines.append(f"- sacrebleu {name.split('_')[0]} signature: `{r.get(name)}`")
    else:
        if r.get("task_file"):
            lines.append(f"- task: `{r['task_file']}` ({r.get('format', kind)})")
        lines.append(f"- items: {r.get('n', 0):,}, few-shot examples: {r.get('num_fewshot', 0)}")
        if r.get("truncated"):
            lines.append(f"- {r['truncated']:,} items had their prompt cut on the left to fit")
    if kind == "multiple_choice":
        lines.append(f"- chance accuracy: {_fmt(r.get('chance'))}")
        if _by_generation(r):
            lines.append(
                f"- method: {r.get('method_detail')}; {r.get('unparsed', 0):,} answers named "
                "no choice (counted wrong)"
            )
            if r.get("method_reason") == "requested":
                lines.append("- generation was requested (--mc-method generate)")
            elif r.get("method_reason") == "fallback":
                lines.append(
                    f"- generation was the fallback of --mc-method auto: {r.get('fallback_cause')}"
                )
        elif r.get("method"):
            lines.append(f"- method: {r['method']} (each choice scored)")
    if kind == "generation":
        dec = r.get("decoding", {})
        lines.append(
            f"- decoding: max {dec.get('max_new_tokens')} new tokens, temperature "
            f"{dec.get('temperature')}, stop {dec.get('stop')}"
        )
        if r.get("template"):
            lines.append(f"- template: `{json.dumps(r['template'])}`")
        for name in ("bleu_signature", "chrf_signature"):
            if r.get(name):
                lines.append(f"- sacrebleu {name.split('_')[0]} signature: `{r[name]}`")
        if r.get("skipped"):
            lines.append(f"- {r['skipped']} records skipped: no reference text")
    if r.get("samples_file"):
        lines.append(f"- per-item rows: `{r['samples_file']}`")
    return [*lines, ""]


def render_markdown(data: dict[str, Any], *, title: str = "") -> str:
    """The Markdown report of an eval.json: one summary table, then each task's settings."""
    results = data.get("results", {})
    out = [f"# Evaluation: {title}" if title else "# Evaluation", ""]
    out += [
        "Multiple-choice accuracies are fractions; generation metrics are on a 0-100 scale "
        "(SQuAD exact match and F1, sacrebleu BLEU and chrF, ROUGE F-measure with stemming).",
        "",
        "| task | kind | n | metric | value | ± stderr |",
        "|---|---|---:|---|---:|---:|",
    ]
    for key, r in sorted(results.items()):
        kind = r.get("kind", "?")
        n = f"{r['tokens']:,} tokens" if kind == "split" else f"{r.get('n', 0):,}"
        # An accuracy from lettered answers is not comparable with one from scoring choices.
        how = " (generate)" if _by_generation(r) else ""
        for metric, err in _TABLE_METRICS.get(kind, []):
            if r.get(metric) is None:
                continue
            out.append(
                f"| {key} | {kind} | {n} | {metric}{how} | {_fmt(r[metric])} | "
                f"{_fmt(r.get(err)) if err else ''} |"
            )
    out += ["", "## Details", ""]
    for key, r in sorted(results.items()):
        out += _details(key, r)
    return "\n".join(out)
