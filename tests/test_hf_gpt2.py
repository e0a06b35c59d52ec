"""The GPT-2 state-dict adapter: same logits as Hugging Face, exact round trips, clear refusals."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

from lmforge.export.hf_gpt2 import from_hf_gpt2, gpt2_config, to_hf_gpt2  # noqa: E402


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=100, n_layers=2, n_heads=4, d_model=64, max_seq_len=32)
    cfg.update(kw)
    model = GPT(GPTConfig(**cfg)).eval()
    # Non-zero biases and norm parameters, so a misplaced one cannot hide behind its init.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_hf(attn_implementation, tie):
    model = tiny(tie_embeddings=tie)
    hf = to_hf_gpt2(model, attn_implementation=attn_implementation).eval()
    assert (hf.lm_head.weight is hf.transformer.wte.weight) == tie
    idx = torch.randint(0, 100, (3, 32))
    with torch.no_grad():
        ours = model(idx)
        theirs = hf(input_ids=idx, use_cache=False).logits
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_hf_to_ours_is_exact(tie):
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(gpt2_config(tiny(tie_embeddings=tie).config)).eval()
    back = to_hf_gpt2(from_hf_gpt2(hf))
    want, got = hf.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_round_trip_ours_to_hf_is_exact():
    model = tiny()
    back = from_hf_gpt2(to_hf_gpt2(model))
    assert back.config == model.config
    assert back.lm_head.weight is back.tok_emb.weight
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_config_fields():
    cfg = gpt2_config(tiny(dropout=0.1, d_ff=100).config)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_positions) == (64, 2, 4, 32)
    assert (cfg.vocab_size, cfg.n_inner, cfg.activation_function) == (100, 100, "gelu_new")
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.1
    assert cfg.layer_norm_epsilon == 1e-5 and cfg.tie_word_embeddings


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(bias=False), "model.bias=False"),
        (dict(n_kv_heads=2), "grouped-query attention"),
        (dict(pos_emb="rope"), "model.pos_emb='rope'.*LlamaForCausalLM"),
        (dict(norm="rmsnorm"), "model.norm='rmsnorm'"),
        (dict(mlp="swiglu"), "model.mlp='swiglu'"),
        (dict(qk_norm=True), "model.qk_norm=True"),
    ],
)
def test_unmappable_config_is_refused(kw, message):
    model = tiny(**kw)
    with pytest.raises(ValueError, match=message):
        to_hf_gpt2(model)


def test_unmappable_hf_model_is_refused():
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=100,
            n_positions=32,
            n_embd=64,
            n_layer=1,
            n_head=4,
            activation_function="relu",
        )
    )
    with pytest.raises(ValueError, match="activation_function='relu'"):
        from_hf_gpt2(hf)
