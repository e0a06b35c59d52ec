"""The GPT decoder: shapes, init, KV-cache equality, checkpoint round trips and errors."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

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


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_kv_cache_matches_full_forward(n_kv_heads):
    model = tiny(n_kv_heads=n_kv_heads)
    idx = torch.randint(0, 50, (2, 20))
    full = model(idx)
    cache = model.new_cache(2)
    pieces = [model(idx[:, :7], cache)]  # prefill
    pieces.append(model(idx[:, 7:12], cache))  # a chunk after a prefix
    pieces += [model(idx[:, t : t + 1], cache) for t in range(12, 20)]  # one token at a time
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match="max_seq_len=24"):
        tiny()(torch.zeros(1, 25, dtype=torch.long))


def test_greedy_generation_cached_equals_uncached():
    model = tiny()
    prompt = [1, 2, 3, 4]
    greedy = dict(max_new_tokens=18, temperature=0.0, stop_at_eos=False)
    cached = list(generate_ids(model, prompt, GenerationConfig(**greedy)))
    uncached = list(generate_ids(model, prompt, GenerationConfig(**greedy, use_cache=False)))
    assert cached == uncached
    assert len(cached) == 18


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
