"""Whole runs to Hugging Face model folders and back: `lmforge export hf` / `lmforge import hf`.

`export_hf` writes a folder that `transformers` loads with `AutoModelForCausalLM` and
`AutoTokenizer`: `config.json`, `model.safetensors`, `generation_config.json`, `tokenizer.json`,
`tokenizer_config.json` and `special_tokens_map.json`. `import_hf` reads such a folder from
disk (safetensors only: pickled `.bin` weights are refused, and no code from the folder is ever
run) and writes an lmforge run directory that `generate`, `eval`, `serve` and fine-tuning load.
Quantized folders and folders whose files lack a tensor are refused, naming what is missing.
Two facts about how the model reads text travel with its tokenizer both ways: whether every
sequence starts with BOS (`Tokenizer.add_bos`, `add_bos_token`) and which ids end a generation
(`Tokenizer.eos_ids`, `generation_config.json`'s `eos_token_id`).

Weights go through the state-dict adapters and nothing else; which adapter applies is decided
by two tables, so another family (the encoder as `BertForMaskedLM`, the encoder-decoder as T5)
is one more row in each when it exists:

| lmforge model                                        | Hugging Face class  | adapter    |
|------------------------------------------------------|---------------------|------------|
| learned positions, LayerNorm, GELU, biases, MHA      | `GPT2LMHeadModel`   | `hf_gpt2`  |
| RoPE, RMSNorm, SwiGLU, no biases, MHA/GQA/MQA        | `LlamaForCausalLM`  | `hf_llama` |
| (import only) a Mistral whose window spans the context | `MistralForCausalLM` | `hf_llama` |

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

from lmforge.deps import require
from lmforge.export import hf_gpt2, hf_llama
from lmforge.io import write_json_atomic, write_text_atomic
from lmforge.model import require_family
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.tokenizer import HF_KIND, Tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 keeps a chat template

# Architectures lmforge knows of but has no family for yet: model_type -> what is missing.
_NEEDS_FAMILY = {
    "bert": "the encoder family (BertForMaskedLM)",
    "roberta": "the encoder family",
    "distilbert": "the encoder family",
    "t5": "the encoder-decoder family",
    "bart": "the encoder-decoder family",
}
# Pickle-based weight files, which can run code when loaded.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class InteropError(ValueError):
    """A run or a Hugging Face folder that cannot be converted, and what to change."""


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
    capped = GPT(replace(model.config, max_seq_len=max_seq_len))
    state = model.state_dict()
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][:max_seq_len]
    capped.load_state_dict(state, strict=True)
    return capped


def _import_gpt2(hf_model: Any, max_seq_len: int | None) -> GPT:
    return _cap_context(hf_gpt2.from_hf_gpt2(hf_model), max_seq_len)


def _import_llama(hf_model: Any, max_seq_len: int | None) -> GPT:
    return hf_llama.from_hf_llama(hf_model, max_seq_len=max_seq_len)


@dataclass(frozen=True)
class ExportTarget:
    """One Hugging Face class a GPT can be written as (and llama.cpp architecture, `name`)."""

    name: str  # also llama.cpp's architecture name, which `lmforge.export.llamacpp` writes
    hf_class: str
    check: Callable[[GPTConfig], None]  # raises ValueError naming what does not map
    build: Callable[[GPT, Tokenizer], Any]  # our model -> the transformers model


@dataclass(frozen=True)
class ImportSource:
    """One Hugging Face architecture (by `model_type`) a GPT can be read from."""

    hf_class: str
    convert: Callable[[Any, int | None], GPT]  # (transformers model, max_seq_len) -> ours


EXPORT_TARGETS = (
    ExportTarget("gpt2", "GPT2LMHeadModel", hf_gpt2.check_mappable, _build_gpt2),
    ExportTarget("llama", "LlamaForCausalLM", hf_llama.check_mappable, _build_llama),
)


IMPORT_SOURCES = {
    "gpt2": ImportSource("GPT2LMHeadModel", _import_gpt2),
    "llama": ImportSource("LlamaForCausalLM", _import_llama),
    "mistral": ImportSource("MistralForCausalLM", _import_llama),
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
    require_family(model, {"gpt"}, "lmforge export hf")
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(model) - known)
    if unknown:
        raise InteropError(
            f"{run_dir}: the model has fields {unknown} that the GPT decoder does not; only "
            "decoder (GPT) runs export to Hugging Face so far (encoder export needs the encoder "
            "family, as BertForMaskedLM)"
        )
    return model


def tokenizer_files(tok: Tokenizer, *, max_seq_len: int) -> dict[str, Any]:
    """The `tokenizer_config.json` and `special_tokens_map.json` contents for `tok`.

    `tokenizer.json` is lmforge's own file unchanged; `PreTrainedTokenizerFast` wraps it in
    transformers 4 and 5 alike. `add_bos_token` says whether a prompt starts with BOS, as
    `Tokenizer.encode_prompt` does: false for lmforge's own vocabularies, true for an imported
    one whose model was trained with BOS (transformers rebuilds the post-processor from it), so
    `AutoTokenizer(text)` gives `encode_prompt(text)`'s ids (for text that does not spell a
    special token: transformers, as usual, reads a literal "<|eos|>" as the EOS id, where
    lmforge reads it as text).
    """
    special = {f"{role}_token": text for role, text in tok.special_roles.items() if text}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": tok.add_bos,
        "model_max_length": max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


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

    Only float32 keeps the logits equal to lmforge's (to ~1e-6); bfloat16/float16 halve the
    size and round every weight.
    """
    transformers = require("transformers", "hf")
    from lmforge.infer.load import load_run

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise InteropError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    _run_model_config(run_dir, which)
    run = load_run(run_dir, which=which, families={"gpt"}, command="lmforge export hf")
    cfg, tok = run.model.config, run.tokenizer
    target = pick_target(cfg)
    hf = target.build(run.model, tok).to(DTYPES[dtype]).eval()
    hf.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.bos_id,
        # Every id lmforge stops at; a list only where there are several (imported models).
        eos_token_id=list(tok.eos_ids) if len(tok.eos_ids) > 1 else tok.eos_id,
        pad_token_id=tok.pad_id,
        max_length=cfg.max_seq_len,
        do_sample=True,  # lmforge generate's defaults: sampling at temperature 0.8
        temperature=0.8,
        top_p=0.95,
    )
    tmp = _prepare_out(out_dir)
    try:
        hf.save_pretrained(tmp)  # config.json, model.safetensors, generation_config.json
        if target.name == "llama":
            # transformers 5 writes rope_parameters only; transformers 4 reads rope_theta.
            hf_config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
            hf_config.setdefault("rope_theta", cfg.rope_theta)
            write_json_atomic(tmp / "config.json", hf_config)
        write_text_atomic(tmp / "tokenizer.json", tok.to_json())
        files = tokenizer_files(tok, max_seq_len=cfg.max_seq_len)
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
        "architecture": target.hf_class,
        "checkpoint": run.checkpoint.name,
        "dtype": dtype,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "files": sorted(p.name for p in out_dir.iterdir()),
    }
    log.info("exported %s as %s to %s", run.checkpoint, target.hf_class, out_dir)
    return summary


# ---------------------------------------------------------------- import


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InteropError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def _check_hf_dir(hf_dir: Path) -> tuple[str, ImportSource]:
    """The model_type and import source of a local HF folder, or a clear refusal."""
    if not hf_dir.is_dir():
        raise InteropError(f"{hf_dir} is not a folder; give a local Hugging Face model folder")
    config = _read_json(hf_dir / "config.json")
    if not config:
        raise InteropError(f"{hf_dir} has no config.json; it is not a Hugging Face model folder")
    model_type = config.get("model_type")
    if model_type not in IMPORT_SOURCES:
        supported = ", ".join(f"{k} ({v.hf_class})" for k, v in IMPORT_SOURCES.items())
        why = _NEEDS_FAMILY.get(model_type)
        hint = f"; importing it needs {why}, which lmforge does not have yet" if why else ""
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


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def load_hf_tokenizer(hf_dir: Path, hf_config: dict[str, Any]) -> Tokenizer:
    """The folder's `tokenizer.json` as an lmforge tokenizer of kind `hf`."""
    import tokenizers

    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise InteropError(
            f"{hf_dir} has no tokenizer.json; save the tokenizer in the fast format first "
            "(`AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)` writes it)"
        )
    try:
        hf_tok = tokenizers.Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise InteropError(f"{path} is not a valid tokenizer.json ({e})") from None
    tok_config = _read_json(hf_dir / "tokenizer_config.json")
    sources = [tok_config, _read_json(hf_dir / "special_tokens_map.json")]
    gen = _read_json(hf_dir / "generation_config.json")
    roles: dict[str, str | None] = {}
    for role in ("bos", "eos", "pad"):
        texts = (_token_text(s.get(f"{role}_token")) for s in sources)
        roles[role] = next((t for t in texts if t), None)
        if roles[role] is None:
            # Else the (first) id the model config names.
            ids = _token_ids(hf_config.get(f"{role}_token_id", gen.get(f"{role}_token_id")))
            if ids:
                roles[role] = hf_tok.id_to_token(ids[0])
    if not roles["eos"]:
        raise InteropError(
            f"{hf_dir}: no end-of-sequence token in tokenizer_config.json, "
            "special_tokens_map.json or config.json (eos_token_id); lmforge needs one to end "
            "documents and generations"
        )
    # Generation ends at any of the ids `transformers`' generate stops at: generation_config's
    # eos_token_id (Llama 3 lists <|end_of_text|>, <|eom_id|> and <|eot_id|>), else config's.
    stops = _token_ids(gen.get("eos_token_id", hf_config.get("eos_token_id")))
    unknown = [i for i in stops if hf_tok.id_to_token(i) is None]
    if unknown:
        log.warning("%s: eos_token_id %s are not in tokenizer.json; ignoring them", hf_dir, unknown)
    try:
        return Tokenizer(
            hf_tok,
            HF_KIND,
            special_roles=roles,
            add_bos=_adds_bos(hf_tok, roles["bos"], tok_config),
            eos_ids=[i for i in stops if i not in unknown],
        )
    except ValueError as e:
        raise InteropError(f"{path}: {e}") from None


def _token_ids(value: Any) -> list[int]:
    """A config's `*_token_id`, which may be one id, a list of ids, or missing."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if type(v) is int and v >= 0]


def _adds_bos(hf_tok: Any, bos: str | None, tok_config: dict[str, Any]) -> bool:
    """Whether the model reads every sequence after BOS, as its own tokenizer encodes it.

    The post-processor in tokenizer.json decides where there is one (Llama's and Mistral's
    TemplateProcessing "<s> $A"), read by asking it to encode a text: `tokenizers` and
    transformers 5 apply it as it is, whatever tokenizer_config.json says. Without one,
    `add_bos_token` in tokenizer_config.json decides (transformers 4's Llama tokenizer builds
    its template from that flag).
    """
    if bos is None:
        return False
    if hf_tok.post_processor is None:
        return tok_config.get("add_bos_token") is True
    ids = hf_tok.encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == hf_tok.token_to_id(bos)


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
    hf_config = _read_json(hf_dir / "config.json")
    tok = load_hf_tokenizer(hf_dir, hf_config)
    hf_class = getattr(transformers, source.hf_class)
    # The class is named here, never taken from the folder: no auto_map, no remote code.
    hf_model, info = hf_class.from_pretrained(
        hf_dir, use_safetensors=True, local_files_only=True, output_loading_info=True
    )
    # transformers fills tensors the files lack with random values and only logs it.
    missing = sorted(info.get("missing_keys") or ())
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
    config = to_dict(RunConfig(model=model.config))
    config["tokenizer"] = {"kind": tok.kind, "fingerprint": tok.fingerprint}
    tmp = _prepare_out(out_dir)
    try:
        tok.save(tmp / "tokenizer")
        template = _chat_template(hf_dir)
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
        "checkpoint": ckpt.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": tok.vocab_size,
        "max_seq_len": model.config.max_seq_len,
    }


def _chat_template(hf_dir: Path) -> str | None:
    """The folder's chat template: `chat_template.jinja` (v5) or tokenizer_config.json (v4)."""
    path = hf_dir / CHAT_TEMPLATE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = _read_json(hf_dir / "tokenizer_config.json").get("chat_template")
    return template if isinstance(template, str) else None
