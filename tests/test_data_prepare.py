"""Reading raw corpora in every format, cleaning, splitting and sharding them."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import shared
from lmforge.corpora import BUNDLED, corpus_path
from lmforge.data.document import DataError
from lmforge.data.prepare import (
    PrepareConfig,
    clean_text,
    iter_records,
    prepare_corpus,
    read_manifest,
    split_files,
)
from lmforge.data.readers import ReadReport, iter_documents


def texts(inputs, **kw) -> list[str]:
    return [d.text for d in iter_documents(inputs, **kw)]


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def all_text(data_dir: Path, split: str) -> str:
    return "".join(r["text"] for r in iter_records(data_dir, split))


def documents(data_dir: Path, split: str) -> list[str]:
    """Reassemble a split's documents from its records, following the `last` flags."""
    docs, cur = [], []
    for r in iter_records(data_dir, split):
        cur.append(r["text"])
        if r.get("last", True):
            docs.append("".join(cur))
            cur = []
    assert not cur, "split ends inside a document"
    return docs


# --- reading ----------------------------------------------------------------------------------


def test_every_format_in_a_folder(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain text\nsecond line\n")
    (root / "b.md").write_text("# markdown\n")
    (root / "c.jsonl").write_bytes(jsonl([{"text": "jsonl one"}, {"text": "jsonl two", "id": 7}]))
    (root / "d.jsonl.gz").write_bytes(gzip.compress(jsonl([{"text": "gzipped"}])))
    (root / "e.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(jsonl([{"text": "zstd"}]))
    )
    (root / "sub" / "f.txt.bz2").write_bytes(bz2.compress(b"bzip2 text\n"))
    pq.write_table(pa.table({"text": ["parquet 1", "parquet 2"], "n": [1, 2]}), root / "g.parquet")
    (root / "h.csv").write_text('id,text\n1,"csv, with comma\nand newline"\n2,csv two\n')
    (root / "i.tsv").write_text("text\tlabel\ntsv text\tx\n")
    (root / "notes.bin").write_bytes(b"\x00\x01")
    (root / ".hidden.txt").write_text("hidden, never read")
    (root / ".git").mkdir()
    (root / ".git" / "x.txt").write_text("never read")

    report = ReadReport()
    docs = list(iter_documents([root], report=report))
    assert [d.text for d in docs] == [
        "plain text\nsecond line\n",
        "# markdown\n",
        "jsonl one",
        "jsonl two",
        "gzipped",
        "zstd",
        "parquet 1",
        "parquet 2",
        "csv, with comma\nand newline",
        "csv two",
        "tsv text",
        "bzip2 text\n",  # files of the root folder come before its subfolders
    ]
    by_text = {d.text: d for d in docs}
    assert by_text["jsonl two"].id == "7"
    assert by_text["jsonl one"].source == f"{root / 'c.jsonl'}:1"
    assert by_text["csv two"].source == f"{root / 'h.csv'}:4"  # the quoted field spans 2 lines
    assert by_text["parquet 2"].source == f"{root / 'g.parquet'}:2"
    assert len(report.files_read) == 9
    assert report.files_skipped == [{"path": str(root / "notes.bin"), "reason": "unknown suffix"}]


def test_real_shared_files() -> None:
    dolma = shared("web-text/dolma-cc_en_head-0091.jsonl.gz")
    with gzip.open(dolma, "rt") as f:
        expected = [json.loads(line)["text"] for line in f]
    docs = list(iter_documents([dolma]))
    assert [d.text for d in docs] == expected
    assert docs[0].id.startswith("http")  # the record's own id
    (story,) = texts([shared("tinystories/tinystories_sample.txt")])
    assert story == shared("tinystories/tinystories_sample.txt").read_text()


def test_csv_field_larger_than_csv_default_limit(tmp_path: Path) -> None:
    big = "word " * 60_000  # 300 kB, beyond the csv module's 128 KiB default
    (tmp_path / "big.csv").write_text(f'text\n"{big}"\n')
    assert texts([tmp_path / "big.csv"]) == [big]


def test_meta_fields_are_copied_from_records(tmp_path: Path) -> None:
    import datetime

    (tmp_path / "a.jsonl").write_bytes(
        jsonl(
            [
                {"text": "one", "url": "https://a.example/1", "title": "One", "other": 1},
                {"text": "two", "url": None, "timestamp": "2019-04-25T12:57:54Z"},
            ]
        )
    )
    (tmp_path / "b.csv").write_text("text,url,label\nthree,https://b.example/3,x\nfour,,y\n")
    when = datetime.datetime(2020, 1, 2, 3, 4, 5)
    table = pa.table({"text": ["five"], "url": ["https://c.example/5"], "timestamp": [when]})
    pq.write_table(table, tmp_path / "c.parquet")
    meta = {d.text: d.meta for d in iter_documents([tmp_path])}
    assert meta == {
        "one": {"url": "https://a.example/1", "title": "One"},
        "two": {"timestamp": "2019-04-25T12:57:54Z"},  # a null is left out
        "three": {"url": "https://b.example/3"},
        "four": {},  # an empty CSV field too
        "five": {"url": "https://c.example/5", "timestamp": "2020-01-02 03:04:05"},
    }
    only_title = {d.text: d.meta for d in iter_documents([tmp_path], meta_fields=["title"])}
    assert only_title["one"] == {"title": "One"} and only_title["five"] == {}
    with pytest.raises(ValueError, match=r"meta_fields='url'; expected a list"):
        list(iter_documents([tmp_path], meta_fields="url"))


def test_csv_rows_over_the_record_limit_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [f"{i},row number {i} of the file" for i in range(3, 40)]
    path = tmp_path / "a.csv"
    path.write_text(
        "id,text\n1,fine\n"
        '2,"a stray quote opens a field that never closes\n'  # line 3
        + "\n".join(rows[:20])
        + f"\n40,{'x' * 300}\n"  # line 24: one line over the limit
        + "\n".join(rows[20:])
        + "\n"
    )
    report = ReadReport()
    docs = list(iter_documents([path], report=report, max_record_bytes=200))
    # The quoted field stops growing at the limit; reading goes on at the next line.
    assert report.bad_records == 2
    assert report.bad_record_examples[0].startswith(f"{path}:3: malformed CSV (field larger")
    assert report.bad_record_examples[1] == (
        f"{path}:24: a line over max_record_bytes=200 characters"
    )
    texts = [d.text for d in docs]
    assert texts[0] == "fine" and texts[-17:] == [r.split(",", 1)[1] for r in rows[20:]]
    assert all(len(t) < 200 for t in texts)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: malformed CSV"):
        list(iter_documents([path], on_bad_record="fail", max_record_bytes=200))


def test_json_array_file_is_explained(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"text": "x"}, {"text": "y"}], indent=1))
    with pytest.raises(DataError, match=r"a\.json: is a JSON array.*jq"):
        texts([tmp_path / "a.json"], on_bad_record="fail")
    report = ReadReport()
    assert texts([tmp_path / "a.json"], report=report) == []
    assert "JSON array" in report.files_skipped[0]["reason"]


def test_bad_jsonl_lines_skipped_and_counted_or_fail(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "good"}\n\n{not json\n[1, 2]\n{"text": 3}\n{"text": "good 2"}\n')
    report = ReadReport()
    assert texts([path], report=report) == ["good", "good 2"]
    assert report.bad_records == 3
    assert report.bad_record_examples[0].startswith(f"{path}:3: not valid JSON")
    assert report.bad_record_examples[1].startswith(f"{path}:4: a JSON list")
    assert report.bad_record_examples[2] == f"{path}:5: field 'text' is int, expected a string"
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: not valid JSON.*--on-bad"):
        texts([path], on_bad_record="fail")


def test_missing_text_field_lists_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(jsonl([{"question": "q?", "answer": "a"}]))
    with pytest.raises(DataError) as err:
        texts([path], on_bad_record="fail")
    msg = str(err.value)
    assert f"{path}:1" in msg
    assert "'question', 'answer'" in msg
    assert "--text-field" in msg
    assert texts([path], text_field="answer") == ["a"]


def test_missing_column_in_parquet_and_csv(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("body\nx\n")
    for name in ("a.parquet", "b.csv"):
        with pytest.raises(DataError, match=r"no column 'text'.*'body'.*--text-field"):
            texts([tmp_path / name], on_bad_record="fail")
    report = ReadReport()
    assert texts([tmp_path], report=report) == []
    assert [s["path"] for s in report.files_skipped] == [
        str(tmp_path / "a.parquet"),
        str(tmp_path / "b.csv"),
    ]


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path: Path, caplog) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 ok\nna\xefve \xff\n")
    report = ReadReport()
    with caplog.at_level(logging.WARNING, logger="lmforge.data.readers"):
        (text,) = texts([path], report=report)
    assert text == "caf\ufffd ok\nna\ufffdve \ufffd\n"
    assert report.replaced_bytes == {str(path): 3}
    assert str(path) in caplog.text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_with_bom(tmp_path: Path, encoding: str) -> None:
    text = "héllo wörld\nzweite Zeile ✓\n"
    path = tmp_path / "u16.txt"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    path.write_bytes(data)
    report = ReadReport()
    assert texts([path], report=report) == [text]
    assert report.replaced_bytes == {}


def test_large_document_is_streamed_in_parts_that_reassemble(tmp_path: Path) -> None:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "δέλτα", "  indented", "", "x"]
    lines = [" ".join(rng.choices(words, k=rng.randint(0, 12))) for _ in range(3000)]
    text = "\n".join(lines) + "\n" + "y" * 5000  # ends in one line longer than two parts
    path = tmp_path / "big.txt"
    path.write_text(text)
    parts = list(iter_documents([path], max_part_chars=1000))
    assert "".join(p.text for p in parts) == text
    assert [p.part for p in parts] == list(range(len(parts)))
    assert [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
    assert {p.id for p in parts} == {str(path)}
    cut_at_lines = [p for p in parts if "y" not in p.text]
    assert len(cut_at_lines) > 50
    for p in cut_at_lines:
        # Cut at a single newline between two non-space characters, so tokenizing each part
        # gives the same tokens as tokenizing the whole.
        assert len(p.text) <= 2000
        assert p.text.endswith("\n") and not p.text[-2].isspace()
    for b in parts[1 : len(cut_at_lines) + 1]:
        assert not b.text[0].isspace()
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pieces = [t for p in cut_at_lines for t, _ in byte_level.pre_tokenize_str(p.text)]
    joined = "".join(p.text for p in cut_at_lines)
    assert pieces == [t for t, _ in byte_level.pre_tokenize_str(joined)]


def test_input_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        texts([tmp_path / "nope.txt"])
    (tmp_path / "empty_dir" / "sub").mkdir(parents=True)
    (tmp_path / "empty_dir" / "sub" / "data.bin").write_bytes(b"x")
    with pytest.raises(DataError, match=r"empty_dir holds no readable files.*data\.bin"):
        texts([tmp_path / "empty_dir"])
    (tmp_path / "x.docx").write_bytes(b"x")
    with pytest.raises(DataError, match=r"x\.docx: cannot read files named like this.*\.jsonl"):
        texts([tmp_path / "x.docx"])
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken\.jsonl\.gz: cannot read"):
        texts([tmp_path / "broken.jsonl.gz"])


# --- cleaning, splitting, writing --------------------------------------------------------------


def test_clean_text_normalizes_and_drops_control_characters() -> None:
    text, removed = clean_text("Cafe\u0301\r\nline\rtab\there\x00\x1b[0m\x85\x7f end\n")
    assert text == "Café\nline\ntab\there[0m end\n"
    assert removed == 4


def test_prepare_cleans_and_counts_dropped(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        jsonl(
            [
                {"text": "Cafe\u0301\r\nok\x00"},
                {"text": "\x00\x01 \r\n"},  # only control characters and whitespace
                {"text": "hi"},
                {"text": "a longer document"},
            ]
        )
    )
    m = prepare_corpus([tmp_path / "in.jsonl"], tmp_path / "out", PrepareConfig(min_chars=3))
    out = tmp_path / "out"
    got = sorted(t for s in ("train", "val", "test") for t in all_text_list(out, s))
    assert got == ["Café\nok", "a longer document"]
    assert m["dropped"] == {"empty_after_cleaning": 1, "shorter_than_min_chars": 1}
    assert m["documents_read"] == 4
    assert m["control_chars_removed"] == 3
    assert read_manifest(out) == m


def test_hash_split_is_deterministic_and_proportional(tmp_path: Path) -> None:
    records = [{"text": f"document number {i} says {i * 7919 % 1000}"} for i in range(2000)]
    (tmp_path / "a.jsonl").write_bytes(jsonl(records))
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "b.jsonl").write_bytes(jsonl(shuffled))
    cfg = PrepareConfig(val_fraction=0.1, test_fraction=0.2, shard_bytes=20_000)
    m1 = prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "o1", cfg)
    prepare_corpus([tmp_path / "b"], tmp_path / "o2", cfg)
    assert m1["split_mode"] == "hash"
    for split, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        n = m1["splits"][split]["documents"]
        assert abs(n / 2000 - frac) < 0.03, (split, n)
        # the split of a document depends only on its text, not on order or file
        assert sorted(all_text_list(tmp_path / "o1", split)) == sorted(
            all_text_list(tmp_path / "o2", split)
        )
    assert sum(m1["splits"][s]["documents"] for s in m1["splits"]) == 2000
    train_files = split_files(tmp_path / "o1", "train")
    assert len(train_files) > 1 and [f.name for f in train_files][:2] == [
        "train-00000.jsonl",
        "train-00001.jsonl",
    ]
    assert all(f.stat().st_size <= 20_000 for f in train_files)
    assert sum(f.stat().st_size for f in train_files) > 20_000

    # Running again with larger shards leaves no stale shard of the first run behind.
    prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "o1", PrepareConfig(val_fraction=0.1))
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == [
        "manifest.json",
        "test-00000.jsonl",
        "train-00000.jsonl",
        "val-00000.jsonl",
    ]


def all_text_list(data_dir: Path, split: str) -> list[str]:
    return [r["text"] for r in iter_records(data_dir, split)]


def test_single_document_is_split_into_contiguous_blocks(tmp_path: Path) -> None:
    path = corpus_path("tinyshakespeare")
    original = path.read_text()
    m = prepare_corpus([path], tmp_path / "out", PrepareConfig(val_fraction=0.1, test_fraction=0.1))
    assert m["split_mode"] == "contiguous"
    train, val, test = (all_text(tmp_path / "out", s) for s in ("train", "val", "test"))
    assert train + val + test == original
    assert original.startswith(train) and original[len(train) :].startswith(val)
    for block, frac in ((train, 0.8), (val, 0.1), (test, 0.1)):
        assert block.endswith("\n")
        assert abs(len(block) / len(original) - frac) < 0.001
    for split in ("train", "val", "test"):
        assert len(documents(tmp_path / "out", split)) == 1  # each block ends one document
        assert m["splits"][split]["documents"] == 1
    # 1.1 MB read in parts of about 1e6 characters: one part boundary, one extra record
    assert sum(m["splits"][s]["records"] for s in ("train", "val", "test")) == 4


def test_single_document_zero_val_fraction(tmp_path: Path) -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    (tmp_path / "one.txt").write_text(text)
    prepare_corpus(
        [tmp_path / "one.txt"],
        tmp_path / "out",
        PrepareConfig(val_fraction=0, test_fraction=0.25, max_part_chars=500),
    )
    train, val, test = (all_text(tmp_path / "out", s) for s in ("train", "val", "test"))
    assert val == "" and train + test == text
    assert abs(len(test) / len(text) - 0.25) < 0.01
    assert documents(tmp_path / "out", "train") == [train]


def test_multi_part_documents_reassemble_from_records(tmp_path: Path) -> None:
    rng = random.Random(2)
    originals = {}
    for i in range(6):
        body = "".join(f"Doc {i} line {j}: {rng.random()}\n" for j in range(300))
        (tmp_path / f"d{i}.txt").write_text(body)
        originals[i] = body
    m = prepare_corpus(
        [tmp_path],
        tmp_path / "out",
        PrepareConfig(val_fraction=0.3, test_fraction=0.3, max_part_chars=2000),
    )
    got = []
    for split in ("train", "val", "test"):
        got += documents(tmp_path / "out", split)
        assert m["splits"][split]["records"] >= 5 * m["splits"][split]["documents"]
    assert sorted(got) == sorted(originals.values())


def test_a_crash_after_the_shards_are_replaced_leaves_no_stale_manifest(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl([{"text": f"document {i} " * 50} for i in range(40)]))
    out = tmp_path / "out"
    prepare_corpus([tmp_path / "a.jsonl"], out, PrepareConfig(shard_bytes=1000))
    assert len(split_files(out, "train")) > 3

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the shards were renamed into place

    monkeypatch.setattr("lmforge.data.prepare.write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus([tmp_path / "a.jsonl"], out, PrepareConfig(shard_bytes=10**6))
    # The old manifest listed shards that are gone now; it must not outlive them.
    with pytest.raises(DataError, match="no manifest.json in .*run `lmforge data prepare` first"):
        read_manifest(out)


def test_empty_corpus_fails_without_touching_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000.jsonl").write_text('{"text": "old"}\n')
    (out / "manifest.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "blank.txt").write_text(" \n\t\n")
    (tmp_path / "in" / "ctrl.jsonl").write_bytes(jsonl([{"text": "\x00\x07"}]))
    with pytest.raises(DataError, match=r"no documents left in .*in.*nothing was written"):
        prepare_corpus([tmp_path / "in"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(DataError):
        prepare_corpus([tmp_path / "in"], tmp_path / "new_out")
    assert not (tmp_path / "new_out").exists()


def test_prepare_fail_mode_stops_at_bad_record(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: no field 'text' \(its fields: 'body'\)"):
        prepare_corpus(
            [tmp_path / "a.jsonl"], tmp_path / "out", PrepareConfig(on_bad_record="fail")
        )
    m = prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out")
    assert m["read_report"]["bad_records"] == 1
    assert m["read_report"]["bad_record_examples"][0].startswith(f"{tmp_path / 'a.jsonl'}:2:")


def test_read_helpers_explain_a_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no manifest\.json in .*lmforge data prepare"):
        read_manifest(tmp_path)
    with pytest.raises(DataError, match="lmforge data prepare"):
        list(iter_records(tmp_path, "train"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "less than 1"),
        ({"val_fraction": -0.1}, r"val_fraction=-0.1; expected a fraction"),
        ({"on_bad_record": "ignore"}, "expected one of"),
        ({"min_chars": 0}, "min_chars=0"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PrepareConfig(**kwargs)


def test_bundled_corpus() -> None:
    path = corpus_path("tinyshakespeare")
    data = path.read_bytes()
    assert len(data) == 1_115_394 and data.count(b"\n") == 40_000
    provenance = (path.parent / "PROVENANCE.md").read_text()
    assert hashlib.sha256(data).hexdigest() in provenance
    assert "tinyshakespeare" in BUNDLED
    with pytest.raises(DataError, match="available: tinyshakespeare"):
        corpus_path("tinyshakespear")
