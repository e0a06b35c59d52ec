"""`lmforge eval`: loss on a split, multiple-choice and generation tasks, endpoints."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from lmforge.cli import _checkpoint_arg, _print_json, command
from lmforge.cli.translate import decode_args


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run",
        help="a run directory written by `lmforge train`; with --endpoint, the folder that "
        "eval.json and eval.md are written to (created if missing)",
    )
    p.add_argument("--split", default="test", help="without --task: train, val or test")
    p.add_argument("--tokens", help="without --task: token shards to score, if not the run's own")
    p.add_argument(
        "--max-tokens", type=int, help="without --task: score only the first N tokens of the split"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="split: windows per forward pass (default: the run's train.eval_batch_size; "
        "for an RNN, the number of streams the split is read as, which moves its loss a "
        "little); multiple choice: requests per forward pass, or prompts per HTTP request "
        "with --endpoint (default 64); otherwise the scores do not depend on it",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _checkpoint_arg(p)
    t = p.add_argument_group("tasks (instead of a split)")
    t.add_argument(
        "--task",
        metavar="FILE",
        help="a task file: JSONL of {context, choices, gold} (or HellaSwag/PIQA/ARC records) "
        "for multiple choice; JSONL of any records with references, or SQuAD-format JSON, "
        "for generation",
    )
    t.add_argument(
        "--format",
        default="auto",
        choices=["auto", "mc", "hellaswag", "piqa", "arc", "generation"],
        help="how to read the task; auto: multiple choice if the first record has the fields "
        "of one of the formats, generation otherwise",
    )
    t.add_argument(
        "--num-fewshot", type=int, default=0, help="solved examples placed before each item"
    )
    t.add_argument(
        "--fewshot-from",
        metavar="FILE",
        help="draw the few-shot examples from this file (e.g. a train split) instead of from "
        "the task itself, where the item asked is left out",
    )
    t.add_argument(
        "--fewshot-seed", type=int, default=1234, help="seed of the few-shot draws (per item)"
    )
    t.add_argument("--limit", type=int, help="evaluate only the first N items")
    t.add_argument(
        "--mc-method",
        choices=["auto", "loglikelihood", "generate"],
        default="auto",
        help="multiple choice: loglikelihood scores every choice (acc, acc_norm, acc_bytes); "
        "generate lists the choices lettered A., B., ... and reads the greedy answer back as "
        "a letter or a choice's text (acc only); auto (default) scores, and generates where "
        "an --endpoint returns no logprobs. The report names the method used",
    )
    t.add_argument(
        "--name",
        default="",
        help="the key of the result in eval.json; empty: the task file's name, plus -Kshot. "
        "Multiple choice answered by generation is stored under KEY-generate, so it never "
        "replaces a log-likelihood score of the same task",
    )
    g = p.add_argument_group("generation tasks")
    g.add_argument(
        "--template",
        default="",
        help="Jinja template of the prompt over a record's fields, e.g. "
        "'{{ article }}\\n\\nTL;DR:'; @FILE reads it from a file; empty: {{ prompt }}, "
        "or context + question for SQuAD files",
    )
    g.add_argument(
        "--reference-field",
        default="",
        help="the field holding the reference (a string or a list of strings); empty: the "
        "first of references, reference, answers, answer, target, output, summary, highlights",
    )
    g.add_argument(
        "--metrics",
        default="exact_match,f1",
        help="comma-separated: exact_match and f1 (SQuAD normalization), bleu and chrf "
        "(sacrebleu), rouge (ROUGE-1/2/L with stemming)",
    )
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = all)")
    g.add_argument(
        "--top-p", type=float, default=1.0, help="sample among the likeliest tokens summing to p"
    )
    g.add_argument(
        "--stop",
        action="append",
        help="stop before this string (repeatable; default: a blank line; --stop '' for none)",
    )
    g.add_argument("--seed", type=int, help="sampling seed, for reproducible sampled outputs")
    m = p.add_argument_group("translation (seq2seq runs)")
    m.add_argument(
        "--bleu",
        action="store_true",
        help="translate --src and score it against --ref with sacrebleu BLEU and chrF "
        "(detokenized, 13a); without --src/--ref, the --split files of the run's pairs",
    )
    m.add_argument("--src", help="with --bleu: source sentences, one per line (.gz ok)")
    m.add_argument("--ref", help="with --bleu: reference translations, line-aligned with --src")
    m.add_argument("--output", help="with --bleu: also write the translations to this file")
    m.add_argument(
        "--rouge",
        action="store_true",
        help="like --bleu, plus ROUGE-1/2/L (rouge-score, stemmed, best reference); --src may "
        "be a JSONL file of records, read with --source-field and --reference-field (comma-"
        "separated for several references; default: target)",
    )
    m.add_argument("--source-field", default="source", help="with --rouge and a JSONL --src")
    decode_args(p)
    e = p.add_argument_group("endpoints")
    e.add_argument(
        "--endpoint",
        metavar="URL",
        help="evaluate an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) instead of "
        "a checkpoint; multiple choice is scored with echo+logprobs where the server gives "
        "them (lmforge serve, vLLM, llama.cpp) and by generation otherwise (see --mc-method)",
    )
    e.add_argument(
        "--model", metavar="NAME", help="the model name on the server; if not given, its only model"
    )
    e.add_argument(
        "--api-key",
        help="API key sent to the server; if not given, $OPENAI_API_KEY, else none",
    )
    p.epilog = (
        "Results are merged into eval.json (keyed by task, with -generate for multiple choice "
        "answered by generation) and eval.md beside the checkpoint "
        "(runs/x/checkpoints/step-N/), or in RUN with --endpoint; per-item rows go to "
        "eval-samples/."
    )


def _print_task_result(key: str, r: dict[str, Any]) -> None:
    def metric(name: str) -> str:
        err = r.get(f"{name}_stderr")
        return f"{name} {r[name]:.4f}" + (f" ± {err:.4f}" if err is not None else "")

    head = f"{key} ({r['n']:,} items, {r['num_fewshot']}-shot)"
    if r["kind"] == "multiple_choice":
        names = ("acc", "acc_norm", "acc_bytes")
        body = "  ".join(metric(m) for m in names if r.get(m) is not None)
        print(f"{head}: {body}  (chance {r['chance']:.4f})")
        if r.get("method") == "generate":
            print(f"scored by {r['method_detail']}; {r['unparsed']:,} answers named no choice")
    else:
        names = ("exact_match", "f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL")
        print(f"{head}: " + "  ".join(metric(m) for m in names if m in r))
        for name in ("bleu_signature", "chrf_signature"):
            if name in r:
                print(f"sacrebleu {name.split('_')[0]} signature: {r[name]}")
    if r.get("truncated"):
        print(f"{r['truncated']:,} items had their prompt cut on the left to fit the context")


def _eval_task(a: argparse.Namespace) -> int:
    from lmforge.eval.generation import GenerationTaskConfig
    from lmforge.eval.report import result_key
    from lmforge.eval.tasks import TaskConfig, run_task

    template = a.template
    if template.startswith("@"):
        template = Path(template[1:]).read_text(encoding="utf-8")
    gen = GenerationTaskConfig(
        template=template,
        reference_field=a.reference_field,
        metrics=a.metrics,
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        seed=a.seed,
        **({"stop": tuple(a.stop)} if a.stop is not None else {}),
    )
    cfg = TaskConfig(
        task=a.task,
        format=a.format,
        num_fewshot=a.num_fewshot,
        fewshot_from=a.fewshot_from,
        seed=a.fewshot_seed,
        limit=a.limit,
        batch_size=a.batch_size or 64,
        name=a.name,
        mc_method=a.mc_method,
        generation=gen,
    )
    result, paths = run_task(
        a.run,
        cfg,
        endpoint=a.endpoint,
        model=a.model,
        api_key=a.api_key or os.environ.get("OPENAI_API_KEY") or "unused",
        checkpoint=a.checkpoint,
        device=a.device,
        progress=not a.no_progress,
    )
    if a.json:
        _print_json(result)
        return 0
    _print_task_result(result_key(cfg.name, result), result)
    print(f"wrote {paths['json']} and {paths['markdown'].name}")
    return 0


@command(
    "eval",
    help="loss/perplexity/bits-per-byte on a split, or multiple-choice and generation tasks "
    "on a checkpoint or an OpenAI-compatible endpoint",
    args=_eval_args,
)
def cmd_eval(a: argparse.Namespace) -> int:
    if a.rouge:
        from lmforge.cli.translate import eval_rouge

        return eval_rouge(a)
    if a.bleu:
        from lmforge.cli.translate import eval_bleu

        return eval_bleu(a)
    if a.task:
        return _eval_task(a)
    if a.endpoint:
        raise ValueError("--endpoint evaluates tasks: give --task FILE")
    from lmforge.eval.evaluate import evaluate_run
    from lmforge.eval.report import record_eval

    r = evaluate_run(
        a.run,
        split=a.split,
        which=a.checkpoint,
        tokens=a.tokens,
        batch_size=a.batch_size,
        max_tokens=a.max_tokens,
        device=a.device,
    )
    model = {"kind": "checkpoint", "run": str(a.run), "checkpoint": r["checkpoint"]}
    paths = record_eval(
        Path(a.run) / "checkpoints" / r["checkpoint"],
        f"split:{r['split']}",
        {"kind": "split", **r},
        model=model,
    )
    if a.json:
        _print_json(r)
    else:
        line = (
            f"{r['split']} ({r['tokens']:,} tokens, {r['checkpoint']}): loss {r['loss']:.4f}  "
            f"perplexity {r['perplexity']:.3f}"
        )
        if "bits_per_byte" in r:
            line += f"  bits/byte {r['bits_per_byte']:.4f}"
        if "masked_accuracy" in r:
            line += (
                f"  masked-token accuracy {r['masked_accuracy']:.4f} "
                f"({r['masked_tokens']:,} masked)"
            )
        print(line)
        print(f"wrote {paths['json']} and {paths['markdown'].name}")
    return 0
