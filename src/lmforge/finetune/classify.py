"""Text classification by fine-tuning a pretrained model: a linear head on pooled features.

The body is a run's GPT or BERT-style encoder (`--from runs/x`, or a Hugging Face folder
imported through `lmforge.finetune.base.resolve_base`), or the same architecture freshly
initialised (`init = "scratch"`, the baseline that shows what pretraining transfers).

- A decoder (GPT) reads each text with an EOS appended as a summary position, right-padded
  (causal attention keeps real tokens blind to the padding after them), and pools the hidden
  state of the last real token (`pool = "last"`, the default) or the mean over real tokens.
- An encoder reads `[CLS] text [SEP]` with an attention mask over the padding and token
  types 0, and pools the `[CLS]` hidden state (`pool = "cls"`, the default, as BERT does) or
  the mean over real tokens.

A linear head maps the pooled features to class logits. The whole body trains at `lr`, or
only LoRA adapters (`lora`), or nothing (`freeze_body`, a linear probe); the head trains at
`head_lr`. Class weights (`"balanced"`) counter an imbalanced training set.

Accuracy, macro and per-class precision / recall / F1 and the confusion matrix come from
scikit-learn. The output folder holds `model.safetensors` (body and head, adapters merged),
`classifier.json`, the tokenizer, `metrics.jsonl`, `eval.json`, `report.md` and
`confusion.png`; `load_classifier` reads it back for `predict`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.finetune import labeled
from lmforge.finetune.base import fit, load_base_model, resolve_base
from lmforge.finetune.lora import LoRAConfig, apply_lora, merge_lora, save_adapters
from lmforge.io import atomic_path, write_json_atomic, write_text_atomic
from lmforge.model import build_model, family_of, model_config_from_dict
from lmforge.tokenizer.tokenizer import Tokenizer, load_tokenizer
from lmforge.train import checkpoint as ckpt

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ClassifyConfig:
    """How a classifier is fine-tuned and judged."""

    text_field: str = "text"  # column name (or 0-based index without a header) / JSON field
    label_field: str = "label"
    header: bool = True  # TSV/CSV files start with a header row
    labels: list[str] = field(default_factory=list)  # class order; empty: sorted train labels
    # Held out of the train file (after its repeated texts are removed): first the test
    # share, then the validation share of what is left.
    val_fraction: float = 0.1  # when no val file is given
    test_fraction: float = 0.0  # when no test file is given
    max_train_examples: int = 0  # a random sample of this many (seed `seed`); 0: all
    pool: Literal["auto", "last", "mean", "cls"] = "auto"  # auto: last (GPT), cls (encoder)
    init: Literal["pretrained", "scratch"] = "pretrained"
    freeze_body: bool = False
    lora: LoRAConfig | None = None
    class_weights: Literal["none", "balanced"] = "none"
    max_len: int = 0  # tokens per text, EOS included; 0: the model's context
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 1e-4  # the body (or the adapters)
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    grad_clip: float = 1.0
    evals_per_epoch: int = 2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("epochs", "lr", "head_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("batch_size", "evals_per_epoch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.freeze_body and self.lora is not None:
            raise ValueError("freeze_body and lora exclude each other: choose one")


# The pooling rules each kind of body can take; the first is its default.
POOLS = {"gpt": ("last", "mean"), "bert": ("cls", "mean")}


def resolve_pool(family: str, pool: str) -> str:
    """`pool` for a body of `family` ("auto" -> its default), or a clear error."""
    allowed = POOLS[family]
    if pool == "auto":
        return allowed[0]
    if pool not in allowed:
        kind = "an encoder" if family == "bert" else "a decoder"
        raise ConfigError(
            f"pool={pool!r} does not fit {kind} ({family}); use one of {', '.join(allowed)}"
        )
    return pool


class SequenceClassifier(nn.Module):
    """A GPT or encoder body, a pooling rule and a linear head: (B, T) ids -> (B, classes)."""

    def __init__(self, body: nn.Module, num_classes: int, pool: str) -> None:
        super().__init__()
        self.body = body
        self.encoder = family_of(body.config) == "bert"
        self.pool = resolve_pool("bert" if self.encoder else "gpt", pool)
        self.head = nn.Linear(body.config.d_model, num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]  # (B, T)
        if self.encoder:  # bidirectional: padding must be masked out of attention
            h = self.body.hidden_states(ids, mask.long(), torch.zeros_like(ids))  # (B, T, C)
        else:
            h = self.body.hidden_states(ids)  # (B, T, C)
        if self.pool == "last":
            pooled = h[torch.arange(h.size(0), device=h.device), lengths - 1]  # (B, C)
        elif self.pool == "cls":
            pooled = h[:, 0]  # (B, C)
        else:
            pooled = (h * mask[..., None]).sum(1) / lengths[:, None]  # (B, C)
        return self.head(pooled)


def encode_texts(
    tokenizer: Tokenizer, texts: list[str], max_len: int, *, encoder: bool = False
) -> list[list[int]]:
    """Token ids per text: cut to `max_len - 1`, then EOS (decoder); or `[CLS]`, the text cut
    to `max_len - 2`, `[SEP]` (encoder)."""
    if encoder:
        cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
        if cls_id is None or sep_id is None:
            raise DataError(
                f"the {tokenizer.kind} tokenizer has no [CLS]/[SEP] tokens, which an encoder "
                "classifier reads; train the encoder with a wordpiece vocabulary"
            )
        return [[cls_id, *ids[: max_len - 2], sep_id] for ids in tokenizer.encode_batch(texts)]
    return [ids[: max_len - 1] + [tokenizer.eos_id] for ids in tokenizer.encode_prompt_batch(texts)]


def pad_id(tokenizer: Tokenizer) -> int:
    """Any id pads: padding is on the right, attention causal and mean pooling masked."""
    for candidate in (tokenizer.pad_id, tokenizer.eos_id):
        if candidate is not None:
            return candidate
    return 0


def _batch(seqs: list[list[int]], pad_id: int, device: torch.device):
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids.to(device), lengths.to(device)


@torch.no_grad()
def predict_ids(
    model: SequenceClassifier, seqs: list[list[int]], pad_id: int, batch_size: int = 64
) -> torch.Tensor:
    """Class probabilities (N, classes); batches of similar length keep padding small."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    probs = torch.empty(len(seqs), model.head.out_features)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, lengths = _batch([seqs[i] for i in chunk], pad_id, device)
        probs[chunk] = model(ids, lengths).float().softmax(-1).cpu()
    model.train(was_training)
    return probs


def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, support = precision_recall_fscore_support(
        gold, pred, labels=ids, average=None, zero_division=0
    )
    mp, mr, mf, _ = precision_recall_fscore_support(
        gold, pred, labels=ids, average="macro", zero_division=0
    )
    return {
        "examples": len(gold),
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "per_class": {
            label: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(gold, pred, labels=ids).tolist(),
    }


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.8 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=120)
    ConfusionMatrixDisplay(np.array(matrix), display_labels=labels).plot(
        ax=ax, cmap="Blues", colorbar=False
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _splits(
    cfg: ClassifyConfig, train_file: Path, val_file: Path | None, test_file: Path | None
) -> tuple[list[str], dict[str, list[labeled.Example]], dict[str, int]]:
    read = dict(text_field=cfg.text_field, label_field=cfg.label_field, header=cfg.header)
    # Repeated texts (SMS spam has 281) would otherwise land on both sides of a held-out split.
    train, repeats = labeled.deduplicate(labeled.read_labeled(train_file, **read))
    names = {"val": "validation file", "test": "test file"}
    test = labeled.read_labeled(test_file, **read) if test_file else []
    if not test_file and cfg.test_fraction:
        train, test = labeled.stratified_split(train, cfg.test_fraction, cfg.seed)
        names["test"] = "held-out test split"
    val = labeled.read_labeled(val_file, **read) if val_file else []
    if not val_file and cfg.val_fraction:
        train, val = labeled.stratified_split(train, cfg.val_fraction, cfg.seed + 1)
        names["val"] = "held-out validation split"
    train = labeled.sample(train, cfg.max_train_examples, cfg.seed)
    labels = labeled.label_set(train, cfg.labels or None)
    for key, split in (("val", val), ("test", test)):
        labeled.check_labels(split, labels, names[key])
    audit = {
        "train_repeats_removed": repeats,
        # Given files are kept whole (they are someone's benchmark); say how much they share.
        "val_texts_also_in_train": labeled.overlap(val, train),
        "test_texts_also_in_train": labeled.overlap(test, train),
    }
    return labels, {"train": train, "val": val, "test": test}, audit


def finetune_classifier(
    cfg: ClassifyConfig,
    from_run: str | Path,
    train_file: str | Path,
    out_dir: str | Path,
    *,
    val_file: str | Path | None = None,
    test_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune a classifier on `train_file`; return (and write) its validation/test metrics."""
    from lmforge.train.trainer import resolve_device

    out = Path(out_dir)
    if (out / "classifier.json").exists():
        raise ConfigError(f"{out} already holds a classifier; choose another --out")
    labels, splits, audit = _splits(
        cfg,
        Path(train_file),
        Path(val_file) if val_file else None,
        Path(test_file) if test_file else None,
    )
    run = resolve_base(from_run, out)
    torch.manual_seed(cfg.seed)
    body, tokenizer, run_config = load_base_model(
        run, set(POOLS), "lmforge finetune classify", cfg.init
    )
    max_len = min(cfg.max_len or body.config.max_seq_len, body.config.max_seq_len)
    device = resolve_device(cfg.device)
    model = SequenceClassifier(body, len(labels), cfg.pool)
    encoder = model.encoder
    adapted = apply_lora(body, cfg.lora) if cfg.lora else []
    if cfg.freeze_body:
        body.requires_grad_(False)
    model.to(device)

    label_id = {label: i for i, label in enumerate(labels)}
    data = {
        name: (
            encode_texts(tokenizer, [e.text for e in split], max_len, encoder=encoder),
            [label_id[e.label] for e in split],
        )
        for name, split in splits.items()
    }
    train_ids, train_y = data["train"]
    pad = pad_id(tokenizer)
    weights = None
    if cfg.class_weights == "balanced":
        counts = torch.bincount(torch.tensor(train_y), minlength=len(labels)).float()
        weights = (counts.sum() / (len(labels) * counts)).to(device)

    body_params = [p for p in body.parameters() if p.requires_grad]
    groups = [
        {"params": list(model.head.parameters()), "lr": cfg.head_lr, "initial_lr": cfg.head_lr}
    ]
    if body_params:
        groups.append({"params": body_params, "lr": cfg.lr, "initial_lr": cfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    out.mkdir(parents=True, exist_ok=True)

    def evaluate(name: str) -> dict[str, Any]:
        seqs, gold = data[name]
        probs = predict_ids(model, seqs, pad)
        result = classification_metrics(gold, probs.argmax(-1).tolist(), labels)
        result["loss"] = float(F.nll_loss(probs.clamp_min(1e-12).log(), torch.tensor(gold)))
        return result

    def batch_loss(chunk: list[int]) -> torch.Tensor:
        ids, lengths = _batch([train_ids[i] for i in chunk], pad, device)
        y = torch.tensor([train_y[i] for i in chunk], device=device)
        return F.cross_entropy(model(ids, lengths).float(), y, weight=weights)

    def validate() -> dict[str, float]:
        val = evaluate("val")
        return {k: val[k] for k in ("loss", "accuracy", "macro_f1")}

    # The weights kept are those of the step with the best validation macro F1.
    fitted = fit(
        model, optimizer, batch_loss, n_examples=len(train_ids), epochs=cfg.epochs,
        batch_size=cfg.batch_size, warmup_fraction=cfg.warmup_fraction, grad_clip=cfg.grad_clip,
        evals_per_epoch=cfg.evals_per_epoch, seed=cfg.seed,
        validate=validate if data["val"][0] else None, keep_best="macro_f1",
        metrics_path=out / "metrics.jsonl", progress=progress, desc="finetune",
    )  # fmt: skip
    result: dict[str, Any] = {
        "labels": labels,
        "train_examples": len(train_ids),
        "steps": fitted.steps,
        "best_step": fitted.best_step,
        "train_seconds": round(fitted.train_seconds, 1),
        "init": cfg.init,
        "from": str(from_run),
        "data": audit,
    }
    for name in ("val", "test"):
        if data[name][0]:
            result[name] = evaluate(name)

    if adapted:  # the adapters and the new head: with the base run, all the classifier needs
        head = {f"head.{k}": v.detach().cpu() for k, v in model.head.state_dict().items()}
        save_adapters(body, out, cfg.lora, extra=head)
        merge_lora(body)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(ckpt.model_state(model), str(tmp))
    shutil.copytree(run / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    write_json_atomic(
        out / "classifier.json",
        {
            "labels": labels,
            "pool": model.pool,
            "max_len": max_len,
            "model": run_config["model"],
            "tokenizer": run_config.get("tokenizer", {}),
            "config": asdict(cfg),
            "lora_targets": adapted,
        },
    )
    write_json_atomic(out / "eval.json", result)
    report = _report(result, labels)
    for name in ("val", "test"):
        if name in result:
            plot_confusion(
                result[name]["confusion_matrix"],
                labels,
                out / f"confusion-{name}.png",
                f"{out.name}: {name} (accuracy {result[name]['accuracy']:.3f})",
            )
    write_text_atomic(out / "report.md", report)
    return result


def _report(result: dict[str, Any], labels: list[str]) -> str:
    lines = [
        f"# Classifier fine-tuned from {result['from']} ({result['init']})",
        "",
        f"{result['train_examples']:,} training examples, {result['steps']} steps "
        f"({result['train_seconds']} s); kept the step with the best validation macro F1: "
        f"{result['best_step']}.",
    ]
    for name in ("val", "test"):
        if name not in result:
            continue
        m = result[name]
        lines += [
            "",
            f"## {name}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} "
            f"({m['examples']:,} examples)",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for label in labels:
            c = m["per_class"][label]
            lines.append(
                f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | "
                f"{c['support']} |"
            )
        lines += ["", f"![confusion matrix](confusion-{name}.png)"]
    return "\n".join(lines) + "\n"


@dataclass
class LoadedClassifier:
    model: SequenceClassifier
    tokenizer: Tokenizer
    labels: list[str]
    max_len: int

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(label, probability) for each text."""
        seqs = encode_texts(self.tokenizer, texts, self.max_len, encoder=self.model.encoder)
        probs = predict_ids(self.model, seqs, pad_id(self.tokenizer))
        best = probs.max(-1)
        return [(self.labels[i], float(p)) for p, i in zip(best.values, best.indices.tolist())]


def load_classifier(path: str | Path, device: str = "cpu") -> LoadedClassifier:
    """A classifier written by `finetune_classifier`, in eval mode."""
    path = Path(path)
    meta_path = path / "classifier.json"
    if not meta_path.is_file():
        raise DataError(f"{path} holds no classifier (no classifier.json); fine-tune one first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    body = build_model(model_config_from_dict(meta["model"]))
    model = SequenceClassifier(body, len(meta["labels"]), meta["pool"])
    ckpt.load_model_weights(model, path / "model.safetensors")
    model.to(device).eval()
    return LoadedClassifier(
        model, load_tokenizer(path / "tokenizer"), meta["labels"], meta["max_len"]
    )
