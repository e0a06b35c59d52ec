"""Extractive question answering: a start/end head on a BERT-style encoder, fine-tuned on SQuAD.

The body is an encoder run (`--from runs/x`, or a Hugging Face BERT folder imported through
`lmforge.finetune.base.resolve_base`), or the same architecture freshly initialised
(`init = "scratch"`, the baseline that shows what pretraining transfers). A linear layer maps
each hidden state of `Encoder.hidden_states(ids, attention_mask, token_type_ids)` to a start
and an end logit (Devlin et al., 2019, section 4.2); the loss is the mean of the two
cross-entropies over the window's positions. Windows, offsets, n-best decoding, the SQuAD 2.0
null answer and the official scoring are in `lmforge.finetune.squad`.

Unanswerable questions (`null_answers = "auto"`: when the training data has some) point at
`[CLS]`; at prediction time a question is answered "" when its `[CLS]` score beats its best
span by more than a threshold, tuned for F1 on the validation questions (0 without them).
The kept step and that threshold are both chosen on validation, so validation scores are
optimistic, not held out: eval.json (`val.note`) and report.md say so; test scores are held out.

The body trains at `lr` and the head at `head_lr` with AdamW and linear warmup / decay; the
step with the best validation F1 is kept. The output folder holds `model.safetensors` (body and
head), `qa.json`, the tokenizer, `metrics.jsonl`, `eval.json`, `report.md` and
`predictions-{val,test}.json`; `load_qa` reads it back to answer questions.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.finetune import squad
from lmforge.finetune.base import fit, load_base_model, resolve_base
from lmforge.io import atomic_path, write_json_atomic, write_text_atomic
from lmforge.model import build_model, model_config_from_dict
from lmforge.tokenizer.tokenizer import Tokenizer, load_tokenizer
from lmforge.train import checkpoint as ckpt


@dataclass(kw_only=True)
class QAConfig:
    """How an extractive QA model is fine-tuned and judged."""

    # Held out of the train file by paragraph (questions on one context stay together):
    # first the test share, then the validation share of what is left.
    val_fraction: float = 0.1  # when no val file is given
    test_fraction: float = 0.0  # when no test file is given
    max_train_questions: int = 0  # a random sample of this many (seed `seed`); 0: all
    init: Literal["pretrained", "scratch"] = "pretrained"
    null_answers: Literal["auto", "yes", "no"] = "auto"  # auto: if train has unanswerable
    max_len: int = 0  # tokens per window; 0: the model's context
    doc_stride: int = 32  # tokens shared by consecutive windows of a long context
    max_query_len: int = 32  # question tokens kept
    max_answer_len: int = 30  # tokens in a predicted answer
    n_best: int = 20  # start and end candidates per window
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 1e-4  # the body
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    evals_per_epoch: int = 2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("epochs", "lr", "head_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("batch_size", "evals_per_epoch", "max_query_len", "max_answer_len", "n_best"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.doc_stride < 0 or self.max_len < 0:
            raise ConfigError(
                f"doc_stride and max_len must be >= 0, got {self.doc_stride}, {self.max_len}"
            )
        if self.null_answers not in ("auto", "yes", "no"):
            raise ConfigError(f"null_answers must be auto, yes or no, got {self.null_answers!r}")


def _split_by_context(
    questions: list[squad.Question], fraction: float, seed: int
) -> tuple[list[squad.Question], list[squad.Question]]:
    """(kept, held out): about `fraction` of the paragraphs, with all their questions."""
    contexts = list(dict.fromkeys(q.context for q in questions))
    random.Random(seed).shuffle(contexts)
    held = set(contexts[: round(len(contexts) * fraction)])
    return [q for q in questions if q.context not in held], [
        q for q in questions if q.context in held
    ]


def _splits(
    cfg: QAConfig, train_file: Path, val_file: Path | None, test_file: Path | None
) -> tuple[dict[str, list[squad.Question]], dict[str, int]]:
    train = squad.read_squad(train_file)
    audit: dict[str, int] = {}
    splits: dict[str, list[squad.Question]] = {"val": [], "test": []}
    for name, given, fraction, seed in (
        ("test", test_file, cfg.test_fraction, cfg.seed),
        ("val", val_file, cfg.val_fraction, cfg.seed + 1),
    ):
        if given:
            # A question the model trained on says nothing about the test; drop it there.
            ids = {q.id for q in train}
            held = squad.read_squad(given)
            splits[name] = [q for q in held if q.id not in ids]
            audit[f"{name}_questions_in_train_removed"] = len(held) - len(splits[name])
            contexts = {q.context for q in train}
            audit[f"{name}_questions_on_train_contexts"] = sum(
                q.context in contexts for q in splits[name]
            )
        elif fraction:
            train, splits[name] = _split_by_context(train, fraction, seed)
    if cfg.max_train_questions and cfg.max_train_questions < len(train):
        train = random.Random(cfg.seed).sample(train, cfg.max_train_questions)
    if not train:
        raise DataError(f"{train_file}: no training questions left after the held-out splits")
    splits["train"] = train
    return splits, audit


class SpanExtractor(nn.Module):
    """An encoder body and a start/end head: (B, T) ids -> two (B, T) logit tensors."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.d_model, 2)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body.hidden_states(ids, attention_mask, token_type_ids)  # (B, T, C)
        logits = self.head(h).float()  # (B, T, 2)
        # Padding can never be an answer end.
        logits = logits.masked_fill(~attention_mask.bool()[..., None], -1e4)
        return logits[..., 0], logits[..., 1]  # (B, T) each


def _batch(features: list[squad.Feature], pad: int, device: torch.device):
    T = max(len(f.ids) for f in features)
    ids = torch.full((len(features), T), pad, dtype=torch.long)
    types = torch.zeros((len(features), T), dtype=torch.long)
    mask = torch.zeros((len(features), T), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, : len(f.ids)] = torch.tensor(f.ids)
        types[i, : len(f.ids)] = torch.tensor(f.types)
        mask[i, : len(f.ids)] = 1
    return ids.to(device), mask.to(device), types.to(device)


@torch.no_grad()
def _logits(
    model: SpanExtractor, features: list[squad.Feature], pad: int, batch_size: int = 64
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    starts: list[torch.Tensor] = []
    ends: list[torch.Tensor] = []
    for lo in range(0, len(features), batch_size):
        chunk = features[lo : lo + batch_size]
        s, e = model(*_batch(chunk, pad, device))
        starts += list(s.cpu())
        ends += list(e.cpu())
    model.train(was_training)
    return starts, ends


def finetune_qa(
    cfg: QAConfig,
    from_run: str | Path,
    train_file: str | Path,
    out_dir: str | Path,
    *,
    val_file: str | Path | None = None,
    test_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune extractive QA on `train_file`; return (and write) validation/test EM and F1."""
    from lmforge.train.trainer import resolve_device

    out = Path(out_dir)
    if (out / "qa.json").exists():
        raise ConfigError(f"{out} already holds a QA model; choose another --out")
    splits, audit = _splits(
        cfg,
        Path(train_file),
        Path(val_file) if val_file else None,
        Path(test_file) if test_file else None,
    )
    run = resolve_base(from_run, out)
    torch.manual_seed(cfg.seed)
    body, tokenizer, run_config = load_base_model(run, {"bert"}, "lmforge finetune qa", cfg.init)
    max_len = min(cfg.max_len or body.config.max_seq_len, body.config.max_seq_len)
    null = cfg.null_answers == "yes" or (
        cfg.null_answers == "auto" and any(not q.answerable for q in splits["train"])
    )
    if not null and any(not q.answerable for q in splits["train"]):
        raise DataError(
            f"{train_file} has unanswerable questions but null_answers='no'; use auto or yes"
        )
    build = dict(max_len=max_len, doc_stride=cfg.doc_stride, max_query_len=cfg.max_query_len)
    feats: dict[str, list[squad.Feature]] = {}
    for name, questions in splits.items():
        feats[name], counts = squad.build_features(questions, tokenizer, **build)
        audit |= {f"{name}_questions": len(questions)}
        audit |= {f"{name}_{k}": v for k, v in counts.items()}
    device = resolve_device(cfg.device)
    model = SpanExtractor(body).to(device)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0

    groups = [
        {"params": list(model.head.parameters()), "lr": cfg.head_lr, "initial_lr": cfg.head_lr},
        {"params": list(body.parameters()), "lr": cfg.lr, "initial_lr": cfg.lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    train = feats["train"]
    out.mkdir(parents=True, exist_ok=True)

    def spans(name: str) -> list[dict[str, Any]]:
        s, e = _logits(model, feats[name], pad)
        return squad.best_spans(
            splits[name], feats[name], s, e, n_best=cfg.n_best, max_answer_len=cfg.max_answer_len
        )

    def batch_loss(chunk: list[int]) -> torch.Tensor:
        batch = [train[i] for i in chunk]
        start_logits, end_logits = model(*_batch(batch, pad, device))
        ys = torch.tensor([f.start for f in batch], device=device)
        ye = torch.tensor([f.end for f in batch], device=device)
        return (F.cross_entropy(start_logits, ys) + F.cross_entropy(end_logits, ye)) / 2

    def validate() -> dict[str, float]:
        val_spans = spans("val")
        threshold = squad.best_null_threshold(splits["val"], val_spans) if null else None
        val = squad.score(splits["val"], squad.predictions(val_spans, threshold))
        return {"exact_match": val["exact_match"], "f1": val["f1"]}

    # The weights kept are those of the step with the best validation F1.
    fitted = fit(
        model, optimizer, batch_loss, n_examples=len(train), epochs=cfg.epochs,
        batch_size=cfg.batch_size, warmup_fraction=cfg.warmup_fraction, grad_clip=cfg.grad_clip,
        evals_per_epoch=cfg.evals_per_epoch, seed=cfg.seed,
        validate=validate if splits["val"] else None, keep_best="f1",
        metrics_path=out / "metrics.jsonl", progress=progress, desc="finetune qa",
    )  # fmt: skip

    threshold = None
    if null:
        threshold = 0.0
        if splits["val"]:
            threshold = squad.best_null_threshold(splits["val"], spans("val"))
    result: dict[str, Any] = {
        "train_questions": len(splits["train"]),
        "train_windows": len(train),
        "steps": fitted.steps,
        "best_step": fitted.best_step,
        "train_seconds": round(fitted.train_seconds, 1),
        "init": cfg.init,
        "from": str(from_run),
        "null_answers": null,
        "null_threshold": threshold,
        "data": audit,
    }
    for name in ("val", "test"):
        if not splits[name]:
            continue
        found = spans(name)
        answers = squad.predictions(found, threshold)
        result[name] = squad.score(splits[name], answers)
        if name == "val":
            chosen = "the kept step and the null threshold were" if null else "the kept step was"
            result[name]["note"] = (
                f"{chosen} chosen to maximise F1 on these questions, so these scores are "
                "optimistic, not a held-out estimate (the test scores are)"
            )
        if null:  # what the spans alone score, as if no question were unanswerable
            spans_only = squad.score(splits[name], [s["text"] for s in found])
            result[name] |= {f"span_only_{k}": spans_only[k] for k in ("exact_match", "f1")}
        rows = []
        for q, s, a in zip(splits[name], found, answers):
            em, f1 = squad.qa_scores(a, q.answers)
            rows.append(
                {
                    "id": q.id,
                    "question": q.question,
                    "prediction": a,
                    "references": list(q.answers),
                    "exact_match": em,
                    "f1": f1,
                    "span": s["text"],
                    "null_minus_span": s["null_score"] - s["score"],
                }
            )
        write_json_atomic(out / f"predictions-{name}.json", rows)

    with atomic_path(out / "model.safetensors") as tmp:
        save_file(ckpt.model_state(model), str(tmp))
    shutil.copytree(run / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    write_json_atomic(
        out / "qa.json",
        {
            "model": run_config["model"],
            "tokenizer": run_config.get("tokenizer", {}),
            "max_len": max_len,
            "null_threshold": threshold,
            "config": asdict(cfg),
        },
    )
    write_json_atomic(out / "eval.json", result)
    write_text_atomic(out / "report.md", _report(result))
    return result


def _report(result: dict[str, Any]) -> str:
    data = result["data"]
    lines = [
        f"# Extractive QA fine-tuned from {result['from']} ({result['init']})",
        "",
        f"{result['train_questions']:,} training questions in {result['train_windows']:,} "
        f"windows, {result['steps']} steps ({result['train_seconds']} s); kept the step with "
        f"the best validation F1: {result['best_step']}. Unanswerable questions: "
        + (
            f"yes, null threshold {result['null_threshold']:.3f}."
            if result["null_answers"]
            else "no (every question gets a span)."
        ),
        "",
        f"Answers not on token boundaries in training (the span is the covering tokens): "
        f"{data.get('train_answers_not_token_aligned', 0)}.",
    ]
    for name in ("val", "test"):
        if name not in result:
            continue
        m = result[name]
        lines += [
            "",
            f"## {name}: exact match {m['exact_match']:.2f}, F1 {m['f1']:.2f} "
            f"({m['questions']:,} questions)",
        ]
        if "span_only_f1" in m:
            lines += [
                "",
                f"Best spans alone, never answering 'no answer': exact match "
                f"{m['span_only_exact_match']:.2f}, F1 {m['span_only_f1']:.2f}.",
            ]
        if "note" in m:
            lines += ["", f"Tuned on, not held out: {m['note']}."]
        removed = data.get(f"{name}_questions_in_train_removed")
        if removed:
            lines += ["", f"{removed} questions also in the training file were left out."]
        on_train = data.get(f"{name}_questions_on_train_contexts")
        if on_train is not None:
            lines += [
                "",
                f"Questions on a paragraph that is also in the training file (kept; the model "
                f"has read that context): {on_train:,}.",
            ]
        if "has_answer_questions" in m:
            lines += [
                "",
                "| questions | count | exact match | F1 |",
                "|---|---|---|---|",
            ]
            for part in ("has_answer", "no_answer"):
                lines.append(
                    f"| {part.replace('_', ' ')} | {m[f'{part}_questions']} | "
                    f"{m[f'{part}_exact_match']:.2f} | {m[f'{part}_f1']:.2f} |"
                )
        lines += ["", f"Per-question answers: `predictions-{name}.json`."]
    return "\n".join(lines) + "\n"


@dataclass
class LoadedQA:
    model: SpanExtractor
    tokenizer: Tokenizer
    meta: dict[str, Any]

    def answer(self, question: str, context: str) -> dict[str, Any]:
        """The best answer span of `context` ("" when the model judges it unanswerable)."""
        cfg = self.meta["config"]
        q = squad.Question("0", question, context, (), (), "input")
        feats, _ = squad.build_features(
            [q],
            self.tokenizer,
            max_len=self.meta["max_len"],
            doc_stride=cfg["doc_stride"],
            max_query_len=cfg["max_query_len"],
        )
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        s, e = _logits(self.model, feats, pad)
        [span] = squad.best_spans(
            [q], feats, s, e, n_best=cfg["n_best"], max_answer_len=cfg["max_answer_len"]
        )
        [text] = squad.predictions([span], self.meta["null_threshold"])
        return {"answer": text, "span": span["text"], "score": span["score"]}


def load_qa(path: str | Path, device: str = "cpu") -> LoadedQA:
    """A QA model written by `finetune_qa`, in eval mode."""
    path = Path(path)
    meta_path = path / "qa.json"
    if not meta_path.is_file():
        raise DataError(f"{path} holds no QA model (no qa.json); run `lmforge finetune qa`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    model = SpanExtractor(build_model(model_config_from_dict(meta["model"])))
    ckpt.load_model_weights(model, path / "model.safetensors")
    model.to(device).eval()
    return LoadedQA(model, load_tokenizer(path / "tokenizer"), meta)
