"""`lmforge finetune classify` and `lmforge classify`."""

from __future__ import annotations

import argparse
import json
import sys

from lmforge.cli import command


def _finetune_classify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="from_run",
        required=True,
        help="a GPT or encoder run directory, or a local Hugging Face model folder "
        "(imported into OUT/base)",
    )
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
        choices=["auto", "last", "mean", "cls"],
        default="auto",
        help="features: a decoder's appended EOS position (last) or an encoder's [CLS] "
        "position (cls), or the mean over the text; auto: last for GPT, cls for an encoder",
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


def _finetune_sft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="from_run",
        required=True,
        help="the base: an lmforge run directory or a local Hugging Face model folder "
        "(imported into OUT/base)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="instruction data: Alpaca JSON array / JSONL (instruction, input, output), "
        "messages JSONL ({messages: [{role, content}]}) or SQuAD JSON (generative QA)",
    )
    p.add_argument("--out", required=True, help="folder for the fine-tuned run")
    p.add_argument(
        "--format",
        choices=["auto", "alpaca", "messages", "squad"],
        default="auto",
        help="the data format (auto: detected from the file)",
    )
    p.add_argument("--val", help="validation file in the same format (default: --val-fraction)")
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of --data held out, without --val"
    )
    p.add_argument("--max-train-examples", type=int, default=0, help="train on N (0 = all)")
    p.add_argument(
        "--init",
        choices=["pretrained", "scratch"],
        default="pretrained",
        help="start from the run's weights, or the same architecture freshly initialised "
        "(the baseline that shows what pretraining gives)",
    )
    p.add_argument(
        "--chat-template",
        default="",
        help="a Jinja chat template file (default: the base run's tokenizer/chat_template.jinja, "
        "else lmforge's default); saved into OUT/tokenizer",
    )
    p.add_argument(
        "--max-len", type=int, default=0, help="tokens per example (0 = the model's context)"
    )
    p.add_argument(
        "--skip-long",
        action="store_true",
        help="leave out examples over --max-len instead of cutting them (both are counted)",
    )
    p.add_argument(
        "--truncate-side",
        choices=["right", "left"],
        default="right",
        help="the end a long example loses: right keeps the instruction and the answer's start; "
        "left keeps the last turn whole (use it for SQuAD, whose question and answer come last)",
    )
    p.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pack several examples per row, each attending only to itself (default: on)",
    )
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=8, help="rows per step")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument(
        "--warmup-fraction", type=float, default=0.05, help="share of steps warming up the LR"
    )
    p.add_argument(
        "--min-lr-ratio", type=float, default=0.1, help="where the cosine decay ends, x lr"
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument(
        "--lora",
        metavar="PATTERNS",
        help="train LoRA adapters on these Linear layers instead of the whole model, "
        "comma-separated (e.g. q_proj,v_proj or 'blocks.*.mlp.*')",
    )
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (scale alpha/rank)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input")
    p.add_argument(
        "--merge",
        action="store_true",
        help="with --lora: save full weights with the adapters folded in (needed for serve, "
        "eval and export hf); without it OUT holds only the adapters and a pointer to the base",
    )
    p.add_argument(
        "--evals-per-epoch",
        type=int,
        default=2,
        help="validation passes per epoch; the weights with the lowest val loss are kept",
    )
    p.add_argument(
        "--eval-qa",
        metavar="SQUAD_JSON",
        help="after training, answer this SQuAD file's questions greedily and report exact "
        "match and F1 (generative QA; train with a SQuAD --data to teach the format)",
    )
    p.add_argument("--qa-limit", type=int, default=0, help="score the first N questions (0 = all)")
    p.add_argument(
        "--qa-max-new-tokens", type=int, default=32, help="longest generated answer in --eval-qa"
    )
    p.add_argument("--samples", type=int, default=4, help="val prompts answered into eval.json")
    p.add_argument("--seed", type=int, default=0, help="shuffling, the split and LoRA init")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "finetune",
    "sft",
    help="instruction-tune a run in its chat template (loss on assistant tokens, packing, LoRA)",
    args=_finetune_sft_args,
)
def cmd_finetune_sft(a: argparse.Namespace) -> int:
    from lmforge.finetune.lora import LoRAConfig
    from lmforge.finetune.sft import SFTConfig, finetune_sft

    lora = None
    if a.lora:
        lora = LoRAConfig(
            targets=[t.strip() for t in a.lora.split(",") if t.strip()],
            rank=a.lora_rank,
            alpha=a.lora_alpha,
            dropout=a.lora_dropout,
        )
    cfg = SFTConfig(
        format=a.format,
        init=a.init,
        val_fraction=a.val_fraction,
        max_train_examples=a.max_train_examples,
        max_len=a.max_len,
        overlong="skip" if a.skip_long else "truncate",
        truncate_side=a.truncate_side,
        packing=a.packing,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup_fraction=a.warmup_fraction,
        min_lr_ratio=a.min_lr_ratio,
        weight_decay=a.weight_decay,
        grad_clip=a.grad_clip,
        lora=lora,
        merge=a.merge,
        evals_per_epoch=a.evals_per_epoch,
        chat_template=a.chat_template,
        qa_max_new_tokens=a.qa_max_new_tokens,
        qa_limit=a.qa_limit,
        samples=a.samples,
        seed=a.seed,
        device=a.device,
    )
    r = finetune_sft(
        cfg, a.from_run, a.data, a.out, val_file=a.val, eval_qa=a.eval_qa,
        progress=not a.no_progress,
    )  # fmt: skip
    d = r["data"]["train"]
    print(
        f"train: {d['examples']:,} examples ({d['truncated']} truncated, "
        f"{d['skipped_too_long']} skipped as too long, {d['skipped_no_target']} with no answer "
        f"left), {r['steps']} steps in {r['train_seconds']} s"
    )
    if r["val_loss_before"] is not None:
        print(
            f"val loss on assistant tokens: {r['val_loss_before']:.4f} before, "
            f"{r['val_loss_after']:.4f} after (best step {r['best_step']})"
        )
    if "qa" in r:
        q = r["qa"]
        print(
            f"QA: exact match {q['exact_match']:.4f}, F1 {q['f1']:.4f} ({q['examples']} questions)"
        )
    print(f"run, eval.json and metrics.jsonl in {a.out}; try: lmforge generate {a.out} --chat ...")
    return 0


def _finetune_qa_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="from_run",
        required=True,
        help="an encoder (bert family) run directory, or a local Hugging Face BERT folder "
        "(imported into OUT/base)",
    )
    p.add_argument("--train", required=True, help="SQuAD v1.1 / v2.0 JSON training questions")
    p.add_argument("--val", help="SQuAD JSON validation file (default: --val-fraction of --train)")
    p.add_argument(
        "--test",
        help="SQuAD JSON test file (default: --test-fraction of --train, or none); its "
        "questions whose id is also in --train are left out and counted",
    )
    p.add_argument("--out", required=True, help="folder for the model, predictions and report")
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="of --train's paragraphs, without --val"
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.0, help="of --train's paragraphs, without --test"
    )
    p.add_argument(
        "--max-train-questions", type=int, default=0, help="a random sample of N (0 = all)"
    )
    p.add_argument(
        "--init",
        choices=["pretrained", "scratch"],
        default="pretrained",
        help="start from the run's weights, or the same architecture freshly initialised",
    )
    p.add_argument(
        "--null-answers",
        choices=["auto", "yes", "no"],
        default="auto",
        help="predict 'no answer' (SQuAD 2.0) when the [CLS] score wins; auto: when the "
        "training data has unanswerable questions",
    )
    p.add_argument("--max-len", type=int, default=0, help="tokens per window (0 = model context)")
    p.add_argument(
        "--doc-stride", type=int, default=32, help="tokens shared by consecutive context windows"
    )
    p.add_argument("--max-query-len", type=int, default=32, help="question tokens kept")
    p.add_argument("--max-answer-len", type=int, default=30, help="tokens in a predicted answer")
    p.add_argument("--n-best", type=int, default=20, help="start/end candidates per window")
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training windows")
    p.add_argument("--batch-size", type=int, default=32, help="windows per step")
    p.add_argument("--lr", type=float, default=1e-4, help="peak LR of the encoder body")
    p.add_argument("--head-lr", type=float, default=1e-3, help="peak LR of the start/end head")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument(
        "--warmup-fraction", type=float, default=0.1, help="share of steps warming up the LR"
    )
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument(
        "--evals-per-epoch",
        type=int,
        default=2,
        help="validation passes per epoch; the best one (F1) is kept",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffling, splits and head init")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "finetune",
    "qa",
    help="fine-tune extractive QA (start/end head on an encoder) on SQuAD JSON; reports EM/F1",
    args=_finetune_qa_args,
)
def cmd_finetune_qa(a: argparse.Namespace) -> int:
    from lmforge.finetune.qa import QAConfig, finetune_qa

    cfg = QAConfig(
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
        max_train_questions=a.max_train_questions,
        init=a.init,
        null_answers=a.null_answers,
        max_len=a.max_len,
        doc_stride=a.doc_stride,
        max_query_len=a.max_query_len,
        max_answer_len=a.max_answer_len,
        n_best=a.n_best,
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
    result = finetune_qa(
        cfg, a.from_run, a.train, a.out, val_file=a.val, test_file=a.test,
        progress=not a.no_progress,
    )  # fmt: skip
    for name in ("val", "test"):
        if name in result:
            m = result[name]
            print(
                f"{name:>4}: exact match {m['exact_match']:.2f}  F1 {m['f1']:.2f}  "
                f"({m['questions']:,} questions)"
            )
    print(f"model, eval.json, report.md and predictions in {a.out}")
    return 0


def _qa_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a folder written by `lmforge finetune qa`")
    p.add_argument("--context", required=True, help="the passage to take the answer from")
    p.add_argument("--question", required=True, help="the question")
    p.add_argument("--json", action="store_true", help="print JSON with the score and span")


@command("qa", help="answer a question from a passage with a fine-tuned QA model", args=_qa_args)
def cmd_qa(a: argparse.Namespace) -> int:
    from lmforge.finetune.qa import load_qa

    result = load_qa(a.model).answer(a.question, a.context)
    if a.json:
        print(json.dumps(result))
    else:
        print(result["answer"] or "(no answer)")
    return 0


def _finetune_seq2seq_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="from_run",
        help="a seq2seq run, or a Hugging Face Marian folder (imported into OUT/base); with "
        "--init scratch, optional (its model shape is used when --model is not given)",
    )
    p.add_argument("--train", required=True, help="training examples: JSONL, one object a line")
    p.add_argument("--val", help="validation JSONL (default: --val-fraction of --train)")
    p.add_argument("--test", help="test JSONL, decoded and scored at the end (optional)")
    p.add_argument("--out", required=True, help="folder for the run, eval.json and report.md")
    p.add_argument("--source-field", default="source", help="the input text's field")
    p.add_argument("--target-field", default="target", help="the output text's field")
    p.add_argument(
        "--test-target-field",
        default="",
        help="comma-separated reference fields of --test (e.g. summary1,summary2,summary3 for "
        "several references); default: --target-field",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip and count lines that are not JSON objects or lack a field (null, empty), "
        "instead of stopping with file:line",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="of --train, without --val")
    p.add_argument("--max-train-examples", type=int, default=0, help="use the first N (0 = all)")
    p.add_argument("--max-test-examples", type=int, default=0, help="score the first N (0 = all)")
    p.add_argument(
        "--init",
        choices=["pretrained", "scratch"],
        default="pretrained",
        help="start from --from's weights, or train a new model with a vocabulary trained on "
        "the training sources and targets (the baseline that measures transfer)",
    )
    p.add_argument(
        "--model",
        metavar="RECIPE",
        help="with --init scratch: a TOML recipe whose [model] table shapes the model (e.g. "
        "recipes/translate-multi30k.toml); --model.FIELD VALUE overrides one field",
    )
    p.add_argument("--tokenizer-kind", default="bpe", help="with --init scratch: vocabulary kind")
    p.add_argument("--vocab-size", type=int, default=8000, help="with --init scratch")
    p.add_argument(
        "--max-len",
        type=int,
        default=0,
        help="tokens per source or target with BOS/EOS, in training and when decoding --test; "
        "longer ones are cut and counted (0 = the model's max_seq_len; more is allowed for "
        "sinusoidal positions)",
    )
    p.add_argument("--epochs", type=float, default=10.0, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=0,
        help="batch by tokens instead: up to this many padded source+target tokens per step",
    )
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument(
        "--schedule",
        choices=["cosine", "linear", "constant"],
        default="cosine",
        help="the LR after the linear warmup",
    )
    p.add_argument("--warmup-fraction", type=float, default=0.06, help="share of steps warming up")
    p.add_argument("--min-lr-ratio", type=float, default=0.0, help="final LR / peak LR")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="of the training loss")
    p.add_argument("--dropout", type=float, default=-1.0, help="-1 keeps the model's dropout")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument(
        "--evals-per-epoch",
        type=int,
        default=1,
        help="validation-loss passes per epoch; the best is kept as the run's best checkpoint",
    )
    p.add_argument("--max-time-s", type=float, default=0.0, help="stop training after this long")
    d = p.add_argument_group("decoding and scoring the test set")
    d.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy decoding")
    d.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        help="beam scores are log-probability / length**alpha; above 0 favours longer output",
    )
    d.add_argument(
        "--decode-max-len",
        type=int,
        default=0,
        help="longest test output in tokens with BOS/EOS (0 = --max-len, whose own 0 is the "
        "model's max_seq_len)",
    )
    d.add_argument("--decode-batch-size", type=int, default=32, help="sources decoded together")
    d.add_argument(
        "--lead-baseline",
        type=int,
        default=0,
        metavar="N",
        help="also score the source's first N sentences as the output (summarization baseline)",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffling, the val split and init")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


@command(
    "finetune",
    "seq2seq",
    help="fine-tune an encoder-decoder on JSONL {source, target} (translation, summarization); "
    "reports BLEU, chrF and ROUGE",
    args=_finetune_seq2seq_args,
    overrides=True,
)
def cmd_finetune_seq2seq(a: argparse.Namespace) -> int:
    from lmforge.cli import parse_overrides
    from lmforge.config import ConfigError
    from lmforge.finetune.seq2seq import Seq2SeqTuneConfig, finetune_seq2seq

    model: dict = {}
    for key, value in parse_overrides(a.extra).items():
        if not key.startswith("model."):
            raise ConfigError(f"--{key}: only --model.FIELD overrides are taken here")
        model[key.removeprefix("model.")] = value
    cfg = Seq2SeqTuneConfig(
        source_field=a.source_field,
        target_field=a.target_field,
        test_target_fields=[f.strip() for f in a.test_target_field.split(",") if f.strip()],
        skip_bad=a.skip_bad,
        val_fraction=a.val_fraction,
        max_train_examples=a.max_train_examples,
        max_test_examples=a.max_test_examples,
        init=a.init,
        model=model,
        tokenizer_kind=a.tokenizer_kind,
        vocab_size=a.vocab_size,
        max_len=a.max_len,
        dropout=a.dropout,
        label_smoothing=a.label_smoothing,
        epochs=a.epochs,
        batch_size=a.batch_size,
        max_tokens=a.max_tokens,
        lr=a.lr,
        weight_decay=a.weight_decay,
        schedule=a.schedule,
        warmup_fraction=a.warmup_fraction,
        min_lr_ratio=a.min_lr_ratio,
        grad_clip=a.grad_clip,
        evals_per_epoch=a.evals_per_epoch,
        max_time_s=a.max_time_s,
        beam=a.beam,
        length_penalty=a.length_penalty,
        decode_max_len=a.decode_max_len,
        decode_batch_size=a.decode_batch_size,
        lead_baseline=a.lead_baseline,
        seed=a.seed,
        device=a.device,
    )
    result = finetune_seq2seq(
        cfg, a.train, a.out, from_run=a.from_run, model_recipe=a.model, val_file=a.val,
        test_file=a.test, progress=not a.no_progress,
    )  # fmt: skip
    # Without a validation set the kept (last) step has only a training loss: say which.
    kept = (
        f"best val loss {result['best_val_loss']:.4f}"
        if "best_val_loss" in result
        else f"no validation set: kept the last step, train loss {result['kept_train_loss']:.4f},"
    )
    print(
        f"{result['steps']} steps ({result['epochs_done']:.1f} epochs, "
        f"{result['train_seconds']:.0f} s); {kept} at step {result['best_step']}"
    )
    rows = [("test", result.get("test"))]
    if "lead_baseline" in result:
        rows.append((f"lead-{a.lead_baseline}", result["lead_baseline"]))
    for name, r in rows:
        if r:
            print(
                f"{name:>6}: BLEU {r['bleu']:.2f}  chrF {r['chrf']:.2f}  ROUGE-1/2/L "
                f"{r['rouge1']:.2f}/{r['rouge2']:.2f}/{r['rougeL']:.2f}  ({r['n']:,} examples)"
            )
    if result.get("test"):
        print(f"  {result['test']['bleu_signature']}")
    print(f"run, eval.json, report.md and predictions.jsonl in {a.out}")
    return 0
