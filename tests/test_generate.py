"""Sampling: greedy limits, seeds, stop strings and streaming of whole characters."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.generate import (
    Completion,
    GenerationConfig,
    _held_back,
    complete,
    sample_next,
    stream_text,
)
from lmforge.infer.load import load_run


@pytest.fixture(scope="module")
def run(tiny_run):
    return load_run(tiny_run)


def test_top_k_one_and_tiny_top_p_are_greedy():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    greedy = logits.argmax(-1)
    gen = torch.Generator().manual_seed(0)
    for cfg in (GenerationConfig(top_k=1), GenerationConfig(top_p=1e-6)):
        assert torch.equal(sample_next(logits, cfg, gen), greedy)


def test_top_p_keeps_the_nucleus_only():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    gen = torch.Generator().manual_seed(0)
    cfg = GenerationConfig(top_p=0.8)
    draws = {int(sample_next(probs.log(), cfg, gen)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8; tokens 2 and 3 are never drawn


def test_ids_past_the_vocabulary_are_never_drawn():
    """A model with padded embedding rows: their logits are left out, however large."""
    logits = torch.tensor([[0.0, 1.0, 0.5, 9.0, 8.0]] * 2)  # ids 3 and 4 have no token
    gen = torch.Generator().manual_seed(0)
    for cfg in (GenerationConfig(temperature=0), GenerationConfig(), GenerationConfig(top_k=3)):
        draws = {int(i) for _ in range(100) for i in sample_next(logits, cfg, gen, vocab_size=3)}
        assert draws <= {0, 1, 2} and 1 in draws
    assert int(sample_next(logits, GenerationConfig(temperature=0), gen)[0]) == 3  # unmasked


def test_seed_makes_samples_reproducible(run):
    cfg = GenerationConfig(max_new_tokens=40, seed=7, stop_at_eos=False)
    a = complete(run.model, run.tokenizer, "ROMEO:", cfg)
    b = complete(run.model, run.tokenizer, "ROMEO:", cfg)
    other = GenerationConfig(max_new_tokens=40, seed=8, stop_at_eos=False)
    c = complete(run.model, run.tokenizer, "ROMEO:", other)
    assert a.text == b.text and a.text != c.text
    assert a.finish_reason == "length" and len(a.token_ids) == 40


def test_stream_pieces_add_up_to_the_completion(run):
    cfg = GenerationConfig(max_new_tokens=50, temperature=0.9, seed=1)
    items = list(stream_text(run.model, run.tokenizer, "KING:", cfg))
    final = items[-1]
    assert isinstance(final, Completion)
    assert (
        "".join(items[:-1]) == final.text == complete(run.model, run.tokenizer, "KING:", cfg).text
    )


def test_stop_string_ends_generation_before_it(run):
    base = complete(run.model, run.tokenizer, "A", GenerationConfig(max_new_tokens=60, seed=2))
    stop = base.text[10:12]
    first = base.text.find(stop)
    cfg = GenerationConfig(max_new_tokens=60, seed=2, stop=(stop,))
    items = list(stream_text(run.model, run.tokenizer, "A", cfg))
    assert items[-1].finish_reason == "stop"
    assert items[-1].text == base.text[:first]
    assert "".join(items[:-1]) == base.text[:first]


def test_held_back_text_is_a_possible_stop():
    assert _held_back("hello wor", ("world",)) == 3
    assert _held_back("hello", ("xyz",)) == 0


def test_bad_sampling_values_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=-1)


class ScriptedModel(torch.nn.Module):
    """Stands in for a GPT: its greedy choice at each step is the next id of a script."""

    def __init__(self, script: list[int], vocab_size: int) -> None:
        super().__init__()
        self.script, self.vocab_size = script, vocab_size
        self.tok_emb = torch.nn.Embedding(1, 1)
        self.config = type("Config", (), {"max_seq_len": 64})()
        self.prompt_len: int | None = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self.prompt_len is None:
            self.prompt_len = idx.shape[1]
        logits = torch.zeros(1, idx.shape[1], self.vocab_size)
        logits[0, -1, self.script[idx.shape[1] - self.prompt_len]] = 1.0
        return logits


def test_characters_split_across_byte_tokens_stream_whole():
    from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer

    tok = train_tokenizer([], TokenizerConfig(kind="byte"))
    text = "é😀!"
    script = tok.encode(text)
    assert len(script) == 7  # 2 + 4 + 1 bytes
    model = ScriptedModel(script, tok.vocab_size)
    cfg = GenerationConfig(max_new_tokens=7, temperature=0, use_cache=False)
    items = list(stream_text(model, tok, "a", cfg))
    assert items[:-1] == ["é", "😀", "!"]
    assert items[-1].text == text
