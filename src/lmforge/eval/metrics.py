"""The metrics of the fields lmforge evaluates in, computed the way those fields report them.

| metric        | what                                     | from                             |
|---------------|------------------------------------------|----------------------------------|
| `exact_match` | normalized prediction == a reference     | SQuAD v1.1's evaluate script     |
| `f1`          | token-overlap F1 with the best reference | SQuAD v1.1's evaluate script     |
| `bleu`        | corpus BLEU                              | `sacrebleu` (signature recorded) |
| `chrf`        | corpus chrF                              | `sacrebleu` (signature recorded) |
| `rouge`       | ROUGE-1/2/L F-measure, Porter stemming   | `rouge-score` (ROUGE-1.5.5 port) |
| `acc`         | multiple-choice accuracy and its stderr  | lm-evaluation-harness            |

Generation metrics are on a 0-100 scale, as the SQuAD script, sacrebleu and ROUGE papers
report them; multiple-choice accuracy is a fraction, as the harness reports it. The SQuAD
normalization is the official one, written out here because it is a dozen lines of the
official script (which is not a package); BLEU, chrF and ROUGE come from their reference
libraries, never re-implemented.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

GENERATION_METRICS = ("exact_match", "f1", "bleu", "chrf", "rouge")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """100 if the normalized prediction equals any normalized reference, else 0."""
    norm = normalize_answer(prediction)
    return 100.0 * max(float(norm == normalize_answer(r)) for r in references)


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 (0-100) against the best-matching reference."""
    return 100.0 * max(_f1(prediction, r) for r in references)


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-item reference lists to sacrebleu's streams; items with fewer references get None."""
    most = max(len(r) for r in references)
    return [[r[k] if k < len(r) else None for r in references] for k in range(most)]


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, exp smoothing) and its signature."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    score = metric.corpus_score(list(predictions), _reference_streams(references))
    return {"bleu": score.score, "bleu_signature": str(metric.get_signature())}


def chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2) and its signature."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    score = metric.corpus_score(list(predictions), _reference_streams(references))
    return {"chrf": score.score, "chrf_signature": str(metric.get_signature())}


def rouge_scores(
    prediction: str, references: Sequence[str], scorer: Any = None
) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (0-100) against the best reference, per type."""
    scorer = scorer or rouge_scorer_()
    scores = scorer.score_multi(list(references), prediction)
    return {t: 100.0 * scores[t].fmeasure for t in ROUGE_TYPES}


def rouge_scorer_() -> Any:
    """rouge-score's scorer with Porter stemming, as the ROUGE papers and most reports use."""
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs its tokenizer choice
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample stddev / sqrt(n)), as the harness reports them."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'exact_match,f1' -> ('exact_match', 'f1'); unknown names are an error that lists them."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    aliases = {"em": "exact_match", "rouge1": "rouge", "rouge2": "rouge", "rougel": "rouge"}
    out: list[str] = []
    for name in names:
        name = aliases.get(name, name)
        if name not in GENERATION_METRICS:
            raise ValueError(
                f"unknown metric {name!r}; choose from {', '.join(GENERATION_METRICS)}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no metric given; choose from {', '.join(GENERATION_METRICS)}")
    return tuple(out)


def score_generations(
    predictions: Sequence[str], references: Sequence[Sequence[str]], metrics: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Corpus-level results and per-item scores of `predictions` against `references`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    per_item: list[dict[str, float]] = [{} for _ in predictions]
    summary: dict[str, Any] = {}
    scorer = rouge_scorer_() if "rouge" in metrics else None
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if "exact_match" in metrics:
            per_item[i]["exact_match"] = exact_match(pred, refs)
        if "f1" in metrics:
            per_item[i]["f1"] = token_f1(pred, refs)
        if scorer is not None:
            per_item[i].update(rouge_scores(pred, refs, scorer))
    item_keys = [k for k in ("exact_match", "f1", *ROUGE_TYPES) if per_item and k in per_item[0]]
    for key in item_keys:
        mean, stderr = mean_stderr([s[key] for s in per_item])
        summary[key] = mean
        summary[f"{key}_stderr"] = stderr
    if predictions and "bleu" in metrics:
        summary.update(bleu(predictions, references))
    if predictions and "chrf" in metrics:
        summary.update(chrf(predictions, references))
    return summary, per_item
