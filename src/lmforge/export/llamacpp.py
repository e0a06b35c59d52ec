"""A run as one GGUF file for llama.cpp: `lmforge export gguf`.

Written through the `gguf` package's `GGUFWriter` (the library llama.cpp's own converters use),
with llama.cpp's key and tensor names taken from `gguf`'s tables. What is written:

- Llama-style models (those `hf_llama` maps) as architecture `llama`; GPT-2-style ones (those
  `hf_gpt2` maps) as `gpt2`: the choice is `lmforge.export.hf.pick_target`'s, the same table
  `lmforge export hf` picks from, and anything else is refused with both sets of reasons.
- Hyperparameters: `{arch}.context_length`, `embedding_length`, `block_count`,
  `feed_forward_length`, `attention.head_count`, and for llama `attention.head_count_kv`,
  `rope.freq_base`, `rope.dimension_count`, `attention.layer_norm_rms_epsilon`, `vocab_size`
  (for gpt2 `attention.layer_norm_epsilon`); `general.file_type` ALL_F32 or MOSTLY_F16.
- Tensors in `nn.Linear`'s (out, in) layout, which is what ggml's `mul_mat` takes: llama
  `token_embd`, `blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
  ffn_up, ffn_down}`, `output_norm`, `output` (left out when tied: llama.cpp then reads
  `token_embd`); gpt2 the same plus `position_embd`, biases, and q/k/v fused as `attn_qkv`
  (rows q, k, v). 2-D weights in F32 or F16, norms and biases always F32 (as llama.cpp's
  converter does).
- RoPE layout: llama.cpp's `llama` architecture rotates adjacent pairs (x[2i], x[2i+1]), the
  layout of Meta's original checkpoints; lmforge (like HF) rotates half-split pairs
  (x[i], x[i + D/2]). So `attn_q` and `attn_k` rows are permuted within each head, from
  [0, 1, ..., D/2-1 | D/2, ..., D-1] to [0, D/2, 1, D/2+1, ...]: exactly `LlamaModel.permute`
  of llama.cpp's `convert_hf_to_gguf.py` (q with n_heads, k with n_kv_heads), which
  transformers' GGUF loader undoes. `lmforge` tests both that transformers reads the file back
  to our logits and that the permuted weights under interleaved RoPE give our attention scores.
- Tokenizer: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with `tokens`, `token_type`
  (normal, control for special tokens, user-defined for other added tokens), `merges`,
  `pre = "gpt-2"` (GPT-2's split regex, which lmforge's bpe tokenizer uses; a byte vocabulary
  has no merges, so any split gives the same ids), bos/eos/padding ids, add_eos false and
  add_bos as `Tokenizer.add_bos` (false for lmforge's own vocabularies; true for an imported
  one whose model was trained with BOS). Only the first of several end-of-generation ids is
  written (`eos_token_id`). Character-level vocabularies and imported ones with another
  pre-tokenizer are refused: llama.cpp has no exact equivalent to write.

llama.cpp itself is not installed here, so no llama.cpp binary has run these files: they are
checked by reading them back with `gguf.GGUFReader` and by loading them with transformers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.deps import require
from lmforge.export.hf import InteropError, pick_target
from lmforge.io import atomic_path
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.tokenizer import HF_KIND, Tokenizer

log = logging.getLogger(__name__)

GGUF_DTYPES = ("f32", "f16")


def permute_for_llamacpp(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from half-split to interleaved RoPE order, head by head."""
    out_features = w.shape[0]
    # (H, 2, D/2, in) -> (H, D/2, 2, in): row j of the first half and row j of the second half
    # of each head become neighbours.
    return (
        w.reshape(n_heads, 2, out_features // n_heads // 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
    )


def _llama_tensors(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """llama.cpp's tensor names -> weights, q/k permuted for its RoPE layout."""
    out = {
        "token_embd.weight": state["tok_emb.weight"],
        "output_norm.weight": state["norm_f.weight"],
    }
    if not cfg.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layers):
        b, g = f"blocks.{i}", f"blk.{i}"
        out[f"{g}.attn_norm.weight"] = state[f"{b}.norm_attn.weight"]
        out[f"{g}.attn_q.weight"] = permute_for_llamacpp(
            state[f"{b}.attn.q_proj.weight"], cfg.n_heads
        )
        out[f"{g}.attn_k.weight"] = permute_for_llamacpp(
            state[f"{b}.attn.k_proj.weight"], cfg.n_kv_heads
        )
        out[f"{g}.attn_v.weight"] = state[f"{b}.attn.v_proj.weight"]
        out[f"{g}.attn_output.weight"] = state[f"{b}.attn.o_proj.weight"]
        out[f"{g}.ffn_norm.weight"] = state[f"{b}.norm_mlp.weight"]
        out[f"{g}.ffn_gate.weight"] = state[f"{b}.mlp.gate_proj.weight"]
        out[f"{g}.ffn_up.weight"] = state[f"{b}.mlp.up_proj.weight"]
        out[f"{g}.ffn_down.weight"] = state[f"{b}.mlp.down_proj.weight"]
    return out


def _gpt2_tensors(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """llama.cpp's gpt2 tensor names -> weights (q, k, v fused along the output dimension)."""
    out = {
        "token_embd.weight": state["tok_emb.weight"],
        "position_embd.weight": state["pos_emb.weight"],
        "output_norm.weight": state["norm_f.weight"],
        "output_norm.bias": state["norm_f.bias"],
    }
    if not cfg.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    pairs = {
        "attn_norm": "norm_attn",
        "attn_output": "attn.o_proj",
        "ffn_norm": "norm_mlp",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(cfg.n_layers):
        b, g = f"blocks.{i}", f"blk.{i}"
        for suffix in ("weight", "bias"):
            qkv = [state[f"{b}.attn.{p}_proj.{suffix}"] for p in "qkv"]
            out[f"{g}.attn_qkv.{suffix}"] = torch.cat(qkv)  # (3C, C) / (3C,)
            for theirs, ours in pairs.items():
                out[f"{g}.{theirs}.{suffix}"] = state[f"{b}.{ours}.{suffix}"]
    return out


# llama.cpp architecture (the `name` of `hf.EXPORT_TARGETS`' rows) -> its tensors.
_TENSORS = {"llama": _llama_tensors, "gpt2": _gpt2_tensors}


def gguf_tensors(model: GPT) -> tuple[str, dict[str, torch.Tensor]]:
    """(architecture, {llama.cpp tensor name: float32 weight}) for `model`, or InteropError."""
    cfg = model.config
    arch = pick_target(cfg).name
    if arch not in _TENSORS:
        raise InteropError(f"llama.cpp export has no tensor layout for a {arch} model")
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    return arch, {k: v.contiguous() for k, v in _TENSORS[arch](state, cfg).items()}


def _vocab(tok: Tokenizer, n_vocab: int) -> dict[str, Any]:
    """tokens, token types and merges for llama.cpp's "gpt2" tokenizer, `n_vocab` long."""
    data = json.loads(tok.to_json())
    pre = json.dumps(data.get("pre_tokenizer"))
    byte_level = tok.kind in ("bpe", "byte") or (
        tok.kind == HF_KIND
        and data.get("pre_tokenizer", {}) is not None
        and data.get("pre_tokenizer", {}).get("type") == "ByteLevel"
        and data["pre_tokenizer"].get("use_regex", True)
        and not data.get("normalizer")
    )
    if not byte_level or data.get("model", {}).get("type") != "BPE":
        raise InteropError(
            f"gguf export writes byte-level BPE vocabularies (lmforge kinds bpe and byte, or an "
            f"imported one with GPT-2's ByteLevel pre-tokenizer); this tokenizer is kind "
            f"{tok.kind!r} with pre-tokenizer {pre}. Train one with `lmforge tokenizer train "
            "--kind bpe`, or convert the `lmforge export hf` folder with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    gguf = require("gguf", "gguf")
    # llama.cpp wants a token per embedding row: rows past the tokenizer get unused names.
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    for text, i in tok.hf.get_vocab(with_added_tokens=True).items():
        tokens[i] = text
    types = [gguf.TokenType.NORMAL] * tok.vocab_size
    types += [gguf.TokenType.UNUSED] * (n_vocab - tok.vocab_size)
    for i, added in tok.hf.get_added_tokens_decoder().items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    # tokenizers writes merges as ["a", "b"] pairs (older files: "a b" strings).
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return {"tokens": tokens, "types": [int(t) for t in types], "merges": merges}


def _tensor_array(name: str, w: torch.Tensor, dtype: str) -> np.ndarray:
    # Norm gains and biases stay F32 even in an F16 file, as llama.cpp's converter keeps them.
    if dtype == "f16" and w.dim() > 1:
        return w.to(torch.float16).numpy()
    return w.to(torch.float32).numpy()


def export_gguf(
    run_dir: str | Path,
    out_file: str | Path,
    *,
    which: str = "best",
    dtype: str = "f32",
    progress: bool = False,
) -> dict[str, Any]:
    """Write checkpoint `which` of a run as a GGUF file; return a summary of what was written."""
    gguf = require("gguf", "gguf")
    from lmforge.infer.load import load_run

    if dtype not in GGUF_DTYPES:
        raise InteropError(f"dtype={dtype!r}; expected one of {GGUF_DTYPES}")
    out_file = Path(out_file)
    run = load_run(run_dir, which=which, families={"gpt"}, command="lmforge export gguf")
    cfg, tok = run.model.config, run.tokenizer
    arch, tensors = gguf_tensors(run.model)
    vocab = _vocab(tok, cfg.vocab_size)

    with atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        try:
            writer.add_name(Path(run_dir).resolve().name)
            writer.add_file_type(
                gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
            )
            writer.add_context_length(cfg.max_seq_len)
            writer.add_embedding_length(cfg.d_model)
            writer.add_block_count(cfg.n_layers)
            writer.add_feed_forward_length(cfg.d_ff)
            writer.add_head_count(cfg.n_heads)
            if arch == "llama":
                writer.add_head_count_kv(cfg.n_kv_heads)
                writer.add_rope_freq_base(cfg.rope_theta)
                writer.add_rope_dimension_count(cfg.head_dim)
                writer.add_layer_norm_rms_eps(cfg.norm_eps)
                writer.add_vocab_size(cfg.vocab_size)
            else:
                writer.add_layer_norm_eps(cfg.norm_eps)
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre("gpt-2")
            writer.add_token_list(vocab["tokens"])
            writer.add_token_types(vocab["types"])
            writer.add_token_merges(vocab["merges"])
            if tok.bos_id is not None:
                writer.add_bos_token_id(tok.bos_id)
            writer.add_eos_token_id(tok.eos_id)
            if tok.pad_id is not None:
                writer.add_pad_token_id(tok.pad_id)
            writer.add_add_bos_token(tok.add_bos)
            writer.add_add_eos_token(False)
            for name, w in tensors.items():
                writer.add_tensor(name, _tensor_array(name, w, dtype))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=progress)
        finally:
            writer.close()
    log.info("wrote %s (%s, %d tensors) to %s", run.checkpoint, arch, len(tensors), out_file)
    return {
        "out": str(out_file),
        "architecture": arch,
        "checkpoint": run.checkpoint.name,
        "dtype": dtype,
        "tensors": len(tensors),
        "bytes": out_file.stat().st_size,
    }
