"""Instruction fine-tuning (SFT): a decoder taught to answer in a chat template's format.

Conversations (`finetune/instructions.py`: Alpaca, `messages` JSONL, SQuAD as generative QA)
are rendered with the run's chat template (`tokenizer/chat.py`; the default one when the run has
none) and the loss is the next-token cross-entropy on assistant tokens only: each answer and
the EOS that ends it, never the prompt (Ouyang et al. 2022, "InstructGPT"; the mask is what
transformers' `return_assistant_tokens_mask` gives). An example longer than `max_len` tokens is
cut (and counted) or, with `overlong = "skip"`, left out (and counted).

Packing (`packing = True`, the default) puts several examples end to end in one row of the
model's context, so few positions are spent on padding; each example keeps its own positions
and attends only to itself (`GPT.forward(doc_ids=...)`, a block-diagonal causal mask), so
packing changes throughput, not what the model computes. AdamW, linear warmup then cosine
decay, weight decay, gradient clipping; the whole model trains, or only LoRA adapters
(`finetune/lora.py`).

The output is an lmforge run directory: `checkpoints/` (written by `save_checkpoint`, the
weights with the lowest validation loss), `tokenizer/` with `chat_template.jinja`,
`config.json`, `metrics.jsonl` and `eval.json` (validation loss before and after, the counts of
truncated and skipped examples, generative-QA exact match with `eval_qa`, a few sample
answers). With LoRA and `merge = False`, the run holds only the adapters
(`adapters.safetensors`, `adapter_config.json`) and `sft_base.json` naming the base run;
`load_sft_model` puts them together again, and `merge = True` writes full weights instead, for
`serve`, `eval` and `export hf`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.finetune.base import load_base_model, resolve_base
from lmforge.finetune.instructions import Conversation, Format, read_conversations
from lmforge.finetune.lora import LoRAConfig, apply_lora, load_adapters, merge_lora, save_adapters
from lmforge.io import write_json_atomic
from lmforge.model.gpt import GPT
from lmforge.tokenizer.chat import (
    ChatTemplate,
    ChatTemplateError,
    encode_chat,
    save_chat_template,
    template_for_run,
    turn_end,
)
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train.schedule import ScheduleConfig, lr_factor

log = logging.getLogger(__name__)

IGNORE = -100  # target id that F.cross_entropy skips
COMMAND = "lmforge finetune sft"
BASE_FILE = "sft_base.json"  # an adapters-only run names its base run here


@dataclass(kw_only=True)
class SFTConfig:
    """How a run is instruction-tuned."""

    format: Format = "auto"
    # "scratch": the base run's architecture and tokenizer, freshly initialised (the baseline
    # that shows what pretraining transfers)
    init: Literal["pretrained", "scratch"] = "pretrained"
    val_fraction: float = 0.05  # held out of the data when no validation file is given
    max_train_examples: int = 0  # a random sample of this many; 0: all
    max_len: int = 0  # tokens per example; 0: the model's context
    overlong: Literal["truncate", "skip"] = "truncate"
    # Which end a long example loses: "right" keeps the instruction and the answer's start;
    # "left" keeps the last turn whole (generative QA, where the question and answer end it).
    truncate_side: Literal["right", "left"] = "right"
    packing: bool = True
    epochs: float = 3.0
    batch_size: int = 8  # rows per step (packed rows hold several examples)
    lr: float = 1e-4
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1  # cosine decay ends at this share of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora: LoRAConfig | None = None
    merge: bool = False  # with lora: save full merged weights instead of the adapters alone
    evals_per_epoch: int = 2
    chat_template: str = ""  # a .jinja file; empty: the base run's, else the default
    qa_max_new_tokens: int = 32
    qa_limit: int = 0  # questions of eval_qa to score; 0: all
    samples: int = 4  # validation prompts answered greedily into eval.json
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("epochs", "lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("batch_size", "evals_per_epoch", "qa_max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_len", "max_train_examples", "qa_limit", "samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_len == 1:
            raise ValueError("max_len must be at least 2 (a token and the one after it)")
        if self.init not in ("pretrained", "scratch"):
            raise ValueError(f"init must be 'pretrained' or 'scratch', got {self.init!r}")
        if self.overlong not in ("truncate", "skip"):
            raise ValueError(f"overlong must be 'truncate' or 'skip', got {self.overlong!r}")
        if self.truncate_side not in ("right", "left"):
            raise ValueError(f"truncate_side must be 'right' or 'left', got {self.truncate_side!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.init == "scratch" and self.lora is not None:
            raise ValueError(
                "LoRA adapts pretrained weights; with init 'scratch' train the whole model "
                "(leave out --lora)"
            )
        if self.merge and self.lora is None:
            raise ValueError("merge only applies with LoRA adapters (give --lora)")


@dataclass
class Example:
    ids: list[int]
    mask: list[bool]  # per id: an assistant token (a loss target)
    where: str


def encode_examples(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    conversations: list[Conversation],
    max_len: int,
    overlong: str = "truncate",
    side: str = "right",
) -> tuple[list[Example], dict[str, int]]:
    """Render and encode each conversation; cut or skip those over `max_len` tokens.

    An example left with no assistant token to predict (its answer was cut off) is skipped
    and counted as `skipped_no_target`; `truncated` counts the cut examples that were kept.
    A conversation the template refuses is a DataError naming its record.
    """
    out: list[Example] = []
    counts = {"examples": 0, "truncated": 0, "skipped_too_long": 0, "skipped_no_target": 0}
    for conv in conversations:
        try:
            ids, mask = encode_chat(tokenizer, template, conv.messages)
        except ChatTemplateError as e:
            raise DataError(f"{conv.where}: {e}") from None
        cut = len(ids) > max_len
        if cut and overlong == "skip":
            counts["skipped_too_long"] += 1
            continue
        keep = slice(None, max_len) if side == "right" else slice(-max_len, None)
        ids, mask = ids[keep], mask[keep]
        if not any(mask[1:]):
            counts["skipped_no_target"] += 1
            continue
        counts["truncated"] += cut
        out.append(Example(ids, mask, conv.where))
    counts["examples"] = len(out)
    return out, counts


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of example indices whose lengths sum to at most `capacity` (first fit, in the
    order given, so a shuffled order gives differently mixed rows each epoch).

    The first row with room is found in O(log n) by descending a max-tree over the rows' free
    space (rows not yet opened count as empty ones, opened in order), not by scanning them all,
    which is quadratic in the examples of a large data set.
    """
    size = 1
    while size < len(lengths):
        size *= 2
    # Leaf size + r holds row r's room; each inner node the larger of its two children's.
    free = [capacity] * (2 * size)
    rows: list[list[int]] = []
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than a row's {capacity}")
        node = 1
        while node < size:  # the leftmost subtree with room for n
            node = 2 * node if free[2 * node] >= n else 2 * node + 1
        r = node - size
        if r == len(rows):
            rows.append([])
        rows[r].append(i)
        free[node] -= n
        while node > 1:
            node //= 2
            free[node] = max(free[2 * node], free[2 * node + 1])
    return rows


def make_batch(
    examples: list[Example], rows: list[list[int]], pad_id: int, packed: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inputs (B, T), targets (B, T) with IGNORE off the assistant tokens, and doc_ids (B, T)
    for packed rows (None: one example per row, right-padded, plain causal attention)."""
    inputs, targets, docs = [], [], []
    for row in rows:
        x, y, d = [], [], []
        for doc, i in enumerate(row):
            e = examples[i]
            x += e.ids[:-1]
            y += [t if m else IGNORE for t, m in zip(e.ids[1:], e.mask[1:])]
            d += [doc] * (len(e.ids) - 1)
        inputs.append(x)
        targets.append(y)
        docs.append(d)
    T = max(len(x) for x in inputs)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    # Padding is one more document of its own, so it attends only to itself.
    doc_ids = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, (x, y, d) in enumerate(zip(inputs, targets, docs)):
        ids[b, : len(x)] = torch.tensor(x)
        tgt[b, : len(y)] = torch.tensor(y)
        doc_ids[b, : len(d)] = torch.tensor(d)
    return ids, tgt, doc_ids if packed else None


def batch_loss(
    model: GPT, ids: torch.Tensor, tgt: torch.Tensor, doc_ids: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over assistant targets, and how many there are."""
    device = model.tok_emb.weight.device
    ids, tgt = ids.to(device), tgt.to(device)
    logits = model(ids, doc_ids=None if doc_ids is None else doc_ids.to(device))  # (B, T, V)
    loss = F.cross_entropy(
        logits.float().flatten(0, 1), tgt.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((tgt != IGNORE).sum())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters that train (under LoRA only the adapters, not the frozen base);
    GPT's buffers are fixed position tables, so nothing else changes during training."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def restore_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put back the parameters `trainable_state` copied."""
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


@torch.no_grad()
def assistant_loss(model: GPT, examples: list[Example], pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per assistant token (nats) over `examples`."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        rows = [[i] for i in order[start : start + batch_size]]
        loss, n = batch_loss(model, *make_batch(examples, rows, pad_id, packed=False))
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(1, count)


def prompt_ids(
    tokenizer: Tokenizer, template: ChatTemplate, messages: list[dict[str, str]], room: int
) -> list[int]:
    """The ids that ask for the next assistant turn, cut from the left to `room` tokens."""
    ids, _ = encode_chat(tokenizer, template, messages, add_generation_prompt=True)
    return ids[-room:]


def answer(
    model: GPT,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: list[dict[str, str]],
    max_new_tokens: int,
) -> str:
    """The model's greedy answer to a conversation that ends with a user turn, decoded as
    `generate --chat` and the server decode it (up to an EOS or the template's turn end)."""
    from lmforge.infer.generate import GenerationConfig, complete

    room = max(1, model.config.max_seq_len - max_new_tokens)
    ids = prompt_ids(tokenizer, template, messages, room)
    end = turn_end(template, tokenizer)
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=0.0, stop=(end,) if end else ()
    )
    return complete(model, tokenizer, ids, cfg).text


def qa_exact_match(
    model: GPT,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    conversations: list[Conversation],
    max_new_tokens: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """SQuAD exact match and token F1 of the model's greedy answers (generative QA)."""
    from lmforge.eval.metrics import exact_match, token_f1

    was_training = model.training
    model.eval()
    em, f1, shown = [], [], []
    items = conversations
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(conversations, desc="qa eval", unit="q", mininterval=1.0)
    for conv in items:
        pred = answer(model, tokenizer, template, conv.messages[:-1], max_new_tokens).strip()
        em.append(exact_match(pred, conv.references))
        f1.append(token_f1(pred, conv.references))
        if len(shown) < 5:
            shown.append({"where": conv.where, "prediction": pred, "references": conv.references})
    model.train(was_training)
    n = max(1, len(em))
    return {
        "examples": len(em),
        "exact_match": sum(em) / n,
        "f1": sum(f1) / n,
        "samples": shown,
    }


def _template(cfg: SFTConfig, base: Path) -> ChatTemplate:
    if not cfg.chat_template:
        return template_for_run(base / "tokenizer")
    path = Path(cfg.chat_template)
    try:
        return ChatTemplate(path.read_text(encoding="utf-8"), origin=str(path))
    except FileNotFoundError:
        raise ConfigError(f"--chat-template {path}: no such file") from None


def _split(
    cfg: SFTConfig, data_file: Path, val_file: Path | None
) -> tuple[list[Conversation], list[Conversation], dict[str, Any]]:
    train, summary = read_conversations(data_file, cfg.format)
    rng = random.Random(cfg.seed)
    if val_file is not None:
        val, _ = read_conversations(val_file, cfg.format)
    else:
        order = list(range(len(train)))
        rng.shuffle(order)
        n_val = round(cfg.val_fraction * len(train))
        val = [train[i] for i in sorted(order[:n_val])]
        train = [train[i] for i in sorted(order[n_val:])]
    if cfg.max_train_examples and len(train) > cfg.max_train_examples:
        train = rng.sample(train, cfg.max_train_examples)
    if not train:
        raise DataError(f"{data_file}: no training conversations left after the split")
    return train, val, summary


def finetune_sft(
    cfg: SFTConfig,
    from_run: str | Path,
    data_file: str | Path,
    out_dir: str | Path,
    *,
    val_file: str | Path | None = None,
    eval_qa: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Instruction-tune `from_run` (an lmforge run or a Hugging Face folder) on `data_file`;
    write the run into `out_dir` and return what eval.json holds."""
    from lmforge.train.trainer import resolve_device

    out = Path(out_dir)
    if (out / "checkpoints").exists() or (out / BASE_FILE).exists():
        raise ConfigError(f"{out} already holds a fine-tuned run; choose another --out")
    base = resolve_base(from_run, out)
    torch.manual_seed(cfg.seed)  # a scratch init is the same at every run
    model, tokenizer, base_config = load_base_model(base, {"gpt"}, COMMAND, cfg.init)
    template = _template(cfg, base)
    train_convs, val_convs, summary = _split(
        cfg, Path(data_file), Path(val_file) if val_file else None
    )
    qa_convs = []
    if eval_qa:
        qa_convs, _ = read_conversations(eval_qa, "squad")
        qa_convs = qa_convs[: cfg.qa_limit or None]
    context = model.config.max_seq_len
    max_len = min(cfg.max_len or context, context)
    cut = dict(overlong=cfg.overlong, side=cfg.truncate_side)
    train, train_counts = encode_examples(tokenizer, template, train_convs, max_len, **cut)
    val, val_counts = encode_examples(tokenizer, template, val_convs, max_len, **cut)
    if not train:
        raise DataError(f"{data_file}: every example was skipped ({train_counts})")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    adapted = apply_lora(model, cfg.lora) if cfg.lora else []
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    rng = random.Random(cfg.seed)

    def epoch_batches() -> list[list[list[int]]]:
        order = list(range(len(train)))
        rng.shuffle(order)
        if cfg.packing:
            rows = pack([len(train[i].ids) - 1 for i in order], max_len)
            rows = [[order[j] for j in row] for row in rows]
        else:
            rows = [[i] for i in order]
        return [rows[s : s + cfg.batch_size] for s in range(0, len(rows), cfg.batch_size)]

    batches = epoch_batches()
    steps_per_epoch = len(batches)
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    schedule = ScheduleConfig(
        kind="cosine",
        warmup_steps=int(cfg.warmup_fraction * total_steps),
        min_lr_ratio=cfg.min_lr_ratio,
    )
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("", encoding="utf-8")
    val_before = assistant_loss(model, val, pad) if val else None
    log.info("validation loss before fine-tuning: %s", val_before)
    best_loss, best_step, best_state = math.inf, 0, None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc="sft", unit="step", mininterval=1.0)
    t0 = time.perf_counter()
    positions = padded = targets_seen = 0
    try:
        for step in range(total_steps):
            if not batches:
                batches = epoch_batches()
            rows = batches.pop(0)
            ids, tgt, doc_ids = make_batch(train, rows, pad, cfg.packing)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total_steps, schedule)
            loss_sum, n = batch_loss(model, ids, tgt, doc_ids)
            loss = loss_sum / max(1, n)
            # Before the step, so a non-finite loss never reaches the weights (or best_state).
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; lower lr")
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            positions += ids.numel()
            padded += ids.numel() - sum(len(train[i].ids) - 1 for row in rows for i in row)
            targets_seen += n
            record: dict[str, Any] = {
                "step": step + 1,
                "loss": loss.item(),
                "lr": optimizer.param_groups[0]["lr"],
                "tokens": positions,
                "target_tokens": targets_seen,
            }
            if val and ((step + 1) % eval_every == 0 or step + 1 == total_steps):
                record["val_loss"] = assistant_loss(model, val, pad)
                if record["val_loss"] < best_loss:
                    best_loss, best_step = record["val_loss"], step + 1
                    best_state = trainable_state(model)
            with metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{best_loss:.3f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    train_s = time.perf_counter() - t0
    if best_state is not None:  # the weights with the lowest validation loss
        restore_trainable(model, best_state)
    model.eval()

    result: dict[str, Any] = {
        "from": str(from_run),
        "base_run": str(base),
        "init": cfg.init,
        "data": {**summary, "train": train_counts, "val": val_counts},
        "steps": total_steps,
        "best_step": best_step or total_steps,
        "train_seconds": round(train_s, 1),
        "tokens_per_s": round(positions / max(train_s, 1e-9)),
        # Of all positions in the batches: padding, and assistant tokens (the loss targets).
        "padding_share": round(padded / max(1, positions), 3),
        "target_share": round(targets_seen / max(1, positions), 3),
        "val_loss_before": val_before,
        "val_loss_after": assistant_loss(model, val, pad) if val else None,
        "lora_targets": adapted,
    }
    if qa_convs:
        result["qa"] = qa_exact_match(
            model, tokenizer, template, qa_convs, cfg.qa_max_new_tokens, progress
        )
    result["samples"] = [
        {
            "prompt": conv.messages[:-1],
            "answer": answer(model, tokenizer, template, conv.messages[:-1], 64),
            "reference": conv.messages[-1]["content"],
        }
        for conv in val_convs[: cfg.samples]
    ]
    _save(cfg, model, tokenizer, template, base, base_config, out, total_steps, result)
    return result


def _save(
    cfg: SFTConfig,
    model: GPT,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    base: Path,
    base_config: dict[str, Any],
    out: Path,
    step: int,
    result: dict[str, Any],
) -> None:
    shutil.copytree(base / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    save_chat_template(template, out / "tokenizer")
    config = {**base_config, "finetune": {"task": "sft", **asdict(cfg), "base": str(base)}}
    write_json_atomic(out / "eval.json", result)
    if cfg.lora is not None:
        save_adapters(model, out, cfg.lora)
        if not cfg.merge:  # the adapters and a pointer to the base are the whole run
            write_json_atomic(out / BASE_FILE, {"base_run": str(base.resolve())})
            write_json_atomic(out / "config.json", config)
            return
        merge_lora(model)
    write_json_atomic(out / "config.json", config)
    ckpt.save_checkpoint(out, step=step, model=model, config=config, is_best=True)


def is_adapter_run(run_dir: str | Path) -> bool:
    """A run written by `finetune_sft` with LoRA and no merge: adapters plus a base pointer."""
    return (Path(run_dir) / BASE_FILE).is_file()


def load_sft_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Path]:
    """An adapters-only run's model (its base with the adapters merged in), in eval mode, and
    the base run it came from."""
    run_dir = Path(run_dir)
    try:
        base = Path(json.loads((run_dir / BASE_FILE).read_text("utf-8"))["base_run"])
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{run_dir / BASE_FILE} is unreadable ({e})") from None
    model, _, _ = load_base_model(base, {"gpt"}, COMMAND)
    load_adapters(model, run_dir)
    merge_lora(model)
    return model.to(device).eval(), base
