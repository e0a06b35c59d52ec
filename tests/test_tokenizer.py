"""Tokenizer training, round trips, save/load, HF parity and encoding a data dir to tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.corpora import corpus_path
from lmforge.tokenizer.encode import encode_data, open_split, read_token_meta, token_dtype
from lmforge.tokenizer.tokenizer import (
    EXACT_KINDS,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerConfig,
    load_tokenizer,
    train_tokenizer,
    train_tokenizer_from_data,
)

AWKWARD = [
    "",
    "hello world",
    "  leading spaces and trailing  ",
    "line\r\nbreaks\n\n\ttabs",
    "nul \x00 byte",
    "日本語のテキスト 😀👍🏽 café naïve",
    "text that literally says <|eos|> and <|bos|><|pad|>",
    "\U0010ffff \ue000 \u200b",
]


def _corpus() -> str:
    return corpus_path("tinyshakespeare").read_text(encoding="utf-8")[:100_000]


@pytest.fixture(scope="module")
def corpus() -> str:
    return _corpus()


@pytest.fixture(scope="module")
def toks(corpus):
    return {
        kind: train_tokenizer([corpus], TokenizerConfig(kind=kind, vocab_size=512))
        for kind in EXACT_KINDS
    }


texts = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(list("ab <|eos>\r\n\x00日本😀é")), max_size=60),
    st.lists(st.sampled_from(AWKWARD)).map("".join),
)


@pytest.mark.parametrize("kind", EXACT_KINDS)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(s=texts)
def test_round_trip_and_byte_counts(toks, kind, s):
    tok = toks[kind]
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    # Text that spells a special token is still ordinary text.
    assert not set(ids) & {tok.bos_id, tok.eos_id, tok.pad_id}
    assert int(tok.token_bytes[ids].sum()) == len(s.encode("utf-8"))
    assert b"".join(tok.id_to_bytes[i] for i in ids) == s.encode("utf-8")


@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_specials_decode_as_text(toks, kind):
    tok = toks[kind]
    ids = tok.encode("ab") + [tok.eos_id] + tok.encode(" c")
    assert tok.decode(ids) == "ab<|eos|> c"
    assert len({tok.bos_id, tok.eos_id, tok.pad_id}) == 3
    assert tok.token_bytes[[tok.bos_id, tok.eos_id, tok.pad_id]].tolist() == [0, 0, 0]
    assert tok.token_bytes.dtype == np.int32 and len(tok.token_bytes) == tok.vocab_size


def test_vocab_sizes(toks, corpus):
    assert toks["bpe"].vocab_size == 512
    assert toks["char"].vocab_size == len(set(corpus)) + 256 + len(SPECIAL_TOKENS)
    assert toks["byte"].vocab_size == 256 + len(SPECIAL_TOKENS)
    # Byte ids follow byte values.
    assert toks["byte"].encode("\x00A") == [3, 3 + ord("A")]
    # bpe actually merges: fewer tokens than bytes on its own training text.
    sample = corpus[:2000]
    assert len(toks["bpe"].encode(sample)) < 0.6 * len(sample.encode())


def test_char_long_input(toks):
    s = ("To be, or not to be 日本😀\n" * 40_000)[:1_000_000]
    ids = toks["char"].encode(s)
    assert toks["char"].decode(ids) == s


def test_config_validation():
    with pytest.raises(ValueError, match="kind='sentencepiece'"):
        TokenizerConfig(kind="sentencepiece")
    with pytest.raises(ValueError, match="at least 259"):
        TokenizerConfig(kind="bpe", vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        TokenizerConfig(min_frequency=0)
    TokenizerConfig(kind="byte", vocab_size=100)  # ignored for byte


@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_save_load_identical(toks, kind, tmp_path):
    tok = toks[kind]
    tok.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer_meta.json").read_text())
    assert meta["kind"] == kind and meta["fingerprint"] == tok.fingerprint
    assert meta["eos_id"] == tok.eos_id and meta["vocab_size"] == tok.vocab_size
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == kind and loaded.fingerprint == tok.fingerprint
    for s in AWKWARD:
        assert loaded.encode(s) == tok.encode(s)
    np.testing.assert_array_equal(loaded.token_bytes, tok.token_bytes)
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_own_kinds_encode_prompts_as_plain_text(toks, kind, tmp_path):
    """Only imported (hf) vocabularies put a BOS first; lmforge's models never saw one."""
    tok = toks[kind]
    assert not tok.add_bos and tok.eos_ids == (tok.eos_id,)
    for s in AWKWARD:
        assert tok.encode_prompt(s) == tok.encode(s)
    assert tok.encode_prompt_batch(AWKWARD) == tok.encode_batch(AWKWARD)
    tok.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer_meta.json").read_text())
    assert "add_bos" not in meta and "eos_ids" not in meta  # the file is as it was
    with pytest.raises(ValueError, match="imported \\(hf\\) vocabularies"):
        Tokenizer(tok.hf, kind, add_bos=True)


def test_transformers_parity(toks, corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = toks["bpe"]
    tok.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for s in [corpus[:3000], *AWKWARD[:6]]:
        assert hf.encode(s, add_special_tokens=False) == tok.encode(s)
    assert hf.convert_tokens_to_ids("<|eos|>") == tok.eos_id


def test_load_errors(toks, tmp_path):
    with pytest.raises(FileNotFoundError, match="lmforge tokenizer train"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="lmforge tokenizer train"):
        load_tokenizer(tmp_path)
    toks["byte"].save(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    _write_jsonl(
        d / "train-00000.jsonl",
        [
            {"id": "a", "source": "t", "text": "First document. 日本"},
            {"id": "b#0", "source": "t", "text": "Second document, part one; ", "last": False},
            {"id": "b#1", "source": "t", "text": "part two <|eos|> literal", "last": True},
            {"id": "c", "source": "t", "text": ""},
        ],
    )
    _write_jsonl(
        d / "train-00001.jsonl",
        [{"id": f"d{i}", "source": "t", "text": f"doc number {i}\r\n"} for i in range(50)],
    )
    _write_jsonl(d / "val-00000.jsonl", [{"id": "v", "source": "t", "text": "validation 😀"}])
    (d / "manifest.json").write_text("{}")
    return d


def _expected(tok, records: list[dict]) -> list[int]:
    out: list[int] = []
    for r in records:
        out += tok.encode(r["text"])
        if r.get("last", True):
            out.append(tok.eos_id)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_data(data_dir, tmp_path, workers):
    tok = train_tokenizer_from_data(
        data_dir, tmp_path / "tok", TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1)
    )
    out = tmp_path / "tokens"
    meta = encode_data(data_dir, tmp_path / "tok", out, workers=workers)
    assert meta == read_token_meta(out)
    assert meta["dtype"] == "uint16" and meta["eos_id"] == tok.eos_id
    assert meta["tokenizer_fingerprint"] == tok.fingerprint
    assert set(meta["splits"]) == {"train", "val"}

    train = open_split(out, "train")
    assert [a.dtype for a in train] == [np.dtype("<u2")] * 2
    for shard, arr in zip(sorted(data_dir.glob("train-*.jsonl")), train, strict=True):
        records = [json.loads(line) for line in shard.read_text().splitlines()]
        assert arr.tolist() == _expected(tok, records)
    first = train[0].tolist()
    # The continued document gets one EOS, after its last part; the literal "<|eos|>" is text.
    assert first.count(tok.eos_id) == 3

    m = meta["splits"]["train"]
    assert m["documents"] == 3 + 50
    assert m["tokens"] == sum(len(a) for a in train) == sum(s["tokens"] for s in m["shards"])
    assert [s["file"] for s in m["shards"]] == ["train-00000.bin", "train-00001.bin"]
    texts = [
        json.loads(line)["text"]
        for p in data_dir.glob("train-*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert m["bytes"] == sum(len(t.encode()) for t in texts)
    # Tokens without EOS account for every byte (what bits-per-byte relies on).
    all_ids = np.concatenate(train)
    assert int(tok.token_bytes[all_ids].sum()) == m["bytes"]
    assert open_split(out, "val")[0].tolist() == _expected(tok, [{"text": "validation 😀"}])


def test_encode_errors(data_dir, tmp_path, toks):
    with pytest.raises(FileNotFoundError, match="lmforge tokenizer encode"):
        read_token_meta(tmp_path / "missing")
    toks["byte"].save(tmp_path / "tok")
    out = tmp_path / "tokens"
    encode_data(data_dir, tmp_path / "tok", out, workers=1)
    with pytest.raises(KeyError, match=r"'test'.*available: train, val"):
        open_split(out, "test")
    shard = out / "train-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(ValueError, match="train-00001.bin"):
        open_split(out, "train")
    with pytest.raises(FileNotFoundError, match="no train split"):
        train_tokenizer_from_data(tmp_path / "tokens", tmp_path / "t2", TokenizerConfig())
    (data_dir / "val-00000.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"val-00000.jsonl:1"):
        encode_data(data_dir, tmp_path / "tok", out, workers=1)


def test_token_dtype():
    assert token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4")


def test_encoding_again_removes_shards_no_longer_listed(tmp_path):
    tok = train_tokenizer([], TokenizerConfig(kind="byte"))
    tok.save(tmp_path / "tok")
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        (data / f"{split}-00000.jsonl").write_text(json.dumps({"text": f"{split} text"}) + "\n")
    out = tmp_path / "tokens"
    out.mkdir()
    (out / "train-00007.bin").write_bytes(b"\x00\x00")  # left by an earlier, larger run
    encode_data(data, tmp_path / "tok", out, workers=1)
    assert sorted(p.name for p in out.glob("*.bin")) == ["train-00000.bin", "val-00000.bin"]
