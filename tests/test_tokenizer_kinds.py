"""WordPiece and Unigram vocabularies: HF parity, normalization, round trips, bytes, CLI."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared
from lmforge.cli import main
from lmforge.tokenizer.encode import encode_data, open_split
from lmforge.tokenizer.tokenizer import (
    KINDS,
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
    train_tokenizer_from_texts,
)

SENTENCES = [
    "Hello, world!",
    "To be, or not to be: that is the question.",
    "ROMEO:\nWhat light through yonder window breaks?",
    "Zwei junge Männer stehen vor einem großen Gebäude.",
    "Ein Mädchen in einem rosa Kleid klettert die Treppe hinauf.",
    "a  b   c\n\n\td",
    "日本語のテキスト 😀 naïve café",
]


def _lines(name: str, n: int) -> list[str]:
    path = shared(f"translation/multi30k/{name}.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def corpus(shakespeare_text) -> list[str]:
    """40 KB of Shakespeare and 1,500 German captions (accents, umlauts, ß)."""
    return [shakespeare_text[:40_000], *_lines("train.de", 1500)]


@pytest.fixture(scope="module")
def toks(corpus):
    configs = {
        "wordpiece": TokenizerConfig(kind="wordpiece", vocab_size=800),
        "wordpiece-lower": TokenizerConfig(kind="wordpiece", vocab_size=800, lowercase=True),
        "wordpiece-uncased": TokenizerConfig(
            kind="wordpiece", vocab_size=800, lowercase=True, strip_accents=True
        ),
        "unigram": TokenizerConfig(kind="unigram", vocab_size=1000),
    }
    return {name: train_tokenizer(corpus, cfg) for name, cfg in configs.items()}


def test_kinds_and_special_ids(toks):
    assert KINDS == ("bpe", "char", "byte", "wordpiece", "unigram")
    wp = toks["wordpiece"]
    assert [wp.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id) == (0, 1, 2, 3, 4)
    assert (wp.bos_id, wp.eos_id) == (wp.cls_id, wp.sep_id)  # documents end with [SEP]
    assert wp.vocab_size == 800
    un = toks["unigram"]
    assert [un.id_to_token(i) for i in range(4)] == ["<|bos|>", "<|eos|>", "<|pad|>", "<unk>"]
    assert (un.bos_id, un.eos_id, un.pad_id, un.unk_id) == (0, 1, 2, 3)
    assert un.mask_id is None and un.cls_id is None and un.sep_id is None
    # The 256 byte-fallback tokens follow the specials: byte b is id 4 + b.
    assert [un.id_to_token(4 + b) for b in (0, 10, 255)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert un.vocab_size == 1000
    byte = train_tokenizer([], TokenizerConfig(kind="byte"))
    assert byte.unk_id is None and byte.mask_id is None
    assert byte.special_roles == {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}
    assert un.special_roles == {**byte.special_roles, "unk": "<unk>"}
    assert wp.special_roles == {
        "bos": "[CLS]", "eos": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]",
        "cls": "[CLS]", "sep": "[SEP]",
    }  # fmt: skip


@pytest.mark.parametrize("name", ["wordpiece", "wordpiece-uncased", "unigram"])
def test_transformers_loads_identical_ids(toks, name, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = toks[name]
    tok.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    sentences = [*SENTENCES, *_lines("val.de", 30), *_lines("val.en", 30)]
    for s in sentences:
        ours = tok.encode(s)
        assert hf.encode(s, add_special_tokens=False) == ours, s
        with_specials = hf.encode(s, add_special_tokens=True)
        if tok.kind == "wordpiece":
            assert with_specials == [tok.cls_id, *ours, tok.sep_id], s
        else:
            assert with_specials == ours, s
    assert tok.encode_batch(sentences) == [tok.encode(s) for s in sentences]
    if tok.kind == "wordpiece":
        # Sentence pairs come out BERT-shaped: [CLS] A [SEP] B [SEP] with segment ids 0 then 1.
        a, b = tok.encode(SENTENCES[0]), tok.encode(SENTENCES[1])
        pair = hf(SENTENCES[0], SENTENCES[1], return_token_type_ids=True)
        assert pair["input_ids"] == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
        assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_wordpiece_normalization(toks):
    cased, lower, uncased = toks["wordpiece"], toks["wordpiece-lower"], toks["wordpiece-uncased"]
    assert uncased.decode(uncased.encode("Héllo")) == "hello"
    assert uncased.encode("Héllo") == uncased.encode("hello")
    assert uncased.decode(uncased.encode("Große Höhe")) == "große hohe"  # ß is no accent
    assert lower.decode(lower.encode("Große Höhe")) == "große höhe"
    assert cased.decode(cased.encode("Große Höhe")) == "Große Höhe"
    # Words joined by one space, punctuation split off, whitespace runs and newlines gone.
    assert cased.decode(cased.encode("Hello,  world!\n\tBye")) == "Hello , world ! Bye"
    assert cased.normalization == {"lowercase": False, "strip_accents": False}
    assert uncased.normalization == {"lowercase": True, "strip_accents": True}
    assert toks["unigram"].normalization == {}
    # A character never seen in training makes its whole word one [UNK], counted as 0 bytes;
    # each CJK character is a word of its own.
    assert [cased.id_to_token(i) for i in cased.encode("Ein Männer😀 日本 Mann")] == [
        "Ein", "[UNK]", "[UNK]", "[UNK]", "Mann",
    ]  # fmt: skip
    assert cased.token_bytes[cased.unk_id] == 0
    # Text that spells a special token is split at its brackets like any punctuation.
    ids = cased.encode("Er sagt [SEP] und [MASK] und [CLS].")
    assert not set(ids) & {cased.sep_id, cased.mask_id, cased.cls_id, cased.pad_id}


def test_wordpiece_token_bytes_spell_the_decoded_text(toks):
    for name in ("wordpiece", "wordpiece-uncased"):
        tok = toks[name]
        for s in [*SENTENCES[:5], *_lines("val.de", 20)]:
            ids = tok.encode(s)
            assert tok.unk_id not in ids, s
            text = tok.decode(ids)
            spelled = b"".join(tok.id_to_bytes[i] for i in ids)
            # Every word start carries its space, the first one too.
            assert spelled == b" " + text.encode(), s
            assert int(tok.token_bytes[ids].sum()) == len(text.encode()) + 1
    tok = toks["wordpiece"]
    assert tok.token_bytes[list(range(5))].tolist() == [0] * 5
    ids = tok.encode("Hello") + [tok.eos_id] + tok.encode("world")
    assert tok.decode(ids) == "Hello [SEP] world"
    assert b"".join(tok.id_to_bytes[i] for i in ids) == b" Hello [SEP] world"


unigram_texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from(list("ab  \n\tÄöß日😀<0x41>|eos")), max_size=60),
    st.lists(st.sampled_from(SENTENCES)).map(" ".join),
).filter(lambda s: not s.startswith(" ") and "\u2581" not in s)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(s=unigram_texts)
def test_unigram_round_trip_and_bytes(toks, s):
    tok = toks["unigram"]
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    # Text that spells a special or a byte token ("<0x41>", "<|eos|>") is ordinary text.
    assert not set(ids) & {tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id}
    spelled = b"".join(tok.id_to_bytes[i] for i in ids)
    assert spelled == (b" " + s.encode() if s else b"")  # the ▁ the pre-tokenizer put first
    assert int(tok.token_bytes[ids].sum()) == len(spelled)


def test_unigram_what_does_not_round_trip(toks):
    tok = toks["unigram"]
    assert tok.decode(tok.encode("  two")) == " two"  # one leading space is lost
    assert int(tok.token_bytes[tok.encode("  two")].sum()) == len("  two")
    assert tok.decode(tok.encode("a\u2581b")) == "a b"
    # Text spelling a special or byte token stays text (they are in the Unigram model too).
    literal = "say <|eos|> or <unk> or <0x41>"
    ids = tok.encode(literal)
    assert tok.decode(ids) == literal and min(ids) >= 4 + 256
    # Characters never seen fall back to their bytes, never to <unk>.
    ids = tok.encode("日本 😀")
    assert tok.unk_id not in ids and tok.decode(ids) == "日本 😀"
    assert {tok.id_to_token(i) for i in ids} >= {"<0xE6>", "<0xF0>"}


def test_word_start_mask(toks):
    wp = toks["wordpiece"]
    mask = wp.word_start_mask()
    assert mask.dtype == bool and mask.shape == (wp.vocab_size,)
    assert not mask[:5].any()
    vocab = wp.hf.get_vocab()
    assert int(mask.sum()) == sum(not t.startswith("##") for t in vocab) - 5
    for token, i in vocab.items():
        assert mask[i] == (i >= 5 and not token.startswith("##")), token
    s = "Thou art more lovely, and more temperate."
    words = wp.hf.pre_tokenizer.pre_tokenize_str(wp.hf.normalizer.normalize_str(s))
    assert int(mask[wp.encode(s)].sum()) == len(words) == 9
    mask[0] = True  # a copy: the tokenizer's own is unchanged
    assert not wp.word_start_mask()[0]

    un = toks["unigram"]
    mask = un.word_start_mask()
    assert not mask[: 4 + 256].any()  # specials and byte tokens
    for token, i in un.hf.get_vocab().items():
        assert mask[i] == (i >= 4 + 256 and token.startswith("\u2581")), token
    assert int(mask[un.encode(s)].sum()) == s.count(" ") + 1


@pytest.mark.parametrize("name", ["wordpiece-uncased", "unigram"])
def test_save_load(toks, name, tmp_path, caplog):
    tok = toks[name]
    tok.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer_meta.json").read_text())
    assert meta["kind"] == tok.kind and meta["fingerprint"] == tok.fingerprint
    assert meta["special_roles"] == tok.special_roles
    assert meta.get("normalization") == (tok.normalization if tok.kind == "wordpiece" else None)
    with caplog.at_level(logging.WARNING):
        loaded = load_tokenizer(tmp_path)
    assert "was changed" not in caplog.text  # the file reads back to the same text
    assert loaded.kind == tok.kind and loaded.fingerprint == tok.fingerprint
    assert loaded.special_roles == tok.special_roles and loaded.mask_id == tok.mask_id
    for s in SENTENCES:
        assert loaded.encode(s) == tok.encode(s)
    np.testing.assert_array_equal(loaded.token_bytes, tok.token_bytes)
    np.testing.assert_array_equal(loaded.word_start_mask(), tok.word_start_mask())


def test_config_errors(shakespeare_text):
    with pytest.raises(ValueError, match="lowercase=True is only for kind='wordpiece'"):
        TokenizerConfig(kind="bpe", lowercase=True)
    with pytest.raises(ValueError, match="strip_accents=True is only for kind='wordpiece'"):
        TokenizerConfig(kind="unigram", strip_accents=True)
    with pytest.raises(ValueError, match="lowercase='yes' must be true or false"):
        TokenizerConfig(kind="wordpiece", lowercase="yes")
    with pytest.raises(ValueError, match="vocab_size=5 leaves no room"):
        TokenizerConfig(kind="wordpiece", vocab_size=5)
    with pytest.raises(ValueError, match=r"vocab_size=291 is too small for a unigram.*least 292"):
        TokenizerConfig(kind="unigram", vocab_size=291)
    # The training text decides the real minimum, which the error names exactly.
    text = shakespeare_text[:20_000]
    with pytest.raises(ValueError, match=r"use vocab_size >= (\d+)") as e:
        train_tokenizer([text], TokenizerConfig(kind="unigram", vocab_size=300))
    need = int(e.value.args[0].rsplit(">= ", 1)[1])
    assert need > 300
    with pytest.raises(ValueError, match=f"use vocab_size >= {need}"):
        train_tokenizer([text], TokenizerConfig(kind="unigram", vocab_size=need - 1))
    assert train_tokenizer([text], TokenizerConfig(kind="unigram", vocab_size=need)).vocab_size


def test_shared_and_separate_vocabularies(tmp_path):
    en, de = _lines("train.en", 1000), _lines("train.de", 1000)
    cfg = TokenizerConfig(kind="unigram", vocab_size=600)
    shared_tok = train_tokenizer_from_texts(
        [*en, *de], tmp_path / "shared", cfg, progress=False, length=2000
    )
    src = train_tokenizer_from_texts(en, tmp_path / "en", cfg, progress=False)
    tgt = train_tokenizer_from_texts(de, tmp_path / "de", cfg, progress=False)
    for path, tok in ((tmp_path / "shared", shared_tok), (tmp_path / "en", src)):
        assert load_tokenizer(path).fingerprint == tok.fingerprint  # trained and saved in one call
    val_de = " ".join(_lines("val.de", 200))
    val_en = " ".join(_lines("val.en", 200))
    # Each side's own vocabulary spells its language in fewer tokens than the other's does,
    # and the shared one sits between them.
    assert len(tgt.encode(val_de)) < len(shared_tok.encode(val_de)) < len(src.encode(val_de))
    assert len(src.encode(val_en)) < len(shared_tok.encode(val_en)) < len(tgt.encode(val_en))


def _prepared(root: Path, texts: list[str]) -> Path:
    data = root / "data"
    data.mkdir()
    records = [{"id": str(i), "source": "t", "text": t} for i, t in enumerate(texts)]
    (data / "train-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (data / "val-00000.jsonl").write_text(json.dumps({"text": "Zwei Männer."}) + "\n")
    return data


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_train_and_encode_wordpiece(tmp_path, capsys):
    data = _prepared(tmp_path, _lines("train.de", 400))
    code, out, err = run_cli(
        capsys, "tokenizer", "train", data, "--kind", "wordpiece", "--lowercase",
        "--strip-accents", "--vocab-size", "400", "--out", tmp_path / "tok", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "wordpiece tokenizer with 400 tokens" in out
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.kind == "wordpiece" and tok.normalization["strip_accents"]
    assert tok.decode(tok.encode("Zwei MÄNNER")) == "zwei manner"
    code, out, err = run_cli(
        capsys, "tokenizer", "encode", data, "--tokenizer", tmp_path / "tok",
        "--out", tmp_path / "tokens", "--workers", "1", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    train = open_split(tmp_path / "tokens", "train")[0]
    # Each of the 400 documents ends with [SEP], lmforge's EOS for wordpiece.
    assert int((train == tok.sep_id).sum()) == 400 and train[-1] == tok.sep_id
    assert not np.isin(train, [tok.cls_id, tok.mask_id, tok.pad_id]).any()
    val = open_split(tmp_path / "tokens", "val")[0].tolist()
    assert val == [*tok.encode("Zwei Männer."), tok.sep_id]


def test_cli_rejects_options_for_other_kinds(tmp_path, capsys):
    data = _prepared(tmp_path, ["some text"])
    code, _, err = run_cli(
        capsys, "tokenizer", "train", data, "--kind", "unigram", "--lowercase",
        "--out", tmp_path / "tok", "--no-progress",
    )  # fmt: skip
    assert code == 2 and "lowercase=True is only for kind='wordpiece'" in err
    assert "Traceback" not in err and not (tmp_path / "tok").exists()
    with pytest.raises(SystemExit) as exc:
        main(["tokenizer", "train", "--help"])
    assert exc.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(kind in help_text for kind in KINDS)
    assert "--lowercase" in help_text and "--strip-accents" in help_text


def test_encode_data_wordpiece_matches_encode(tmp_path):
    data = _prepared(tmp_path, ["First document.", "Zweites Dokument, grün!", ""])
    tok = train_tokenizer_from_texts(
        ["First document.", "Zweites Dokument, grün!"] * 5,
        tmp_path / "tok",
        TokenizerConfig(kind="wordpiece", vocab_size=60, min_frequency=1),
        progress=False,
    )
    encode_data(data, tmp_path / "tok", tmp_path / "tokens", workers=1)
    train = open_split(tmp_path / "tokens", "train")[0].tolist()
    sep = tok.sep_id
    expected = [*tok.encode("First document."), sep, *tok.encode("Zweites Dokument, grün!"), sep]
    assert train == [*expected, sep]  # the empty third document is its [SEP] alone
