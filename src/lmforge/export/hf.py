"""Whole runs to Hugging Face model folders and back: `lmforge export hf` / `lmforge import hf`.

`export_hf` writes a folder that `transformers` loads with its Auto classes and `AutoTokenizer`:
`config.json`, `model.safetensors`, `generation_config.json` (generating families),
`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`. `import_hf` reads such
a folder from disk (safetensors only: pickled `.bin` weights are refused, and no code from the
folder is ever run) and writes an lmforge run directory that `generate`, `translate`, `eval`,
`serve` and fine-tuning load. Quantized folders and folders whose files lack a tensor are
refused, naming what is missing. Two facts about how a decoder reads text travel with its
tokenizer both ways: whether every sequence starts with BOS (`Tokenizer.add_bos`,
`add_bos_token`) and which ids end a generation (`Tokenizer.eos_ids`, `generation_config.json`'s
`eos_token_id`).

Weights go through the state-dict adapters and nothing else; which adapter applies is decided
by two tables (`EXPORT_TARGETS` for decoders, `IMPORT_SOURCES` by `model_type`), one row per
architecture:

| lmforge model                                        | Hugging Face class   | adapter      |
|------------------------------------------------------|----------------------|--------------|
| GPT: learned positions, LayerNorm, GELU, biases, MHA | `GPT2LMHeadModel`    | `hf_gpt2`    |
| GPT: RoPE, RMSNorm, SwiGLU, no biases, MHA/GQA/MQA   | `LlamaForCausalLM`   | `hf_llama`   |
| (import only) a Mistral whose window spans the context | `MistralForCausalLM` | `hf_llama` |
| encoder (bert): post-norm, learned positions         | `BertForMaskedLM`    | `hf_bert`    |
| seq2seq: post-norm, sinusoidal positions, biases     | `MarianMTModel`      | `hf_marian`  |

Tokenizers: a BERT folder gets lmforge's WordPiece `tokenizer.json` as it is (its
post-processor already adds `[CLS] ... [SEP]`, and its normalizer lowercases or not), with the
BERT roles (`cls`, `sep`, `mask`, ...) in `tokenizer_config.json`, so `AutoTokenizer(text)` gives
`[CLS] + encode(text) + [SEP]`, the ids the encoder was trained on. A BERT folder whose
`tokenizer.json` is a WordPiece with BERT's five special tokens imports as kind `wordpiece`
(same whole-word masking and byte counts as one trained here), any other as kind `hf` with
`[CLS]` as BOS and `[SEP]` as EOS. A Marian folder gets a `tokenizer.json` whose post-processor
appends EOS, as lmforge's translation sources end (`translate.encode_sources`), so
`model.generate(**tokenizer(text))` translates; real Helsinki-NLP Marian folders start decoding
at the pad id and have SentencePiece files and no `tokenizer.json`: both are refused with what
to do, the first before the tokenizer is read. A Marian folder with a separate target
vocabulary (`decoder_vocab_size` other than `vocab_size`) is refused too, since its one
`tokenizer.json` is the source's and targets would be decoded with it.

Written by hand because what it does is lmforge's own: the run layout on one side, and on the
other only `transformers`' own `save_pretrained`/`from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.deps import require
from lmforge.export import hf_bert, hf_gpt2, hf_llama, hf_marian
from lmforge.export.hf_tokenizer import (
    CHAT_TEMPLATE_FILE,
    InteropError,
    chat_template,
    load_hf_tokenizer,
    read_json,
    source_tokenizer_json,
    tokenizer_files,
)
from lmforge.io import write_json_atomic, write_text_atomic
from lmforge.model import family_of, require_family
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

__all__ = ["InteropError", "export_hf", "import_hf", "load_hf_tokenizer", "tokenizer_files"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES = ("gpt", "bert", "seq2seq")  # the families `export_hf` writes

# Architectures lmforge knows of but cannot map: model_type -> what is missing, what to use.
_NEEDS_FAMILY = {
    "roberta": "RoBERTa's positions start at padding_idx + 1, which lmforge's encoder does "
    "not do (it imports bert, as BertForMaskedLM)",
    "distilbert": "DistilBERT's layout (no token types, its own names) in the BERT adapter "
    "(lmforge imports bert, as BertForMaskedLM)",
    "t5": "T5's relative position buckets and RMSNorm in the encoder-decoder family "
    "(lmforge imports marian, as MarianMTModel)",
    "bart": "BART's learned positions (offset by 2) and embedding LayerNorms in the "
    "encoder-decoder family (lmforge imports marian, as MarianMTModel)",
}
# Pickle-based weight files, which can run code when loaded.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# ---------------------------------------------------------------- the adapter tables


def _build_gpt2(model: GPT, tok: Tokenizer) -> Any:
    hf = hf_gpt2.to_hf_gpt2(model, eos_token_id=tok.eos_id)
    hf.config.bos_token_id = tok.bos_id  # gpt2_config uses EOS for both, as GPT-2 does
    hf.config.pad_token_id = tok.pad_id
    return hf


def _build_llama(model: GPT, tok: Tokenizer) -> Any:
    return hf_llama.to_hf_llama(
        model, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id
    )


def _cap_context(model: GPT, max_seq_len: int | None) -> GPT:
    """`model` with its context cut to `max_seq_len` (learned positions keep the first rows)."""
    if not max_seq_len or max_seq_len >= model.config.max_seq_len:
        return model
    capped = type(model)(replace(model.config, max_seq_len=max_seq_len))
    state = model.state_dict()
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][:max_seq_len]
    capped.load_state_dict(state, strict=True)
    return capped


def _import_gpt2(hf_model: Any, max_seq_len: int | None) -> GPT:
    return _cap_context(hf_gpt2.from_hf_gpt2(hf_model), max_seq_len)


def _import_llama(hf_model: Any, max_seq_len: int | None) -> GPT:
    return hf_llama.from_hf_llama(hf_model, max_seq_len=max_seq_len)


def _import_bert(hf_model: Any, max_seq_len: int | None) -> nn.Module:
    # The Encoder keeps BERT's learned positions in `pos_emb`, as the GPT-2 decoder does.
    return _cap_context(hf_bert.from_hf_bert(hf_model), max_seq_len)


def _check_marian(c: Any) -> None:
    """Refuse a Marian config whose model an lmforge run could load but not use right."""
    if c.decoder_start_token_id == c.pad_token_id:
        raise ValueError(
            f"decoder_start_token_id={c.decoder_start_token_id} is the pad id (as in "
            "Helsinki-NLP's Marian models); lmforge's decoder starts at a BOS token distinct "
            "from padding, so only Marian models that start at their own BOS import (those "
            "`lmforge export hf` writes)"
        )
    if not c.share_encoder_decoder_embeddings and c.decoder_vocab_size != c.vocab_size:
        raise ValueError(
            f"decoder_vocab_size={c.decoder_vocab_size} differs from vocab_size={c.vocab_size}: "
            "the targets have their own vocabulary, but the folder's tokenizer.json is the "
            "source's, and lmforge would decode translations with it; only Marian models with "
            "one vocabulary for both sides import"
        )


def _import_marian(hf_model: Any, max_seq_len: int | None) -> nn.Module:
    model = hf_marian.from_hf_marian(hf_model)
    if max_seq_len and max_seq_len < model.config.max_seq_len:
        # Sinusoidal tables are computed, not stored: a shorter context is only a setting.
        capped = type(model)(replace(model.config, max_seq_len=max_seq_len))
        capped.load_state_dict(model.state_dict(), strict=True)
        model = capped
    return model


@dataclass(frozen=True)
class ExportTarget:
    """One Hugging Face class a GPT can be written as (and llama.cpp architecture, `name`)."""

    name: str  # also llama.cpp's architecture name, which `lmforge.export.llamacpp` writes
    hf_class: str
    check: Callable[[GPTConfig], None]  # raises ValueError naming what does not map
    build: Callable[[GPT, Tokenizer], Any]  # our model -> the transformers model


@dataclass(frozen=True)
class ImportSource:
    """One Hugging Face architecture (by `model_type`) a run can be read from."""

    hf_class: str
    family: str  # the lmforge model family it becomes
    convert: Callable[[Any, int | None], nn.Module]  # (transformers model, max_seq_len) -> ours
    # Raises ValueError for a transformers config the run cannot hold; it runs before the
    # tokenizer is read, so a folder is refused for that reason first.
    check: Callable[[Any], None] | None = None


EXPORT_TARGETS = (
    ExportTarget("gpt2", "GPT2LMHeadModel", hf_gpt2.check_mappable, _build_gpt2),
    ExportTarget("llama", "LlamaForCausalLM", hf_llama.check_mappable, _build_llama),
)


IMPORT_SOURCES = {
    "gpt2": ImportSource("GPT2LMHeadModel", "gpt", _import_gpt2),
    "llama": ImportSource("LlamaForCausalLM", "gpt", _import_llama),
    "mistral": ImportSource("MistralForCausalLM", "gpt", _import_llama),
    "bert": ImportSource("BertForMaskedLM", "bert", _import_bert),
    "marian": ImportSource("MarianMTModel", "seq2seq", _import_marian, _check_marian),
}


def pick_target(cfg: GPTConfig) -> ExportTarget:
    """The export target whose architecture `cfg` is, or an error listing what each lacks.

    Both `lmforge export hf` and `lmforge export gguf` choose through this one table.
    """
    reasons = []
    for target in EXPORT_TARGETS:
        try:
            target.check(cfg)
        except ValueError as e:
            reasons.append(f"as {target.hf_class}: {e}")
        else:
            return target
    raise InteropError(
        "this model maps to none of the architectures lmforge exports ("
        + ", ".join(f"{t.hf_class} / llama.cpp {t.name}" for t in EXPORT_TARGETS)
        + "). "
        + " | ".join(reasons)
    )


# ---------------------------------------------------------------- export


def _run_model_config(run_dir: Path, which: str) -> dict[str, Any]:
    """The checkpoint's `model` table, refusing families this module has no adapter for."""
    from lmforge.train import checkpoint as ckpt

    config = ckpt.read_config(ckpt.checkpoint_dir(run_dir, which))
    model = config.get("model", {})
    require_family(model, set(FAMILIES), "lmforge export hf")
    if family_of(model) == "gpt":
        known = {f.name for f in fields(GPTConfig)}
        unknown = sorted(set(model) - known)
        if unknown:
            raise InteropError(
                f"{run_dir}: the model has fields {unknown} that the GPT decoder does not; a "
                "run of another family says so with model.family (an encoder: 'bert', as "
                "BertForMaskedLM; an encoder-decoder: 'seq2seq', as MarianMTModel)"
            )
    return model


@dataclass
class _Exported:
    """What one family's exporter hands back to `export_hf` to write."""

    hf: Any  # the transformers model
    hf_class: str
    tokenizer_json: str
    generation: dict[str, Any] | None = None  # generation_config.json fields, if it generates
    config_extra: dict[str, Any] | None = None  # keys added to config.json after saving


def _export_gpt(run: Any, run_dir: Path) -> _Exported:
    cfg, tok = run.model.config, run.tokenizer
    target = pick_target(cfg)
    generation = dict(
        bos_token_id=tok.bos_id,
        # Every id lmforge stops at; a list only where there are several (imported models).
        eos_token_id=list(tok.eos_ids) if len(tok.eos_ids) > 1 else tok.eos_id,
        pad_token_id=tok.pad_id,
        max_length=cfg.max_seq_len,
        do_sample=True,  # lmforge generate's defaults: sampling at temperature 0.8
        temperature=0.8,
        top_p=0.95,
    )
    # transformers 5 writes rope_parameters only; transformers 4 reads rope_theta.
    extra = {"rope_theta": cfg.rope_theta} if target.name == "llama" else None
    return _Exported(
        target.build(run.model, tok), target.hf_class, tok.to_json(), generation, extra
    )


def _export_bert(run: Any, run_dir: Path) -> _Exported:
    tok = run.tokenizer
    try:
        hf_bert.check_mappable(run.model.config)
    except ValueError as e:
        raise InteropError(f"{run_dir}: {e}") from None
    if tok.mask_id is None or tok.cls_id is None or tok.sep_id is None:
        raise InteropError(
            f"{run_dir}: the tokenizer ({tok.kind}) has no [MASK]/[CLS]/[SEP] roles, which "
            "BertForMaskedLM's tokenizer needs; train the encoder with a `--kind wordpiece` "
            "vocabulary"
        )
    hf = hf_bert.to_hf_bert(run.model)
    hf.config.pad_token_id = tok.pad_id
    return _Exported(hf, "BertForMaskedLM", tok.to_json())


def _export_seq2seq(run: Any, run_dir: Path) -> _Exported:
    cfg, tok = run.model.config, run.tokenizer
    if run.tgt_tokenizer is not None:
        raise InteropError(
            f"{run_dir} has a separate target vocabulary (tokenizer-tgt/); a Hugging Face "
            "folder holds one tokenizer.json, so train with a shared vocabulary "
            "(`lmforge data pairs` without --tgt-vocab) to export"
        )
    try:
        hf = hf_marian.to_hf_marian(run.model)
    except ValueError as e:
        hint = ""
        if cfg.norm_position == "pre":
            hint = (
                " (pre-norm models map onto fairseq's M2M100 layout, which transformers "
                "recomputes its own position table for, so they are not exported)"
            )
        raise InteropError(f"{run_dir}: {e}{hint}") from None
    if (tok.bos_id, tok.eos_id, tok.pad_id) != (cfg.bos_id, cfg.eos_id, cfg.pad_id):
        raise InteropError(
            f"{run_dir}: the tokenizer's bos/eos/pad ids {(tok.bos_id, tok.eos_id, tok.pad_id)} "
            f"differ from the model's {(cfg.bos_id, cfg.eos_id, cfg.pad_id)}"
        )
    generation = dict(
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        pad_token_id=cfg.pad_id,
        decoder_start_token_id=cfg.bos_id,
        max_length=cfg.max_seq_len,  # BOS and EOS included, as `lmforge translate`'s limit
        num_beams=4,  # `lmforge translate`'s default decoding: beam 4, length penalty 1
        length_penalty=1.0,
        suppress_tokens=[cfg.pad_id, cfg.bos_id],  # as lmforge's decoders never emit them
    )
    return _Exported(hf, "MarianMTModel", source_tokenizer_json(tok), generation)


_EXPORTERS: dict[str, Callable[[Any, Path], _Exported]] = {
    "gpt": _export_gpt,
    "bert": _export_bert,
    "seq2seq": _export_seq2seq,
}


def _prepare_out(out_dir: Path) -> Path:
    """A fresh temporary folder beside `out_dir`, which must not exist or be empty."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InteropError(f"{out_dir} already exists; choose another --out or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.is_dir():
        out_dir.rmdir()  # empty (checked by _prepare_out); os.replace cannot replace a folder
    os.replace(tmp, out_dir)


def export_hf(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    which: str = "best",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write checkpoint `which` of a run as a Hugging Face folder; return what was written.

    A GPT becomes `GPT2LMHeadModel` or `LlamaForCausalLM`, an encoder `BertForMaskedLM`, an
    encoder-decoder `MarianMTModel`. Only float32 keeps the logits equal to lmforge's (to
    ~1e-6); bfloat16/float16 halve the size and round every weight.
    """
    transformers = require("transformers", "hf")
    from lmforge.infer.load import load_run

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise InteropError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    family = family_of(_run_model_config(run_dir, which))
    run = load_run(run_dir, which=which, families=set(FAMILIES), command="lmforge export hf")
    exported = _EXPORTERS[family](run, run_dir)
    hf = exported.hf.to(DTYPES[dtype]).eval()
    if exported.generation is not None:
        hf.generation_config = transformers.GenerationConfig(**exported.generation)
    tok, max_seq_len = run.tokenizer, run.model.config.max_seq_len
    tmp = _prepare_out(out_dir)
    try:
        hf.save_pretrained(tmp)  # config.json, model.safetensors (generation_config.json)
        if exported.config_extra:
            hf_config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
            for key, value in exported.config_extra.items():
                hf_config.setdefault(key, value)
            write_json_atomic(tmp / "config.json", hf_config)
        write_text_atomic(tmp / "tokenizer.json", exported.tokenizer_json)
        files = tokenizer_files(tok, max_seq_len=max_seq_len, family=family)
        template = run_dir / "tokenizer" / CHAT_TEMPLATE_FILE
        if template.is_file():
            # Both places transformers looks: the file (v5) and tokenizer_config.json (v4).
            shutil.copyfile(template, tmp / CHAT_TEMPLATE_FILE)
            files["tokenizer_config.json"]["chat_template"] = template.read_text("utf-8")
        for name, content in files.items():
            write_json_atomic(tmp / name, content)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {
        "out": str(out_dir),
        "architecture": exported.hf_class,
        "checkpoint": run.checkpoint.name,
        "dtype": dtype,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "files": sorted(p.name for p in out_dir.iterdir()),
    }
    log.info("exported %s as %s to %s", run.checkpoint, exported.hf_class, out_dir)
    return summary


# ---------------------------------------------------------------- import


def _check_hf_dir(hf_dir: Path) -> tuple[str, ImportSource]:
    """The model_type and import source of a local HF folder, or a clear refusal."""
    if not hf_dir.is_dir():
        raise InteropError(f"{hf_dir} is not a folder; give a local Hugging Face model folder")
    config = read_json(hf_dir / "config.json")
    if not config:
        raise InteropError(f"{hf_dir} has no config.json; it is not a Hugging Face model folder")
    model_type = config.get("model_type")
    if model_type not in IMPORT_SOURCES:
        supported = ", ".join(f"{k} ({v.hf_class})" for k, v in IMPORT_SOURCES.items())
        why = _NEEDS_FAMILY.get(model_type)
        hint = f"; importing it needs {why}" if why else ""
        raise InteropError(
            f"{hf_dir / 'config.json'}: model_type={model_type!r} "
            f"(architectures {config.get('architectures')}) is not supported{hint}; "
            f"lmforge imports {supported}"
        )
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else None
        raise InteropError(
            f"{hf_dir / 'config.json'} has a quantization_config (quant_method={method!r}): "
            "lmforge imports full-precision weights only (float32, float16 or bfloat16). "
            "Import the original unquantized checkpoint, or dequantize this one where its "
            "quantization library is installed (`model.dequantize()` then `save_pretrained`)"
        )
    if not list(hf_dir.glob("*.safetensors")):
        pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise InteropError(
                f"{hf_dir} holds weights only as pickle files ({', '.join(pickles[:3])}), which "
                "can run arbitrary code when loaded, so lmforge does not open them; convert them "
                "to safetensors where you trust the file (load it with transformers and "
                "`save_pretrained`, which writes model.safetensors) and import that folder"
            )
        raise InteropError(f"{hf_dir} has no *.safetensors weights")
    return model_type, IMPORT_SOURCES[model_type]


def _check_special_ids(hf_dir: Path, model: nn.Module, tok: Tokenizer) -> None:
    """A translation model's bos/eos/pad ids must be its tokenizer's (lmforge reads the
    model's when it builds sources and decodes)."""
    cfg = model.config
    if cfg.family != "seq2seq":
        return
    ids = {"bos": (cfg.bos_id, tok.bos_id), "eos": (cfg.eos_id, tok.eos_id)}
    ids["pad"] = (cfg.pad_id, tok.pad_id)
    wrong = {k: v for k, v in ids.items() if v[0] != v[1]}
    if wrong:
        raise InteropError(
            f"{hf_dir}: config.json's special ids differ from tokenizer.json's ("
            + ", ".join(f"{k}: model {m}, tokenizer {t}" for k, (m, t) in wrong.items())
            + "); name the same tokens in tokenizer_config.json (bos_token, eos_token, "
            "pad_token) as config.json's *_token_id"
        )


def import_hf(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    max_seq_len: int | None = None,
) -> dict[str, Any]:
    """Write a local HF model folder as an lmforge run (weights stored as float32).

    `max_seq_len` caps the context (a Llama's may be 128k positions, whose KV cache
    `generate` allocates up front); the model is unchanged below it.
    """
    transformers = require("transformers", "hf")
    from lmforge.config import to_dict
    from lmforge.train.checkpoint import save_checkpoint
    from lmforge.train.trainer import RunConfig

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    model_type, source = _check_hf_dir(hf_dir)
    hf_class = getattr(transformers, source.hf_class)
    if source.check is not None:
        try:
            source.check(hf_class.config_class.from_pretrained(hf_dir, local_files_only=True))
        except ValueError as e:
            raise InteropError(f"{hf_dir}: {e}") from None
    hf_config = read_json(hf_dir / "config.json")
    tok = load_hf_tokenizer(hf_dir, hf_config, family=source.family)
    # The class is named here, never taken from the folder: no auto_map, no remote code.
    hf_model, info = hf_class.from_pretrained(
        hf_dir, use_safetensors=True, local_files_only=True, output_loading_info=True
    )
    # transformers fills tensors the files lack with random values and only logs it; Marian's
    # sinusoidal position tables are computed, never stored.
    missing = sorted(
        k for k in info.get("missing_keys") or () if not k.endswith("embed_positions.weight")
    )
    if missing:
        raise InteropError(
            f"{hf_dir}: the safetensors files lack {len(missing)} tensor(s) that "
            f"{source.hf_class} needs ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); the folder is incomplete or holds "
            "another architecture than config.json says"
        )
    try:
        model = source.convert(hf_model.float().eval(), max_seq_len)
    except ValueError as e:
        raise InteropError(f"{hf_dir}: {e}") from None
    except KeyError as e:
        raise InteropError(
            f"{hf_dir}: the {source.hf_class} weights have no tensor {e.args[0]!r}, which "
            "lmforge's adapter reads; the folder's weights are laid out differently from "
            f"transformers' {source.hf_class} (a custom or converted checkpoint)"
        ) from None
    del hf_model
    if tok.vocab_size > model.config.vocab_size:
        raise InteropError(
            f"{hf_dir}: tokenizer.json has {tok.vocab_size} tokens but the model only "
            f"{model.config.vocab_size} embeddings; the tokenizer belongs to another model"
        )
    _check_special_ids(hf_dir, model, tok)
    config = to_dict(RunConfig(model=model.config))
    config["tokenizer"] = {"kind": tok.kind, "fingerprint": tok.fingerprint}
    tmp = _prepare_out(out_dir)
    try:
        tok.save(tmp / "tokenizer")
        template = chat_template(hf_dir)
        if template is not None:
            write_text_atomic(tmp / "tokenizer" / CHAT_TEMPLATE_FILE, template)
        write_json_atomic(tmp / "config.json", config)
        ckpt = save_checkpoint(tmp, step=0, model=model, config=config)
        provenance = {"hf_dir": str(hf_dir.resolve()), "model_type": model_type}
        write_json_atomic(tmp / "imported_from.json", provenance)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported %s (%s) into %s", hf_dir, source.hf_class, out_dir)
    return {
        "out": str(out_dir),
        "architecture": source.hf_class,
        "family": source.family,
        "checkpoint": ckpt.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": tok.vocab_size,
        "max_seq_len": model.config.max_seq_len,
    }
