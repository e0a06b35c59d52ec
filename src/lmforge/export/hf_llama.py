"""The state-dict adapter between lmforge's modern `GPT` and Hugging Face's `LlamaForCausalLM`.

A GPT built with rotary positions, RMSNorm, a SwiGLU MLP and no biases (the `llama-style`
preset, with or without grouped-query attention and tied embeddings) is the same math as
Llama, so conversion is a renaming table and nothing else:

- RoPE: lmforge rotates the half-split pairs (x[i], x[i + D/2]) of each head
  (`layers.apply_rope`), which is exactly HF's `rotate_half`, so q/k projection rows are copied
  as they are. (Meta's original checkpoints and llama.cpp pair adjacent channels instead; HF's
  `convert_llama_weights_to_hf.py` permutes rows into the half-split order, and
  `lmforge.export.llamacpp` permutes them back.) The parity tests check this by logits.
- RMSNorm: both compute x * rsqrt(mean(x^2) + eps) * weight, eps from `norm_eps`.
- GQA: lmforge repeats each key/value head for consecutive query heads (`repeat_interleave`),
  as HF's `repeat_kv` does, so `num_key_value_heads = n_kv_heads` with no reordering.
- Attention is scaled by 1/sqrt(head_dim) in both.

Mistral checkpoints (`MistralForCausalLM`) are the same architecture plus a sliding window;
they import when the window is at least the context, where it never takes effect.
`transformers` is an optional dependency, imported when a function here is called.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from lmforge.deps import require
from lmforge.model.gpt import GPT, GPTConfig

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

log = logging.getLogger(__name__)

# Our name -> HF name; `{i}` is the block index. Every weight keeps its (out, in) layout.
_TOP_LEVEL = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "norm_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_PER_BLOCK = {
    "blocks.{i}.norm_attn.weight": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.norm_mlp.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blocks.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blocks.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# HF model types this adapter reads: the architectures that are Llama's math.
MODEL_TYPES = ("llama", "mistral")


def check_mappable(cfg: GPTConfig) -> None:
    """Raise ValueError listing every setting of `cfg` that Llama does not have."""
    problems = []
    llama_choices = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
    for field, value in llama_choices.items():
        if getattr(cfg, field) != value:
            problems.append(
                f"model.{field}={getattr(cfg, field)!r}: Llama has {field}={value!r}; "
                f"train with model.{field}={value!r} (or model.preset = 'llama-style')"
            )
    if cfg.bias:
        problems.append(
            "model.bias=True: Llama has no biases in its linear layers or norms; "
            "train with model.bias=false"
        )
    if cfg.qk_norm:
        problems.append(
            "model.qk_norm=True: Llama does not normalise queries and keys; "
            "train with model.qk_norm=false"
        )
    if cfg.canon_kernel:
        problems.append(
            f"model.canon_kernel={cfg.canon_kernel}: Llama has no Canon layers (short "
            "convolutions); train with model.canon_kernel=0"
        )
    if cfg.attn_gate != "none":
        problems.append(
            f"model.attn_gate={cfg.attn_gate!r}: Llama has no gate on its attention output; "
            "train with model.attn_gate='none'"
        )
    if cfg.attn_window:
        problems.append(
            f"model.attn_window={cfg.attn_window}: Llama attends to every earlier token (no "
            "sliding window); train with model.attn_window=0"
        )
    if problems:
        raise ValueError("this model cannot be exported as Llama: " + "; ".join(problems))


def llama_config(
    cfg: GPTConfig,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaConfig:
    """The `LlamaConfig` of a model with `cfg` (raises ValueError if there is none)."""
    require("transformers", "hf")
    from transformers import LlamaConfig

    check_mappable(cfg)
    if cfg.dropout:
        log.warning(
            "model.dropout=%s: Llama has attention dropout only; the exported config has "
            "attention_dropout=%s and no residual or embedding dropout",
            cfg.dropout,
            cfg.dropout,
        )
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=cfg.dropout,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def to_hf_state(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Our state dict (a Llama-style GPT's) renamed to `LlamaForCausalLM`'s keys."""
    out = {theirs: state[ours] for ours, theirs in _TOP_LEVEL.items() if ours in state}
    if "lm_head.weight" not in out:  # tied, saved once as tok_emb.weight
        out["lm_head.weight"] = state["tok_emb.weight"]
    for i in range(n_layers):
        for ours, theirs in _PER_BLOCK.items():
            out[theirs.format(i=i)] = state[ours.format(i=i)]
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """`LlamaForCausalLM`'s state dict renamed to our keys."""
    out = {ours: state[theirs] for ours, theirs in _TOP_LEVEL.items()}
    for i in range(n_layers):
        for ours, theirs in _PER_BLOCK.items():
            out[ours.format(i=i)] = state[theirs.format(i=i)]
    return {k: v.contiguous() for k, v in out.items()}


def to_hf_llama(
    model: GPT,
    *,
    attn_implementation: str = "sdpa",
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` with `model`'s weights (copied) on the same device and dtype."""
    require("transformers", "hf")
    from transformers import LlamaForCausalLM

    config = llama_config(
        model.config,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    config._attn_implementation = attn_implementation
    p = model.tok_emb.weight
    hf = LlamaForCausalLM(config).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        hf.load_state_dict(to_hf_state(model.state_dict(), model.config.n_layers), strict=True)
    return hf.train(model.training)


def rope_parameters(config: Any) -> dict[str, Any]:
    """{"rope_type", "rope_theta", ...} of an HF config, transformers 4 or 5 alike."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        return {"rope_type": "default", **params}
    scaling = getattr(config, "rope_scaling", None) or {}
    return {
        "rope_type": scaling.get("rope_type", scaling.get("type", "default")),
        "rope_theta": getattr(config, "rope_theta", 10000.0),
    }


def gpt_config_from_hf(config: Any, *, max_seq_len: int | None = None) -> GPTConfig:
    """Our `GPTConfig` for an HF Llama/Mistral config; ValueError naming what does not map.

    `max_seq_len` caps the context (RoPE has no table to cut, so this is exact for every
    position below it); without it the model keeps `max_position_embeddings`.
    """
    problems = []
    if config.model_type not in MODEL_TYPES:
        problems.append(f"model_type={config.model_type!r} (this adapter reads {MODEL_TYPES})")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config.hidden_act!r}; lmforge's SwiGLU gates with silu")
    for field in ("attention_bias", "mlp_bias"):
        if getattr(config, field, False):
            problems.append(f"{field}=True; lmforge's Llama-style blocks have no biases")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        problems.append(
            f"rope_type={rope['rope_type']!r} (scaled RoPE); lmforge implements plain RoPE only"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={rope['partial_rotary_factor']} (partial RoPE)")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        problems.append(
            f"head_dim={head_dim} with {config.num_attention_heads} heads is not "
            f"hidden_size={config.hidden_size}; lmforge derives head_dim as d_model / n_heads"
        )
    context = min(max_seq_len or config.max_position_embeddings, config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    if window is not None and window < context:
        problems.append(
            f"sliding_window={window} is shorter than the context ({context}); lmforge attends "
            f"to the whole context (import with a max_seq_len of at most {window})"
        )
    if problems:
        raise ValueError(
            f"this {config.model_type} model has no lmforge equivalent: " + "; ".join(problems)
        )
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return GPTConfig(
        vocab_size=config.vocab_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=kv_heads,
        d_model=config.hidden_size,
        d_ff=config.intermediate_size,
        max_seq_len=context,
        dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0),
        bias=False,
        tie_embeddings=bool(config.tie_word_embeddings),
        pos_emb="rope",
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        norm="rmsnorm",
        norm_eps=float(config.rms_norm_eps),
        mlp="swiglu",
        init_std=float(getattr(config, "initializer_range", 0.02)),
    )


def from_hf_llama(hf_model: PreTrainedModel, *, max_seq_len: int | None = None) -> GPT:
    """Our `GPT` with a Llama (or Mistral) model's weights, copied, on its device and dtype."""
    require("transformers", "hf")
    cfg = gpt_config_from_hf(hf_model.config, max_seq_len=max_seq_len)
    p = hf_model.get_input_embeddings().weight
    model = GPT(cfg).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        model.load_state_dict(from_hf_state(hf_model.state_dict(), cfg.n_layers), strict=True)
    return model.train(hf_model.training)
