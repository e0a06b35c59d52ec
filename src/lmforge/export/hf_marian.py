"""The state-dict adapter between lmforge's `Seq2Seq` and Hugging Face's `MarianMTModel`.

Marian is the encoder-decoder of transformers that is closest to the original Transformer:
sinusoidal positions (a fixed table, not saved), embeddings scaled by sqrt(d_model), one
embedding matrix shared by the encoder, the decoder and the output projection (or separate
ones, with a separate target vocabulary), post-norm blocks with biases everywhere, LayerNorm
eps 1e-5, and ReLU, GELU or swish. BART, the other candidate, has learned positions (offset by
2) and an extra LayerNorm on the embeddings, so it would need more contortion.

A `Seq2SeqConfig` maps onto Marian exactly when it has

    norm_position = "post"    Marian has no pre-norm variant (and no final norms)
    pos_emb = "sinusoidal"    Marian's table is fixed and never saved, so learned ones cannot go
    bias = true, norm_eps = 1e-5

and any of the other options (activation, share_embeddings, separate vocabularies,
scale_embeddings, sizes). Our sinusoidal table already uses Marian's layout (sines in the first
half of the channels, cosines in the second; see `lmforge.model.seq2seq`), so the mapping is a
renaming table. Marian adds `final_logits_bias` to the logits: it is exported as zeros and an
import refuses a non-zero one (our model has no output bias).

Pre-norm models (the lmforge default) have no Marian equivalent. For them `to_hf_m2m100`
builds transformers' `M2M100ForConditionalGeneration` (fairseq's pre-norm transformer: the
same blocks and names as Marian plus a final LayerNorm per stack, one shared vocabulary) and
sets its sinusoidal table to ours, since M2M100's own has other frequencies and starts at
row pad_id + 1. That table is a non-persistent buffer that `save_pretrained`/`from_pretrained`
recompute, so this is a reference for parity tests and speed comparisons on the same weights,
not an export format.

`transformers` is an optional dependency, imported when a function here is called.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from lmforge.deps import require
from lmforge.model.seq2seq import Seq2Seq, Seq2SeqConfig

if TYPE_CHECKING:
    from transformers import M2M100ForConditionalGeneration, MarianConfig, MarianMTModel

# Our name -> Marian's, per block ({i} is the block index); weights and biases alike.
_ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "out_proj"}
_ENCODER_BLOCK = {
    "norm_attn": "self_attn_layer_norm",
    **{f"attn.{ours}": f"self_attn.{theirs}" for ours, theirs in _ATTN.items()},
    "norm_mlp": "final_layer_norm",
    "mlp.up_proj": "fc1",
    "mlp.down_proj": "fc2",
}
_DECODER_BLOCK = {
    **_ENCODER_BLOCK,
    "norm_cross_attn": "encoder_attn_layer_norm",
    **{f"cross_attn.{ours}": f"encoder_attn.{theirs}" for ours, theirs in _ATTN.items()},
}
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish"}  # ours -> Marian's
_FROM_HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}


def check_mappable(cfg: Seq2SeqConfig) -> None:
    """Raise ValueError if a model with `cfg` has no Marian equivalent."""
    problems = []
    if cfg.norm_position != "post":
        problems.append(
            f"model.norm_position={cfg.norm_position!r}: Marian is post-norm; train with "
            "model.norm_position='post' to export"
        )
    if cfg.pos_emb != "sinusoidal":
        problems.append(
            f"model.pos_emb={cfg.pos_emb!r}: Marian's positions are a fixed sinusoidal table "
            "that is never saved; train with model.pos_emb='sinusoidal' to export"
        )
    if not cfg.bias:
        problems.append("model.bias=False: Marian has a bias on every Linear and LayerNorm")
    if cfg.norm_eps != 1e-5:
        problems.append(f"model.norm_eps={cfg.norm_eps}: Marian's LayerNorms use eps 1e-5")
    if problems:
        raise ValueError("this model cannot be exported as Marian: " + "; ".join(problems))


def hf_config(cfg: Seq2SeqConfig) -> MarianConfig:
    """The `MarianConfig` of a model with `cfg` (raises ValueError if there is none).

    Generation settings say what lmforge's decoding does: start at bos_id, end at eos_id, and
    no forced EOS (Marian's default forces one at max_length).
    """
    require("transformers", "hf")
    from transformers import MarianConfig

    check_mappable(cfg)
    return MarianConfig(
        vocab_size=cfg.vocab_size,
        decoder_vocab_size=cfg.target_vocab_size,
        share_encoder_decoder_embeddings=cfg.share_embeddings,
        tie_word_embeddings=cfg.share_embeddings,
        max_position_embeddings=cfg.max_seq_len,
        encoder_layers=cfg.n_encoder_layers,
        decoder_layers=cfg.n_decoder_layers,
        encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff,
        d_model=cfg.d_model,
        activation_function=_ACTIVATIONS[cfg.activation],
        dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        activation_dropout=0.0,
        init_std=cfg.emb_std,
        scale_embedding=cfg.scale_embeddings,
        pad_token_id=cfg.pad_id,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        decoder_start_token_id=cfg.bos_id,
        forced_eos_token_id=None,
    )


def config_from_hf(config: MarianConfig, *, label_smoothing: float = 0.1) -> Seq2SeqConfig:
    """Our config for a Marian model (raises ValueError for what we cannot represent)."""
    problems = []
    if config.encoder_attention_heads != config.decoder_attention_heads:
        problems.append("different encoder and decoder head counts")
    if config.encoder_ffn_dim != config.decoder_ffn_dim:
        problems.append("different encoder and decoder feed-forward sizes")
    if config.activation_function not in _FROM_HF_ACTIVATIONS:
        problems.append(
            f"activation_function={config.activation_function!r} (lmforge has "
            f"{', '.join(_FROM_HF_ACTIVATIONS)})"
        )
    if config.share_encoder_decoder_embeddings != bool(config.tie_word_embeddings):
        problems.append(
            "embeddings shared between encoder and decoder but not with the output projection "
            "(or the reverse); lmforge shares all three or none"
        )
    if problems:
        raise ValueError("this Marian model has no lmforge equivalent: " + "; ".join(problems))
    separate = not config.share_encoder_decoder_embeddings
    # Untied matrices over one vocabulary are still one vocabulary (tgt_vocab_size 0), as
    # `hf_config` writes decoder_vocab_size = vocab_size for them; only another size is a
    # separate target vocabulary.
    own_target = separate and config.decoder_vocab_size != config.vocab_size
    return Seq2SeqConfig(
        vocab_size=config.vocab_size,
        tgt_vocab_size=config.decoder_vocab_size if own_target else 0,
        n_encoder_layers=config.encoder_layers,
        n_decoder_layers=config.decoder_layers,
        n_heads=config.encoder_attention_heads,
        d_model=config.d_model,
        d_ff=config.encoder_ffn_dim,
        max_seq_len=config.max_position_embeddings,
        dropout=float(config.dropout),
        norm_position="post",
        activation=_FROM_HF_ACTIVATIONS[config.activation_function],
        pos_emb="sinusoidal",
        share_embeddings=not separate,
        scale_embeddings=bool(config.scale_embedding),
        # Ours 0 means d_model**-0.5, which is what an exported model's config says.
        init_std=0.0 if math.isclose(config.init_std, config.d_model**-0.5) else config.init_std,
        label_smoothing=label_smoothing,
        pad_id=config.pad_token_id,
        bos_id=config.decoder_start_token_id,
        eos_id=config.eos_token_id,
    )


def _block_pairs(cfg: Seq2SeqConfig) -> list[tuple[str, str]]:
    """(our name, Marian's name) of every block parameter."""
    pairs = []
    for stack, n, table in (
        ("encoder", cfg.n_encoder_layers, _ENCODER_BLOCK),
        ("decoder", cfg.n_decoder_layers, _DECODER_BLOCK),
    ):
        for i in range(n):
            for ours, theirs in table.items():
                ours_i, theirs_i = (
                    f"{stack}.blocks.{i}.{ours}",
                    f"model.{stack}.layers.{i}.{theirs}",
                )
                pairs += [(f"{ours_i}.{p}", f"{theirs_i}.{p}") for p in ("weight", "bias")]
    return pairs


def to_hf_state_dict(model: Seq2Seq) -> dict[str, torch.Tensor]:
    """Marian's state dict (`MarianMTModel` names) of our model, as Marian saves one.

    The sinusoidal position tables are left out, as `save_pretrained` leaves them out (Marian
    computes them); load it with `strict=False` and check that only they are missing.
    """
    cfg = model.config
    check_mappable(cfg)
    state = model.state_dict()
    out = {theirs: state[ours] for ours, theirs in _block_pairs(cfg)}
    out["model.encoder.embed_tokens.weight"] = state["encoder.tok_emb.weight"]
    out["model.decoder.embed_tokens.weight"] = state["decoder.tok_emb.weight"]
    out["lm_head.weight"] = state["lm_head.weight"]
    if cfg.share_embeddings:
        out["model.shared.weight"] = state["encoder.tok_emb.weight"]
    p = state["lm_head.weight"]
    out["final_logits_bias"] = torch.zeros(1, cfg.target_vocab_size, dtype=p.dtype, device=p.device)
    return {k: v.detach().clone() for k, v in out.items()}


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: Seq2SeqConfig) -> dict[str, torch.Tensor]:
    """Our state dict (for `Seq2Seq(cfg).load_state_dict`) from a `MarianMTModel` one."""
    check_mappable(cfg)
    bias = sd.get("final_logits_bias")
    if bias is not None and bias.abs().max().item() > 0:
        raise ValueError(
            "this Marian model has a non-zero final_logits_bias; lmforge's seq2seq model has "
            "no output bias, so its logits would differ"
        )
    missing = [theirs for _, theirs in _block_pairs(cfg) if theirs not in sd]
    if missing:
        raise ValueError(
            f"the Marian state dict lacks {len(missing)} weights the config asks for (first: "
            f"{missing[0]}); build the config with config_from_hf(model.config)"
        )
    out = {ours: sd[theirs] for ours, theirs in _block_pairs(cfg)}
    if cfg.share_embeddings:
        shared = sd.get("model.shared.weight", sd["model.encoder.embed_tokens.weight"])
        for name in ("encoder.tok_emb.weight", "decoder.tok_emb.weight", "lm_head.weight"):
            out[name] = shared
    else:
        out["encoder.tok_emb.weight"] = sd["model.encoder.embed_tokens.weight"]
        out["decoder.tok_emb.weight"] = sd["model.decoder.embed_tokens.weight"]
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.detach().clone() for k, v in out.items()}


def to_hf_marian(model: Seq2Seq, *, attn_implementation: str = "sdpa") -> MarianMTModel:
    """A `MarianMTModel` with `model`'s weights (copied), on the same device and dtype."""
    require("transformers", "hf")
    from transformers import MarianMTModel

    config = hf_config(model.config)
    config._attn_implementation = attn_implementation
    p = model.lm_head.weight
    hf = MarianMTModel(config).to(device=p.device, dtype=p.dtype)
    result = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.endswith("embed_positions.weight")]
    if missing or unexpected:
        raise AssertionError(f"Marian mapping out of date: missing {missing}, extra {unexpected}")
    return hf.train(model.training)


def from_hf_marian(hf_model: MarianMTModel) -> Seq2Seq:
    """Our `Seq2Seq` with `hf_model`'s weights (copied), on the same device and dtype."""
    require("transformers", "hf")
    cfg = config_from_hf(hf_model.config)
    p = hf_model.lm_head.weight
    model = Seq2Seq(cfg).to(device=p.device, dtype=p.dtype)
    model.load_state_dict(from_hf_state_dict(hf_model.state_dict(), cfg), strict=True)
    return model.train(hf_model.training)


def to_hf_m2m100(
    model: Seq2Seq, *, attn_implementation: str = "sdpa"
) -> M2M100ForConditionalGeneration:
    """An `M2M100ForConditionalGeneration` computing what our pre-norm `model` computes (the
    weights copied, the position table set to ours; see the module docstring)."""
    require("transformers", "hf")
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    c = model.config
    wanted = dict(
        norm_position="pre", pos_emb="sinusoidal", bias=True, norm_eps=1e-5, share_embeddings=True
    )
    problems = [f"model.{k}={getattr(c, k)!r}" for k, v in wanted.items() if getattr(c, k) != v]
    if problems:
        raise ValueError(
            f"M2M100 needs {', '.join(f'{k}={v!r}' for k, v in wanted.items())}; this model has "
            + ", ".join(problems)
        )
    config = M2M100Config(
        vocab_size=c.vocab_size,
        # Rows up to pad_id + max_seq_len are read; a shorter table would be recomputed.
        max_position_embeddings=c.max_seq_len + c.pad_id,
        encoder_layers=c.n_encoder_layers,
        decoder_layers=c.n_decoder_layers,
        encoder_attention_heads=c.n_heads,
        decoder_attention_heads=c.n_heads,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        d_model=c.d_model,
        activation_function=_ACTIVATIONS[c.activation],
        dropout=c.dropout,
        attention_dropout=c.dropout,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        scale_embedding=c.scale_embeddings,
        pad_token_id=c.pad_id,
        bos_token_id=c.bos_id,
        eos_token_id=c.eos_id,
        decoder_start_token_id=c.bos_id,
        forced_eos_token_id=None,
    )
    config._attn_implementation = attn_implementation
    p = model.lm_head.weight
    hf = M2M100ForConditionalGeneration(config).to(device=p.device, dtype=p.dtype)
    state = model.state_dict()
    sd = {theirs: state[ours] for ours, theirs in _block_pairs(c)}
    for name in ("model.shared", "model.encoder.embed_tokens", "model.decoder.embed_tokens"):
        sd[f"{name}.weight"] = state["encoder.tok_emb.weight"]
    sd["lm_head.weight"] = state["lm_head.weight"]
    for stack in ("encoder", "decoder"):
        for p_name in ("weight", "bias"):
            sd[f"model.{stack}.layer_norm.{p_name}"] = state[f"{stack}.norm_f.{p_name}"]
    hf.load_state_dict(sd, strict=True)
    with torch.no_grad():
        # M2M100 reads row pad_id + 1 + i for position i (the rows before belong to padding).
        start = c.pad_id + 1
        for ours, theirs in ((model.encoder, hf.model.encoder), (model.decoder, hf.model.decoder)):
            theirs.embed_positions.weights[start : start + c.max_seq_len] = ours.pos_table
    return hf.train(model.training)
