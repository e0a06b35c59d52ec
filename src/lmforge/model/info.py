"""What a model config costs before anything is trained: parameters, FLOPs, memory.

The model is built on PyTorch's `meta` device, so counting the parameters of even a large
config allocates nothing. FLOPs per token follow the PaLM paper's appendix B (6N for the
matrices plus 12·L·d·T for attention, forward and backward). Activation memory follows
Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models":
34·T·B·d bytes per layer in 16-bit precision, without the 5·a·T²·B term for attention
scores because `scaled_dot_product_attention` never stores them; in fp32 everything doubles.
These are estimates for planning, not measurements.
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.model import build_model

# Where each parameter goes in the table, by the first name part that matches.
_GROUPS = (
    ("tok_emb", "embeddings"),
    ("pos_emb", "embeddings"),
    (".attn.q_norm", "norms"),
    (".attn.k_norm", "norms"),
    ("type_emb", "embeddings"),
    (".attn.", "attention"),
    (".self_attn.", "attention"),
    (".cross_attn.", "attention"),
    (".mlp.", "mlp"),
    (".canon_", "canon"),
    (".ff.", "mlp"),
    ("rnn.", "recurrent"),
    ("norm", "norms"),
    ("lm_head", "lm_head"),
)


def _group(name: str) -> str:
    for needle, group in _GROUPS:
        if needle in name:
            return group
    return "other"


def _layers(cfg: Any) -> int:
    """Blocks that keep activations, for the estimate (a decoder block with cross-attention
    counted as one and a half)."""
    if cfg.family == "seq2seq":
        return cfg.n_encoder_layers + (3 * cfg.n_decoder_layers + 1) // 2
    return cfg.n_layers


def model_info(cfg: Any, *, batch_size: int = 1, seq_len: int | None = None) -> dict[str, Any]:
    """Parameters by group, FLOPs per token and a memory estimate for one training batch, for
    a config of any model family (the activation estimate is the transformer one)."""
    with torch.device("meta"):
        model = build_model(cfg)
    seq_len = seq_len or cfg.max_seq_len
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():  # tied weights are listed once
        groups[_group(name)] = groups.get(_group(name), 0) + p.numel()
    total = sum(groups.values())
    flops_per_token = model.flops_per_token(seq_len)
    tokens = batch_size * seq_len
    memory = {}
    for precision, act_bytes in (("fp32", 4), ("bf16", 2)):
        # Weights and AdamW's two moments stay fp32 under autocast; gradients too.
        weights_and_optimizer = total * 4 * 4  # weights, grads, exp_avg, exp_avg_sq
        activations = _layers(cfg) * 17 * act_bytes * tokens * cfg.d_model
        vocab = getattr(cfg, "target_vocab_size", cfg.vocab_size)
        logits = tokens * vocab * 4 * 2  # fp32 logits and their gradient
        memory[precision] = {
            "weights_grads_adamw_bytes": weights_and_optimizer,
            "activations_bytes": activations + logits,
            "total_bytes": weights_and_optimizer + activations + logits,
        }
    return {
        "params": {"total": total, "non_embedding": model.num_params(), "by_group": groups},
        "flops_per_token": flops_per_token,
        "flops_per_step": flops_per_token * tokens,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "memory_estimate": memory,
    }
