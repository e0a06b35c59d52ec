"""The encoder-decoder family: shapes, padding, loss, references (torch, Marian), decoding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.infer.seq2seq_decode import (
    DecodeConfig,
    beam_search,
    greedy_decode,
    translate_batches,
)
from lmforge.model.seq2seq import Seq2Seq, Seq2SeqConfig

BOS, EOS, PAD = 0, 1, 2


def tiny(**kw) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=40, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
        max_seq_len=24, dropout=0.0,
    )  # fmt: skip
    cfg.update(kw)
    model = Seq2Seq(Seq2SeqConfig(**cfg)).eval()
    # Non-zero biases and norm parameters, so that a misplaced one cannot hide behind its init.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def padded(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def random_rows(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run as fast on one thread, and far faster when the CPU is shared: two
    threads fighting other processes for two cores spend most of their time waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the model ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(norm_position="post", activation="gelu"),
        dict(pos_emb="learned", activation="swish", scale_embeddings=False),
        dict(tgt_vocab_size=25, share_embeddings=False),
        dict(share_embeddings=False, bias=False, norm_position="post", pos_emb="learned"),
    ],
)
def test_forward_shapes_and_keys(kw):
    model = tiny(**kw)
    c = model.config
    src, tgt = padded(random_rows(3, 2, 9, 20, 0)), padded(random_rows(3, 1, 6, 20, 1))
    memory, src_mask = model.encode(src)
    assert memory.shape == (3, src.shape[1], 32) and src_mask.shape == src.shape
    assert model(src, tgt).shape == (3, tgt.shape[1], c.target_vocab_size)
    keys = set(model.state_dict())
    assert ("decoder.pos_emb.weight" in keys) == (c.pos_emb == "learned")
    assert ("encoder.norm_f.weight" in keys) == (c.norm_position == "pre")
    assert "decoder.blocks.1.cross_attn.o_proj.weight" in keys
    assert (model.lm_head.weight is model.encoder.tok_emb.weight) == c.share_embeddings
    assert model.num_params(non_embedding=False) >= model.num_params() > 0
    assert model.flops_per_token(16) > 6 * model.num_params()


def test_separate_vocabularies_run():
    model = tiny(tgt_vocab_size=17, share_embeddings=False)
    assert model.decoder.tok_emb.weight.shape == (17, 32)
    src = padded(random_rows(4, 3, 8, 40, 2))  # source ids up to 39: past the target vocab
    tgt = padded(random_rows(4, 2, 6, 17, 3))
    assert model(src, tgt).shape == (4, tgt.shape[1], 17)
    assert torch.isfinite(model.loss(src, tgt, tgt))
    out = beam_search(model, src, DecodeConfig(beam_size=3, max_len=8))
    assert len(out) == 4 and all(0 < len(ids) <= 7 and max(ids) < 17 for ids in out)


def test_share_embeddings_with_separate_vocabularies_is_rejected():
    with pytest.raises(ValueError, match=r"model.share_embeddings=True .* model.tgt_vocab_size=9"):
        Seq2SeqConfig(vocab_size=20, tgt_vocab_size=9, share_embeddings=True)
    with pytest.raises(ValueError, match="model.d_model=30 is not divisible by model.n_heads=4"):
        Seq2SeqConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="vocab_size must be set"):
        Seq2Seq(Seq2SeqConfig())


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_source_padding_does_not_change_logits(norm_position):
    model = tiny(norm_position=norm_position, pos_emb="learned")
    srcs, tgts = random_rows(4, 2, 10, 40, 4), random_rows(4, 1, 7, 40, 5)
    batched = model(padded(srcs), padded(tgts))
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        alone = model(torch.tensor([s]), torch.tensor([t]))[0]
        more_padding = model(torch.tensor([s + [PAD] * 5]), torch.tensor([t]))[0]
        torch.testing.assert_close(batched[i, : len(t)], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(more_padding, alone, atol=1e-5, rtol=0)


def test_label_smoothed_loss_value():
    model = tiny(label_smoothing=0.1)
    src, tgt = padded(random_rows(3, 3, 8, 40, 6)), padded(random_rows(3, 2, 7, 40, 7))
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    loss = model.loss(src, tgt_in, tgt_out)
    logits = model(src, tgt_in)
    # By definition: (1 - eps) * NLL + eps * mean over the vocabulary of -log p, per real token.
    logp = logits.log_softmax(-1)
    real = tgt_out != PAD
    nll = -logp.gather(-1, tgt_out[..., None])[..., 0]
    by_hand = (0.9 * nll + 0.1 * -logp.mean(-1))[real].mean()
    assert real.sum() < real.numel()  # the batch does hold padding to ignore
    torch.testing.assert_close(loss, by_hand, atol=1e-6, rtol=0)
    expected = F.cross_entropy(
        logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, label_smoothing=0.1
    )
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_checkpoint_round_trip_stores_the_shared_matrix_once(tmp_path):
    from safetensors.torch import save_file

    from lmforge.train.checkpoint import load_model_weights, model_state

    model = tiny()
    state = model_state(model)
    assert "encoder.tok_emb.weight" in state and "lm_head.weight" not in state
    save_file(state, str(tmp_path / "model.safetensors"))
    fresh = Seq2Seq(Seq2SeqConfig(**{**vars(model.config)})).eval()
    load_model_weights(fresh, tmp_path / "model.safetensors")
    src, tgt = padded(random_rows(2, 3, 6, 40, 8)), padded(random_rows(2, 2, 5, 40, 9))
    assert torch.equal(fresh(src, tgt), model(src, tgt))


def _torch_transformer(model: Seq2Seq) -> nn.Transformer:
    """`nn.Transformer` holding `model`'s blocks (embeddings and output projection stay ours)."""
    c = model.config
    ref = nn.Transformer(
        c.d_model, c.n_heads, c.n_encoder_layers, c.n_decoder_layers, c.d_ff, dropout=0.0,
        batch_first=True, norm_first=c.norm_position == "pre", layer_norm_eps=c.norm_eps,
    )  # fmt: skip
    if c.norm_position == "post":  # nn.Transformer always adds final norms; the paper has none
        ref.encoder.norm = ref.decoder.norm = None
    ours = model.state_dict()
    sd = {}

    def attn(theirs: str, mine: str) -> None:
        for p in ("weight", "bias"):
            sd[f"{theirs}.in_proj_{p}"] = torch.cat([ours[f"{mine}.{x}_proj.{p}"] for x in "qkv"])
            sd[f"{theirs}.out_proj.{p}"] = ours[f"{mine}.o_proj.{p}"]

    def same(theirs: str, mine: str) -> None:
        for p in ("weight", "bias"):
            sd[f"{theirs}.{p}"] = ours[f"{mine}.{p}"]

    for i in range(c.n_encoder_layers):
        t, m = f"encoder.layers.{i}", f"encoder.blocks.{i}"
        attn(f"{t}.self_attn", f"{m}.attn")
        for theirs, mine in [("norm1", "norm_attn"), ("norm2", "norm_mlp"),
                             ("linear1", "mlp.up_proj"), ("linear2", "mlp.down_proj")]:  # fmt: skip
            same(f"{t}.{theirs}", f"{m}.{mine}")
    for i in range(c.n_decoder_layers):
        t, m = f"decoder.layers.{i}", f"decoder.blocks.{i}"
        attn(f"{t}.self_attn", f"{m}.attn")
        attn(f"{t}.multihead_attn", f"{m}.cross_attn")
        for theirs, mine in [("norm1", "norm_attn"), ("norm2", "norm_cross_attn"),
                             ("norm3", "norm_mlp"), ("linear1", "mlp.up_proj"),
                             ("linear2", "mlp.down_proj")]:  # fmt: skip
            same(f"{t}.{theirs}", f"{m}.{mine}")
    if c.norm_position == "pre":
        same("encoder.norm", "encoder.norm_f")
        same("decoder.norm", "decoder.norm_f")
    ref.load_state_dict(sd, strict=True)
    return ref.eval()


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_blocks_match_torch_nn_transformer(norm_position):
    model = tiny(norm_position=norm_position)
    ref = _torch_transformer(model)
    src, tgt = padded(random_rows(3, 3, 9, 40, 10)), padded(random_rows(3, 2, 7, 40, 11))
    memory, src_mask = model.encode(src)
    hidden = model.decoder(tgt, memory, src_mask)
    with torch.no_grad():
        ref_memory = ref.encoder(model.encoder.embed(src), src_key_padding_mask=~src_mask)
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        ref_hidden = ref.decoder(
            model.decoder.embed(tgt), memory, tgt_mask=causal, tgt_is_causal=True,
            memory_key_padding_mask=~src_mask,
        )  # fmt: skip
    torch.testing.assert_close(memory[src_mask], ref_memory[src_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden, ref_hidden, atol=1e-5, rtol=0)


# ---- parity with transformers' Marian ---------------------------------------------------------


def test_marian_logits_match_both_directions():
    transformers = pytest.importorskip("transformers")
    from lmforge.export.hf_marian import from_hf_marian, hf_config, to_hf_marian

    src = padded(random_rows(3, 3, 11, 30, 12))
    assert (src == PAD).any()
    tgt = padded(random_rows(3, 2, 8, 30, 13))
    for kw in [
        dict(activation="relu"),
        dict(activation="gelu", scale_embeddings=False),
        dict(activation="swish", tgt_vocab_size=30, share_embeddings=False),
    ]:
        model = tiny(norm_position="post", **kw)
        hf = to_hf_marian(model).eval()
        with torch.no_grad():
            theirs = hf(
                input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt
            ).logits
        assert (model(src, tgt) - theirs).abs().max().item() < 1e-5, kw

        # And the other way: a random Marian model, loaded into ours.
        torch.manual_seed(1)
        hf = transformers.MarianMTModel(hf_config(model.config)).eval()
        ours = from_hf_marian(hf)
        assert ours.config == model.config
        with torch.no_grad():
            theirs = hf(
                input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt
            ).logits
        assert (ours(src, tgt) - theirs).abs().max().item() < 1e-5, kw


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_pre_norm_logits_match_m2m100(activation):
    pytest.importorskip("transformers")
    from lmforge.export.hf_marian import to_hf_m2m100

    model = tiny(activation=activation)  # pre-norm: Marian has none, M2M100 is fairseq's
    hf = to_hf_m2m100(model).eval()
    src = padded(random_rows(3, 3, 24, 30, 15))
    # One target of max_seq_len tokens, so every row of the position table is compared.
    tgt = padded(random_rows(1, 24, 24, 30, 16) + random_rows(2, 15, 22, 30, 17))
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt)
    # M2M100 gives target padding the (zero) padding position, so compare real positions.
    real = tgt != PAD
    assert (model(src, tgt)[real] - theirs.logits[real]).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="M2M100 needs .* model.norm_position='post'"):
        to_hf_m2m100(tiny(norm_position="post"))


def test_marian_round_trip_is_exact_and_refusals_are_clear():
    pytest.importorskip("transformers")
    from lmforge.export.hf_marian import from_hf_marian, hf_config, to_hf_marian

    model = tiny(norm_position="post", share_embeddings=False)
    back = from_hf_marian(to_hf_marian(model))
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    with pytest.raises(ValueError, match="norm_position='pre': Marian is post-norm"):
        hf_config(tiny().config)
    with pytest.raises(ValueError, match="pos_emb='learned'"):
        hf_config(tiny(norm_position="post", pos_emb="learned").config)
    hf = to_hf_marian(model)
    with torch.no_grad():
        hf.final_logits_bias[0, 5] = 1.0
    with pytest.raises(ValueError, match="non-zero final_logits_bias"):
        from_hf_marian(hf)


# ---- decoding ----------------------------------------------------------------------------------


def reverse_pairs(n: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Sources of 5-8 digits (ids 3..12) then EOS; targets the digits reversed."""
    digits = random_rows(n, 5, 8, 13, seed)
    return [d + [EOS] for d in digits], [d[::-1] for d in digits]


@pytest.fixture(scope="module")
def reverser() -> Seq2Seq:
    """A post-norm (the paper's) model trained for 250 steps to reverse digit strings.

    250 steps reach 0.94-1.0 greedy exact match over seeds 0-4 (200 steps: 0.83-0.98)."""
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=13, d_model=64, n_heads=4, d_ff=128, n_encoder_layers=2, n_decoder_layers=2,
        norm_position="post", max_seq_len=16, dropout=0.0, label_smoothing=0.1,
    )  # fmt: skip
    model = Seq2Seq(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    losses = []
    for step in range(250):
        src, tgt = reverse_pairs(64, 1000 + step)
        tgt_in = padded([[BOS] + t for t in tgt])
        tgt_out = padded([t + [EOS] for t in tgt])
        loss = model.loss(padded(src), tgt_in, tgt_out)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    return model.eval()


@pytest.mark.slow
def test_reverse_task_is_learned(reverser):
    src, want = reverse_pairs(200, 1)
    greedy = greedy_decode(reverser, src)
    beam = beam_search(reverser, src, DecodeConfig(beam_size=4))
    assert sum(g == w for g, w in zip(greedy, want)) / 200 >= 0.9
    assert sum(b == w for b, w in zip(beam, want)) / 200 >= 0.9


@pytest.mark.slow
def test_cached_and_uncached_decoding_agree(reverser):
    # Half-trained would be harder; the trained model's digits are mixed with wrong and long
    # outputs of random sources (ids it has never seen in that order) so hypotheses end at
    # many different steps.
    src = reverse_pairs(30, 2)[0] + random_rows(10, 2, 12, 13, 3)
    for decode, cfg in [
        (greedy_decode, DecodeConfig(beam_size=1)),
        (beam_search, DecodeConfig(beam_size=4)),
        (beam_search, DecodeConfig(beam_size=3, length_penalty=0.0, max_len=12)),
    ]:
        cached = decode(reverser, src, cfg)
        cfg.use_cache = False
        assert decode(reverser, src, cfg) == cached
    lengths = {len(ids) for ids in cached}
    assert len(lengths) > 3  # hypotheses did end at different steps


@pytest.mark.parametrize("kw", [dict(), dict(norm_position="post", pos_emb="learned")])
def test_cached_and_uncached_agree_on_a_random_model(kw):
    model = tiny(**kw)
    with torch.no_grad():  # bigger weights: peaked distributions, no near-ties
        for p in model.parameters():
            p.mul_(3.0)
    src = padded(random_rows(6, 2, 9, 40, 14))
    for cfg in (DecodeConfig(beam_size=1, max_len=10), DecodeConfig(beam_size=3, max_len=10)):
        cached = beam_search(model, src, cfg)
        cfg.use_cache = False
        assert beam_search(model, src, cfg) == cached
        assert greedy_decode(model, src, cfg) == greedy_decode(model, src, DecodeConfig(max_len=10))


@pytest.mark.slow
def test_beam_size_one_is_greedy(reverser):
    src = reverse_pairs(20, 4)[0] + random_rows(10, 2, 12, 13, 5)
    assert beam_search(reverser, src, DecodeConfig(beam_size=1)) == greedy_decode(reverser, src)


@pytest.mark.slow
def test_beam_search_matches_transformers_generate(reverser):
    pytest.importorskip("transformers")
    from lmforge.export.hf_marian import to_hf_marian

    hf = to_hf_marian(reverser).eval()
    src = reverse_pairs(20, 6)[0] + random_rows(20, 2, 12, 13, 7)
    ids = padded(src)
    for lp in (1.0, 0.0, 2.0):
        out = hf.generate(
            input_ids=ids, attention_mask=(ids != PAD).long(), num_beams=4, max_length=16,
            length_penalty=lp, early_stopping=False, suppress_tokens=[BOS, PAD],
        ).tolist()  # fmt: skip
        theirs = [[t for t in row[1:] if t != PAD] for row in out]
        theirs = [row[: row.index(EOS)] if EOS in row else row for row in theirs]
        ours = beam_search(reverser, src, DecodeConfig(beam_size=4, length_penalty=lp))
        assert ours == theirs, lp


class ScriptedModel(nn.Module):
    """A stand-in decoder whose next-token probabilities depend only on the prefix:

    after BOS:       EOS 0.40, A 0.35, B 0.25
    after BOS A:     EOS 0.90, A 0.05, B 0.05
    anything else:   EOS 0.50, A 0.25, B 0.25
    """

    A, B = 3, 4

    def __init__(self) -> None:
        super().__init__()
        self.config = Seq2SeqConfig(vocab_size=5, max_seq_len=8)
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode(self, src):
        return torch.zeros(src.shape[0], src.shape[1], 1), src != PAD

    def decode(self, tgt, memory, src_mask, cache=None):
        assert cache is None
        probs = {(BOS,): [0.40, 0.35, 0.25], (BOS, self.A): [0.90, 0.05, 0.05]}
        rows = []
        for prefix in tgt.tolist():
            p = probs.get(tuple(prefix), [0.50, 0.25, 0.25])
            rows.append([1e-9, p[0], 1e-9, p[1], p[2]])
        return torch.tensor(rows).log()[:, None, :]  # (N, 1, V): only the last position


def test_length_penalty_changes_preference_as_documented():
    # Ending at once: log 0.40 = -0.92 over 1 token. "A" then EOS: log 0.35 + log 0.9 = -1.16
    # over 2 tokens. Raw sums (penalty 0) prefer the empty output; dividing by length (penalty
    # 1: -0.92 vs -0.58) prefers "A"; penalty -1 multiplies by length and prefers empty again.
    # The crossover, at 2 ** lp = 1.16 / 0.92, is lp = 0.33 when length counts generated
    # tokens with EOS (HF's convention); counting BOS too would move it to 0.57.
    model = ScriptedModel()
    src = [[5, 6]]
    for lp, want in [(0.0, []), (1.0, [ScriptedModel.A]), (-1.0, []), (0.3, []), (0.45, [3])]:
        cfg = DecodeConfig(beam_size=2, length_penalty=lp, use_cache=False)
        assert beam_search(model, src, cfg) == [want], lp
    assert greedy_decode(model, src, DecodeConfig(use_cache=False)) == [[]]


@pytest.mark.slow
def test_length_limits_and_translate_batches(reverser):
    src = reverse_pairs(23, 8)[0]
    # max_len counts BOS and EOS: 4 leaves room for 3 tokens (the limit ends without EOS).
    full = greedy_decode(reverser, src)
    assert greedy_decode(reverser, src, DecodeConfig(max_len=4)) == [f[:3] for f in full]
    assert all(len(ids) <= 3 for ids in beam_search(reverser, src, DecodeConfig(max_len=4)))
    # Source-relative: 0.5 * (6..9 source tokens) + 1 -> 4..5, i.e. 3..4 tokens.
    relative = greedy_decode(reverser, src, DecodeConfig(max_len_a=0.5, max_len_b=1))
    assert [len(r) for r in relative] == [int(0.5 * len(s)) for s in src]
    whole = beam_search(reverser, src, DecodeConfig(beam_size=2))
    batched = translate_batches(reverser, src, DecodeConfig(beam_size=2), batch_size=5)
    assert batched == whole  # input order, whatever the length-sorted batches were


def test_bad_decode_inputs_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="decode.beam_size must be >= 1"):
        DecodeConfig(beam_size=0)
    with pytest.raises(ValueError, match="decode.max_len=30 is longer than model.max_seq_len=24"):
        beam_search(model, [[5, 6]], DecodeConfig(max_len=30))
    with pytest.raises(ValueError, match="source 1 is empty"):
        greedy_decode(model, [[5], []])
    with pytest.raises(ValueError, match="longer than model.max_seq_len=24"):
        greedy_decode(model, [list(range(3, 30))])
    assert math.isfinite(model.flops_per_token())
