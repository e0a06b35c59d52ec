"""The state-dict adapter between lmforge's `GPT` and Hugging Face's `GPT2LMHeadModel`.

This is the one seam import and export go through: `to_hf_gpt2` gives a transformers model
that computes the same logits as ours, `from_hf_gpt2` builds our model from one (for example
a GPT-2 checkpoint). The two architectures are the same math (pre-norm blocks, LayerNorm with
eps 1e-5, tanh-approximated GELU, learned positions); only the weight layout differs:

- HF's `Conv1D` stores weights as (in, out), the transpose of `nn.Linear`'s (out, in);
- HF fuses the query, key and value projections into one `c_attn`, concatenated along the
  output dimension in the order q, k, v.

`transformers` is an optional dependency, imported when a function here is called.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from lmforge.deps import require
from lmforge.model.gpt import GPT, GPTConfig

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel

log = logging.getLogger(__name__)

# Parameters that map one to one: our name -> (HF name, whether the weight is transposed).
# `{i}` is the block index. The fused attention input projection is handled on its own.
_TOP_LEVEL = {
    "tok_emb.weight": ("transformer.wte.weight", False),
    "pos_emb.weight": ("transformer.wpe.weight", False),
    "norm_f.weight": ("transformer.ln_f.weight", False),
    "norm_f.bias": ("transformer.ln_f.bias", False),
}
_PER_BLOCK = {
    "blocks.{i}.norm_attn.weight": ("transformer.h.{i}.ln_1.weight", False),
    "blocks.{i}.norm_attn.bias": ("transformer.h.{i}.ln_1.bias", False),
    "blocks.{i}.attn.o_proj.weight": ("transformer.h.{i}.attn.c_proj.weight", True),
    "blocks.{i}.attn.o_proj.bias": ("transformer.h.{i}.attn.c_proj.bias", False),
    "blocks.{i}.norm_mlp.weight": ("transformer.h.{i}.ln_2.weight", False),
    "blocks.{i}.norm_mlp.bias": ("transformer.h.{i}.ln_2.bias", False),
    "blocks.{i}.mlp.up_proj.weight": ("transformer.h.{i}.mlp.c_fc.weight", True),
    "blocks.{i}.mlp.up_proj.bias": ("transformer.h.{i}.mlp.c_fc.bias", False),
    "blocks.{i}.mlp.down_proj.weight": ("transformer.h.{i}.mlp.c_proj.weight", True),
    "blocks.{i}.mlp.down_proj.bias": ("transformer.h.{i}.mlp.c_proj.bias", False),
}
_QKV = ("q_proj", "k_proj", "v_proj")  # the order of the three slices of HF's c_attn

# HF activations that are GELU with the tanh approximation, as our MLP computes it.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def check_mappable(cfg: GPTConfig) -> None:
    """Raise ValueError if a model with `cfg` has no GPT-2 equivalent."""
    problems = []
    if not cfg.bias:
        problems.append(
            "model.bias=False: GPT-2 has a bias on every linear layer and LayerNorm; "
            "train with model.bias=True to export to GPT-2"
        )
    if cfg.n_kv_heads != cfg.n_heads:
        problems.append(
            f"model.n_kv_heads={cfg.n_kv_heads} differs from model.n_heads={cfg.n_heads}: "
            "GPT-2 has no grouped-query attention; use n_kv_heads = n_heads (or 0) to export"
        )
    gpt2_choices = {
        "pos_emb": "learned",
        "norm": "layernorm",
        "mlp": "gelu",
        "qk_norm": False,
        "canon_kernel": 0,
        "attn_gate": "none",
        "attn_window": 0,
    }
    for field, value in gpt2_choices.items():
        if getattr(cfg, field) != value:
            problems.append(
                f"model.{field}={getattr(cfg, field)!r}: GPT-2 has {field}={value!r} "
                "(a Llama-style model maps to LlamaForCausalLM instead)"
            )
    if problems:
        raise ValueError("this model cannot be exported as GPT-2: " + "; ".join(problems))


def gpt2_config(cfg: GPTConfig, *, eos_token_id: int | None = None) -> GPT2Config:
    """The `GPT2Config` of a model with `cfg` (raises ValueError if there is none).

    `eos_token_id` becomes GPT-2's BOS and EOS id; without it both are None (GPT-2's default
    50256 would point outside a small vocabulary).
    """
    require("transformers", "hf")
    from transformers import GPT2Config

    check_mappable(cfg)
    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=cfg.norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )


def _to_hf_state(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    out = {}
    for ours, (theirs, transpose) in _TOP_LEVEL.items():
        out[theirs] = state[ours].t() if transpose else state[ours]
    for i in range(cfg.n_layers):
        for ours, (theirs, transpose) in _PER_BLOCK.items():
            w = state[ours.format(i=i)]
            out[theirs.format(i=i)] = w.t() if transpose else w
        attn, hf_attn = f"blocks.{i}.attn", f"transformer.h.{i}.attn.c_attn"
        # (3C, C) -> (C, 3C): q, k, v stacked along the output dimension, then transposed.
        out[f"{hf_attn}.weight"] = torch.cat([state[f"{attn}.{p}.weight"] for p in _QKV]).t()
        out[f"{hf_attn}.bias"] = torch.cat([state[f"{attn}.{p}.bias"] for p in _QKV])
    # Tied: HF ties lm_head to wte itself, and the same tensor under both names loads fine.
    out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def _from_hf_state(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    out = {}
    for ours, (theirs, transpose) in _TOP_LEVEL.items():
        out[ours] = state[theirs].t() if transpose else state[theirs]
    for i in range(cfg.n_layers):
        for ours, (theirs, transpose) in _PER_BLOCK.items():
            w = state[theirs.format(i=i)]
            out[ours.format(i=i)] = w.t() if transpose else w
        attn, hf_attn = f"blocks.{i}.attn", f"transformer.h.{i}.attn.c_attn"
        weights = state[f"{hf_attn}.weight"].t().split(cfg.d_model)  # 3 x (C, C)
        biases = state[f"{hf_attn}.bias"].split(cfg.d_model)  # 3 x (C,)
        for name, w, b in zip(_QKV, weights, biases):
            out[f"{attn}.{name}.weight"] = w
            out[f"{attn}.{name}.bias"] = b
    out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def to_hf_gpt2(
    model: GPT, *, attn_implementation: str = "sdpa", eos_token_id: int | None = None
) -> GPT2LMHeadModel:
    """A `GPT2LMHeadModel` with `model`'s weights (copied) on the same device and dtype."""
    require("transformers", "hf")
    from transformers import GPT2LMHeadModel

    config = gpt2_config(model.config, eos_token_id=eos_token_id)
    config._attn_implementation = attn_implementation
    p = model.tok_emb.weight
    hf = GPT2LMHeadModel(config).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        state = _to_hf_state(model.state_dict(), model.config)
        hf.load_state_dict(state, strict=True)
    return hf.train(model.training)


def _gpt_config_from_hf(config: GPT2Config) -> GPTConfig:
    problems = []
    if config.activation_function not in _TANH_GELUS:
        problems.append(
            f"activation_function={config.activation_function!r}; lmforge's MLP uses the "
            f"tanh-approximated GELU ({', '.join(_TANH_GELUS)})"
        )
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
        problems.append("attention scaling other than 1/sqrt(head_dim)")
    if config.add_cross_attention:
        problems.append("cross-attention layers")
    if problems:
        raise ValueError("this GPT-2 model has no lmforge equivalent: " + "; ".join(problems))
    dropouts = {config.resid_pdrop, config.embd_pdrop, config.attn_pdrop}
    if len(dropouts) > 1:
        # Dropout is not part of the weights; lmforge has one rate for all three places.
        log.warning("GPT-2 dropouts differ (%s); using resid_pdrop for all", sorted(dropouts))
    return GPTConfig(
        vocab_size=config.vocab_size,
        n_layers=config.n_layer,
        n_heads=config.n_head,
        d_model=config.n_embd,
        d_ff=config.n_inner or 4 * config.n_embd,
        max_seq_len=config.n_positions,
        dropout=float(config.resid_pdrop),
        bias=True,
        tie_embeddings=bool(config.tie_word_embeddings),
        norm_eps=config.layer_norm_epsilon,
        init_std=config.initializer_range,
    )


def from_hf_gpt2(hf_model: GPT2LMHeadModel) -> GPT:
    """Our `GPT` with `hf_model`'s weights (copied) on the same device and dtype."""
    require("transformers", "hf")
    cfg = _gpt_config_from_hf(hf_model.config)
    p = hf_model.transformer.wte.weight
    model = GPT(cfg).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        state = _from_hf_state(hf_model.state_dict(), cfg)
        model.load_state_dict(state, strict=True)
    return model.train(hf_model.training)
