"""The state-dict adapter between lmforge's `Encoder` and Hugging Face's `BertForMaskedLM`.

The one seam BERT import and export go through (as `hf_gpt2` is for GPT-2). A post-norm
encoder with learned positions is BERT's math exactly (LayerNorm after the summed
embeddings and after each residual, exact GELU or ReLU, an MLM head of dense + activation +
LayerNorm before the output projection), so only the names differ; every weight maps one to
one, with no transposes or fused matrices:

| lmforge                          | transformers (`BertForMaskedLM`)                           |
|----------------------------------|------------------------------------------------------------|
| tok_emb / pos_emb / type_emb     | bert.embeddings.{word,position,token_type}_embeddings      |
| norm_emb                         | bert.embeddings.LayerNorm                                  |
| blocks.{i}.attn.{q,k,v}_proj     | bert.encoder.layer.{i}.attention.self.{query,key,value}    |
| blocks.{i}.attn.o_proj           | bert.encoder.layer.{i}.attention.output.dense              |
| blocks.{i}.norm_attn             | bert.encoder.layer.{i}.attention.output.LayerNorm          |
| blocks.{i}.mlp.up_proj           | bert.encoder.layer.{i}.intermediate.dense                  |
| blocks.{i}.mlp.down_proj         | bert.encoder.layer.{i}.output.dense                        |
| blocks.{i}.norm_mlp              | bert.encoder.layer.{i}.output.LayerNorm                    |
| mlm_dense / mlm_norm             | cls.predictions.transform.{dense,LayerNorm}                |
| lm_head.weight                   | cls.predictions.decoder.weight (tied to word_embeddings)   |
| lm_head.bias                     | cls.predictions.decoder.bias and cls.predictions.bias      |

HF keeps the output bias under two names (`cls.predictions.bias` is tied to
`decoder.bias`); both are written on export and either is read on import. Pre-norm encoders
and sinusoidal positions have no BERT equivalent and are refused with the field to change.
`transformers` is an optional dependency, imported when a function here needs it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from lmforge.deps import require
from lmforge.model.encoder import Encoder, EncoderConfig

if TYPE_CHECKING:
    from transformers import BertConfig, BertForMaskedLM

log = logging.getLogger(__name__)

_TOP_LEVEL = {
    "tok_emb.weight": "bert.embeddings.word_embeddings.weight",
    "pos_emb.weight": "bert.embeddings.position_embeddings.weight",
    "type_emb.weight": "bert.embeddings.token_type_embeddings.weight",
    "norm_emb.weight": "bert.embeddings.LayerNorm.weight",
    "norm_emb.bias": "bert.embeddings.LayerNorm.bias",
    "mlm_dense.weight": "cls.predictions.transform.dense.weight",
    "mlm_dense.bias": "cls.predictions.transform.dense.bias",
    "mlm_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "lm_head.weight": "cls.predictions.decoder.weight",
    "lm_head.bias": "cls.predictions.decoder.bias",
}
_PER_BLOCK = {
    "attn.q_proj": "attention.self.query",
    "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value",
    "attn.o_proj": "attention.output.dense",
    "norm_attn": "attention.output.LayerNorm",
    "mlp.up_proj": "intermediate.dense",
    "mlp.down_proj": "output.dense",
    "norm_mlp": "output.LayerNorm",
}
_HF_OUTPUT_BIAS = "cls.predictions.bias"  # tied to cls.predictions.decoder.bias


def _name_table(n_layers: int) -> dict[str, str]:
    """Every parameter name of ours -> the HF name holding the same tensor."""
    table = dict(_TOP_LEVEL)
    for i in range(n_layers):
        for ours, theirs in _PER_BLOCK.items():
            for p in ("weight", "bias"):
                table[f"blocks.{i}.{ours}.{p}"] = f"bert.encoder.layer.{i}.{theirs}.{p}"
    return table


def check_mappable(cfg: EncoderConfig) -> None:
    """Raise ValueError if an encoder with `cfg` has no BERT equivalent."""
    problems = []
    if cfg.norm_position != "post":
        problems.append(
            f"model.norm_position={cfg.norm_position!r}: BERT normalises after each residual; "
            "train with model.norm_position='post' to export to BERT"
        )
    if cfg.pos_emb != "learned":
        problems.append(
            f"model.pos_emb={cfg.pos_emb!r}: BERT has learned positions; "
            "train with model.pos_emb='learned' to export to BERT"
        )
    if problems:
        raise ValueError("this encoder cannot be exported as BERT: " + "; ".join(problems))


def hf_bert_config(cfg: EncoderConfig, *, pad_token_id: int | None = None) -> BertConfig:
    """The `BertConfig` of an encoder with `cfg` (raises ValueError if there is none).

    `pad_token_id` only sets which embedding row HF keeps at zero when it initialises a model
    itself; without it, none is (BERT's default 0 may be a real token in our vocabulary).
    """
    require("transformers", "hf")
    from transformers import BertConfig

    check_mappable(cfg)
    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        hidden_act=cfg.activation,  # "gelu" is the exact GELU in HF too; "relu" is ReLU
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_seq_len,
        type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.init_std,
        layer_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=pad_token_id,
    )


def encoder_config_from_hf(config: BertConfig) -> EncoderConfig:
    """The `EncoderConfig` of a `BertConfig` (raises ValueError if BERT uses what we lack)."""
    problems = []
    if config.hidden_act not in ("gelu", "relu"):
        problems.append(f"hidden_act={config.hidden_act!r} (lmforge has 'gelu' and 'relu')")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        problems.append("a decoder / cross-attention configuration")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type={config.position_embedding_type!r}")
    if problems:
        raise ValueError("this BERT model has no lmforge equivalent: " + "; ".join(problems))
    if config.hidden_dropout_prob != config.attention_probs_dropout_prob:
        # Dropout is not part of the weights; lmforge has one rate for every place.
        log.warning(
            "BERT dropouts differ (hidden %s, attention %s); using the hidden one for both",
            config.hidden_dropout_prob,
            config.attention_probs_dropout_prob,
        )
    return EncoderConfig(
        vocab_size=config.vocab_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        d_model=config.hidden_size,
        d_ff=config.intermediate_size,
        max_seq_len=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        activation=config.hidden_act,
        dropout=float(config.hidden_dropout_prob),
        norm_eps=config.layer_norm_eps,
        init_std=config.initializer_range,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
    )


def to_hf_bert_state_dict(model: Encoder) -> dict[str, torch.Tensor]:
    """`model`'s weights under `BertForMaskedLM`'s names (the tensors themselves, not copies)."""
    cfg = model.config
    check_mappable(cfg)
    state = model.state_dict()
    out = {theirs: state[ours] for ours, theirs in _name_table(cfg.n_layers).items()}
    out[_HF_OUTPUT_BIAS] = state["lm_head.bias"]
    return out


def from_hf_bert_state_dict(
    sd: dict[str, torch.Tensor], cfg: EncoderConfig
) -> dict[str, torch.Tensor]:
    """A `BertForMaskedLM` state dict under our names, for an `Encoder` built from `cfg`.

    Raises ValueError naming the missing keys when `sd` is not a `BertForMaskedLM`'s (for
    example a bare `BertModel`'s, which has no MLM head) or has fewer layers than `cfg`.
    """
    check_mappable(cfg)
    sd = dict(sd)
    if "cls.predictions.decoder.bias" not in sd and _HF_OUTPUT_BIAS in sd:
        sd["cls.predictions.decoder.bias"] = sd[_HF_OUTPUT_BIAS]
    if "cls.predictions.decoder.weight" not in sd and cfg.tie_embeddings:
        # Tied checkpoints may store the output projection only as the word embeddings.
        sd["cls.predictions.decoder.weight"] = sd.get("bert.embeddings.word_embeddings.weight")
    table = _name_table(cfg.n_layers)
    missing = [theirs for theirs in table.values() if sd.get(theirs) is None]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ValueError(
            f"not a BertForMaskedLM state dict for a {cfg.n_layers}-layer encoder: missing {shown}"
        )
    return {ours: sd[theirs] for ours, theirs in table.items()}


def to_hf_bert(model: Encoder, *, attn_implementation: str = "sdpa") -> BertForMaskedLM:
    """A `BertForMaskedLM` with `model`'s weights (copied) on the same device and dtype."""
    require("transformers", "hf")
    from transformers import BertForMaskedLM

    config = hf_bert_config(model.config)
    config._attn_implementation = attn_implementation
    p = model.tok_emb.weight
    hf = BertForMaskedLM(config).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        hf.load_state_dict(to_hf_bert_state_dict(model), strict=True)
    return hf.train(model.training)


def from_hf_bert(hf_model: BertForMaskedLM) -> Encoder:
    """Our `Encoder` with `hf_model`'s weights (copied) on the same device and dtype."""
    require("transformers", "hf")
    cfg = encoder_config_from_hf(hf_model.config)
    p = hf_model.bert.embeddings.word_embeddings.weight
    model = Encoder(cfg).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        model.load_state_dict(from_hf_bert_state_dict(hf_model.state_dict(), cfg), strict=True)
    return model.train(hf_model.training)
