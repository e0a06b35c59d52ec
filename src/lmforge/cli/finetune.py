"""`lmforge finetune classify` and `lmforge classify`."""

from __future__ import annotations

import argparse
import json
import sys

from lmforge.cli import command


def _finetune_classify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_run", required=True, help="a run directory to start from")
    p.add_argument("--train", required=True, help="labelled training data: .tsv, .csv or .jsonl")
    p.add_argument("--val", help="validation file (default: --val-fraction of --train)")
    p.add_argument("--test", help="test file (default: --test-fraction of --train, or none)")
    p.add_argument("--out", required=True, help="folder for the classifier, metrics and report")
    p.add_argument("--text-field", default="text", help="text column/field (a number if no header)")
    p.add_argument("--label-field", default="label", help="label column/field")
    p.add_argument("--no-header", action="store_true", help="TSV/CSV files have no header row")
    p.add_argument("--labels", help="comma-separated class order (default: sorted train labels)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="of --train, without --val")
    p.add_argument("--test-fraction", type=float, default=0.0, help="of --train, without --test")
    p.add_argument("--max-train-examples", type=int, default=0, help="use the first N (0 = all)")
    p.add_argument(
        "--pool",
        choices=["last", "mean"],
        default="last",
        help="features: the appended EOS position's hidden state, or the mean over the text",
    )
    p.add_argument(
        "--init",
        choices=["pretrained", "scratch"],
        default="pretrained",
        help="start from the run's weights, or the same architecture freshly initialised",
    )
    p.add_argument("--freeze-body", action="store_true", help="train the head only (a probe)")
    p.add_argument(
        "--lora",
        metavar="PATTERNS",
        help="train LoRA adapters on these Linear layers instead of the whole body, "
        "comma-separated (e.g. q_proj,v_proj or 'blocks.*.mlp.*')",
    )
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (scale alpha/rank)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input")
    p.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        default="none",
        help="balanced: weight the loss by inverse class frequency (imbalanced data)",
    )
    p.add_argument("--max-len", type=int, default=0, help="tokens per text (0 = model context)")
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step")
    p.add_argument("--lr", type=float, default=1e-4, help="peak LR of the body or adapters")
    p.add_argument("--head-lr", type=float, default=1e-3, help="peak LR of the new head")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument(
        "--warmup-fraction", type=float, default=0.06, help="share of steps warming up the LR"
    )
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument(
        "--evals-per-epoch",
        type=int,
        default=2,
        help="validation passes per epoch; the best one (macro F1) is kept",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffling, splits and head init")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "finetune",
    "classify",
    help="fine-tune a text classifier (a head on the run's model); reports accuracy/P/R/F1",
    args=_finetune_classify_args,
)
def cmd_finetune_classify(a: argparse.Namespace) -> int:
    from lmforge.finetune.classify import ClassifyConfig, finetune_classifier
    from lmforge.finetune.lora import LoRAConfig

    lora = None
    if a.lora:
        lora = LoRAConfig(
            targets=[t.strip() for t in a.lora.split(",") if t.strip()],
            rank=a.lora_rank,
            alpha=a.lora_alpha,
            dropout=a.lora_dropout,
        )
    cfg = ClassifyConfig(
        text_field=a.text_field,
        label_field=a.label_field,
        header=not a.no_header,
        labels=[x.strip() for x in a.labels.split(",")] if a.labels else [],
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
        max_train_examples=a.max_train_examples,
        pool=a.pool,
        init=a.init,
        freeze_body=a.freeze_body,
        lora=lora,
        class_weights=a.class_weights,
        max_len=a.max_len,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        head_lr=a.head_lr,
        weight_decay=a.weight_decay,
        warmup_fraction=a.warmup_fraction,
        grad_clip=a.grad_clip,
        evals_per_epoch=a.evals_per_epoch,
        seed=a.seed,
        device=a.device,
    )
    result = finetune_classifier(
        cfg, a.from_run, a.train, a.out, val_file=a.val, test_file=a.test,
        progress=not a.no_progress,
    )  # fmt: skip
    for name in ("val", "test"):
        if name in result:
            m = result[name]
            print(
                f"{name:>4}: accuracy {m['accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}  "
                f"({m['examples']:,} examples)"
            )
    print(f"classifier, eval.json, report.md and confusion matrices in {a.out}")
    return 0


def _classify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("classifier", help="a folder written by `lmforge finetune classify`")
    p.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    p.add_argument("--json", action="store_true", help="print JSON lines with probabilities")


@command("classify", help="label texts with a fine-tuned classifier", args=_classify_args)
def cmd_classify(a: argparse.Namespace) -> int:
    from lmforge.finetune.classify import load_classifier

    texts = a.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    clf = load_classifier(a.classifier)
    for text, (label, prob) in zip(texts, clf.predict(texts)):
        if a.json:
            print(json.dumps({"text": text, "label": label, "probability": round(prob, 4)}))
        else:
            print(f"{label}\t{prob:.3f}\t{text}")
    return 0
