"""Optimizers and LR schedules: schedule shapes, config errors, Muon's maths, training with each."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import config, losses
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.train.optim import (
    MuonWithAdamW,
    OptimConfig,
    build_optimizer,
    orthogonalize,
    split_hidden_matrices,
)
from lmforge.train.schedule import ScheduleConfig, lr_at, lr_factor
from lmforge.train.trainer import load_run_config, train

# ---------------------------------------------------------------------------------------------
# Schedules


def factors(cfg: ScheduleConfig, max_steps: int, steps) -> list[float]:
    return [lr_factor(s, max_steps, cfg) for s in steps]


def is_non_increasing(values: list[float]) -> bool:
    return all(a >= b - 1e-12 for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear", "wsd", "inverse_sqrt"])
def test_every_kind_warms_up_linearly_to_the_peak(kind):
    cfg = ScheduleConfig(kind=kind, warmup_steps=10)
    assert factors(cfg, 100, [0, 4, 9]) == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)  # the first step after warmup


def test_cosine_goes_halfway_at_mid_decay_and_ends_at_min():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.55)
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(500, 110, cfg) == pytest.approx(0.1)  # held past the end
    assert is_non_increasing(factors(cfg, 110, range(10, 120)))


def test_linear_decays_in_a_straight_line_to_min():
    cfg = ScheduleConfig(kind="linear", warmup_steps=10, min_lr_ratio=0.2)
    assert factors(cfg, 110, [35, 60, 85, 110]) == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert is_non_increasing(factors(cfg, 110, range(10, 120)))


def test_step_drops_by_gamma_every_step_size():
    cfg = ScheduleConfig(kind="step", warmup_steps=5, step_size=10, step_gamma=0.5)
    assert factors(cfg, 100, [5, 14, 15, 24, 25, 45]) == pytest.approx(
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.0625]
    )


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_is_flat_then_decays_over_the_last_fraction(shape):
    cfg = ScheduleConfig(
        kind="wsd", warmup_steps=10, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.0
    )
    # 100 steps: warmup 0-9, stable 10-79, decay 80-100.
    assert factors(cfg, 100, [10, 50, 79, 80]) == pytest.approx([1.0] * 4)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0)
    mid = lr_factor(90, 100, cfg)
    assert mid == pytest.approx(0.5 if shape == "linear" else 1 - math.sqrt(0.5))
    assert is_non_increasing(factors(cfg, 100, range(10, 101)))


def test_wsd_1_sqrt_stays_below_linear_through_the_decay():
    # 1 - sqrt(p) drops fastest at the start of the cooldown and is below linear after it.
    linear = ScheduleConfig(kind="wsd", warmup_steps=0, decay_fraction=0.5, min_lr_ratio=0.1)
    sqrt = ScheduleConfig(
        kind="wsd", warmup_steps=0, decay_fraction=0.5, min_lr_ratio=0.1, decay_shape="1-sqrt"
    )
    for step in range(51, 100):
        assert lr_factor(step, 100, sqrt) < lr_factor(step, 100, linear)
    assert lr_factor(100, 100, sqrt) == pytest.approx(0.1)


def test_inverse_sqrt_halves_at_four_times_warmup():
    cfg = ScheduleConfig(kind="inverse_sqrt", warmup_steps=25)
    assert lr_factor(25, 1000, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 1000, cfg) == pytest.approx(0.5)
    assert lr_factor(400, 1000, cfg) == pytest.approx(0.25)
    assert is_non_increasing(factors(cfg, 1000, range(25, 1000)))


def test_lr_at_is_peak_times_factor():
    cfg = ScheduleConfig(kind="linear", warmup_steps=4, min_lr_ratio=0.0)
    assert lr_at(2, 3e-4, 20, cfg) == pytest.approx(3e-4 * lr_factor(2, 20, cfg))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "exponential"}, r"schedule.kind must be one of .*'cosine'.*got 'exponential'"),
        ({"warmup_steps": -1}, r"warmup_steps must be >= 0, got -1"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio must be in \[0, 1\], got 1.5"),
        ({"kind": "step"}, r"step_size must be positive for kind 'step', got 0; set it"),
        ({"step_gamma": 0.0}, r"step_gamma must be in \(0, 1\], got 0.0"),
        ({"decay_fraction": 0.0}, r"decay_fraction must be in \(0, 1\], got 0.0; e.g. 0.2"),
        ({"decay_shape": "cosine"}, r"decay_shape must be one of .*got 'cosine'"),
        ({"kind": "inverse_sqrt", "warmup_steps": 0}, r"warmup_steps must be positive for kind"),
    ],
)
def test_schedule_config_errors_say_what_was_given(fields, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**fields)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "lion"}, r"optim.name must be one of \['adamw', 'muon', 'sgd'\], got 'lion'"),
        ({"lr": 0.0}, r"optim.lr must be positive, got 0.0"),
        ({"muon_lr": -1.0}, r"optim.muon_lr must be positive, got -1.0"),
        ({"weight_decay": -0.1}, r"weight_decay must be >= 0, got -0.1"),
        ({"betas": [0.9, 1.0]}, r"betas must be two numbers in \[0, 1\), got \[0.9, 1.0\]"),
        ({"muon_momentum": 1.0}, r"muon_momentum must be in \[0, 1\), got 1.0"),
        ({"ns_steps": 0}, r"ns_steps must be >= 1, got 0; 5 is the usual"),
        ({"name": "sgd", "momentum": 0.0}, r"nesterov needs optim.momentum > 0 for sgd"),
        ({"embed_lr": -0.1}, r"optim.embed_lr must be >= 0 \(0 = optim.lr\), got -0.1"),
    ],
)
def test_optim_config_errors_say_what_was_given(fields, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**fields)


def test_recipe_values_are_checked_through_the_run_config():
    with pytest.raises(Exception, match="optim.name"):
        load_run_config(None, {"optim.name": "lion"})
    cfg = load_run_config(None, {"optim.name": "muon", "schedule.kind": "wsd"})
    assert (cfg.optim.name, cfg.schedule.kind) == ("muon", "wsd")


# ---------------------------------------------------------------------------------------------
# Muon


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (96, 32), (8, 200)])
def test_orthogonalize_puts_singular_values_near_one(shape):
    # Five quintic steps leave singular values in a band around 1, about [0.68, 1.14], not at 1
    # exactly. Square random matrices are left out: their smallest singular values sit near
    # zero, and no fixed number of steps lifts those into the band.
    torch.manual_seed(0)
    for _ in range(5):
        g = torch.randn(shape) * 1e-3  # the scale of a gradient; the result must not depend on it
        out = orthogonalize(g)
        assert out.shape == shape and out.dtype == torch.float32
        s = torch.linalg.svdvals(out)
        assert 0.65 < s.min() and s.max() < 1.2, s


def test_a_muon_step_decreases_a_least_squares_loss():
    torch.manual_seed(0)
    x, target = torch.randn(256, 32), torch.randn(256, 16)
    w = torch.nn.Parameter(torch.zeros(16, 32))
    opt = MuonWithAdamW([{"params": [w], "use_muon": True, "lr": 0.05}])

    def loss() -> torch.Tensor:
        return ((x @ w.T - target) ** 2).mean()

    history = []
    for _ in range(10):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
        history.append(value.item())
    assert loss().item() < history[0]
    assert history[1] < history[0]  # the very first step already helps


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch 2.9+")
def test_muon_matches_torch_optim_muon():
    # torch.optim.Muon runs Newton-Schulz in bf16, we run fp32 on CPU: equal to bf16 precision.
    torch.manual_seed(0)
    w0 = torch.randn(48, 16)
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_ours = MuonWithAdamW([{"params": [ours], "use_muon": True, "weight_decay": 0.1}])
    opt_theirs = torch.optim.Muon([theirs], lr=0.02, weight_decay=0.1, momentum=0.95)
    for _ in range(3):
        grad = torch.randn(48, 16)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    delta_ours, delta_theirs = ours.detach() - w0, theirs.detach() - w0
    assert (delta_ours - delta_theirs).norm() < 0.03 * delta_theirs.norm()


def names_of(model: torch.nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("tied", [True, False])
def test_muon_gets_hidden_matrices_and_adamw_the_rest(tied):
    model = GPT(
        GPTConfig(
            vocab_size=40, n_layers=2, n_heads=2, d_model=16, max_seq_len=8, tie_embeddings=tied
        )
    )
    hidden, rest = split_hidden_matrices(model)
    all_names = {n for n, _ in model.named_parameters()}
    projections = {n for n in all_names if n.endswith("_proj.weight")}
    assert projections and names_of(model, hidden) == projections
    assert names_of(model, rest) == all_names - projections
    assert {"tok_emb.weight", "pos_emb.weight"} <= names_of(model, rest)
    assert ("lm_head.weight" in names_of(model, rest)) == (not tied)
    assert any(n.endswith(".bias") for n in names_of(model, rest))  # biases and norm gains

    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.03), "cpu")
    by_kind = {g["use_muon"]: [] for g in opt.param_groups}
    for g in opt.param_groups:
        by_kind[g["use_muon"]] += g["params"]
        assert g["initial_lr"] == (0.03 if g["use_muon"] else 1e-3)
    assert names_of(model, by_kind[True]) == projections
    assert len(by_kind[True]) + len(by_kind[False]) == len(all_names)
    decays = {
        g["use_muon"]: g["weight_decay"] for g in opt.param_groups if g["params"][0].dim() > 1
    }
    assert decays == {True: 0.0, False: 0.1}  # Muon's own decay (0 by default), AdamW's 0.1


@pytest.mark.parametrize("name", ["adamw", "muon", "sgd"])
def test_embeddings_and_head_take_their_own_lr_and_canon_taps_are_not_decayed(name):
    model = GPT(
        GPTConfig(
            vocab_size=40, n_layers=2, n_heads=2, d_model=16, max_seq_len=8, bias=False,
            pos_emb="rope", tie_embeddings=False, canon_kernel=3,
        )
    )  # fmt: skip
    cfg = OptimConfig(name=name, lr=1e-3, embed_lr=0.1, head_lr=5e-3, muon_lr=0.02)
    opt = build_optimizer(model, cfg, "cpu")
    lr_of = {n: g["initial_lr"] for g in opt.param_groups for n in names_of(model, g["params"])}
    decay_of = {
        n: g["weight_decay"] for g in opt.param_groups for n in names_of(model, g["params"])
    }
    assert len(lr_of) == len(dict(model.named_parameters()))  # every parameter once
    assert lr_of["tok_emb.weight"] == 0.1 and decay_of["tok_emb.weight"] == 0.1
    assert lr_of["lm_head.weight"] == 5e-3 and decay_of["lm_head.weight"] == 0.1
    assert lr_of["blocks.0.attn.q_proj.weight"] == (0.02 if name == "muon" else 1e-3)
    assert lr_of["blocks.1.canon_mlp.taps.2"] == 1e-3 and decay_of["blocks.1.canon_mlp.taps.2"] == 0

    # Without embed_lr and head_lr, AdamW keeps its two groups (what old checkpoints hold).
    plain = build_optimizer(model, OptimConfig(name="adamw"), "cpu")
    assert [g["weight_decay"] for g in plain.param_groups] == [0.1, 0.0]
    tied = GPT(GPTConfig(vocab_size=40, n_layers=1, n_heads=2, d_model=16, max_seq_len=8))
    with pytest.raises(ValueError, match="head_lr is set but this model has no LM head of its"):
        build_optimizer(tied, OptimConfig(name=name, head_lr=1e-3), "cpu")


def test_muon_refuses_non_matrices():
    with pytest.raises(ValueError, match=r"2-D matrices only, got parameters of shapes \[\(4,\)\]"):
        MuonWithAdamW([{"params": [torch.nn.Parameter(torch.ones(4))], "use_muon": True}])
    with pytest.raises(ValueError, match="needs a 'use_muon' key"):
        MuonWithAdamW([{"params": [torch.nn.Parameter(torch.ones(4))]}])


def test_adamw_part_matches_torch_adamw():
    torch.manual_seed(0)
    shapes = [(8,), (3, 5), (4,)]
    ours = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    group = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    opt_ours = MuonWithAdamW([{"params": ours, "use_muon": False, **group}])
    opt_theirs = torch.optim.AdamW(theirs, **group, foreach=False)
    for step in range(5):
        for mine, other in zip(ours, theirs):
            grad = torch.randn(mine.shape)
            mine.grad, other.grad = grad.clone(), grad.clone()
        if step == 1:  # a tensor without a gradient skips the step and keeps its own count
            ours[2].grad = theirs[2].grad = None
        opt_ours.step()
        opt_theirs.step()
    for mine, other in zip(ours, theirs):
        torch.testing.assert_close(mine.detach(), other.detach())


# ---------------------------------------------------------------------------------------------
# Training with each optimizer


@pytest.mark.parametrize(
    "optim",
    [
        {"optim.name": "adamw"},
        {"optim.name": "muon"},
        {"optim.name": "sgd", "optim.lr": 0.3},  # plain SGD needs a far larger step than Adam
    ],
)
def test_training_lowers_the_loss_with_each_optimizer(tmp_path, tiny_tokens, optim):
    steps = {"train.max_steps": 16, "train.log_interval": 4, "train.eval_interval": 16}
    train(config(tiny_tokens, **steps, **optim), tmp_path, progress=False)
    train_losses = losses(tmp_path)
    vocab = json.loads((tmp_path / "config.json").read_text())["model"]["vocab_size"]
    assert train_losses[16] < train_losses[4] < math.log(vocab) + 0.5
    assert train_losses[16] < math.log(vocab) - 0.5


def test_muon_logs_adamw_lr_and_schedules_its_own(tmp_path, tiny_tokens):
    extra = {
        "optim.name": "muon",
        "optim.muon_lr": 0.04,
        "schedule.kind": "constant",
        "train.max_steps": 2,
        "train.log_interval": 1,
    }
    cfg = config(tiny_tokens, **extra)
    train(cfg, tmp_path, progress=False)
    assert losses(tmp_path, "lr") == {1: pytest.approx(1.5e-3), 2: pytest.approx(3e-3)}
    state = json.loads((tmp_path / "checkpoints" / "step-0000002" / "train_state.json").read_text())
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups if g["use_muon"]] == [pytest.approx(0.04)]


def test_batched_orthogonalize_equals_one_matrix_at_a_time():
    torch.manual_seed(0)
    stack = torch.randn(3, 24, 40)
    batched = orthogonalize(stack)
    for i in range(3):
        torch.testing.assert_close(batched[i], orthogonalize(stack[i]), atol=1e-5, rtol=1e-4)
