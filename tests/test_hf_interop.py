"""Hugging Face and llama.cpp interop: export/import folders, GGUF files, and clear refusals.

Every model is tiny and random, built in the test (no downloads); norm gains and biases are
perturbed so that a misplaced one cannot hide behind its init.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import perturb
from lmforge.config import to_dict
from lmforge.corpora import corpus_path
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer, train_tokenizer
from lmforge.train.checkpoint import save_checkpoint
from lmforge.train.trainer import RunConfig

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lmforge.cli import main  # noqa: E402
from lmforge.deps import MissingDependency, require  # noqa: E402
from lmforge.export.hf import InteropError, export_hf, import_hf  # noqa: E402
from lmforge.export.hf_llama import gpt_config_from_hf  # noqa: E402
from lmforge.infer.generate import GenerationConfig, complete, generate_ids  # noqa: E402
from lmforge.infer.load import load_run  # noqa: E402

LLAMA = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, rope_theta=500.0)
INIT_RANGE = 0.1  # wide enough that greedy decoding does not just repeat one token
SAMPLE = "ROMEO: Is the day so young?\n  JULIET: Ay, 'tis 3 o'clock — über früh, 日本!"


@pytest.fixture(scope="module")
def text() -> str:
    return corpus_path("tinyshakespeare").read_text(encoding="utf-8")[:30_000]


@pytest.fixture(scope="module")
def bpe(text) -> Tokenizer:
    return train_tokenizer([text], TokenizerConfig(kind="bpe", vocab_size=320))


def make_run(root: Path, tok: Tokenizer, **model_kw) -> tuple[Path, GPT]:
    """A run directory holding one checkpoint of a random GPT, as `lmforge train` writes it."""
    torch.manual_seed(0)
    kw = dict(vocab_size=tok.vocab_size, n_layers=2, n_heads=4, d_model=64, max_seq_len=48)
    cfg = GPTConfig(**{**kw, **model_kw})
    model = GPT(cfg).eval()
    perturb(model)
    tok.save(root / "tokenizer")
    config = to_dict(RunConfig(model=cfg))
    config["tokenizer"] = {"kind": tok.kind, "fingerprint": tok.fingerprint}
    save_checkpoint(root, step=7, model=model, config=config)
    return root, model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------- export hf

EXPORT_CASES = {
    "gpt2-tied": ({}, "GPT2LMHeadModel"),
    "gpt2-untied": (dict(tie_embeddings=False), "GPT2LMHeadModel"),
    "llama-mha-untied": (dict(LLAMA, tie_embeddings=False), "LlamaForCausalLM"),
    "llama-gqa-tied": (dict(LLAMA, n_kv_heads=2, tie_embeddings=True), "LlamaForCausalLM"),
    "llama-mqa-untied": (dict(LLAMA, n_kv_heads=1, tie_embeddings=False), "LlamaForCausalLM"),
}


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_hf_loads_in_transformers_with_our_logits(case, bpe, tmp_path):
    model_kw, hf_class = EXPORT_CASES[case]
    run, model = make_run(tmp_path / "run", bpe, **model_kw)
    summary = export_hf(run, tmp_path / "hf")
    assert summary["architecture"] == hf_class and summary["checkpoint"] == "step-0000007"
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert files == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert not list(tmp_path.glob(".hf.*"))  # the temporary folder was renamed into place

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == hf_class
    ids = hf_tok(SAMPLE, add_special_tokens=False)["input_ids"]
    assert ids == bpe.encode(SAMPLE)
    assert hf_tok.decode(ids) == SAMPLE
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 1, 2)
    x = torch.tensor([ids[:48], bpe.encode(SAMPLE[::-1])[:48]])
    with torch.no_grad():
        assert max_diff(model(x), hf(input_ids=x).logits) < 1e-5
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (0, 1, 2)
    if hf_class == "LlamaForCausalLM":
        config = json.loads((tmp_path / "hf" / "config.json").read_text())
        assert config["num_key_value_heads"] == model.config.n_kv_heads
        assert config["rope_theta"] == 500.0 and config["rms_norm_eps"] == 1e-5


def test_export_trained_char_run_from_the_cli(tiny_run, tmp_path, capsys):
    """A run `lmforge train` wrote (char tokenizer), exported and reloaded by transformers."""
    out = tmp_path / "hf"
    assert main(["export", "hf", str(tiny_run), "--out", str(out), "--checkpoint", "last"]) == 0
    assert "as GPT2LMHeadModel" in capsys.readouterr().out
    run = load_run(tiny_run, which="last")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = run.tokenizer.encode(SAMPLE)
    assert hf_tok(SAMPLE, add_special_tokens=False)["input_ids"] == ids
    x = torch.tensor([ids[: run.model.config.max_seq_len]])
    with torch.no_grad():
        assert max_diff(run.model(x), hf(input_ids=x).logits) < 1e-5


def test_export_bfloat16_halves_the_weights(bpe, tmp_path):
    run, model = make_run(tmp_path / "run", bpe, **LLAMA)
    export_hf(run, tmp_path / "f32")
    export_hf(run, tmp_path / "bf16", dtype="bfloat16")
    sizes = [(tmp_path / d / "model.safetensors").stat().st_size for d in ("f32", "bf16")]
    assert sizes[1] < 0.55 * sizes[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert hf.dtype == torch.bfloat16


# ---------------------------------------------------------------- import hf


def gpt2_style_hf_tokenizer(text: str):
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator([text], trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def llama2_style_hf_tokenizer(text: str):
    """SentencePiece-like: "▁" for spaces, <0xNN> byte fallback, BOS added by its template."""
    n = tokenizers.normalizers
    d = tokenizers.decoders
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in sorted(set(text.replace(" ", "\u2581"))):
        vocab.setdefault(ch, len(vocab))
    hf = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>")
    )
    hf.normalizer = n.Sequence([n.Prepend("\u2581"), n.Replace(" ", "\u2581")])
    hf.decoder = d.Sequence(
        [d.Replace("\u2581", " "), d.ByteFallback(), d.Fuse(), d.Strip(" ", 1, 0)]
    )
    hf.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    hf.add_special_tokens(["<unk>", "<s>", "</s>"])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def never_predict_partial_characters(hf, hf_tok) -> None:
    """Zero the LM-head rows of tokens that are not whole UTF-8 characters (lone bytes).

    Greedy text from the random model is then always valid UTF-8, so the generate test can
    compare it with transformers' own decoding.
    """
    with torch.no_grad():
        for i in range(len(hf_tok)):
            if "\ufffd" in hf_tok.decode([i]):
                hf.get_output_embeddings().weight[i] = 0.0


def hf_gpt2_dir(root: Path, text: str) -> Path:
    hf_tok = gpt2_style_hf_tokenizer(text)
    eos = hf_tok.eos_token_id
    config = transformers.GPT2Config(
        vocab_size=len(hf_tok), n_positions=64, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=eos, eos_token_id=eos, initializer_range=INIT_RANGE,
    )  # fmt: skip
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(config).eval()
    perturb(hf, seed=1)
    never_predict_partial_characters(hf, hf_tok)
    hf.save_pretrained(root)
    hf_tok.save_pretrained(root)
    return root


def hf_llama_dir(root: Path, text: str, *, tie: bool = False) -> Path:
    hf_tok = llama2_style_hf_tokenizer(text)
    config = transformers.LlamaConfig(
        vocab_size=len(hf_tok) + 5,  # padded past the tokenizer, as real checkpoints often are
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000.0,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, initializer_range=INIT_RANGE,
    )  # fmt: skip
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(config).eval()
    perturb(hf, seed=2)
    never_predict_partial_characters(hf, hf_tok)
    hf.save_pretrained(root)
    hf_tok.save_pretrained(root)
    return root


IMPORT_CASES = {
    "gpt2": (hf_gpt2_dir, "GPT2LMHeadModel"),
    "llama": (hf_llama_dir, "LlamaForCausalLM"),
}


@pytest.mark.parametrize("case", IMPORT_CASES)
def test_import_hf_gives_their_logits_and_greedy_tokens(case, text, tmp_path, capsys):
    make_dir, hf_class = IMPORT_CASES[case]
    hf_dir = make_dir(tmp_path / "hf", text)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)

    assert main(["import", "hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 0
    assert f"imported {hf_class}" in capsys.readouterr().out
    run = load_run(tmp_path / "run")
    assert run.tokenizer.kind == "hf" and run.tokenizer.eos_id == hf_tok.eos_token_id
    assert run.tokenizer.bos_id == hf_tok.bos_token_id
    assert run.model.config.vocab_size == hf.config.vocab_size

    prompt = "ROMEO: Is the day so young?"
    # A prompt is encoded as the model's own tokenizer encodes it: the Llama one puts BOS first.
    ids = run.tokenizer.encode_prompt(prompt)
    assert ids == hf_tok(prompt)["input_ids"]
    assert (ids[0] == hf_tok.bos_token_id) == (case == "llama") == run.tokenizer.add_bos
    assert run.tokenizer.encode(prompt) == hf_tok(prompt, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids, run.tokenizer.encode_prompt(SAMPLE)[: len(ids)]])
    with torch.no_grad():
        assert max_diff(run.model(x), hf(input_ids=x).logits) < 1e-5

    # Greedy decoding: our generate (KV cache and all) picks the tokens transformers picks,
    # from the same ids (BOS included), neither ever choosing a padded embedding row.
    eos = hf_tok.eos_token_id
    greedy = GenerationConfig(temperature=0, max_new_tokens=12)
    padded = list(range(len(hf_tok), hf.config.vocab_size)) or None
    hf_greedy = dict(do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=eos,
                     suppress_tokens=padded)  # fmt: skip
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), **hf_greedy)[0, len(ids) :].tolist()
    vocab = run.tokenizer.vocab_size
    assert list(generate_ids(run.model, ids, greedy, eos_id=eos, vocab_size=vocab)) == theirs
    # An empty prompt starts at BOS where the model has one (GPT-2's is its <|endoftext|>).
    start = hf_tok("")["input_ids"] or [hf_tok.bos_token_id]
    with torch.no_grad():
        from_start = hf.generate(torch.tensor([start]), **hf_greedy)[0, len(start) :].tolist()
    done = complete(run.model, run.tokenizer, "", greedy)
    assert done.prompt_tokens == 1
    assert done.token_ids == (
        from_start[: from_start.index(eos)] if eos in from_start else from_start
    )
    assert main(["generate", str(tmp_path / "run"), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "12"]) == 0  # fmt: skip
    expected = hf_tok.decode(ids + theirs, skip_special_tokens=True)
    assert "\ufffd" not in expected  # these seeds give whole characters, so text is comparable
    assert capsys.readouterr().out == expected + "\n"


def test_imported_tokenizer_saves_loads_and_counts_bytes(text, tmp_path):
    hf_dir = hf_llama_dir(tmp_path / "hf", text)
    import_hf(hf_dir, tmp_path / "run")
    tok = load_tokenizer(tmp_path / "run" / "tokenizer")
    meta = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer_meta.json").read_text())
    assert meta["special_roles"] == {"bos": "<s>", "eos": "</s>", "pad": None}
    # The template "<s> $A" says the model reads every sequence after BOS.
    assert meta["add_bos"] is True and meta["eos_ids"] == [2]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, None, True)
    ids = tok.encode(SAMPLE)
    assert 1 not in ids  # plain `encode` adds no specials; `encode_prompt` adds the BOS
    assert tok.encode_prompt(SAMPLE) == [1, *ids]
    assert (
        tok.encode_prompt(SAMPLE)
        == transformers.AutoTokenizer.from_pretrained(hf_dir)(SAMPLE)["input_ids"]
    )
    assert tok.encode_prompt("") == [1]
    assert tok.encode_prompt_batch([SAMPLE, ""]) == [[1, *ids], [1]]
    assert tok.decode(ids) == SAMPLE
    # SentencePiece spells the leading space it prepends; the bytes are the text after it.
    assert b"".join(tok.id_to_bytes[i] for i in ids) == (" " + SAMPLE).encode()
    assert int(tok.token_bytes[ids].sum()) == len((" " + SAMPLE).encode())
    assert tok.token_bytes[[0, 1, 2]].tolist() == [0, 0, 0]


def test_imported_run_evaluates_on_its_own_tokens(text, tmp_path):
    from lmforge.data.prepare import PrepareConfig, prepare_corpus
    from lmforge.eval.evaluate import evaluate_run
    from lmforge.tokenizer.encode import encode_data

    import_hf(hf_gpt2_dir(tmp_path / "hf", text), tmp_path / "run")
    (tmp_path / "corpus.txt").write_text(text[:6000], encoding="utf-8")
    prepare_corpus([tmp_path / "corpus.txt"], tmp_path / "data", PrepareConfig())
    encode_data(tmp_path / "data", tmp_path / "run" / "tokenizer", tmp_path / "tokens", workers=1)
    result = evaluate_run(tmp_path / "run", split="test", tokens=tmp_path / "tokens")
    # A random model over a vocabulary of V tokens: loss close to ln V, never NaN.
    assert (
        0.5 * torch.log(torch.tensor(300.0)) < result["loss"] < 2 * torch.log(torch.tensor(300.0))
    )


def test_import_caps_the_context_exactly(text, tmp_path):
    for name, make_dir in (("gpt2", hf_gpt2_dir), ("llama", hf_llama_dir)):
        hf_dir = make_dir(tmp_path / f"hf-{name}", text)
        import_hf(hf_dir, tmp_path / f"full-{name}")
        import_hf(hf_dir, tmp_path / f"cut-{name}", max_seq_len=16)
        full, cut = load_run(tmp_path / f"full-{name}"), load_run(tmp_path / f"cut-{name}")
        assert (full.model.config.max_seq_len, cut.model.config.max_seq_len) == (64, 16)
        x = torch.tensor([full.tokenizer.encode(text[:200])[:16]])
        with torch.no_grad():
            assert torch.equal(full.model(x), cut.model(x))


def test_round_trip_export_then_import_is_exact(bpe, tmp_path):
    run, model = make_run(tmp_path / "run", bpe, **LLAMA, n_kv_heads=2)
    export_hf(run, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.model.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
    assert back.tokenizer.fingerprint == bpe.fingerprint
    assert back.tokenizer.encode(SAMPLE) == bpe.encode(SAMPLE)
    # lmforge's own vocabularies never add BOS, and neither do the exported or re-imported ones.
    assert not back.tokenizer.add_bos and back.tokenizer.eos_ids == (bpe.eos_id,)
    assert back.tokenizer.encode_prompt(SAMPLE) == bpe.encode_prompt(SAMPLE) == bpe.encode(SAMPLE)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok(SAMPLE)["input_ids"] == bpe.encode_prompt(SAMPLE)


# ---------------------------------------------------------------- a model trained with BOS


@pytest.fixture(scope="module")
def llama(tmp_path_factory, text) -> tuple[Path, Path]:
    """(HF folder, imported run) of the Llama-2-style model, whose tokenizer adds BOS."""
    root = tmp_path_factory.mktemp("llama")
    hf_dir = hf_llama_dir(root / "hf", text)
    import_hf(hf_dir, root / "run")
    return hf_dir, root / "run"


def copy_hf_dir(hf_dir: Path, dest: Path, **changes: dict) -> Path:
    """A copy of `hf_dir` with some JSON files' fields changed ({"config.json": {...}})."""
    shutil.copytree(hf_dir, dest)
    for name, fields in changes.items():
        path = dest / f"{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return dest


def hf_logprob(hf, hf_tok, context: str, continuation: str) -> float:
    """The continuation's summed log-prob as transformers computes it (prompt ids: BOS first)."""
    whole = hf_tok(context + continuation)["input_ids"]
    n = len(hf_tok(context)["input_ids"])
    with torch.no_grad():
        logp = hf(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return float(logp[n - 1 : len(whole) - 1].gather(-1, torch.tensor(whole[n:])[:, None]).sum())


def test_add_bos_comes_from_the_template_else_from_tokenizer_config(llama, tmp_path):
    cases = {
        # The template adds BOS; a flag saying otherwise is what transformers 5 ignores too.
        "flag-off": ({"add_bos_token": False}, {}, True),
        # No post-processor (older conversions): the flag decides, as transformers 4 reads it.
        "flag-on": ({"add_bos_token": True}, {"post_processor": None}, True),
        "no-flag": ({}, {"post_processor": None}, False),
    }
    for name, (tok_config, tok_json, add_bos) in cases.items():
        hf_dir = copy_hf_dir(
            llama[0], tmp_path / name, tokenizer_config=tok_config, tokenizer=tok_json
        )
        import_hf(hf_dir, tmp_path / f"run-{name}")
        tok = load_tokenizer(tmp_path / f"run-{name}" / "tokenizer")
        assert tok.add_bos == add_bos, name
        assert tok.encode_prompt(SAMPLE) == [1] * add_bos + tok.encode(SAMPLE)
        if name == "flag-off":
            hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
            assert hf_tok(SAMPLE)["input_ids"] == tok.encode_prompt(SAMPLE)


def test_bos_model_is_scored_served_and_classified_after_its_bos(llama):
    from lmforge.eval.lm import LocalLM
    from lmforge.eval.scoring import encode_pair
    from lmforge.finetune.classify import encode_texts
    from lmforge.infer.generate import Completion
    from lmforge.serve.app import completion_logprobs

    hf_dir, run_dir = llama
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    run = load_run(run_dir)
    tok = run.tokenizer
    context, continuation = "ROMEO: Is the day", " so young?"

    # Eval: the context starts with BOS, the continuation never does; an empty context is BOS.
    ctx, cont = encode_pair(tok, context, continuation)
    assert ctx[0] == 1 and 1 not in cont and ctx + cont == tok.encode_prompt(context + continuation)
    assert encode_pair(tok, "", "young")[0] == [1]
    (score,) = LocalLM(run, run_dir).loglikelihood([(context, continuation)])
    assert score.logprob == pytest.approx(hf_logprob(hf, hf_tok, context, continuation), abs=1e-4)

    # Serving: the prompt is scored after BOS; the echo leaves the BOS out, so its first
    # token has a log-prob and the offsets index the prompt's own text.
    done = Completion(text="", token_ids=[], prompt_tokens=0, finish_reason="length")
    out = completion_logprobs(run.model, tok, context, done, top=2, echo=True)
    # (SentencePiece spells the space it prepends to the text, as its first token's text.)
    assert "".join(out["tokens"]) == " " + context and out["text_offset"][0] == 0
    with torch.no_grad():  # the prompt's first token, predicted from BOS alone
        after_bos = hf(input_ids=torch.tensor([[1]])).logits[0, 0].log_softmax(-1)
    expected = float(after_bos[tok.encode(context)[0]])
    assert out["token_logprobs"][0] == pytest.approx(expected, abs=1e-4)

    # Classification: each text is read as the model reads a document, BOS first.
    assert encode_texts(tok, [context], 64) == [[1, *tok.encode(context), 2]]


def test_padded_vocabulary_rows_are_never_sampled(llama):
    """Embedding rows past the tokenizer (here 5) are never drawn, however likely they are."""
    from lmforge.infer.generate import Completion
    from lmforge.serve.app import completion_logprobs

    run = load_run(llama[1])
    tok, model = run.tokenizer, run.model
    vocab = tok.vocab_size
    assert model.config.vocab_size == vocab + 5
    with torch.no_grad():
        model.lm_head.weight[vocab:] *= 1000.0  # the padded rows now dominate every logit
    ids = tok.encode_prompt("ROMEO:")
    greedy = GenerationConfig(temperature=0, max_new_tokens=8, stop_at_eos=False)
    assert max(generate_ids(model, ids, greedy)) >= vocab  # unmasked, they would be picked
    for cfg in (greedy, GenerationConfig(max_new_tokens=8, seed=0, stop_at_eos=False, top_k=50)):
        done = complete(model, tok, "ROMEO:", cfg)
        assert len(done.token_ids) == 8 and max(done.token_ids) < vocab
    # The server's top log-probs name only tokens that exist.
    done = Completion(text="", token_ids=[], prompt_tokens=0, finish_reason="length")
    out = completion_logprobs(model, tok, "ROMEO:", done, top=5, echo=True)
    assert all(0 < len(top) <= 5 for top in out["top_logprobs"])


def test_every_eos_id_ends_generation_and_survives_export(llama, tmp_path):
    """generation_config.json may list several end ids (Llama 3 does); all are kept."""
    hf_dir, run_dir = llama
    run = load_run(run_dir)
    one = GenerationConfig(temperature=0, max_new_tokens=1)
    first = complete(run.model, run.tokenizer, "ROMEO:", one).token_ids[0]
    assert first != 2
    hf_dir = copy_hf_dir(hf_dir, tmp_path / "hf", generation_config={"eos_token_id": [2, first]})
    import_hf(hf_dir, tmp_path / "run")
    back = load_run(tmp_path / "run")
    assert back.tokenizer.eos_ids == (2, first) and back.tokenizer.eos_id == 2
    done = complete(back.model, back.tokenizer, "ROMEO:", GenerationConfig(temperature=0))
    assert done.token_ids == [] and done.finish_reason == "stop"

    # Exported and imported again: the BOS, the end ids and the ids all round-trip.
    export_hf(tmp_path / "run", tmp_path / "out")
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, first]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tok(SAMPLE)["input_ids"] == back.tokenizer.encode_prompt(SAMPLE)
    import_hf(tmp_path / "out", tmp_path / "again")
    again = load_tokenizer(tmp_path / "again" / "tokenizer")
    assert (again.add_bos, again.eos_ids) == (True, (2, first))
    assert again.encode_prompt(SAMPLE) == back.tokenizer.encode_prompt(SAMPLE)


# ---------------------------------------------------------------- gguf


def rope_interleaved(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's rotation (ggml rope mode 0): adjacent pairs (x[2i], x[2i+1]); x (T, H, D)."""
    T, _, D = x.shape
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)[:, None]  # (T, 1, D/2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack(
        (x1 * angles.cos() - x2 * angles.sin(), x2 * angles.cos() + x1 * angles.sin())
    )
    return out.permute(1, 2, 3, 0).reshape(x.shape)  # pairs back side by side


def test_llamacpp_permutation_gives_our_attention_scores(bpe):
    """q/k rows permuted for llama.cpp, rotated its way, score as ours rotated our way."""
    from lmforge.export.llamacpp import permute_for_llamacpp
    from lmforge.model.layers import apply_rope, rope_tables

    torch.manual_seed(3)
    H, Hkv, D, C, T, theta = 4, 2, 16, 64, 10, 500.0
    wq, wk, x = torch.randn(H * D, C), torch.randn(Hkv * D, C), torch.randn(T, C)
    cos, sin = rope_tables(T, D, theta)
    q = apply_rope((x @ wq.T).view(T, H, D).transpose(0, 1), cos, sin)  # (H, T, D)
    k = apply_rope((x @ wk.T).view(T, Hkv, D).transpose(0, 1), cos, sin)  # (Hkv, T, D)
    ours = q @ k.repeat_interleave(H // Hkv, dim=0).transpose(1, 2)  # (H, T, T)
    q2 = rope_interleaved((x @ permute_for_llamacpp(wq, H).T).view(T, H, D), theta)
    k2 = rope_interleaved((x @ permute_for_llamacpp(wk, Hkv).T).view(T, Hkv, D), theta)
    theirs = q2.transpose(0, 1) @ k2.transpose(0, 1).repeat_interleave(H // Hkv, 0).transpose(1, 2)
    # Scores reach a few hundred: float32 rounding of the two orders of rotation is ~1e-7 of
    # that; a wrong permutation is off by the scores' own size.
    assert max_diff(ours, theirs) < 1e-6 * ours.abs().max()
    # And the permutation matters: without it the scores differ.
    k3 = rope_interleaved((x @ wk.T).view(T, Hkv, D), theta)
    q3 = rope_interleaved((x @ wq.T).view(T, H, D), theta)
    wrong = q3.transpose(0, 1) @ k3.transpose(0, 1).repeat_interleave(H // Hkv, 0).transpose(1, 2)
    assert max_diff(ours, wrong) > 1e-2


GGUF_CASES = {
    "llama-gqa-untied": dict(LLAMA, n_kv_heads=2, tie_embeddings=False),
    "llama-tied": dict(LLAMA, tie_embeddings=True),
    "gpt2": {},
}


@pytest.mark.parametrize("case", GGUF_CASES)
def test_gguf_reads_back_with_our_tensors_and_metadata(case, bpe, tmp_path):
    gguf = pytest.importorskip("gguf")
    from lmforge.export.llamacpp import gguf_tensors

    run, model = make_run(tmp_path / "run", bpe, **GGUF_CASES[case])
    out = tmp_path / "model.gguf"
    assert main(["export", "gguf", str(run), "--out", str(out), "--no-progress"]) == 0
    reader = gguf.GGUFReader(out)
    field = {name: f.contents() for name, f in reader.fields.items()}
    cfg = model.config
    arch = "gpt2" if case == "gpt2" else "llama"
    assert field["general.architecture"] == arch
    expected = {
        "context_length": 48, "embedding_length": 64, "block_count": 2,
        "feed_forward_length": cfg.d_ff, "attention.head_count": 4,
    }  # fmt: skip
    if arch == "llama":
        expected |= {
            "attention.head_count_kv": cfg.n_kv_heads, "rope.freq_base": 500.0,
            "rope.dimension_count": 16, "attention.layer_norm_rms_epsilon": 1e-5,
        }  # fmt: skip
    else:
        expected["attention.layer_norm_epsilon"] = 1e-5
    for key, value in expected.items():
        assert field[f"{arch}.{key}"] == pytest.approx(value), key
    assert field["tokenizer.ggml.model"] == "gpt2" and field["tokenizer.ggml.pre"] == "gpt-2"
    vocab = bpe.hf.get_vocab(with_added_tokens=True)
    assert field["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    assert field["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]  # specials are control tokens
    merges = json.loads(bpe.to_json())["model"]["merges"]
    assert len(field["tokenizer.ggml.merges"]) == len(merges) == 320 - 259
    assert field["tokenizer.ggml.bos_token_id"] == 0 and field["tokenizer.ggml.eos_token_id"] == 1

    _, want = gguf_tensors(model)
    got = {t.name: t for t in reader.tensors}
    assert got.keys() == want.keys()
    assert ("output.weight" in got) == (not cfg.tie_embeddings)
    for name, w in want.items():
        assert tuple(int(n) for n in got[name].shape) == tuple(reversed(w.shape)), name
        assert torch.equal(torch.from_numpy(got[name].data.copy()), w), name
    if arch == "llama":
        # attn_q holds q_proj's rows, reordered within each head for llama.cpp's RoPE.
        q = model.blocks[0].attn.q_proj.weight.detach()
        assert not torch.equal(want["blk.0.attn_q.weight"], q)
        assert torch.equal(
            want["blk.0.attn_q.weight"].view(4, 16, 64)[:, 1], q.view(4, 16, 64)[:, 8]
        )


@pytest.mark.parametrize("case", ["llama-gqa-untied", "gpt2"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_loads_in_transformers_with_our_logits(case, dtype, bpe, tmp_path):
    """transformers' own GGUF reader (which undoes llama.cpp's q/k permutation) gets our logits."""
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
    from lmforge.export.llamacpp import export_gguf

    run, model = make_run(tmp_path / "run", bpe, **GGUF_CASES[case])
    export_gguf(run, tmp_path / "m.gguf", dtype=dtype)
    # transformers maps gpt2.context_length to n_ctx, not n_positions: give it the context.
    extra = {"n_positions": 48} if case == "gpt2" else {}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", **extra)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    ids = bpe.encode(SAMPLE)[:48]
    assert hf_tok(SAMPLE, add_special_tokens=False)["input_ids"][:48] == ids
    with torch.no_grad():
        diff = max_diff(model(torch.tensor([ids])), hf(input_ids=torch.tensor([ids])).logits)
    assert diff < (1e-5 if dtype == "f32" else 2e-3)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("model_kw", "messages"),
    [
        (
            dict(LLAMA, qk_norm=True),
            ["as LlamaForCausalLM", "model.qk_norm=True", "train with model.qk_norm=false",
             "as GPT2LMHeadModel", "model.pos_emb='rope'"],
        ),
        (
            dict(mlp="relu2"),
            ["model.mlp='relu2': GPT-2 has mlp='gelu'",
             "model.mlp='relu2': Llama has mlp='swiglu'"],
        ),
        (dict(LLAMA, bias=True), ["model.bias=True: Llama has no biases"]),
        (
            dict(LLAMA, canon_kernel=3),
            ["model.canon_kernel=3: Llama has no Canon layers", "train with model.canon_kernel=0",
             "model.canon_kernel=3: GPT-2 has canon_kernel=0"],
        ),
        (
            dict(LLAMA, attn_gate="head"),
            ["model.attn_gate='head': Llama has no gate", "train with model.attn_gate='none'",
             "model.attn_gate='head': GPT-2 has attn_gate='none'"],
        ),
        (
            dict(LLAMA, attn_window=16),
            ["model.attn_window=16: Llama attends to every earlier token",
             "train with model.attn_window=0", "model.attn_window=16: GPT-2 has attn_window=0"],
        ),
        (dict(pos_emb="sinusoidal"), ["model.pos_emb='sinusoidal'"]),
    ],
)  # fmt: skip
def test_unmappable_model_is_refused_with_what_to_change(model_kw, messages, bpe, tmp_path):
    run, _ = make_run(tmp_path / "run", bpe, **model_kw)
    with pytest.raises(InteropError) as e:
        export_hf(run, tmp_path / "hf")
    for message in messages:
        assert message in str(e.value)
    assert not (tmp_path / "hf").exists()


def test_gguf_refuses_unmappable_model_and_char_tokenizer(bpe, text, tmp_path, capsys):
    pytest.importorskip("gguf")
    from lmforge.export.llamacpp import export_gguf

    run, _ = make_run(tmp_path / "relu2", bpe, mlp="relu2")
    with pytest.raises(
        InteropError, match="none of the architectures.*llama.cpp llama.*model.mlp='relu2'"
    ):
        export_gguf(run, tmp_path / "a.gguf")
    char = train_tokenizer([text], TokenizerConfig(kind="char"))
    run, _ = make_run(tmp_path / "char", char, **LLAMA)
    assert main(["export", "gguf", str(run), "--out", str(tmp_path / "b.gguf")]) == 2
    err = capsys.readouterr().err
    assert "kind 'char'" in err and "--kind bpe" in err and len(err.strip().splitlines()) == 1
    # No output and no temporary left behind (io.atomic_path names them .NAME.*.tmp.gguf).
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp*"))


def test_unsupported_architecture_is_named(tmp_path, capsys):
    small = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    transformers.T5Config(**small).save_pretrained(tmp_path / "t5")
    with pytest.raises(InteropError, match="model_type='t5'.*encoder-decoder family.*llama"):
        import_hf(tmp_path / "t5", tmp_path / "run")
    transformers.GPTNeoXConfig(**small, architectures=["GPTNeoXForCausalLM"]).save_pretrained(
        tmp_path / "neox"
    )
    assert main(["import", "hf", str(tmp_path / "neox"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model_type='gpt_neox'" in err and "GPTNeoXForCausalLM" in err and "gpt2" in err
    assert not (tmp_path / "run").exists()


def test_pickled_weights_are_refused_unopened(text, tmp_path):
    hf_dir = hf_gpt2_dir(tmp_path / "hf", text)
    (hf_dir / "model.safetensors").unlink()
    # Not even a valid pickle: were it opened, the error would be another one.
    (hf_dir / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(
        InteropError, match=r"pickle files \(pytorch_model.bin\).*does not open.*safetensors"
    ):
        import_hf(hf_dir, tmp_path / "run")


def test_quantized_and_incomplete_folders_are_refused(llama, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file

    from lmforge.export import hf_llama

    quant = {"quant_method": "gptq", "bits": 4}
    hf_dir = copy_hf_dir(llama[0], tmp_path / "gptq", config={"quantization_config": quant})
    assert main(["import", "hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "quantization_config (quant_method='gptq')" in err and str(hf_dir) in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()

    # A tensor the files lack would be filled with random values by transformers: refused.
    hf_dir = copy_hf_dir(llama[0], tmp_path / "partial")
    weights = load_file(hf_dir / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InteropError, match=r"partial: .*lack 1 tensor.*layers\.1\.mlp\.up_proj"):
        import_hf(hf_dir, tmp_path / "run")

    # Weights laid out otherwise than the adapter reads (here: a renamed module) are named.
    monkeypatch.setitem(
        hf_llama._PER_BLOCK, "blocks.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.w3.weight"
    )
    with pytest.raises(InteropError, match=r"hf: .*no tensor 'model.layers.0.mlp.w3.weight'"):
        import_hf(llama[0], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unmappable_hf_configs_are_refused():
    llama = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=2,
                 max_position_embeddings=64)  # fmt: skip
    scaled = transformers.LlamaConfig(
        **llama, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    )
    with pytest.raises(ValueError, match="rope_type='linear'"):
        gpt_config_from_hf(scaled)
    with pytest.raises(ValueError, match="attention_bias=True"):
        gpt_config_from_hf(transformers.LlamaConfig(**llama, attention_bias=True))
    windowed = transformers.MistralConfig(**llama, sliding_window=32)
    with pytest.raises(ValueError, match="sliding_window=32 is shorter than the context"):
        gpt_config_from_hf(windowed)
    assert gpt_config_from_hf(windowed, max_seq_len=32).max_seq_len == 32  # window spans it


def test_existing_output_and_missing_packages_are_refused(bpe, tmp_path):
    run, _ = make_run(tmp_path / "run", bpe)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(InteropError, match="already exists"):
        export_hf(run, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    with pytest.raises(MissingDependency, match=r"pip install 'lmforge\[hf\]'"):
        require("lmforge_no_such_package", "hf")


def test_other_model_families_are_refused_by_name(bpe, tmp_path):
    run, _ = make_run(tmp_path / "run", bpe)
    config_path = run / "checkpoints" / "step-0000007" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["type_vocab_size"] = 2  # a field of an encoder, not of the GPT decoder
    config_path.write_text(json.dumps(config))
    with pytest.raises(InteropError, match="type_vocab_size.*an encoder: 'bert'"):
        export_hf(run, tmp_path / "hf")
