"""SQuAD-format extractive QA data: reading, windowed features, span decoding and scoring.

`read_squad` reads SQuAD v1.1 and v2.0 JSON (`{data: [{title, paragraphs: [{context, qas:
[{id, question, answers: [{text, answer_start}], is_impossible}]}]}]}`) and checks every
answer against its context, so a malformed record (or a file that is not UTF-8) is an error
naming the file and question id (or line).

`build_features` turns each question into one or more windows `[CLS] question [SEP] context
[SEP]` (token types 0 then 1), cutting a long context into windows that overlap by
`doc_stride` tokens, as BERT did for SQuAD (Devlin et al., 2019, section 4.2). Character
offsets come from the Hugging Face `tokenizers` encoding (never padded or truncated, see
`Tokenizer.encodings`), so every context token knows the characters it covers; an answer's
characters map to the first and last token that cover them, and an answer that no token covers
(all its characters dropped by the normalizer) is an error naming the question. A window that
does not hold the whole answer (and every unanswerable question) points both ends at `[CLS]`,
position 0.

`best_spans` is the usual n-best decoding: the `n_best` highest start and end logits of each
window's context tokens, pairs with start <= end and at most `max_answer_len` tokens, the best
sum over all windows of a question (all pairs of a window scored at once as a masked outer
sum). The null score (SQuAD 2.0) is the `[CLS]` start + end logit, the smallest over windows;
a question is answered "" when the null score beats the best span by more than a threshold
(`best_null_threshold` tunes it for F1 on validation data, scoring "" as `qa_scores` does).

`qa_scores` is the official SQuAD v2.0 scoring on top of `lmforge.eval.metrics` (whose
normalization is the official one): references that normalize to nothing are dropped, a
question without references has the reference "", and an empty prediction or reference
scores 100 only against an empty one. The windowing, offset mapping and decoding are written
here because they are a few dozen lines tied to our tokenizer wrapper and model; the
`transformers` pipeline that does the same needs a `transformers` model and tokenizer.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.data.document import DataError, utf8_problem
from lmforge.eval.metrics import exact_match, normalize_answer, token_f1
from lmforge.tokenizer.tokenizer import Tokenizer


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # every reference answer; empty when unanswerable
    starts: tuple[int, ...]  # character offset of each answer in `context`
    where: str  # "file: article 'title'", for messages

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass
class Feature:
    """One window of one question, ready for the model."""

    question: int  # index into the question list
    ids: list[int]
    types: list[int]  # 0 for [CLS] question [SEP], 1 for context [SEP]
    offsets: list[tuple[int, int] | None]  # context characters of each position, else None
    start: int  # answer start/end positions; 0 ([CLS]) when not in this window
    end: int


def _field(record: Any, key: str, kind: type, path: Path, what: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise DataError(f"{path}: {what} has no {key!r} field; is this SQuAD-format JSON?")
    value = record[key]
    if not isinstance(value, kind):
        raise DataError(f"{path}: {what} field {key!r} is {type(value).__name__}, not {kind}")
    return value


def read_squad(path: str | Path) -> list[Question]:
    """Every question of a SQuAD v1.1 / v2.0 JSON file, in file order, answers checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: {utf8_problem(data, e)}; convert the file to UTF-8"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    questions: list[Question] = []
    seen: set[str] = set()
    for a, article in enumerate(_field(doc, "data", list, path, "the file")):
        title = article.get("title", f"#{a}") if isinstance(article, dict) else f"#{a}"
        where = f"{path}: article {title!r}"
        for paragraph in _field(article, "paragraphs", list, path, f"article {title!r}"):
            context = _field(paragraph, "context", str, path, f"a paragraph of {title!r}")
            for qa in _field(paragraph, "qas", list, path, f"a paragraph of {title!r}"):
                qid = str(_field(qa, "id", (str, int), path, f"a question of {title!r}"))
                what = f"question id {qid}"
                if qid in seen:
                    raise DataError(f"{path}: {what} occurs twice; ids must be unique")
                seen.add(qid)
                text = _field(qa, "question", str, path, what)
                answers = _field(qa, "answers", list, path, what) if "answers" in qa else []
                impossible = bool(qa.get("is_impossible", False))
                if impossible and answers:
                    raise DataError(
                        f"{path}: {what} is marked is_impossible but has {len(answers)} "
                        "answers; drop them (v2.0 keeps them as plausible_answers)"
                    )
                if not impossible and not answers:
                    raise DataError(
                        f"{path}: {what} has no answers and is not marked is_impossible; "
                        "give an answer or set is_impossible: true"
                    )
                texts, starts = [], []
                for answer in answers:
                    ans = _field(answer, "text", str, path, f"an answer of {what}")
                    start = _field(answer, "answer_start", int, path, f"an answer of {what}")
                    # A negative start would count from the end of the context.
                    if start < 0 or context[start : start + len(ans)] != ans or not ans.strip():
                        found = context[start : start + len(ans)] if start >= 0 else ""
                        raise DataError(
                            f"{path}: {what}: answer_start {start} does not point at the answer "
                            f"text {ans!r} (the context there reads {found!r}); fix the offset"
                        )
                    texts.append(ans)
                    starts.append(start)
                questions.append(Question(qid, text, context, tuple(texts), tuple(starts), where))
    if not questions:
        raise DataError(f"{path} holds no questions")
    return questions


def qa_scores(prediction: str, references: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1), 0-100, scored as the official SQuAD v2.0 script does."""
    refs = [r for r in references if normalize_answer(r)] or [""]
    if refs == [""] or not normalize_answer(prediction):
        # An empty side matches only an empty side (v2.0's no-answer rule).
        same = 100.0 * float(refs == [""] and not normalize_answer(prediction))
        return same, same
    return exact_match(prediction, refs), token_f1(prediction, refs)


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last token covering characters [start, end) of the context; None when no
    token covers any of them (the normalizer dropped them all, e.g. control characters)."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return (inside[0], inside[-1]) if inside else None


def build_features(
    questions: Sequence[Question],
    tokenizer: Tokenizer,
    *,
    max_len: int,
    doc_stride: int,
    max_query_len: int,
) -> tuple[list[Feature], dict[str, int]]:
    """Windows of every question, and counts: windows, answers not on token boundaries."""
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    if cls_id is None or sep_id is None:
        raise DataError(
            f"the {tokenizer.kind} tokenizer has no [CLS]/[SEP] tokens; extractive QA needs an "
            "encoder trained with a wordpiece vocabulary (or an imported BERT)"
        )
    contexts = list(dict.fromkeys(q.context for q in questions))
    encoded = dict(zip(contexts, tokenizer.encodings(contexts)))
    q_ids = tokenizer.encode_batch([q.question for q in questions])
    features: list[Feature] = []
    unaligned = 0
    for qi, (q, qids) in enumerate(zip(questions, q_ids)):
        qids = qids[:max_query_len]
        enc = encoded[q.context]
        ctx_ids, offsets = enc.ids, enc.offsets
        budget = max_len - len(qids) - 3  # context tokens per window
        if budget <= doc_stride:
            raise DataError(
                f"{q.where}: question id {q.id}: {max_len} tokens per window leave {budget} for "
                f"the context, not more than doc_stride={doc_stride}; lower doc_stride or "
                "max_query_len"
            )
        span = None
        if q.answerable:
            text = q.answers[0]
            lead = len(text) - len(text.lstrip())
            s = q.starts[0] + lead
            e = s + len(text.strip())
            span = _token_span(offsets, s, e)
            if span is None:
                # Nothing to point at: pointing at [CLS] would teach "no answer" instead.
                raise DataError(
                    f"{q.where}: question id {q.id}: no token covers the answer {text!r} (the "
                    f"{tokenizer.kind} tokenizer drops all its characters); fix or drop the "
                    "answer"
                )
            if (offsets[span[0]][0], offsets[span[1]][1]) != (s, e):
                unaligned += 1  # e.g. "Norman" inside the one token "normans"
        prefix = [cls_id, *qids, sep_id]
        lo = 0
        while True:
            hi = min(lo + budget, len(ctx_ids))
            start = end = 0
            if span is not None and lo <= span[0] and span[1] < hi:
                start, end = len(prefix) + span[0] - lo, len(prefix) + span[1] - lo
            features.append(
                Feature(
                    question=qi,
                    ids=[*prefix, *ctx_ids[lo:hi], sep_id],
                    types=[0] * len(prefix) + [1] * (hi - lo + 1),
                    offsets=[None] * len(prefix) + list(offsets[lo:hi]) + [None],
                    start=start,
                    end=end,
                )
            )
            if hi >= len(ctx_ids):
                break
            lo = hi - doc_stride
    return features, {"windows": len(features), "answers_not_token_aligned": unaligned}


def best_spans(
    questions: Sequence[Question],
    features: Sequence[Feature],
    start_logits: Sequence[torch.Tensor],
    end_logits: Sequence[torch.Tensor],
    *,
    n_best: int,
    max_answer_len: int,
) -> list[dict[str, Any]]:
    """Per question: the best span's text and score, and the null ([CLS]) score."""
    best: list[dict[str, Any]] = [
        {"text": "", "score": float("-inf"), "null_score": float("inf")} for _ in questions
    ]
    for f, s_log, e_log in zip(features, start_logits, end_logits):
        out = best[f.question]
        out["null_score"] = min(out["null_score"], float(s_log[0] + e_log[0]))
        ctx = torch.tensor([o is not None for o in f.offsets])
        k = min(n_best, int(ctx.sum()))
        if not k:
            continue
        starts = s_log[: len(f.ids)].masked_fill(~ctx, float("-inf")).topk(k).indices
        ends = e_log[: len(f.ids)].masked_fill(~ctx, float("-inf")).topk(k).indices
        # All k x k candidate pairs at once: a Python loop making tensor calls per pair took
        # ~1 ms a window (over 10 s per SQuAD dev evaluation). The same float32 additions.
        length = ends[None, :] - starts[:, None] + 1
        scores = s_log[starts][:, None] + e_log[ends][None, :]
        scores = scores.masked_fill((length < 1) | (length > max_answer_len), float("-inf"))
        at = int(scores.argmax())  # the first best in (start, end) n-best order, as a loop
        score = float(scores.flatten()[at])
        if score > out["score"]:  # -inf when no pair is valid: never taken
            s, e = int(starts[at // k]), int(ends[at % k])
            out["score"] = score
            out["text"] = questions[f.question].context[f.offsets[s][0] : f.offsets[e][1]]
    return best


def predictions(spans: Sequence[dict[str, Any]], threshold: float | None) -> list[str]:
    """The answer texts; "" where the null score beats the span by more than `threshold`
    (None: never answer "", for data without unanswerable questions)."""
    return [
        "" if threshold is not None and s["null_score"] - s["score"] > threshold else s["text"]
        for s in spans
    ]


def best_null_threshold(questions: Sequence[Question], spans: Sequence[dict[str, Any]]) -> float:
    """The threshold on (null score - best span score) that maximises F1 on these questions."""
    diffs = [s["null_score"] - s["score"] for s in spans]
    span_f1 = [qa_scores(s["text"], q.answers)[1] for q, s in zip(questions, spans)]
    # Scored as `score` scores "": 100 also for references that all normalize to nothing.
    null_f1 = [qa_scores("", q.answers)[1] for q in questions]
    # Answering "" wherever diff > t: below every diff all questions are null; raising t past
    # each diff in turn gives that question its span answer. Questions with equal diffs change
    # together, so a total is only a threshold's once the last of them is counted.
    order = sorted(range(len(spans)), key=lambda i: diffs[i])
    total = sum(null_f1)
    best_total, best_t = total, (diffs[order[0]] - 1.0) if order else 0.0
    for n, i in enumerate(order, 1):
        total += span_f1[i] - null_f1[i]
        if n < len(order) and diffs[order[n]] == diffs[i]:
            continue
        if total > best_total:
            best_total, best_t = total, diffs[i]
    return best_t


def score(questions: Sequence[Question], answers: Sequence[str]) -> dict[str, Any]:
    """Exact match and F1 (0-100) overall and on answerable / unanswerable questions."""
    rows = [qa_scores(a, q.answers) for q, a in zip(questions, answers)]
    result: dict[str, Any] = {"questions": len(rows)}

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    result["exact_match"] = mean([em for em, _ in rows])
    result["f1"] = mean([f1 for _, f1 in rows])
    for name, want in (("has_answer", True), ("no_answer", False)):
        part = [r for q, r in zip(questions, rows) if q.answerable == want]
        if part and len(part) < len(rows):
            result[f"{name}_questions"] = len(part)
            result[f"{name}_exact_match"] = mean([em for em, _ in part])
            result[f"{name}_f1"] = mean([f1 for _, f1 in part])
    return result
