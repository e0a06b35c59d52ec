"""Fine-tuning the encoder-decoder family on JSONL `{source, target}`: translation, summarization.

Each line of a JSONL file is one example; `source_field` names the input and `target_field` the
output (for a test set, `test_target_fields` may name several references, as DialogSum's
`summary1..3`). A bad line (not JSON, not an object, a missing, null, non-string or empty field)
(or not UTF-8) is an error naming `file:line`, or with `skip_bad` is skipped and counted. Texts
are put on one line (runs of whitespace, newlines included, become one space) so that the run's
`pairs/` files are line-aligned text that `lmforge translate` and `lmforge eval --bleu` read as
they are; each example also keeps its source as read, whose line breaks (dialogue turns, news
highlights) the lead baseline splits at.

The model is a seq2seq run's (`--from runs/x`, or a Hugging Face Marian folder imported by
`lmforge.finetune.base.resolve_base`), or the same family freshly initialised (`init =
"scratch"`, shaped by a recipe's `[model]` table) with a vocabulary trained on the training
sources and targets, the baseline that shows what the pretrained model transfers. Examples are
encoded by `lmforge.data.pairs.prepare_pairs` (sources and targets longer than `max_len` tokens
are cut and counted in `pairs/meta.json`). Training is AdamW with linear warmup then a cosine,
linear or constant schedule, label smoothing, gradient clipping, batches of `batch_size` examples
or of up to `max_tokens` padded tokens (of similar length, from pools shuffled per epoch), and a
validation loss (plain cross-entropy per target token) `evals_per_epoch` times per epoch; the best
one is kept as the run's `best` checkpoint (without a validation set the last point is kept, and
only its training loss is reported, labelled as such). Validation and test sources that are
exact copies of a training source are counted, not removed, in `eval.json` and `report.md`.

The test set is then decoded with beam search (`lmforge.infer.seq2seq_decode`), its sources cut
to `max_len` tokens as the training sources were and its outputs at most `decode_max_len`
tokens (`max_len` by default), and scored with
sacrebleu corpus BLEU and chrF (signatures kept) and ROUGE-1/2/L F-measure (rouge-score, Porter
stemming, best of the references per example) through `lmforge.eval.metrics`. A lead-N baseline
(the source's first N sentences) can be scored the same way. The output folder is an lmforge run
(`checkpoints/`, `tokenizer/`, `pairs/`) plus `eval.json`, `report.md`, `predictions.jsonl` and
`metrics.jsonl` (the training log). The epoch batching and the sentence splitter of the lead
baseline are written here: they are a few lines each, and the splitter must not need NLTK's
downloadable punkt model, which cannot be fetched here.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmforge.config import ConfigError, load_toml, to_dict
from lmforge.data.document import DataError, utf8_problem
from lmforge.data.pairs import PairBatches, PairsConfig, prepare_pairs
from lmforge.eval.metrics import score_generations
from lmforge.finetune.base import resolve_base
from lmforge.infer.load import LoadedRun, load_run
from lmforge.io import write_json_atomic, write_text_atomic
from lmforge.model import build_model, model_config_from_dict
from lmforge.tokenizer.tokenizer import TokenizerConfig, load_tokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train.optim import OptimConfig, build_optimizer
from lmforge.train.schedule import ScheduleConfig, lr_factor

log = logging.getLogger(__name__)

COMMAND = "lmforge finetune seq2seq"
SCORES = ("bleu", "chrf", "rouge")
# A sentence ends at . ! ? (possibly followed by closing quotes/brackets) before whitespace, or
# at a line break (dialogue turns, CNN/DailyMail highlights).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\n+")


@dataclass(kw_only=True)
class Seq2SeqTuneConfig:
    """How a seq2seq model is fine-tuned, decoded and scored."""

    source_field: str = "source"
    target_field: str = "target"
    test_target_fields: list[str] = field(default_factory=list)  # empty: [target_field]
    skip_bad: bool = False  # skip and count bad lines instead of stopping at the first
    val_fraction: float = 0.1  # of the train file, when no val file is given
    max_train_examples: int = 0  # the first N (0: all)
    max_test_examples: int = 0  # the first N (0: all)
    init: Literal["pretrained", "scratch"] = "pretrained"
    model: dict[str, Any] = field(default_factory=dict)  # scratch: Seq2SeqConfig fields
    tokenizer_kind: str = "bpe"  # scratch: the vocabulary trained on train sources+targets
    vocab_size: int = 8000
    max_len: int = 0  # tokens per source or target, specials included; 0: the model's
    dropout: float = -1.0  # -1: keep the model's
    label_smoothing: float = 0.1
    epochs: float = 10.0
    batch_size: int = 32  # examples per step
    max_tokens: int = 0  # > 0: batches of up to this many padded source+target tokens instead
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_fraction: float = 0.06
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    evals_per_epoch: int = 1
    max_time_s: float = 0.0  # stop training after this long (0: no limit)
    beam: int = 4
    length_penalty: float = 1.0
    decode_max_len: int = 0  # longest output in tokens, BOS and EOS included; 0: max_len
    decode_batch_size: int = 32
    lead_baseline: int = 0  # > 0: also score the source's first N sentences as the output
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.test_target_fields:
            self.test_target_fields = [self.target_field]
        if self.init not in ("pretrained", "scratch"):
            raise ConfigError(f"init must be 'pretrained' or 'scratch', got {self.init!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not (self.dropout == -1.0 or 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout must be in [0, 1) or -1 (keep), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("epochs", "lr", "batch_size", "evals_per_epoch", "beam", "decode_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_len", "max_tokens", "max_train_examples", "max_test_examples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: off/auto), got {getattr(self, name)}")
        if self.max_len and self.max_len < 3:
            raise ConfigError(f"max_len must be 0 (the model's) or >= 3, got {self.max_len}")
        if self.decode_max_len == 1 or self.decode_max_len < 0:
            raise ConfigError(
                f"decode_max_len must be 0 (max_len) or >= 2, got {self.decode_max_len}"
            )
        self.betas = tuple(self.betas)


@dataclass
class Example:
    source: str  # on one line, as the model reads it
    references: list[str]
    line: int  # 1-based line of the JSONL file
    # The source as read, line breaks kept for the lead baseline's splitter; "" gives `source`.
    raw_source: str = ""

    def __post_init__(self) -> None:
        self.raw_source = self.raw_source or self.source


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines too) as one space."""
    return " ".join(text.split())


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(utf8_problem(data, e)) from None


def read_seq2seq_jsonl(
    path: str | Path,
    source_field: str = "source",
    target_fields: list[str] | tuple[str, ...] = ("target",),
    *,
    skip_bad: bool = False,
) -> tuple[list[Example], dict[str, int]]:
    """The examples of a JSONL file and counts of what was read and skipped.

    Every target field must hold a non-empty string (each is one reference). A bad line is a
    `DataError` naming `path:line` and what to do, or with `skip_bad` is skipped and counted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    examples: list[Example] = []
    counts = {"lines": 0, "examples": 0, "skipped_bad": 0, "blank_lines": 0}
    hint = "fix the line, or pass --skip-bad to skip and count such lines"
    # Bytes, decoded line by line, so that invalid UTF-8 is an error naming its line.
    with open(path, "rb") as f:
        for number, data in enumerate(f, 1):
            counts["lines"] += 1
            try:
                raw = _utf8(data)
                if not raw.strip():
                    counts["blank_lines"] += 1
                    continue
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise DataError(f"a JSON {type(record).__name__}, not an object")
                texts = []
                for name in (source_field, *target_fields):
                    if name not in record:
                        raise DataError(
                            f"no field {name!r} (fields: {', '.join(sorted(record))}); name the "
                            "fields with --source-field/--target-field"
                        )
                    value = record[name]
                    if not isinstance(value, str) or not value.strip():
                        what = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
                        raise DataError(f"field {name!r} is {what}, not a non-empty string")
                    texts.append(one_line(value))
            except (json.JSONDecodeError, DataError) as e:
                if skip_bad:
                    counts["skipped_bad"] += 1
                    continue
                reason = f"not valid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else e
                raise DataError(f"{path}:{number}: {reason}; {hint}") from None
            examples.append(Example(texts[0], texts[1:], number, raw_source=record[source_field]))
    if counts["skipped_bad"]:
        log.warning("%s: skipped %d bad line(s)", path, counts["skipped_bad"])
    if not examples:
        raise DataError(f"{path} holds no usable examples ({counts['lines']} lines read)")
    counts["examples"] = len(examples)
    return examples, counts


def lead_sentences(text: str, n: int) -> str:
    """The first `n` sentences of `text` (split after . ! ? and at line breaks)."""
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    return " ".join(parts[:n])


def score_outputs(
    predictions: list[str], references: list[list[str]]
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """BLEU and chrF (sacrebleu, corpus, signatures) and mean ROUGE-1/2/L with stderr."""
    return score_generations(predictions, references, SCORES)


def epoch_batches(
    src_len: np.ndarray,
    tgt_len: np.ndarray,
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    max_tokens: int = 0,
) -> list[np.ndarray]:
    """One epoch's batches of example indices, in an order drawn from (seed, epoch).

    Examples are shuffled, sorted by length within pools of 100 batches (little padding, as
    fairseq does) and cut into `batch_size` examples, or with `max_tokens` into the most
    examples whose padded source + target tokens fit (at least one each); batches are then
    shuffled.
    """
    rng = np.random.default_rng([seed, epoch, 7])
    order = rng.permutation(len(src_len))
    pool = 100 * batch_size
    batches: list[np.ndarray] = []
    for p in range(0, len(order), pool):
        chunk = order[p : p + pool]
        chunk = chunk[np.lexsort((tgt_len[chunk], src_len[chunk]))]
        if not max_tokens:
            batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
            continue
        start, longest_s, longest_t = 0, 0, 0
        for i, idx in enumerate(chunk):
            s, t = max(longest_s, src_len[idx]), max(longest_t, tgt_len[idx])
            if i > start and (i - start + 1) * (s + t) > max_tokens:
                batches.append(chunk[start:i])
                start, s, t = i, src_len[idx], tgt_len[idx]
            longest_s, longest_t = s, t
        batches.append(chunk[start:])
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def validation_loss(model: Any, pairs: PairBatches, batch_size: int, device: torch.device) -> float:
    """Mean cross-entropy (no label smoothing) per target token over the whole split."""
    model.eval()
    total, tokens = 0.0, 0
    pad = model.config.pad_id
    for src, tgt_in, tgt_out in pairs.sequential(batch_size):
        src, tgt_in, tgt_out = src.to(device), tgt_in.to(device), tgt_out.to(device)
        logits = model(src, tgt_in)  # (B, T, V)
        total += F.cross_entropy(
            logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=pad, reduction="sum"
        ).item()
        tokens += int((tgt_out != pad).sum())
    model.train()
    return total / max(tokens, 1)


def decode_examples(
    run: LoadedRun, examples: list[Example], cfg: Seq2SeqTuneConfig, *, progress: bool = False
) -> tuple[list[str], dict[str, Any]]:
    """The run's beam-search outputs for the examples' sources, and decoding counts.

    Sources are cut to `cfg.max_len` tokens with EOS (0: the model's max_seq_len), as the
    training sources were, and outputs hold at most `cfg.decode_max_len` tokens with BOS and EOS
    (0: that max_len). `lmforge.infer.translate.translate_texts` cuts at the model's length
    instead, so the sources are encoded here.
    """
    from lmforge.infer.seq2seq_decode import DecodeConfig, translate_batches

    max_len = cfg.max_len or run.model.config.max_seq_len
    decode = DecodeConfig(
        beam_size=cfg.beam,
        length_penalty=cfg.length_penalty,
        max_len=cfg.decode_max_len or max_len,
    )
    ids = run.tokenizer.encode_batch([e.source.strip() for e in examples])
    cut = sum(len(seq) > max_len - 1 for seq in ids)
    if cut:
        log.warning("truncated %d of %d source(s) to %d tokens", cut, len(ids), max_len - 1)
    keep = [i for i, seq in enumerate(ids) if seq]  # a source of no tokens: output ""
    sources = [[*ids[i][: max_len - 1], run.model.config.eos_id] for i in keep]
    t0 = time.perf_counter()
    out_ids = translate_batches(
        run.model, sources, decode, batch_size=cfg.decode_batch_size, progress=progress
    )
    seconds = time.perf_counter() - t0
    outputs = [""] * len(examples)
    for i, seq in zip(keep, out_ids, strict=True):
        outputs[i] = run.target_tokenizer.decode(seq).strip()
    stats = {
        "sentences": len(examples),
        "empty": len(examples) - len(keep),
        "truncated": cut,
        "max_len": max_len,
        "decode_max_len": decode.max_len,
        "seconds": seconds,
        "sentences_per_s": len(keep) / seconds if seconds else 0.0,
    }
    return outputs, stats


def evaluate_examples(
    run: LoadedRun, examples: list[Example], cfg: Seq2SeqTuneConfig, *, progress: bool = False
) -> dict[str, Any]:
    """Decode and score `examples`; per-example rows under "samples"."""
    outputs, stats = decode_examples(run, examples, cfg, progress=progress)
    refs = [e.references for e in examples]
    summary, per_item = score_outputs(outputs, refs)
    samples = [
        {"line": e.line, "source": e.source, "prediction": out, "references": e.references, **s}
        for e, out, s in zip(examples, outputs, per_item, strict=True)
    ]
    decoding = {"beam": cfg.beam, "length_penalty": cfg.length_penalty}
    return {"n": len(examples), **summary, **stats, "decoding": decoding, "samples": samples}


def lead_baseline(examples: list[Example], n: int) -> dict[str, Any]:
    """The first `n` sentences of each source as read (line breaks end sentences too) as its
    output, scored like the model."""
    outputs = [lead_sentences(e.raw_source, n) for e in examples]
    summary, _ = score_outputs(outputs, [e.references for e in examples])
    return {"n": len(examples), "sentences": n, **summary}


def _model_dict(
    cfg: Seq2SeqTuneConfig, base: Path | None, model_recipe: str | Path | None
) -> tuple[dict[str, Any], Path | None]:
    """The model config to build and the checkpoint to load its weights from (None: scratch)."""
    if cfg.init == "pretrained":
        if base is None:
            raise ConfigError(
                f"{COMMAND} needs --from RUN (a seq2seq run or a Hugging Face Marian folder), "
                "or --init scratch with --model RECIPE"
            )
        if model_recipe or cfg.model:
            raise ConfigError(
                "--model and --model.* set the shape of a model trained from scratch; with "
                "--init pretrained the shape is the --from run's: drop them or add --init scratch"
            )
        run = load_run(base, families={"seq2seq"}, command=COMMAND)
        if run.tgt_tokenizer is not None:
            raise ConfigError(
                f"{base} has a separate target vocabulary (tokenizer-tgt/); {COMMAND} "
                "fine-tunes models with one shared vocabulary only"
            )
        return dict(run.config["model"]), run.checkpoint
    data: dict[str, Any] = {}
    if model_recipe:
        recipe = load_toml(model_recipe)
        data = dict(recipe.get("model", recipe))
    elif base is not None:
        data = dict(ckpt.read_config(ckpt.checkpoint_dir(base))["model"])
    data.update(cfg.model)
    data.setdefault("family", "seq2seq")
    if data["family"] != "seq2seq":
        raise ConfigError(f"{COMMAND} trains the seq2seq family, not model.family={data['family']}")
    for key in ("vocab_size", "tgt_vocab_size", "pad_id", "bos_id", "eos_id"):
        data.pop(key, None)  # set from the new vocabulary
    data["share_embeddings"] = True
    return data, None


def _split_train(
    train: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    rng = np.random.default_rng([seed, 11])
    order = rng.permutation(len(train))
    n_val = int(round(fraction * len(train)))
    if fraction and (n_val < 1 or n_val >= len(train)):
        raise DataError(
            f"val_fraction {fraction} of {len(train)} training examples leaves no validation or "
            "no training example; give --val FILE or change --val-fraction"
        )
    val_idx = set(order[:n_val].tolist())
    return [e for i, e in enumerate(train) if i not in val_idx], [train[i] for i in sorted(val_idx)]


def _write_split(
    data_dir: Path, name: str, examples: list[Example], expand: bool
) -> tuple[Path, Path]:
    """`{name}.source`/`{name}.target` line-aligned files; with `expand`, one pair per reference
    (training), else the first reference only (the multi-reference scores use all of them)."""
    rows = [(e.source, r) for e in examples for r in (e.references if expand else e.references[:1])]
    src, tgt = data_dir / f"{name}.source", data_dir / f"{name}.target"
    write_text_atomic(src, "".join(s + "\n" for s, _ in rows))
    write_text_atomic(tgt, "".join(t + "\n" for _, t in rows))
    return src, tgt


def _report(result: dict[str, Any]) -> str:
    c = result["config"]
    cut = ", ".join(
        f"{name} {t['source']} sources / {t['target']} targets"
        for name, t in result["truncated"].items()
    )
    lines = [
        f"# seq2seq fine-tune: {result['train_file']}",
        "",
        f"- start: {result['start']}",
        f"- examples: {result['counts']['train']} train, {result['counts']['val']} val, "
        f"{result['counts'].get('test', 0)} test; cut to {result['max_len']} tokens: {cut}",
        f"- training: {result['steps']} steps, {result['epochs_done']:.2f} epochs, "
        f"{result['train_seconds']:.0f} s; lr {c['lr']:g} ({c['schedule']}), label smoothing "
        f"{c['label_smoothing']}, batch {c['max_tokens'] or c['batch_size']} "
        f"{'tokens' if c['max_tokens'] else 'examples'}",
        _kept(result),
        "- sources also in the training data (exact copies, counted, not removed): "
        + (", ".join(f"{k} {v}" for k, v in result["sources_in_train"].items()) or "-"),
        "",
    ]
    rows = [("model", result.get("test"))]
    if "lead_baseline" in result:
        rows.append((f"lead-{c['lead_baseline']} baseline", result["lead_baseline"]))
    if result.get("test"):
        lines += [
            f"## Test scores ({result['test']['n']} examples, beam {c['beam']}, "
            f"length penalty {c['length_penalty']})",
            "",
            "| outputs | BLEU | chrF | ROUGE-1 | ROUGE-2 | ROUGE-L |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows:
            lines.append(
                f"| {name} | {r['bleu']:.2f} | {r['chrf']:.2f} | {r['rouge1']:.2f} | "
                f"{r['rouge2']:.2f} | {r['rougeL']:.2f} |"
            )
        lines += [
            "",
            f"`{result['test']['bleu_signature']}`  ",
            f"`{result['test']['chrf_signature']}`",
        ]
        lines += ["", "## First test examples", ""]
        for s in result["test"]["samples"][:5]:
            lines += [
                f"- **source** {s['source'][:300]}",
                f"  - **output** {s['prediction']}",
                f"  - **reference** {s['references'][0]}",
            ]
    if "best_val_loss" in result:
        lines += ["", "## Losses", "", "| step | epoch | train loss | val loss |"]
        lines += ["|---:|---:|---:|---:|"]
        lines += [
            f"| {h['step']} | {h['epoch']:.2f} | {h['train_loss']:.4f} | {h['val_loss']:.4f} |"
            for h in result["history"]
        ]
    else:
        lines += ["", "## Training loss (no validation set)", "", "| step | epoch | train loss |"]
        lines += ["|---:|---:|---:|"]
        lines += [
            f"| {h['step']} | {h['epoch']:.2f} | {h['train_loss']:.4f} |" for h in result["history"]
        ]
    return "\n".join(lines) + "\n"


def _kept(result: dict[str, Any]) -> str:
    """Which checkpoint was kept and by what loss; a training loss is never called val."""
    if "best_val_loss" in result:
        return f"- best val loss {result['best_val_loss']:.4f} at step {result['best_step']}"
    return (
        f"- no validation set: kept the last step, {result['best_step']}, train loss "
        f"{result['kept_train_loss']:.4f} (label-smoothed, not a validation loss)"
    )


def finetune_seq2seq(
    cfg: Seq2SeqTuneConfig,
    train_file: str | Path,
    out_dir: str | Path,
    *,
    from_run: str | Path | None = None,
    model_recipe: str | Path | None = None,
    val_file: str | Path | None = None,
    test_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune (or train from scratch), keep the best val checkpoint, decode and score the
    test set; write the run and its reports under `out_dir` and return eval.json's content."""
    from lmforge.train.trainer import resolve_device

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    base = resolve_base(from_run, out) if from_run else None
    model_data, weights_from = _model_dict(cfg, base, model_recipe)

    fields = [cfg.target_field]
    train, counts = read_seq2seq_jsonl(train_file, cfg.source_field, fields, skip_bad=cfg.skip_bad)
    read_counts = {"train": counts}
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    if val_file:
        val, read_counts["val"] = read_seq2seq_jsonl(
            val_file, cfg.source_field, fields, skip_bad=cfg.skip_bad
        )
    else:
        train, val = _split_train(train, cfg.val_fraction, cfg.seed)
    test: list[Example] = []
    if test_file:
        test, read_counts["test"] = read_seq2seq_jsonl(
            test_file, cfg.source_field, cfg.test_target_fields, skip_bad=cfg.skip_bad
        )
        if cfg.max_test_examples:
            test = test[: cfg.max_test_examples]

    # Leakage: a test (or val) source the model trained on says little about generalisation.
    train_sources = {e.source for e in train}
    sources_in_train = {
        name: sum(e.source in train_sources for e in split)
        for name, split in (("val", val), ("test", test))
        if split
    }

    # The longest source/target: the model's, or longer for sinusoidal positions (a fixed
    # table, computed for any length) and for a model trained from scratch.
    max_len = cfg.max_len or model_data.get("max_seq_len", 128)
    if max_len > model_data.get("max_seq_len", 0):
        if weights_from is not None and model_data.get("pos_emb") == "learned":
            raise ConfigError(
                f"--max-len {max_len} is longer than the {model_data['max_seq_len']} learned "
                f"positions of {base}; use --max-len {model_data['max_seq_len']} or less"
            )
        model_data["max_seq_len"] = max_len
    model_data["label_smoothing"] = cfg.label_smoothing
    if cfg.dropout >= 0:
        model_data["dropout"] = cfg.dropout

    data_dir = out / "data"
    splits = {"train": _write_split(data_dir, "train", train, expand=True)}
    if val:
        splits["val"] = _write_split(data_dir, "val", val, expand=False)
    if test:
        splits["test"] = _write_split(data_dir, "test", test, expand=False)
    if weights_from is not None:
        tokenizer: Any = base / "tokenizer"
    else:
        tokenizer = TokenizerConfig(kind=cfg.tokenizer_kind, vocab_size=cfg.vocab_size)
    meta = prepare_pairs(
        splits, out / "pairs", PairsConfig(max_len=max_len), tokenizer, progress=progress
    )
    tok = load_tokenizer(out / "pairs" / "tokenizer")
    tok.save(out / "tokenizer")
    if weights_from is None:
        model_data.update(
            vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id
        )
    model_cfg = model_config_from_dict(model_data)
    model = build_model(model_cfg)
    if weights_from is not None:
        ckpt.load_model_weights(model, weights_from / "model.safetensors")
    model.to(device).train()

    ids = {"pad_id": model_cfg.pad_id, "bos_id": model_cfg.bos_id, "eos_id": model_cfg.eos_id}
    train_pairs = PairBatches(out / "pairs", "train", **ids)
    val_pairs = PairBatches(out / "pairs", "val", **ids) if val else None
    optim_cfg = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    optimizer = build_optimizer(model, optim_cfg, device.type)
    first = epoch_batches(
        train_pairs.src_len, train_pairs.tgt_len, seed=cfg.seed, epoch=0,
        batch_size=cfg.batch_size, max_tokens=cfg.max_tokens,
    )  # fmt: skip
    per_epoch = len(first)
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    sched = ScheduleConfig(
        kind=cfg.schedule,
        warmup_steps=int(cfg.warmup_fraction * total),
        min_lr_ratio=cfg.min_lr_ratio,
    )
    eval_every = max(1, per_epoch // cfg.evals_per_epoch)
    run_config = {
        "data": {"tokens": "pairs", "train_split": "train", "val_split": "val"},
        "model": to_dict(model_cfg),
        "optim": to_dict(optim_cfg),
        "schedule": to_dict(sched),
        "tokenizer": {"kind": tok.kind, "fingerprint": tok.fingerprint},
        "finetune": {
            "task": "seq2seq",
            "from": str(base) if base else None,
            **{k: v for k, v in to_dict(cfg).items() if k != "model"},
        },
    }

    history: list[dict[str, Any]] = []
    # Without a validation set every point is kept in turn (the last wins), by its train loss.
    kept_by = "val_loss" if val_pairs is not None else "train_loss"
    best = {"loss": math.inf, "step": 0}
    log_lines: list[str] = []
    t0 = time.perf_counter()
    step, loss_sum, loss_n = 0, 0.0, 0

    def checkpoint_point(epoch_f: float) -> None:
        nonlocal loss_sum, loss_n
        entry: dict[str, Any] = {"step": step, "epoch": epoch_f}
        entry["train_loss"] = loss_sum / max(loss_n, 1)
        loss_sum, loss_n = 0.0, 0
        if val_pairs is not None:
            entry["val_loss"] = validation_loss(model, val_pairs, cfg.decode_batch_size, device)
        improved = val_pairs is None or entry["val_loss"] < best["loss"]
        history.append(entry)
        log_lines.append(json.dumps(entry))
        if improved:
            best.update(loss=entry[kept_by], step=step)
            ckpt.save_checkpoint(out, step=step, model=model, config=run_config, is_best=True)
        log.info("step %d: train loss %.4f, val loss %s", step, entry["train_loss"],
                 f"{entry['val_loss']:.4f}" if "val_loss" in entry else "-")  # fmt: skip

    bar = tqdm(total=total, desc="fine-tuning", unit="step", disable=not progress)
    epoch, stopped_early = 0, False
    while step < total and not stopped_early:
        batches = first if epoch == 0 else epoch_batches(
            train_pairs.src_len, train_pairs.tgt_len, seed=cfg.seed, epoch=epoch,
            batch_size=cfg.batch_size, max_tokens=cfg.max_tokens,
        )  # fmt: skip
        epoch += 1
        for rows in batches:
            src, tgt_in, tgt_out = (t.to(device) for t in train_pairs.collate(rows))
            factor = lr_factor(step, total, sched)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            loss = model.loss(src, tgt_in, tgt_out)
            if not math.isfinite(loss.item()):  # stop before it reaches the weights
                raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            stopped_early = bool(cfg.max_time_s) and time.perf_counter() - t0 > cfg.max_time_s
            if step % eval_every == 0 or step == total or stopped_early:
                checkpoint_point(step / per_epoch)
            if step >= total or stopped_early:
                break
    bar.close()
    if loss_n:  # steps since the last evaluation (an epoch not divisible by evals_per_epoch)
        checkpoint_point(step / per_epoch)
    train_seconds = time.perf_counter() - t0
    write_text_atomic(out / "metrics.jsonl", "".join(line + "\n" for line in log_lines))

    result: dict[str, Any] = {
        "task": "seq2seq",
        "train_file": str(train_file),
        "start": f"{base} ({cfg.init})" if base else "scratch",
        "config": to_dict(cfg),
        "read": read_counts,
        "counts": {"train": len(train), "val": len(val), "test": len(test)},
        "max_len": max_len,
        "truncated": {
            name: {"source": s["truncated_src"], "target": s["truncated_tgt"]}
            for name, s in meta["splits"].items()
        },
        "steps": step,
        "epochs_done": step / per_epoch,
        "stopped_by_time": stopped_early and step < total,
        "train_seconds": train_seconds,
        ("best_val_loss" if val_pairs is not None else "kept_train_loss"): best["loss"],
        "best_step": best["step"],
        "sources_in_train": sources_in_train,
        "history": history,
    }
    if test:
        run = load_run(out, device=device, families={"seq2seq"}, command=COMMAND)
        result["test"] = evaluate_examples(run, test, cfg, progress=progress)
        if cfg.lead_baseline:
            result["lead_baseline"] = lead_baseline(test, cfg.lead_baseline)
        rows = result["test"].pop("samples")
        write_text_atomic(
            out / "predictions.jsonl",
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
        )
        result["test"]["samples"] = rows[:5]
    write_json_atomic(out / "eval.json", result)
    write_text_atomic(out / "report.md", _report(result))
    return result
