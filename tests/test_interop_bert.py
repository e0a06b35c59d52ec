"""Hugging Face interop for the encoder (BertForMaskedLM) and encoder-decoder (MarianMTModel).

Every model is tiny and random, built in the test and saved with `save_pretrained` (no
downloads); norm gains and biases are perturbed so that a misplaced one cannot hide.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import perturb
from lmforge.config import to_dict
from lmforge.corpora import corpus_path
from lmforge.model.encoder import Encoder, EncoderConfig
from lmforge.model.seq2seq import Seq2Seq, Seq2SeqConfig
from lmforge.tokenizer.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from lmforge.train.checkpoint import save_checkpoint
from lmforge.train.trainer import RunConfig

transformers = pytest.importorskip("transformers")

from lmforge.cli import main  # noqa: E402
from lmforge.export.hf import InteropError, export_hf, import_hf  # noqa: E402
from lmforge.infer.load import load_run  # noqa: E402

SAMPLE = "ROMEO: Is the day so young? JULIET: Ay, 'tis three o'clock, über früh!"
OTHER = "KING HENRY: Once more unto the breach, dear friends."


@pytest.fixture(scope="module")
def text() -> str:
    return corpus_path("tinyshakespeare").read_text(encoding="utf-8")[:40_000]


@pytest.fixture(scope="module")
def wordpiece(text) -> Tokenizer:
    cfg = TokenizerConfig(kind="wordpiece", vocab_size=400, lowercase=True)
    return train_tokenizer(text.splitlines(), cfg)


@pytest.fixture(scope="module")
def bpe(text) -> Tokenizer:
    return train_tokenizer([text], TokenizerConfig(kind="bpe", vocab_size=320))


def save_run(root: Path, tok: Tokenizer, model: torch.nn.Module) -> Path:
    """A run directory holding one checkpoint of `model`, as `lmforge train` writes it."""
    tok.save(root / "tokenizer")
    config = to_dict(RunConfig(model=model.config))
    config["tokenizer"] = {"kind": tok.kind, "fingerprint": tok.fingerprint}
    save_checkpoint(root, step=3, model=model, config=config)
    return root


def encoder_run(root: Path, tok: Tokenizer, **kw) -> tuple[Path, Encoder]:
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=tok.vocab_size, n_layers=2, n_heads=4, d_model=64, max_seq_len=64, **kw
    )
    model = Encoder(cfg).eval()
    perturb(model)
    return save_run(root, tok, model), model


def seq2seq_run(root: Path, tok: Tokenizer, **kw) -> tuple[Path, Seq2Seq]:
    torch.manual_seed(0)
    base = dict(
        vocab_size=tok.vocab_size, n_encoder_layers=2, n_decoder_layers=2, n_heads=4,
        d_model=64, d_ff=128, max_seq_len=64, norm_position="post", activation="gelu",
    )  # fmt: skip
    model = Seq2Seq(Seq2SeqConfig(**{**base, **kw})).eval()
    perturb(model)
    return save_run(root, tok, model), model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------- BERT


def test_encoder_exports_as_bert_with_its_tokenizer(wordpiece, tmp_path, capsys):
    run, model = encoder_run(tmp_path / "run", wordpiece)
    out = tmp_path / "hf"
    assert main(["export", "hf", str(run), "--out", str(out)]) == 0
    assert "as BertForMaskedLM" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json",
    }  # fmt: skip
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "BertForMaskedLM"
    # [CLS] text [SEP], lowercased as our WordPiece normalizer does; pairs get segment ids.
    cls, sep = wordpiece.cls_id, wordpiece.sep_id
    ids = hf_tok(SAMPLE)["input_ids"]
    assert ids == [cls, *wordpiece.encode(SAMPLE), sep]
    assert hf_tok(SAMPLE.upper())["input_ids"] == ids
    pair = hf_tok(SAMPLE, OTHER)
    n_a = len(ids)
    assert pair["input_ids"] == [*ids, *wordpiece.encode(OTHER), sep]
    assert pair["token_type_ids"] == [0] * n_a + [1] * (len(pair["input_ids"]) - n_a)
    assert hf_tok.model_max_length == 64
    assert (hf_tok.mask_token_id, hf_tok.pad_token_id) == (wordpiece.mask_id, wordpiece.pad_id)
    assert hf_tok("the [MASK] is")["input_ids"][2] == wordpiece.mask_id  # a real mask token

    x = torch.tensor(pair["input_ids"]).unsqueeze(0)
    types = torch.tensor(pair["token_type_ids"]).unsqueeze(0)
    with torch.no_grad():
        assert max_diff(model(x, token_type_ids=types), hf(x, token_type_ids=types).logits) < 1e-5

    # And back: the same weights, the same vocabulary file (so the same token shards work).
    import_hf(out, tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.family == "bert" and back.tokenizer.kind == "wordpiece"
    assert back.tokenizer.fingerprint == wordpiece.fingerprint
    assert back.model.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key


def bert_folder(root: Path, tok: Tokenizer) -> Path:
    """A BertForMaskedLM and a BertTokenizer as transformers saves them, BERT's id layout
    (specials at 0 and 5..8, not lmforge's 0..4), built from `tok`'s pieces."""
    specials = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[unused3]"]
    specials += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [t for t, _ in sorted(tok.hf.get_vocab().items(), key=lambda kv: kv[1])]
    vocab = specials + [t for t in pieces if t not in specials]
    hf_tok = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    config = transformers.BertConfig(
        vocab_size=len(vocab) + 3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=48, initializer_range=0.1,
    )  # fmt: skip
    torch.manual_seed(1)
    hf = transformers.BertForMaskedLM(config).eval()
    perturb(hf, seed=1)
    hf.save_pretrained(root)
    hf_tok.save_pretrained(root)
    return root


def test_bert_folder_imports_into_a_run_eval_scores(wordpiece, text, tmp_path, capsys):
    from lmforge.data.prepare import PrepareConfig, prepare_corpus
    from lmforge.tokenizer.encode import encode_data

    hf_dir = bert_folder(tmp_path / "hf", wordpiece)
    assert main(["import", "hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 0
    assert "imported BertForMaskedLM" in capsys.readouterr().out
    run = load_run(tmp_path / "run")
    tok = run.tokenizer
    assert run.family == "bert" and tok.kind == "wordpiece"
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert (tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, tok.unk_id) == (6, 7, 8, 0, 5)
    assert (tok.bos_id, tok.eos_id) == (tok.cls_id, tok.sep_id)  # an encoder's sequence ends
    assert hf_tok(SAMPLE)["input_ids"] == [tok.cls_id, *tok.encode(SAMPLE), tok.sep_id]
    # Whole-word masking reads word starts: pieces with ## continue a word.
    starts = tok.word_start_mask()
    assert not starts[tok.token_to_id("##s")] and starts[tok.token_to_id("the")]
    hf = transformers.BertForMaskedLM.from_pretrained(hf_dir).eval()
    x = torch.tensor([hf_tok(SAMPLE)["input_ids"]])
    with torch.no_grad():
        assert max_diff(run.model(x), hf(x).logits) < 1e-5

    # `lmforge eval` scores the imported encoder on text encoded with its tokenizer.
    (tmp_path / "corpus.txt").write_text(text[:30000], encoding="utf-8")
    prepare_corpus([tmp_path / "corpus.txt"], tmp_path / "data", PrepareConfig())
    encode_data(tmp_path / "data", tmp_path / "run" / "tokenizer", tmp_path / "tokens", workers=1)
    code = main(["eval", str(tmp_path / "run"), "--tokens", str(tmp_path / "tokens"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    vocab = run.model.config.vocab_size
    assert result["masked_tokens"] > 40 and 0 <= result["masked_accuracy"] <= 1
    # A random model's MLM loss is near ln V, never NaN.
    assert (
        0.5 * torch.log(torch.tensor(vocab)) < result["loss"] < 2 * torch.log(torch.tensor(vocab))
    )


def test_bert_folder_with_another_tokenizer_imports_as_hf_kind(wordpiece, tmp_path):
    hf_dir = bert_folder(tmp_path / "hf", wordpiece)
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    config["mask_token"] = "[unused0]"  # not BERT's own: kept as an `hf` vocabulary by role
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    import_hf(hf_dir, tmp_path / "run")
    tok = load_run(tmp_path / "run").tokenizer
    assert tok.kind == "hf" and (tok.mask_id, tok.cls_id, tok.bos_id, tok.eos_id) == (1, 6, 6, 7)
    assert not tok.add_bos and tok.eos_ids == (7,)


def test_unmappable_encoders_are_refused_with_what_to_change(wordpiece, bpe, tmp_path, capsys):
    run, _ = encoder_run(tmp_path / "pre", wordpiece, norm_position="pre", pos_emb="sinusoidal")
    assert main(["export", "hf", str(run), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "norm_position='post'" in err and "pos_emb='learned'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "hf").exists()
    run, _ = encoder_run(tmp_path / "bpe", bpe)
    with pytest.raises(InteropError, match=r"\[MASK\].*--kind wordpiece"):
        export_hf(run, tmp_path / "hf")
    small = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    transformers.RobertaConfig(**small).save_pretrained(tmp_path / "roberta")
    with pytest.raises(InteropError, match="model_type='roberta'.*padding_idx.*imports bert"):
        import_hf(tmp_path / "roberta", tmp_path / "run")


def test_bert_configs_lmforge_cannot_compute_are_refused_naming_the_field():
    from lmforge.export.hf_bert import encoder_config_from_hf

    small = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    assert encoder_config_from_hf(transformers.BertConfig(**small)).activation == "gelu"
    with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
        encoder_config_from_hf(transformers.BertConfig(**small, hidden_act="gelu_new"))
    relative = transformers.BertConfig(**small, position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        encoder_config_from_hf(relative)


# ---------------------------------------------------------------- Marian


@pytest.mark.slow
def test_seq2seq_exports_as_marian_and_translates_alike(bpe, tmp_path):
    from lmforge.infer.seq2seq_decode import DecodeConfig, greedy_decode

    run, model = seq2seq_run(tmp_path / "run", bpe)
    export_hf(run, tmp_path / "hf")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "MarianMTModel"
    batch = hf_tok([SAMPLE, OTHER], padding=True, return_tensors="pt")
    sources = [[*bpe.encode(s), bpe.eos_id] for s in (SAMPLE, OTHER)]  # as `translate` builds
    assert [row[: len(s)] for row, s in zip(batch["input_ids"].tolist(), sources)] == sources
    tgt = torch.tensor([[bpe.bos_id, *bpe.encode(OTHER)[:20]]] * 2)
    with torch.no_grad():
        ours = model(batch["input_ids"], tgt)
        theirs = hf(**batch, decoder_input_ids=tgt).logits
    assert max_diff(ours, theirs) < 1e-4
    # Greedy decoding from the exported generation settings gives lmforge's tokens.
    out = hf.generate(**batch, num_beams=1, max_length=12)
    want = greedy_decode(model, sources, DecodeConfig(beam_size=1, max_len=12))
    for row, ids in zip(out.tolist(), want):
        assert row[0] == bpe.bos_id and row[1 : 1 + len(ids)] == ids

    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.family == "seq2seq" and back.model.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
    assert back.tokenizer.encode(SAMPLE) == bpe.encode(SAMPLE)


def test_unmappable_seq2seq_is_refused_with_what_to_change(bpe, tmp_path):
    run, _ = seq2seq_run(tmp_path / "pre", bpe, norm_position="pre")
    with pytest.raises(InteropError, match="norm_position='post'.*M2M100"):
        export_hf(run, tmp_path / "hf")
    run, _ = seq2seq_run(tmp_path / "learned", bpe, pos_emb="learned")
    with pytest.raises(InteropError, match="pos_emb='sinusoidal'"):
        export_hf(run, tmp_path / "hf")
    # Helsinki-NLP's Marian models start decoding at the pad id, which lmforge cannot, and
    # have SentencePiece files instead of tokenizer.json: the first is the reason given.
    run, _ = seq2seq_run(tmp_path / "ok", bpe)
    export_hf(run, tmp_path / "hf")
    config_file = tmp_path / "hf" / "config.json"
    config = json.loads(config_file.read_text())
    start = config["decoder_start_token_id"]
    config_file.write_text(json.dumps({**config, "decoder_start_token_id": config["pad_token_id"]}))
    (tmp_path / "hf" / "tokenizer.json").unlink()
    (tmp_path / "hf" / "source.spm").write_bytes(b"")
    with pytest.raises(InteropError, match="decoder_start_token_id=2 is the pad id"):
        import_hf(tmp_path / "hf", tmp_path / "back")
    # Without tokenizer.json, the model's own tokenizer is to be converted, never replaced.
    config_file.write_text(json.dumps({**config, "decoder_start_token_id": start}))
    with pytest.raises(InteropError, match=r"no tokenizer.json \(it has SentencePiece") as e:
        import_hf(tmp_path / "hf", tmp_path / "back")
    assert "model's own tokenizer" in str(e.value) and "tokenizer train" not in str(e.value)
    (tmp_path / "hf" / "source.spm").unlink()
    with pytest.raises(InteropError, match=r"model's own tokenizer.*use_fast=True"):
        import_hf(tmp_path / "hf", tmp_path / "back")
    assert not (tmp_path / "back").exists()


def marian_folder(root: Path, tok: Tokenizer, **kw) -> Path:
    """A random MarianMTModel built from a MarianConfig (`kw` added), with `tok` as its
    tokenizer files."""
    from lmforge.export.hf_tokenizer import source_tokenizer_json, tokenizer_files

    config = transformers.MarianConfig(
        vocab_size=tok.vocab_size, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=tok.pad_id,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id,
        forced_eos_token_id=None, **kw,
    )  # fmt: skip
    torch.manual_seed(2)
    transformers.MarianMTModel(config).save_pretrained(root)
    (root / "tokenizer.json").write_text(source_tokenizer_json(tok), encoding="utf-8")
    for name, content in tokenizer_files(tok, max_seq_len=64, family="seq2seq").items():
        (root / name).write_text(json.dumps(content), encoding="utf-8")
    return root


def test_marian_with_a_separate_target_vocabulary_is_refused(bpe, tmp_path):
    # Targets would be decoded with the one tokenizer.json, the source's.
    untied = dict(share_encoder_decoder_embeddings=False, tie_word_embeddings=False)
    two = marian_folder(tmp_path / "two", bpe, decoder_vocab_size=bpe.vocab_size + 40, **untied)
    with pytest.raises(
        InteropError,
        match=f"decoder_vocab_size={bpe.vocab_size + 40} differs from vocab_size={bpe.vocab_size}",
    ):
        import_hf(two, tmp_path / "run")
    assert not (tmp_path / "run").exists()

    # Untied matrices over one vocabulary are one vocabulary (tgt_vocab_size 0)...
    import_hf(marian_folder(tmp_path / "one", bpe, **untied), tmp_path / "run")
    cfg = load_run(tmp_path / "run").model.config
    assert (cfg.vocab_size, cfg.tgt_vocab_size, cfg.share_embeddings) == (bpe.vocab_size, 0, False)
    # ...so a run with share_embeddings=False comes back with the same config and weights.
    run, model = seq2seq_run(tmp_path / "untied", bpe, share_embeddings=False)
    export_hf(run, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_run(tmp_path / "back").model
    assert back.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
