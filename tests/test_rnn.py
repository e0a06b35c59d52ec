"""The recurrent LM family: shapes, carried state, embedding dropout, TBPTT streams, generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_tokens
from lmforge.data.loader import TokenStreams
from lmforge.infer.generate import (
    Completion,
    GenerationConfig,
    complete,
    generate_ids,
    prepare_for_decoding,
    stream_text,
)
from lmforge.model.rnn import RNNLM, RNNConfig, detach_state
from lmforge.tokenizer.tokenizer import load_tokenizer
from lmforge.train.checkpoint import load_model_weights, save_checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from threads, and on a busy shared CPU two threads spinning
    against each other make these tests ~7x slower (module scope: the training fixture too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> RNNLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, n_layers=2, d_model=32, max_seq_len=16)
    cfg.update(kw)
    return RNNLM(RNNConfig(**cfg)).eval()


SHAPES = [
    (cell, layers, tied, d_hidden)
    for cell in ("lstm", "gru")
    for layers in (1, 2)
    for tied, d_hidden in ((True, 0), (False, 0), (True, 48), (False, 48))
]


@pytest.mark.parametrize("cell, layers, tied, d_hidden", SHAPES)
def test_shapes_state_and_checkpoint_keys(cell, layers, tied, d_hidden):
    model = tiny(cell=cell, n_layers=layers, tie_embeddings=tied, d_hidden=d_hidden)
    logits, state = model(torch.randint(0, 50, (3, 7)))
    assert logits.shape == (3, 7, 50)
    hidden = d_hidden or 32
    assert [s.shape for s in state] == [(layers, 3, hidden)] * (2 if cell == "lstm" else 1)
    assert [s.shape for s in model.init_state(3)] == [s.shape for s in state]
    assert (model.lm_head.weight is model.tok_emb.weight) == tied
    keys = set(model.state_dict())
    assert {f"rnn.weight_ih_l{layers - 1}", "rnn.weight_hh_l0", "lm_head.bias"} <= keys
    assert ("out_proj.weight" in keys) == (tied and hidden != 32)


def test_vocab_left_at_zero_and_bad_fields_are_refused():
    with pytest.raises(ValueError, match="vocab_size must be set"):
        RNNLM(RNNConfig())
    for kwargs, message in [
        (dict(cell="transformer"), "model.cell must be one of 'lstm', 'gru'"),
        (dict(n_layers=0), "model.n_layers must be positive"),
        (dict(dropout=1.0), r"model.dropout must be in \[0, 1\)"),
        (dict(emb_dropout=-0.1), "model.emb_dropout"),
        (dict(family="gpt"), "model.family must be 'rnn'"),
    ]:
        with pytest.raises(ValueError, match=message):
            RNNConfig(vocab_size=10, **kwargs)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_two_halves_with_carried_state_equal_one_full_run(cell):
    model = tiny(cell=cell, d_hidden=40)
    idx = torch.randint(0, 50, (2, 24))
    full, full_state = model(idx)
    first, state = model(idx[:, :9])
    second, state = model(idx[:, 9:], detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-6, rtol=0)
    for a, b in zip(state, full_state):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # A zero state from init_state is the same as no state.
    again, _ = model(idx, model.init_state(2))
    torch.testing.assert_close(again, full, atol=0, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_matches_a_stack_of_reference_cells(cell):
    """The fused nn.LSTM/GRU equals PyTorch's single-step cells on the same checkpoint keys."""
    model = tiny(cell=cell)
    idx = torch.randint(0, 50, (2, 6))
    logits, _ = model(idx)
    Cell = torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell
    cells = []
    for k in range(2):
        ref = Cell(32, 32)
        ref.load_state_dict(
            {f"{n}_{w}": getattr(model.rnn, f"{n}_{w}_l{k}") for n in ("weight", "bias")
             for w in ("ih", "hh")}
        )  # fmt: skip
        cells.append(ref)
    states = [(torch.zeros(2, 32), torch.zeros(2, 32)) if cell == "lstm" else torch.zeros(2, 32)]
    states = states * 2
    outs = []
    for t in range(6):
        x = model.tok_emb.weight[idx[:, t]]
        for k, ref in enumerate(cells):
            states[k] = ref(x, states[k])
            x = states[k][0] if cell == "lstm" else states[k]
        outs.append(x @ model.tok_emb.weight.T + model.lm_head.bias)
    torch.testing.assert_close(torch.stack(outs, 1), logits, atol=1e-5, rtol=1e-5)


def test_init_table():
    model = tiny(d_model=64, forget_bias=1.0)
    h = 64
    b_ih = model.rnn.bias_ih_l0
    assert (
        torch.all(b_ih[h : 2 * h] == 1.0)
        and torch.all(b_ih[:h] == 0)
        and torch.all(b_ih[2 * h :] == 0)
    )
    assert torch.all(model.rnn.bias_hh_l1 == 0) and torch.all(model.lm_head.bias == 0)
    for g in range(4):  # every gate block of the recurrent matrix is orthogonal
        block = model.rnn.weight_hh_l0[g * h : (g + 1) * h]
        torch.testing.assert_close(block @ block.T, torch.eye(h), atol=1e-5, rtol=0)
    assert model.tok_emb.weight.std().item() == pytest.approx(model.config.init_std, rel=0.1)


def test_param_count_and_flops():
    d, h, v = 32, 48, 50
    lstm = sum(4 * (i * h + h * h + 2 * h) for i in (d, h))  # the 2 layers' recurrence
    head_bias = v
    tied = tiny(d_hidden=h)
    assert tied.num_params() == v * d + lstm + h * d + head_bias  # embedding = head, counted
    untied = tiny(d_hidden=h, tie_embeddings=False)
    assert untied.num_params() == lstm + h * v + head_bias  # the lookup table costs no FLOPs
    assert untied.num_params(non_embedding=False) == v * d + lstm + h * v + head_bias
    assert untied.flops_per_token(16) == untied.flops_per_token(4096) == 6 * untied.num_params()


def test_embedding_dropout_drops_whole_rows_in_training_only():
    model = tiny(emb_dropout=0.5)
    idx = torch.arange(50).repeat(2, 3)  # (2, 150): every id six times
    weight = model.tok_emb.weight.detach()
    model.train()
    torch.manual_seed(1)
    out = model.embed(idx).detach()
    dropped = set()
    for v in range(50):
        rows = out[idx == v]  # (6, C): one decision for every occurrence
        if torch.all(rows == 0):
            dropped.add(v)
        else:
            torch.testing.assert_close(rows, (weight[v] * 2).expand_as(rows))
    assert 10 < len(dropped) < 40  # about half of the vocabulary
    torch.manual_seed(2)
    assert not torch.equal(model.embed(idx), out)  # a new draw per forward
    model.eval()
    assert torch.equal(model.embed(idx), weight[idx])


def write_tokens(root, shards: list[np.ndarray]):
    """A token dir with the given train shards (uint16), as `tokenizer encode` writes one."""
    entries = []
    for i, arr in enumerate(shards):
        name = f"train-{i:05d}.bin"
        arr.astype("<u2").tofile(root / name)
        entries.append({"file": name, "tokens": len(arr)})
    total = sum(len(a) for a in shards)
    meta = {
        "dtype": "uint16",
        "vocab_size": 65536,
        "eos_id": 0,
        "splits": {"train": {"tokens": total, "documents": 1, "bytes": total, "shards": entries}},
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_streams_continue_across_batches_shards_and_epochs(tmp_path):
    # 1000 tokens 0..999 in three shards: stream b is b*250 .. b*250+249 for 4 streams.
    tokens = np.arange(1000)
    write_tokens(tmp_path, [tokens[:333], tokens[333:700], tokens[700:]])
    streams = TokenStreams(tmp_path, "train", seq_len=10, batch_size=4)
    assert streams.stream_len == 250 and len(streams) == 24  # (250 - 1) // 10
    x0, y0 = streams.batch(0)
    assert x0.dtype == torch.int64 and x0.shape == y0.shape == (4, 10)
    assert x0[:, 0].tolist() == [0, 250, 500, 750]
    for i in range(len(streams) - 1):
        x, y = streams.batch(i)
        nx, ny = streams.batch(i + 1)
        assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the next tokens
        assert torch.equal(nx[:, 0], x[:, -1] + 1)  # row b goes on where it stopped
        assert torch.equal(nx[:, 0], y[:, -1])
    x33, _ = streams.batch(33)  # crosses the shard boundary at 333 in row 1
    assert x33[1].tolist() == list(range(250 + 33 % 24 * 10, 250 + 33 % 24 * 10 + 10))
    assert torch.equal(streams.batch(3)[0], streams.batch(3 + len(streams))[0])  # wraps
    # Deterministic and shard-able: the ranks' rows put together are the whole batch.
    again = TokenStreams(tmp_path, "train", seq_len=10, batch_size=4)
    assert torch.equal(again.batch(7)[1], streams.batch(7)[1])
    parts = [streams.batch(7, shard=(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), streams.batch(7)[0])
    assert parts[1][0][:, 0].tolist() == [500 + 70, 750 + 70]
    with pytest.raises(ValueError, match="cannot be cut into 3 equal parts"):
        streams.batch(0, shard=(0, 3))


def test_too_short_split_for_the_streams_is_explained(tmp_path):
    write_tokens(tmp_path, [np.arange(40)])
    with pytest.raises(ValueError, match="has 40 tokens, too few for 8 streams of 11 tokens"):
        TokenStreams(tmp_path, "train", seq_len=10, batch_size=8)


REPEATED = "the quick brown fox jumps over the lazy dog. " * 400


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-layer LSTM trained by truncated BPTT on repetitive text, and its char tokenizer."""
    root = tmp_path_factory.mktemp("rnn")
    tokens = make_tokens(root, REPEATED)
    tok = load_tokenizer(root / "tokenizer")
    streams = TokenStreams(tokens, "train", seq_len=16, batch_size=8)
    torch.manual_seed(0)
    cfg = RNNConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=48, max_seq_len=16)
    model = RNNLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    state = model.init_state(8)
    losses, norms = [], []
    for step in range(120):
        x, y = streams.batch(step)
        logits, state = model(x, state)
        state = detach_state(state)  # the truncation: no gradient into the previous batch
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
        opt.step()
        losses.append(loss.item())
    return model.eval(), tok, losses, norms


def test_tbptt_training_loss_falls(trained):
    _, _, losses, norms = trained
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert first > 4.0  # about ln(vocab) at the start
    assert last < 0.5, losses
    assert max(norms) > 0.5  # clipping was doing work


def test_greedy_generation_cached_equals_uncached(trained):
    model, tok, _, _ = trained
    prompt = tok.encode("the lazy dog. the quick")
    greedy = dict(max_new_tokens=40, temperature=0.0, stop_at_eos=False)
    cached = list(generate_ids(model, prompt, GenerationConfig(**greedy)))
    uncached = list(generate_ids(model, prompt, GenerationConfig(**greedy, use_cache=False)))
    assert cached == uncached and len(cached) == 40
    # An RNN has no context limit: past max_seq_len (16) it goes on, with nothing to slide.
    random_gru = tiny(cell="gru", init_std=0.5)
    ids = [1, 2, 3]
    a = list(generate_ids(random_gru, ids, GenerationConfig(**greedy)))
    assert a == list(generate_ids(random_gru, ids, GenerationConfig(**greedy, use_cache=False)))


def test_stream_text_and_complete_with_an_rnn(trained):
    model, tok, _, _ = trained
    prepare_for_decoding(model)  # what `lmforge generate` and the server do first
    greedy = GenerationConfig(max_new_tokens=35, temperature=0.0, stop_at_eos=False)
    done = complete(model, tok, "the quick", greedy)
    assert done.text.startswith(" brown fox jumps over the lazy dog."), done.text
    assert done.finish_reason == "length" and done.prompt_tokens == len("the quick")
    cfg = GenerationConfig(max_new_tokens=60, temperature=0.8, seed=3, stop=("dog",))
    items = list(stream_text(model, tok, "over the", cfg))
    final = items[-1]
    assert isinstance(final, Completion) and final.finish_reason == "stop"
    assert "".join(items[:-1]) == final.text == complete(model, tok, "over the", cfg).text
    assert "dog" not in final.text


def test_checkpoint_round_trip_keeps_the_tie_and_the_logits(tmp_path):
    model = tiny(cell="gru", d_hidden=40)
    save_checkpoint(tmp_path, step=1, model=model, config={})
    fresh = tiny(cell="gru", d_hidden=40)
    torch.nn.init.zeros_(fresh.tok_emb.weight)
    load_model_weights(fresh, tmp_path / "checkpoints" / "step-0000001" / "model.safetensors")
    idx = torch.randint(0, 50, (1, 12))
    assert torch.equal(model(idx)[0], fresh(idx)[0])
    assert fresh.lm_head.weight is fresh.tok_emb.weight
