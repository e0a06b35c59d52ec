"""The GPT decoder: shapes, init, KV-cache equality, checkpoint round trips and errors."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from conftest import perturb
from lmforge.infer.generate import GenerationConfig, generate_ids
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.train.checkpoint import CheckpointError, load_model_weights, save_checkpoint


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, n_layers=2, n_heads=4, d_model=32, max_seq_len=24)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_forward_shape_and_tied_head():
    model = tiny()
    logits = model(torch.randint(0, 50, (3, 10)))
    assert logits.shape == (3, 10, 50)
    assert model.lm_head.weight is model.tok_emb.weight


def test_untied_head_is_separate():
    model = tiny(tie_embeddings=False)
    assert model.lm_head.weight is not model.tok_emb.weight


def test_gpt2_scaled_init():
    model = tiny(n_layers=8, d_model=64, n_heads=4)
    block = model.blocks[0]
    std_q = block.attn.q_proj.weight.std().item()
    std_o = block.attn.o_proj.weight.std().item()
    assert std_q == pytest.approx(0.02, rel=0.1)
    assert std_o == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert torch.all(block.attn.q_proj.bias == 0)


VARIANTS = {
    "gpt2": {},
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "rope": dict(pos_emb="rope"),
    "sinusoidal": dict(pos_emb="sinusoidal"),
    "rmsnorm-qknorm": dict(norm="rmsnorm", qk_norm=True, bias=False),
    "layernorm-qknorm": dict(qk_norm=True),
    "swiglu": dict(mlp="swiglu"),
    "relu2": dict(mlp="relu2"),
    "relu": dict(mlp="relu"),
    "llama": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_heads=2,
                  tie_embeddings=False),
    "xavier": dict(init="xavier"),
    "kaiming": dict(init="kaiming"),
    "canon": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", bias=False,
                  canon_kernel=3),
    "gate-head": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2,
                      attn_gate="head"),
    "gate-element": dict(attn_gate="element"),
    # Sequences of 20 and a prefill of 7 overrun the window: the cached path must mask too.
    "window": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, canon_kernel=3,
                   attn_window=5),
}  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_matches_full_forward(variant):
    model = tiny(**VARIANTS[variant])
    perturb(model)  # Canon taps start at zero: the cache must carry real state to pass
    idx = torch.randint(0, 50, (2, 20))
    full = model(idx)
    assert full.shape == (2, 20, 50)
    cache = model.new_cache(2)
    pieces = [model(idx[:, :7], cache)]  # prefill
    pieces.append(model(idx[:, 7:12], cache))  # a chunk after a prefix
    pieces += [model(idx[:, t : t + 1], cache) for t in range(12, 20)]  # one token at a time
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    # Generation slides its window by starting the cache over at position 0: nothing of the
    # old sequence may leak into the new one.
    cache.pos = 0
    torch.testing.assert_close(model(idx[:, 5:15], cache), model(idx[:, 5:15]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generation_cached_equals_uncached_per_variant(variant):
    model = tiny(**VARIANTS[variant])
    perturb(model)
    greedy = dict(max_new_tokens=18, temperature=0.0, stop_at_eos=False)
    cached = list(generate_ids(model, [1, 2, 3], GenerationConfig(**greedy)))
    uncached = list(generate_ids(model, [1, 2, 3], GenerationConfig(**greedy, use_cache=False)))
    assert cached == uncached


def test_variant_modules_and_checkpoint_keys():
    llama = tiny(**VARIANTS["llama"])
    keys = set(llama.state_dict())
    assert "blocks.0.mlp.gate_proj.weight" in keys and "blocks.0.attn.q_proj.bias" not in keys
    assert "pos_emb.weight" not in keys and "lm_head.weight" in keys
    assert llama.blocks[0].attn.k_proj.weight.shape == (16, 32)  # 2 kv heads of 8
    qk = tiny(**VARIANTS["rmsnorm-qknorm"])
    assert {"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= set(qk.state_dict())
    assert "pos_table" not in tiny(pos_emb="sinusoidal").state_dict()  # fixed, not saved


def test_canon_layers_start_as_the_identity_and_mix_only_past_positions():
    from lmforge.model.layers import CanonConv

    plain, canon = tiny(**VARIANTS["llama"]), tiny(**VARIANTS["llama"], canon_kernel=3)
    keys = set(canon.state_dict()) - set(plain.state_dict())
    assert keys == {f"blocks.{i}.canon_{w}.taps.{t}" for i in range(2) for w in ("attn", "mlp")
                    for t in range(3)}  # fmt: skip
    canon.load_state_dict(plain.state_dict(), strict=False)
    idx = torch.randint(0, 50, (2, 12))
    torch.testing.assert_close(canon(idx), plain(idx))  # zero taps: the same model

    conv = CanonConv(4, kernel=3)
    with torch.no_grad():
        for tap, value in zip(conv.taps, (1.0, 10.0, 100.0)):
            tap.fill_(value)
    h = torch.arange(1.0, 6.0)[None, :, None].expand(1, 5, 4)  # positions hold 1..5
    # Position t: h_t + 1*h_t + 10*h_{t-1} + 100*h_{t-2}, with nothing before the start.
    assert conv(h)[0, :, 0].tolist() == [2.0, 14.0, 126.0, 238.0, 350.0]
    docs = torch.tensor([[0, 0, 0, 1, 1]])  # a second document starts at position 3
    assert conv(h, doc_ids=docs)[0, :, 0].tolist() == [2.0, 14.0, 126.0, 8.0, 50.0]
    with pytest.raises(ValueError, match="canon_kernel must be >= 0"):
        GPTConfig(vocab_size=10, canon_kernel=-1)


@pytest.mark.parametrize("kind", ["head", "element"])
def test_attention_gate_starts_half_open_and_can_close_a_head(kind):
    plain, gated = tiny(**VARIANTS["llama"]), tiny(**VARIANTS["llama"], attn_gate=kind)
    keys = set(gated.state_dict()) - set(plain.state_dict())
    assert keys == {"blocks.0.attn.gate.weight", "blocks.1.attn.gate.weight"}
    assert gated.blocks[0].attn.gate.weight.shape == ((4 if kind == "head" else 32), 32)
    gated.load_state_dict(plain.state_dict(), strict=False)
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        for block in gated.blocks:
            assert not block.attn.gate.weight.any()  # zero init: every gate at sigmoid(0)
            block.attn.o_proj.weight.mul_(2.0)  # ... = 0.5, which doubling o_proj undoes
    torch.testing.assert_close(gated(idx), plain(idx))

    # A gate shut hard (a large negative pre-activation for every input) silences its head:
    # the block then matches one whose o_proj ignores that head's channels.
    attn = gated.blocks[0].attn
    with torch.no_grad():
        attn.gate.weight.zero_()
        rows = slice(0, 1) if kind == "head" else slice(0, 8)  # head 0 (8 channels wide)
        attn.gate.weight[rows] = -1e4
    x = torch.randn(1, 6, 32).abs()  # positive inputs, so the pre-activation is very negative
    rope = (gated.rope_cos[:6], gated.rope_sin[:6])
    out = attn(x, rope=rope)
    with torch.no_grad():
        attn.gate.weight.zero_()
        attn.o_proj.weight[:, :8] = 0.0  # head 0 dropped by hand, the rest at gate 0.5
    torch.testing.assert_close(out, attn(x, rope=rope))


def test_sliding_window_attention_sees_exactly_its_window():
    idx = torch.randint(0, 50, (2, 16))
    # A window as long as the input is plain causal attention (the same weights: no new ones).
    torch.testing.assert_close(tiny(pos_emb="rope", attn_window=16)(idx), tiny(pos_emb="rope")(idx))
    # One layer, rotary positions: position t sees t-5..t, so its logits are those of the last
    # position of the 6 tokens ending at t, read alone.
    model = tiny(pos_emb="rope", n_layers=1, attn_window=6)
    full = model(idx)
    for t in (5, 9, 15):
        torch.testing.assert_close(full[:, t], model(idx[:, t - 5 : t + 1])[:, -1])
    changed = idx.clone()
    changed[:, 9] = (idx[:, 9] + 1) % 50
    out = model(changed)
    torch.testing.assert_close(out[:, 15], full[:, 15])  # 9 is outside 15's window
    assert not torch.allclose(out[:, 14], full[:, 14])  # ... and inside 14's
    with pytest.raises(ValueError, match="attn_window must be >= 0"):
        tiny(attn_window=-1)


def test_gated_mlp_keeps_the_parameter_count():
    plain = GPTConfig(vocab_size=10, d_model=384, n_heads=6)
    gated = GPTConfig(vocab_size=10, d_model=384, n_heads=6, mlp="swiglu")
    assert plain.d_ff == 1536 and gated.d_ff == 1024  # 8/3 * 384, a multiple of 32
    assert 3 * gated.d_ff * 384 == 2 * plain.d_ff * 384


def test_rope_depends_only_on_relative_position():
    from lmforge.model.layers import apply_rope, rope_tables

    cos, sin = rope_tables(64, 16, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i: int, j: int) -> float:
        qi = apply_rope(q, cos[i : i + 1], sin[i : i + 1])
        kj = apply_rope(k, cos[j : j + 1], sin[j : j + 1])
        return float((qi * kj).sum())

    assert score(10, 7) == pytest.approx(score(40, 37), abs=1e-5)
    assert score(10, 7) != pytest.approx(score(10, 2), abs=1e-3)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), abs=1e-6)  # position 0: no turn


def test_sinusoidal_table_matches_the_paper():
    from lmforge.model.layers import sinusoidal_positions

    table = sinusoidal_positions(50, 8)
    pos, i = 7, 1  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
    assert table[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)), abs=1e-6)


def test_rmsnorm_formula():
    from lmforge.model.layers import RMSNorm

    norm = RMSNorm(6, eps=1e-6)
    x = torch.randn(3, 6)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize(
    "scheme, std",
    [("gpt2", 0.02), ("xavier", math.sqrt(2 / (64 + 64)))],
)
def test_init_schemes(scheme, std):
    model = tiny(init=scheme, d_model=64, n_heads=4, n_layers=8)
    w = model.blocks[0].attn.q_proj.weight
    assert w.std().item() == pytest.approx(std, rel=0.1)
    o = model.blocks[0].attn.o_proj.weight
    assert o.std().item() == pytest.approx(std / 4, rel=0.1)  # scaled by 1/sqrt(2 * 8)
    kaiming = tiny(init="kaiming", d_model=64, n_heads=4).blocks[0].mlp.up_proj.weight
    assert kaiming.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match="max_seq_len=24"):
        tiny()(torch.zeros(1, 25, dtype=torch.long))


def test_generation_slides_past_the_context():
    model = tiny()
    out = list(generate_ids(model, [1, 2], GenerationConfig(max_new_tokens=60, seed=3)))
    assert len(out) == 60


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=30, n_heads=4), "not divisible by model.n_heads"),
        (dict(n_heads=4, n_kv_heads=3), "not divisible by model.n_kv_heads"),
        (dict(n_layers=0), "n_layers must be positive"),
        (dict(dropout=1.5), "dropout"),
        (dict(d_model=36, n_heads=12, pos_emb="rope"), "even head size"),
    ],
)
def test_config_errors_explain(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(vocab_size=10, **kwargs)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path, step=1, model=model, config={})
    fresh = tiny()
    torch.nn.init.zeros_(fresh.tok_emb.weight)
    load_model_weights(fresh, tmp_path / "checkpoints" / "step-0000001" / "model.safetensors")
    idx = torch.randint(0, 50, (1, 12))
    assert torch.equal(model(idx), fresh(idx))
    assert fresh.lm_head.weight is fresh.tok_emb.weight  # still tied after loading


def test_checkpoint_of_another_shape_is_explained(tmp_path):
    save_checkpoint(tmp_path, step=1, model=tiny(), config={})
    path = tmp_path / "checkpoints" / "step-0000001" / "model.safetensors"
    with pytest.raises(CheckpointError, match="shape mismatch.*tok_emb.weight"):
        load_model_weights(tiny(vocab_size=60), path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model_weights(tiny(n_layers=3), path)


def test_truncated_checkpoint_is_explained(tmp_path):
    save_checkpoint(tmp_path, step=1, model=tiny(), config={})
    path = tmp_path / "checkpoints" / "step-0000001" / "model.safetensors"
    backup = tmp_path / "backup.safetensors"
    shutil.copyfile(path, backup)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model_weights(tiny(), path)
    assert backup.stat().st_size > path.stat().st_size  # the error touched nothing else


def test_decoding_layout_keeps_logits_and_training_drops_it():
    from lmforge.infer.generate import prepare_for_decoding

    model = tiny(n_kv_heads=2)
    idx = torch.randint(0, 50, (2, 16))
    expected = model(idx)
    names = sorted(model.state_dict())
    prepare_for_decoding(model)
    torch.testing.assert_close(model(idx), expected, atol=1e-5, rtol=1e-5)
    cache = model.new_cache(2)
    steps = [model(idx[:, :8], cache)] + [model(idx[:, t : t + 1], cache) for t in range(8, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)
    assert sorted(model.state_dict()) == names  # checkpoint keys unchanged
    model.train()
    with torch.no_grad():
        model.blocks[0].attn.v_proj.weight.mul_(5.0)  # training must see the parameters
    assert model.blocks[0].attn._fused_qkv is None
    reference = tiny(n_kv_heads=2)
    reference.load_state_dict(model.state_dict())
    assert not torch.allclose(reference(idx), expected, atol=1e-5)
    torch.testing.assert_close(model.eval()(idx), reference(idx), atol=1e-5, rtol=1e-5)


def test_model_info_counts_and_estimates():
    from lmforge.model.info import model_info

    cfg = GPTConfig(vocab_size=65, n_layers=4, n_heads=4, d_model=128, max_seq_len=64)
    info = model_info(cfg, batch_size=12)
    model = GPT(cfg)
    assert info["params"]["total"] == sum(p.numel() for p in model.parameters())
    groups = info["params"]["by_group"]
    assert groups["attention"] == 4 * (4 * 128 * 128 + 4 * 128)
    assert groups["mlp"] == 4 * (2 * 128 * 512 + 512 + 128)
    assert groups["embeddings"] == 65 * 128 + 64 * 128 and "lm_head" not in groups  # tied
    assert info["params"]["non_embedding"] == info["params"]["total"] - 64 * 128
    assert info["flops_per_token"] == 6 * info["params"]["non_embedding"] + 12 * 4 * 128 * 64
    mem = info["memory_estimate"]
    assert mem["bf16"]["activations_bytes"] < mem["fp32"]["activations_bytes"]
    untied = model_info(GPTConfig(vocab_size=65, tie_embeddings=False, pos_emb="rope"))
    assert untied["params"]["by_group"]["lm_head"] == 65 * 128
    assert untied["params"]["non_embedding"] == untied["params"]["total"] - 65 * 128
