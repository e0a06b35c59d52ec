"""The BERT-style encoder: every option runs, padding is invisible, logits equal Hugging Face's
BertForMaskedLM on the same weights (both directions), masking statistics, and MLM learning."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.encoder import Encoder, EncoderConfig, mask_tokens
from lmforge.train.checkpoint import load_model_weights, save_checkpoint

transformers = pytest.importorskip("transformers")

from lmforge.export.hf_bert import (  # noqa: E402
    from_hf_bert,
    from_hf_bert_state_dict,
    hf_bert_config,
    to_hf_bert,
    to_hf_bert_state_dict,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices gain nothing from threads, and on a busy shared CPU two threads spinning
    against each other make a step ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


V = 100
PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIALS = (PAD, CLS, SEP, MASK)


def tiny(**kw) -> Encoder:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, n_layers=2, n_heads=4, d_model=32, max_seq_len=24, dropout=0.0)
    cfg.update(kw)
    model = Encoder(EncoderConfig(**cfg)).eval()
    # Non-zero biases and norm parameters, so a misplaced one cannot hide behind its init.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask (rows of 20, 15 and 6 real tokens), token_type_ids."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, V, (3, 20), generator=g)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 15:] = 0
    mask[2, 6:] = 0
    ids[mask == 0] = PAD
    types = torch.zeros(3, 20, dtype=torch.long)
    types[:, 8:] = 1  # sentence B
    return ids, mask, types


GRID = list(
    itertools.product(["learned", "sinusoidal"], ["post", "pre"], ["gelu", "relu"], [True, False])
)


@pytest.mark.parametrize(("pos_emb", "norm_position", "activation", "tie"), GRID)
def test_every_option_runs_and_trains(pos_emb, norm_position, activation, tie):
    model = tiny(
        pos_emb=pos_emb,
        norm_position=norm_position,
        activation=activation,
        tie_embeddings=tie,
        dropout=0.1,
    ).train()
    ids, mask, types = padded_batch()
    logits = model(ids, mask, types)
    assert logits.shape == (3, 20, V)
    assert model.hidden_states(ids, mask, types).shape == (3, 20, 32)
    assert (model.lm_head.weight is model.tok_emb.weight) == tie
    assert ("pos_emb.weight" in model.state_dict()) == (pos_emb == "learned")
    assert ("norm_emb.weight" in model.state_dict()) == (norm_position == "post")
    assert ("norm_f.weight" in model.state_dict()) == (norm_position == "pre")
    F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_num_params_and_flops():
    model = tiny(tie_embeddings=False)
    total = sum(p.numel() for p in model.parameters())
    lookups = (V + 24 + 2) * 32  # token, position and type tables
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - lookups
    assert model.flops_per_token(16) == 6 * model.num_params() + 12 * 2 * 32 * 16
    tied = tiny()
    assert tied.num_params(non_embedding=False) == total - V * 32  # the shared table once


def test_mlm_loss_on_masked_positions_equals_full_logits_loss():
    model = tiny(tie_embeddings=False)
    ids, mask, types = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[0, [1, 5, 19]] = ids[0, [1, 5, 19]]
    labels[1, 3] = 7
    full = F.cross_entropy(model(ids, mask, types).flatten(0, 1), labels.flatten())
    picked = model(ids, mask, types, labels=labels)
    torch.testing.assert_close(picked, full, atol=1e-6, rtol=1e-6)
    picked.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_padding_does_not_change_real_tokens(norm_position):
    model = tiny(norm_position=norm_position)
    ids, mask, types = padded_batch()
    garbage = ids.clone()
    garbage[mask == 0] = torch.randint(4, V, (int((mask == 0).sum()),))  # whatever is padded
    with torch.no_grad():
        batch = model(garbage, mask, types)
        for row, n in enumerate(mask.sum(1).tolist()):
            alone = model(ids[row : row + 1, :n], None, types[row : row + 1, :n])[0]
            torch.testing.assert_close(batch[row, :n], alone, atol=1e-5, rtol=1e-5)


def test_all_padding_row_stays_finite():
    model = tiny()
    ids, mask, types = padded_batch()
    mask[2] = 0
    with torch.no_grad():
        assert model(ids, mask, types).isfinite().all()


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="vocab_size must be set"):
        Encoder(EncoderConfig())
    with pytest.raises(ValueError, match="max_seq_len=24"):
        tiny()(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\)"):
        tiny()(torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 5))
    with pytest.raises(ValueError, match="model.d_model=30 is not divisible by model.n_heads=4"):
        EncoderConfig(d_model=30)
    with pytest.raises(ValueError, match="model.norm_position must be one of"):
        EncoderConfig(norm_position="sandwich")
    with pytest.raises(ValueError, match="model.mask_prob must be in"):
        EncoderConfig(mask_prob=0.0)
    with pytest.raises(ValueError, match="mask_token_frac \\+ model.random_token_frac"):
        EncoderConfig(mask_token_frac=0.9, random_token_frac=0.2)
    assert EncoderConfig(d_model=64).d_ff == 256


def test_checkpoint_round_trip_keeps_logits_and_tie(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path, step=1, model=model, config={})
    fresh = tiny()
    torch.nn.init.zeros_(fresh.tok_emb.weight)
    load_model_weights(fresh, tmp_path / "checkpoints" / "step-0000001" / "model.safetensors")
    ids, mask, types = padded_batch()
    with torch.no_grad():
        assert torch.equal(model(ids, mask, types), fresh(ids, mask, types))
    assert fresh.lm_head.weight is fresh.tok_emb.weight


# --- parity with transformers.BertForMaskedLM ----------------------------------------------


def hf_tiny(attn_implementation: str, tie: bool = True):
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=V,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
        attn_implementation=attn_implementation,
    )
    hf = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # as in tiny(): make biases and norms count
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("tie", [True, False])
def test_hf_weights_in_ours_give_hf_logits(attn_implementation, tie):
    hf = hf_tiny(attn_implementation, tie)
    cfg = EncoderConfig(
        vocab_size=V, n_layers=2, n_heads=4, d_model=64, d_ff=128, max_seq_len=32,
        tie_embeddings=tie,
    )  # fmt: skip
    ours = Encoder(cfg).eval()
    ours.load_state_dict(from_hf_bert_state_dict(hf.state_dict(), cfg), strict=True)
    assert (ours.lm_head.weight is ours.tok_emb.weight) == tie
    ids, mask, types = padded_batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, mask, types)
    assert (want - got).abs().max().item() <= 1e-5


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_our_weights_in_hf_give_our_logits(attn_implementation):
    ours = tiny(activation="relu", d_model=64, max_seq_len=32)
    hf = transformers.BertForMaskedLM(hf_bert_config(ours.config)).eval()
    hf.config._attn_implementation = attn_implementation
    hf.load_state_dict(to_hf_bert_state_dict(ours), strict=True)
    ids, mask, types = padded_batch()
    with torch.no_grad():
        want = ours(ids, mask, types)
        got = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert (want - got).abs().max().item() <= 1e-5


def test_round_trips_are_exact():
    hf = hf_tiny("sdpa")
    back = to_hf_bert(from_hf_bert(hf))
    want, got = hf.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    ours = tiny()
    again = from_hf_bert(to_hf_bert(ours))
    assert again.config == ours.config
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_unmappable_models_and_state_dicts_are_refused():
    with pytest.raises(ValueError, match="model.norm_position='pre'.*model.pos_emb='sinusoidal'"):
        to_hf_bert_state_dict(tiny(norm_position="pre", pos_emb="sinusoidal"))
    sd = {k: v for k, v in hf_tiny("eager").state_dict().items() if not k.startswith("cls.")}
    cfg = EncoderConfig(vocab_size=V, n_layers=2, n_heads=4, d_model=64, max_seq_len=32)
    with pytest.raises(ValueError, match="not a BertForMaskedLM.*cls.predictions.transform"):
        from_hf_bert_state_dict(sd, cfg)


# --- masking -------------------------------------------------------------------------------


def big_batch(vocab: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(256, 512) ids with [CLS] ... [SEP] and padded tails, and its padding mask."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (256, 512), generator=g)
    lengths = torch.randint(64, 513, (256,), generator=g)
    real = torch.arange(512)[None, :] < lengths[:, None]
    ids[:, 0] = CLS
    ids[torch.arange(256), lengths - 1] = SEP
    ids[~real] = PAD
    return ids, real


def test_mask_tokens_selects_15_percent_80_10_10():
    ids, _ = big_batch()
    cfg = EncoderConfig()
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(
        ids, cfg, mask_id=MASK, special_ids=SPECIALS, vocab_size=1000, generator=g
    )
    special = torch.isin(ids, torch.tensor(SPECIALS))
    selected = labels != -100
    assert not (selected & special).any()  # never [CLS], [SEP] or padding
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # the rest untouched
    assert selected.sum() / (~special).sum() == pytest.approx(0.15, abs=0.01)
    n = selected.sum()
    masked = (inputs == MASK) & selected
    kept = (inputs == ids) & selected
    randomised = selected & ~masked & ~kept
    assert masked.sum() / n == pytest.approx(0.8, abs=0.02)
    assert kept.sum() / n == pytest.approx(0.1, abs=0.02)
    assert randomised.sum() / n == pytest.approx(0.1, abs=0.02)
    assert not torch.isin(inputs[randomised], torch.tensor(SPECIALS)).any()
    # Dynamic masking: the next batch gets other masks; the same seed gives the same ones.
    again, _ = mask_tokens(ids, cfg, mask_id=MASK, special_ids=SPECIALS, vocab_size=1000)
    assert not torch.equal(again, inputs)
    same, _ = mask_tokens(
        ids, cfg, mask_id=MASK, special_ids=SPECIALS, vocab_size=1000,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(same, inputs)


def test_whole_word_masking_takes_every_piece_of_a_word():
    ids, _ = big_batch()
    # ids divisible by 3 begin a word; the others continue the word before them
    word_starts = torch.arange(1000) % 3 == 0
    cfg = EncoderConfig(whole_word_mask=True)
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(
        ids, cfg, mask_id=MASK, special_ids=SPECIALS, vocab_size=1000, generator=g,
        word_starts=word_starts,
    )  # fmt: skip
    special = torch.isin(ids, torch.tensor(SPECIALS))
    selected = labels != -100
    assert not (selected & special).any()
    assert selected.sum() / (~special).sum() == pytest.approx(0.15, abs=0.01)
    # A continuation piece is selected exactly when the piece before it is (same word).
    continues = ~word_starts[ids[:, 1:]] & ~special[:, 1:] & ~special[:, :-1]
    assert torch.equal(selected[:, 1:][continues], selected[:, :-1][continues])
    multi_piece = continues & selected[:, 1:]
    assert multi_piece.sum() > 1000  # whole multi-piece words really were selected
    # Without the table (or the option) selection is per token: pieces split apart.
    plain, _ = mask_tokens(
        ids, EncoderConfig(), mask_id=MASK, special_ids=SPECIALS, vocab_size=1000, generator=g
    )
    plain_sel = plain != ids
    assert not torch.equal(plain_sel[:, 1:][continues], plain_sel[:, :-1][continues])


@pytest.mark.parametrize("whole_word", [False, True])
def test_every_row_with_a_maskable_token_gets_one(whole_word):
    # [CLS] x y [SEP] rows: at 15% most would have nothing selected without the guarantee.
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 50, (2000, 4), generator=g)
    ids[:, 0], ids[:, 3] = CLS, SEP
    ids[:10, 1:3] = PAD  # nothing to predict in these rows
    starts = torch.arange(50) % 2 == 0
    _, labels = mask_tokens(
        ids, EncoderConfig(whole_word_mask=whole_word), mask_id=MASK, special_ids=SPECIALS,
        vocab_size=50, generator=g, word_starts=starts,
    )  # fmt: skip
    selected = labels != -100
    assert not selected[:10].any()
    assert selected[10:].any(dim=1).all()
    if whole_word:
        both = ~starts[ids[10:, 2]]  # position 2 continues position 1's word
        assert torch.equal(selected[10:, 1][both], selected[10:, 2][both])


def test_mask_tokens_errors_name_the_problem():
    ids = torch.randint(4, 50, (2, 8))
    with pytest.raises(ValueError, match=r"must lie in \[0, vocab_size=50\)"):
        mask_tokens(ids, EncoderConfig(), mask_id=60, special_ids=SPECIALS, vocab_size=50)
    with pytest.raises(ValueError, match=r"word_starts must be a bool tensor of shape \(50,\)"):
        mask_tokens(
            ids, EncoderConfig(whole_word_mask=True), mask_id=MASK, special_ids=SPECIALS,
            vocab_size=50, word_starts=torch.ones(40, dtype=torch.bool),
        )  # fmt: skip


# --- learning ------------------------------------------------------------------------------


@pytest.mark.slow
def test_masked_lm_loss_falls_and_accuracy_rises():
    # A repetitive corpus: each row repeats a random 3-token phrase, so a masked token can be
    # read off the same phrase position 3 tokens away, but not guessed from its own position.
    vocab = 44
    torch.manual_seed(0)

    def batch(n: int, g: torch.Generator) -> torch.Tensor:
        phrase = torch.randint(4, vocab, (n, 3), generator=g)
        ids = phrase.repeat(1, 4)  # (n, 12)
        return torch.cat([torch.full((n, 1), CLS), ids, torch.full((n, 1), SEP)], dim=1)

    cfg = EncoderConfig(
        vocab_size=vocab, n_layers=2, n_heads=4, d_model=64, max_seq_len=16, dropout=0.0
    )
    model = Encoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    held_out = mask_tokens(
        batch(256, g), cfg, mask_id=MASK, special_ids=SPECIALS, vocab_size=vocab, generator=g
    )

    def evaluate() -> tuple[float, float]:
        """Masked-LM loss and masked-token accuracy on the held-out batch."""
        inputs, labels = held_out
        model.eval()
        with torch.no_grad():
            logits = model(inputs)
        model.train()
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        chosen = labels != -100
        return loss.item(), (logits.argmax(-1)[chosen] == labels[chosen]).float().mean().item()

    loss0, acc0 = evaluate()
    for _ in range(300):
        inputs, labels = mask_tokens(
            batch(16, g), cfg, mask_id=MASK, special_ids=SPECIALS, vocab_size=vocab, generator=g
        )
        loss = F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss1, acc1 = evaluate()
    assert loss1 < 0.4 * loss0, (loss0, loss1)  # from ~ln(44) = 3.8
    assert acc0 < 0.1 and acc1 > 0.8, (acc0, acc1)
