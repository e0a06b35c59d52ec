"""`lmforge data pipeline`: steps, dedup, resumable map tasks, engines, report, shard format."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from conftest import SHARED_DATA
from lmforge.cli import main
from lmforge.config import ConfigError
from lmforge.data.clean.base import STEPS, Rejected, Step, register_step
from lmforge.data.dedup import DedupConfig, Deduplicator, Duplicate, Signer, fold, shingle_hashes
from lmforge.data.document import Document
from lmforge.data.pipeline import PipelineConfig, load_pipeline_config, run_pipeline
from lmforge.data.prepare import iter_records, prepare_corpus
from lmforge.data.readers import ReadOptions, iter_documents

C4 = SHARED_DATA / "web-text" / "c4_demo.jsonl"
HTML = SHARED_DATA / "html-sample"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
needs_c4 = pytest.mark.skipif(not C4.exists(), reason="needs ../shared/data/web-text")


# --- steps used to test the machinery ---------------------------------------------------------


@register_step
@dataclass(kw_only=True)
class DropShort(Step):
    """Test step: drop documents of fewer than `min_words` words."""

    name: ClassVar[str] = "test_drop_short"
    min_words: int = 50

    def process(self, doc: Document) -> Document | Rejected:
        n = len(doc.text.split())
        return doc if n >= self.min_words else Rejected("too_short", f"{n} words")


@register_step
@dataclass(kw_only=True)
class DropMarker(Step):
    """Test step: drop documents (parts) containing `marker`; blank those containing `blank`."""

    name: ClassVar[str] = "test_drop_marker"
    marker: str = "DROPME"
    blank: str = "BLANKME"

    def process(self, doc: Document) -> Document | Rejected:
        if self.marker in doc.text:
            return Rejected("marked", f"contains {self.marker}")
        if self.blank in doc.text:
            return dataclasses.replace(doc, text=" \n\t")
        return doc


@register_step
@dataclass(kw_only=True)
class Flaky(Step):
    """Test step: raises on documents containing `marker` while `fail` is set; logs every id."""

    name: ClassVar[str] = "test_flaky"
    marker: str = "BOOM"
    fail: ClassVar[bool] = False
    seen: ClassVar[list[str]] = []

    def process(self, doc: Document) -> Document | Rejected:
        Flaky.seen.append(doc.id)
        if Flaky.fail and self.marker in doc.text:
            raise RuntimeError("exploded on purpose")
        return doc


# --- helpers ----------------------------------------------------------------------------------


def c4_texts() -> list[str]:
    return [json.loads(line)["text"] for line in C4.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def shards(out: Path) -> dict[str, bytes]:
    """Every output shard's bytes, by file name."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*-[0-9][0-9][0-9][0-9][0-9].jsonl"))}


def rows(manifest: dict) -> dict[str, dict]:
    return {r["name"]: r for r in manifest["pipeline"]["steps"]}


def rejected(out: Path, name: str) -> list[dict]:
    path = out / "rejected" / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def all_records(out: Path) -> list[dict]:
    return [r for split in ("train", "val", "test") for r in iter_records(out, split)]


def corpus_with_duplicates(root: Path) -> tuple[Path, dict[str, str]]:
    """30 C4 documents plus an exact copy (case, spacing, punctuation changed), a near copy
    (3 words changed) and a far copy (every third word changed) of two of them."""
    texts = c4_texts()
    base = texts[:30]
    # Long documents, whose case folds back the same after upper-casing.
    long = [
        i for i, t in enumerate(base) if t.upper().lower() == t.lower() and len(t.split()) > 300
    ]
    a, b = long[0], long[1]
    exact = "  " + base[a].upper().replace(" ", "   ").replace(".", " ;") + "\n"
    words = base[b].split()
    near = list(words)
    for pos in (60, 160, 260):
        near[pos] = "zebra"
    far = [w if i % 3 else "quokka" for i, w in enumerate(words)]
    path = write_jsonl(root / "dups.jsonl", [*base, exact, " ".join(near), " ".join(far)])
    ids = {
        "exact_of": f"{path}:{a + 1}",
        "near_of": f"{path}:{b + 1}",
        "exact": f"{path}:31",
        "near": f"{path}:32",
        "far": f"{path}:33",
    }
    return path, ids


# --- dedup ------------------------------------------------------------------------------------


def test_shingle_hashes_depend_only_on_the_shingle() -> None:
    a = shingle_hashes(fold("Intro words. The quick brown fox jumps!"), 3)
    b = shingle_hashes(fold("the QUICK brown   fox, jumps over"), 3)
    assert len(a) == 5 and len(b) == 4
    assert list(a[2:]) == list(b[:3])  # "the quick brown", "quick brown fox", ...
    assert len(set(a.tolist())) == 5
    assert len(shingle_hashes(fold("two words"), 5)) == 1


def test_deduplicator_keeps_the_first_and_names_it() -> None:
    words = [f"w{i}" for i in range(1000)]
    near = list(words)
    for pos in range(100, 600, 100):  # 5 words changed: Jaccard ~ 0.95
        near[pos] = "changed"
    far = list(near)
    for pos in range(50, 1000, 32):  # 30 more: Jaccard to the first ~ 0.7
        far[pos] = "other"
    texts = [" ".join(words), " ".join(near), " ".join(far), " ".join(far).upper() + " !!"]
    cfg = DedupConfig(threshold=0.85, num_perm=256)
    sign, dedup = Signer(cfg), Deduplicator(cfg)
    got = [dedup.check(i, *sign(t)) for i, t in enumerate(texts)]
    assert got[0] is None and got[2] is None
    assert got[1].reason == "near_duplicate" and got[1].of == 0
    assert abs(got[1].similarity - 971 / 1021) < 0.05
    assert got[3] == Duplicate("exact_duplicate", 2, 1.0)


def test_texts_without_letters_are_not_all_duplicates() -> None:
    cfg = DedupConfig()
    sign, dedup = Signer(cfg), Deduplicator(cfg)
    texts = ["!!!", "???", "😀😀😀 🎉", "—", "!!!", "  !!!\n"]
    got = [dedup.check(i, *sign(t)) for i, t in enumerate(texts)]
    assert got[:4] == [None] * 4  # folding would leave "" of each: one "duplicate" group
    assert got[4] == got[5] == Duplicate("exact_duplicate", 0, 1.0)


def test_duplicates_name_a_kept_document() -> None:
    words = [f"w{i}" for i in range(1000)]
    near = list(words)
    for pos in range(100, 600, 100):
        near[pos] = "changed"
    a, b = " ".join(words), " ".join(near)
    cfg = DedupConfig(threshold=0.85, num_perm=256)
    sign, dedup = Signer(cfg), Deduplicator(cfg)
    assert dedup.check(0, *sign(a)) is None
    assert dedup.check(1, *sign(b)).of == 0  # dropped as a near duplicate of the first...
    # ...so a copy of it repeats the kept first document, not the dropped second one.
    third = dedup.check(2, *sign(b))
    assert (third.reason, third.of) == ("near_duplicate", 0)


# --- end to end -------------------------------------------------------------------------------


@needs_c4
def test_c4_without_steps_matches_data_prepare(tmp_path: Path) -> None:
    m = run_pipeline(PipelineConfig(inputs=[str(C4)]), tmp_path / "pipe")
    r = rows(m)
    assert list(r) == ["read", "output", "exact_dedup", "near_dedup"]
    assert m["documents_read"] == r["read"]["docs_out"] == 300
    assert r["read"]["bytes_out"] == sum(len(t.encode()) for t in c4_texts())
    # C4's sample holds no duplicates, so every document is written...
    assert r["near_dedup"]["docs_out"] == 300
    assert sum(m["splits"][s]["documents"] for s in m["splits"]) == 300
    # ...with the same cleaning, hash split and bytes as `data prepare` writes.
    prepare_corpus([C4], tmp_path / "prep")
    assert shards(tmp_path / "pipe") == shards(tmp_path / "prep")
    assert len(shards(tmp_path / "pipe")) == 3


@needs_c4
def test_exact_and_near_duplicates_are_dropped_with_reasons(tmp_path: Path) -> None:
    path, ids = corpus_with_duplicates(tmp_path)
    cfg = PipelineConfig(inputs=[str(path)], write_rejected=True)
    out = tmp_path / "out"
    m = run_pipeline(cfg, out)
    r = rows(m)
    assert r["exact_dedup"]["dropped"] == {"exact_duplicate": 1}
    assert r["near_dedup"]["dropped"] == {"near_duplicate": 1}
    assert m["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}
    kept = {rec["id"] for rec in all_records(out)}
    assert len(kept) == 31 and ids["far"] in kept and ids["exact_of"] in kept
    assert ids["exact"] not in kept and ids["near"] not in kept
    dups = {d["id"]: d for d in rejected(out, "dedup.jsonl")}
    assert dups[ids["exact"]]["reason"] == "exact_duplicate"
    assert dups[ids["exact"]]["duplicate_of"]["id"] == ids["exact_of"]
    assert dups[ids["near"]]["reason"] == "near_duplicate"
    assert dups[ids["near"]]["duplicate_of"]["id"] == ids["near_of"]
    assert 0.8 <= dups[ids["near"]]["similarity"] < 1
    assert "zebra" in dups[ids["near"]]["text"]

    # A stricter threshold keeps the near copy; only dedup and write run again.
    m = run_pipeline(
        dataclasses.replace(cfg, dedup=dataclasses.replace(cfg.dedup, threshold=0.97)), out
    )
    assert m["pipeline"]["tasks_reused"] == m["pipeline"]["tasks"] == 1
    assert m["dropped"] == {"exact_duplicate": 1}
    assert ids["near"] in {rec["id"] for rec in all_records(out)}
    assert [d["id"] for d in rejected(out, "dedup.jsonl")] == [ids["exact"]]

    # Byte-exact hashing no longer sees the recased copy as a duplicate.
    exact_bytes = dataclasses.replace(cfg.dedup, normalize="none", near=False)
    m = run_pipeline(dataclasses.replace(cfg, dedup=exact_bytes), tmp_path / "raw")
    assert m["dropped"] == {} and sum(s["documents"] for s in m["splits"].values()) == 33


@needs_c4
def test_rejected_documents_report_and_png(tmp_path: Path) -> None:
    texts = c4_texts()[:60]
    long = [i for i, t in enumerate(texts) if len(t.split()) >= 100]
    short = len(texts) - len(long)
    drop, blank, copied = long[:3]
    texts[drop] = "DROPME " + texts[drop]
    texts[blank] = texts[blank] + " BLANKME"
    texts.append(texts[copied])
    path = write_jsonl(tmp_path / "in" / "docs.jsonl", texts)
    steps = [{"name": "test_drop_marker"}, {"name": "test_drop_short", "min_words": 100}]
    out = tmp_path / "out"
    m = run_pipeline(PipelineConfig(inputs=[str(path)], steps=steps, write_rejected=True), out)
    r = rows(m)
    assert r["test_drop_marker"]["dropped"] == {"marked": 1}
    assert r["test_drop_short"]["docs_in"] == 60
    assert r["test_drop_short"]["dropped"] == {"too_short": short + 1}  # the blanked one too
    assert r["exact_dedup"]["dropped"] == {"exact_duplicate": 1}
    assert sum(s["documents"] for s in m["splits"].values()) == 61 - 2 - short - 1
    by_id = {d["id"]: d for d in rejected(out, "task-00000.jsonl")}
    assert len(by_id) == 1 + short + 1
    assert by_id[f"{path}:{drop + 1}"]["step"] == "test_drop_marker"
    assert by_id[f"{path}:{drop + 1}"]["detail"] == "contains DROPME"
    assert by_id[f"{path}:{blank + 1}"]["reason"] == "too_short"
    assert by_id[f"{path}:{blank + 1}"]["detail"] == "0 words"
    (dup,) = rejected(out, "dedup.jsonl")
    assert dup["id"] == f"{path}:61" and dup["duplicate_of"]["id"] == f"{path}:{copied + 1}"

    md = (out / "report.md").read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if x.startswith("| test_drop_short |"))
    assert line.startswith(f"| test_drop_short | 60 | {60 - short - 1} | {short + 1} |")
    assert line.endswith(f"| too_short {short + 1} |")
    assert "| read | 61 | 61 | 0 |" in md
    assert f"| exact_dedup | {59 - short} | {58 - short} | 1 |" in md
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert json.loads((out / "manifest.json").read_text()) == m


@needs_c4
def test_output_feeds_tokenizer_train_and_encode(tmp_path: Path) -> None:
    from lmforge.tokenizer.encode import encode_data
    from lmforge.tokenizer.tokenizer import TokenizerConfig, train_tokenizer_from_data

    out = tmp_path / "data"
    m = run_pipeline(PipelineConfig(inputs=[str(C4)], val_fraction=0.1, test_fraction=0.1), out)
    tok = train_tokenizer_from_data(
        out, tmp_path / "tok", TokenizerConfig(kind="bpe", vocab_size=400)
    )
    assert tok.vocab_size == 400
    meta = encode_data(out, tmp_path / "tok", tmp_path / "tokens", workers=1)
    for split in ("train", "val", "test"):
        assert meta["splits"][split]["documents"] == m["splits"][split]["documents"] > 0
        assert meta["splits"][split]["tokens"] > m["splits"][split]["bytes"] / 8


def book(path: Path, tag: str, seed: int, marker_line: int | None = None) -> str:
    """A .txt file of 400 numbered lines (about 20 KB), `marker_line` saying DROPME."""
    rng = random.Random(seed)
    lines = [f"{tag} line {i} says {rng.random():.6f} and more words follow" for i in range(400)]
    if marker_line is not None:
        lines[marker_line] = "DROPME in the middle of the book"
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def assert_rows_chain(m: dict) -> None:
    """Each row starts from what the row above kept, and counts every drop once."""
    table = m["pipeline"]["steps"]
    for before, after in zip(table, table[1:]):
        assert (after["docs_in"], after["bytes_in"]) == (before["docs_out"], before["bytes_out"])
    for r in table:
        assert r["docs_in"] - r["docs_out"] == sum(r["dropped"].values()), r


def test_a_large_document_is_kept_or_dropped_whole(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    dropped = book(tmp_path / "in" / "book.txt", "book", 0, marker_line=200)
    kept = book(tmp_path / "in" / "kept.txt", "kept", 1)
    twin = book(tmp_path / "in" / "twin.txt", "twin", 2)
    twin_parts = list(iter_documents([tmp_path / "in" / "twin.txt"], max_part_chars=2000))
    assert len(twin_parts) > 5
    # An earlier document repeats one part of twin.txt: twin.txt is dropped whole by dedup.
    write_jsonl(tmp_path / "in" / "a.jsonl", [twin_parts[2].text, "a small document of its own"])
    cfg = PipelineConfig(
        inputs=[str(tmp_path / "in")],
        read=ReadOptions(max_part_chars=2000),
        steps=[{"name": "test_drop_marker"}],
        write_rejected=True,
    )
    out = tmp_path / "out"
    m = run_pipeline(cfg, out)
    r = rows(m)
    assert (r["read"]["docs_out"], r["test_drop_marker"]["dropped"]) == (5, {"marked": 1})
    assert (r["exact_dedup"]["docs_in"], r["exact_dedup"]["dropped"]) == (4, {"exact_duplicate": 1})
    assert sum(s["documents"] for s in m["splits"].values()) == 3
    assert_rows_chain(m)

    records = all_records(out)
    names = {Path(x["id"]).name.split(":")[0] for x in records}
    assert names == {"a.jsonl", "kept.txt"}  # nothing of book.txt or twin.txt is written
    kept_records = [x for x in records if x["id"].endswith("kept.txt")]
    assert "".join(x["text"] for x in kept_records) == kept
    assert [x.get("last", True) for x in kept_records] == [False] * (len(kept_records) - 1) + [True]

    # Every part of a dropped document is written aside, in order, with the reason.
    by_step = [x for x in rejected(out, "task-00000.jsonl") if x["id"].endswith("book.txt")]
    marked = next(i for i, x in enumerate(by_step) if "DROPME" in x["text"])
    assert [x["part"] for x in by_step] == list(range(len(by_step)))
    assert {(x["reason"], x["rejected_part"]) for x in by_step} == {("marked", marked)}
    assert "".join(x["text"] for x in by_step) == dropped
    by_dedup = rejected(out, "dedup.jsonl")
    assert [x["part"] for x in by_dedup] == list(range(len(twin_parts)))
    assert {x["duplicate_of"]["id"] for x in by_dedup} == {f"{tmp_path / 'in' / 'a.jsonl'}:1"}
    assert "".join(x["text"] for x in by_dedup) == twin


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="needs ../shared/data/tinyshakespeare")
def test_one_document_is_split_contiguously_like_data_prepare(tmp_path: Path) -> None:
    # The only survivor (the other input is a copy of it, dropped by dedup) is cut into
    # train, val and test blocks at line ends, byte for byte what `data prepare` writes.
    (tmp_path / "in").mkdir()
    copy = tmp_path / "in" / "z-copy.txt"
    copy.write_bytes(SHAKESPEARE.read_bytes())
    m = run_pipeline(PipelineConfig(inputs=[str(SHAKESPEARE), str(copy)]), tmp_path / "pipe")
    assert m["dropped"] == {"exact_duplicate": 1} and m["split_mode"] == "contiguous"
    p = prepare_corpus([SHAKESPEARE], tmp_path / "prep")
    assert {s: i["bytes"] for s, i in m["splits"].items()} == {
        "train": 1_003_856, "val": 55_780, "test": 55_758,
    }  # fmt: skip
    assert m["splits"] == p["splits"]
    assert shards(tmp_path / "pipe") == shards(tmp_path / "prep")


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="needs ../shared/data/tinyshakespeare")
def test_a_quality_filter_judges_a_large_file_whole(tmp_path: Path) -> None:
    # Tiny Shakespeare is read in two parts; the first has more words than Gopher allows, so
    # the whole file is dropped (once), never its tail written as if it were the whole text.
    steps = [{"name": "gopher_quality"}]
    with pytest.raises(ValueError, match="no documents left"):
        run_pipeline(PipelineConfig(inputs=[str(SHAKESPEARE)], steps=steps), tmp_path / "out")
    md = (tmp_path / "out" / "work" / "report.md").read_text(encoding="utf-8")
    assert "| gopher_quality | 1 | 0 | 1 |" in md and "gopher_too_many_words 1" in md
    assert "| read | 1 | 1 | 0 | 1.12 MB | 1.12 MB |" in md


def test_a_truncated_file_is_reported_and_the_rest_is_kept(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    rng = random.Random(0)
    docs = [" ".join(f"w{rng.randrange(10**6)}" for _ in range(300)) for _ in range(1000)]
    data = gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in docs).encode())
    (tmp_path / "in" / "cut.jsonl.gz").write_bytes(data[: len(data) * 3 // 4])
    write_jsonl(tmp_path / "in" / "fine.jsonl", ["a fine document", "another fine one"])
    m = run_pipeline(PipelineConfig(inputs=[str(tmp_path / "in")]), tmp_path / "out")
    texts = {r["text"] for r in all_records(tmp_path / "out")}
    assert {"a fine document", "another fine one"} <= texts
    assert 2 + 100 < len(texts) < 2 + 1000  # what came before the cut was kept
    (error,) = m["read_report"]["read_errors"]
    assert error["path"] == str(tmp_path / "in" / "cut.jsonl.gz")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert f"- `{error['path']}`: reading stopped at {error['position']}" in md


# --- resumable, parallel, engines -------------------------------------------------------------


def small_files(root: Path, n_files: int = 4, per_file: int = 12) -> list[Path]:
    texts = c4_texts()
    paths = []
    for f in range(n_files):
        chunk = texts[f * per_file : (f + 1) * per_file]
        paths.append(write_jsonl(root / f"part-{f}.jsonl", chunk))
    return paths


@needs_c4
def test_a_failed_run_resumes_without_redoing_finished_tasks(tmp_path: Path) -> None:
    paths = small_files(tmp_path / "in")
    texts = [json.loads(x)["text"] for x in paths[2].read_text().splitlines()]
    texts[5] = "BOOM " + texts[5]
    write_jsonl(paths[2], texts)
    biggest = max(p.stat().st_size for p in paths)
    cfg = PipelineConfig(
        inputs=[str(tmp_path / "in")], task_bytes=biggest, steps=[{"name": "test_flaky"}]
    )
    out = tmp_path / "out"
    Flaky.fail, Flaky.seen = True, []
    with pytest.raises(ValueError, match=rf"step 'test_flaky' failed on document '{paths[2]}:6'"):
        run_pipeline(cfg, out)
    done = sorted(p.name for p in (out / "work" / "map").glob("task-*.json"))
    assert done == ["task-00000.json", "task-00001.json"]
    finished = {n: json.loads((out / "work" / "map" / n).read_text())["finished_at"] for n in done}
    assert not (out / "manifest.json").exists() and not shards(out)

    Flaky.fail, Flaky.seen = False, []
    m = run_pipeline(cfg, out)
    assert {s.rsplit(":", 1)[0] for s in Flaky.seen} == {str(paths[2]), str(paths[3])}
    assert len(Flaky.seen) == 24
    for n, t in finished.items():
        assert json.loads((out / "work" / "map" / n).read_text())["finished_at"] == t
    assert m["pipeline"]["tasks"] == 4 and m["pipeline"]["tasks_reused"] == 2
    assert rows(m)["read"]["docs_out"] == 48
    # The resumed output is exactly a clean run's.
    run_pipeline(cfg, tmp_path / "clean")
    assert shards(out) == shards(tmp_path / "clean")

    # A finished run is not redone.
    Flaky.seen = []
    assert run_pipeline(cfg, out) == m and Flaky.seen == []


def test_a_rerun_notices_an_edited_word_list_and_a_new_version(tmp_path: Path, monkeypatch) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", ["I like broccoli a lot.", "Carrots are fine.", "Nothing here."]
    )
    words = tmp_path / "words.txt"
    words.write_text("spinach\n")
    domains = tmp_path / "domains.txt"
    domains.write_text("bad.example\n")
    steps = [
        {"name": "toxicity", "path": str(words)},
        {"name": "url_blocklist", "path": str(domains)},
    ]
    cfg = PipelineConfig(inputs=[str(path)], steps=steps)
    out = tmp_path / "out"
    assert run_pipeline(cfg, out)["dropped"] == {}
    words.write_text("broccoli\n")  # the same settings, another list: the map stage is redone
    m = run_pipeline(cfg, out)
    assert m["dropped"] == {"toxicity": 1} and m["pipeline"]["tasks_reused"] == 0
    assert run_pipeline(cfg, out) == m  # nothing changed: nothing to do
    domains.write_text("bad.example\nworse.example\n")
    assert run_pipeline(cfg, out)["pipeline"]["tasks_reused"] == 0
    monkeypatch.setattr("lmforge.data.pipeline.__version__", "99.0")
    m = run_pipeline(cfg, out)
    assert m["pipeline"]["tasks_reused"] == 0 and m["dropped"] == {"toxicity": 1}


def test_a_large_jsonl_file_split_into_tasks_reports_each_problem_once(tmp_path: Path) -> None:
    rng = random.Random(0)
    lines = [
        json.dumps({"text": " ".join(f"w{rng.randrange(10**6)}" for _ in range(50))}).encode()
        for _ in range(2000)
    ]
    lines[10], lines[20] = b"{not json", b'{"other": 1}'
    lines[30] = b'{"text": "caf\xe9 au lait"}'  # one byte that is not UTF-8
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = PipelineConfig(inputs=[str(path)], task_bytes=100_000)
    split = run_pipeline(cfg, tmp_path / "split")
    whole = run_pipeline(dataclasses.replace(cfg, task_bytes=2**30), tmp_path / "whole")
    assert split["pipeline"]["tasks"] == 8 and whole["pipeline"]["tasks"] == 1
    report = split["read_report"]
    assert report["files_read"] == [str(path)]
    assert report["bad_records"] == 2 and report["replaced_bytes"] == {str(path): 1}
    assert [e.split(": ", 1)[0] for e in report["bad_record_examples"]] == [
        f"{path}:11",
        f"{path}:21",
    ]
    assert report == whole["read_report"]
    assert split["documents_read"] == whole["documents_read"] == 1998
    assert shards(tmp_path / "split") == shards(tmp_path / "whole")


@pytest.mark.skipif(not (SHARED_DATA / "warc-sample").exists(), reason="needs ../shared/data")
@pytest.mark.parametrize(
    ("rel", "task_bytes"),
    [
        ("warc-sample/resiliparse-warcfile.warc.gz", 30_000),  # 136 kB: 5 tasks
        ("wikipedia-sample/enwiki-table-markup.xml.bz2", 15_000),  # 64 kB: 5 tasks
    ],
)
def test_a_warc_or_dump_split_into_tasks_gives_what_one_task_gives(
    tmp_path: Path, rel: str, task_bytes: int
) -> None:
    path = SHARED_DATA / rel
    read = ReadOptions(html_fast=True)
    cfg = PipelineConfig(inputs=[str(path)], task_bytes=task_bytes, read=read, write_rejected=True)
    split = run_pipeline(cfg, tmp_path / "split")
    whole = run_pipeline(dataclasses.replace(cfg, task_bytes=2**30), tmp_path / "whole")
    assert split["pipeline"]["tasks"] == 5 and whole["pipeline"]["tasks"] == 1
    # Each task extracted only its share of the records, and together exactly the documents
    # of an unsplit read, with what the reader saw (skipped records, ...) counted once.
    assert split["documents_read"] == whole["documents_read"] >= 5
    per_task = [
        json.loads(t.read_text())["steps"][0]["docs_out"]
        for t in sorted((tmp_path / "split" / "work" / "map").glob("task-*.json"))
    ]
    assert len(per_task) == 5 and all(per_task) and sum(per_task) == whole["documents_read"]
    for m in (split, whole):  # examples of bad records come task by task
        m["read_report"]["bad_record_examples"].sort()
    assert split["read_report"] == whole["read_report"]
    assert split["read_report"]["files_read"] == [str(path)]
    assert split["pipeline"]["steps"] == whole["pipeline"]["steps"]
    assert shards(tmp_path / "split") == shards(tmp_path / "whole")


def test_url_blocklist_reads_the_url_of_jsonl_records(tmp_path: Path) -> None:
    # C4 and FineWeb JSONL carry each page's URL in a "url" field.
    path = tmp_path / "web.jsonl"
    path.write_bytes(
        b"".join(
            json.dumps(r).encode() + b"\n"
            for r in [
                {"text": "A page from a blocked site.", "url": "https://www.bad.example/x"},
                {"text": "Another fine page.", "url": "https://ok.example/"},
                {"text": "A page nobody knows the address of."},
            ]
        )
    )
    steps = [{"name": "url_blocklist", "domains": ["bad.example"]}]
    out = tmp_path / "out"
    m = run_pipeline(PipelineConfig(inputs=[str(path)], steps=steps), out)
    row = rows(m)["url_blocklist"]
    assert (row["docs_in"], row["dropped"], row["notes"]) == (
        3,
        {"url_blocklist": 1},
        {"no_url": 1},
    )
    kept = {r["text"]: r.get("meta") for r in all_records(out)}
    assert kept == {
        "Another fine page.": {"url": "https://ok.example/"},
        "A page nobody knows the address of.": None,
    }
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "- url_blocklist: no_url 1" in md


def test_an_output_folder_inside_the_input_folder_is_not_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_jsonl(data / "a.jsonl", [f"document number {i} " * 20 for i in range(5)] + ["x"])
    cfg = PipelineConfig(
        inputs=[str(data)], steps=[{"name": "test_drop_short", "min_words": 2}], write_rejected=True
    )
    first = run_pipeline(cfg, data / "clean")
    assert first["read_report"]["files_read"] == [str(data / "a.jsonl")]
    # The rerun sees the same inputs (not its own shards, work files or rejected documents),
    # so there is nothing to do.
    assert run_pipeline(cfg, data / "clean") == first
    skipped = run_pipeline(dataclasses.replace(cfg, val_fraction=0.2), data / "clean")
    assert skipped["read_report"]["files_read"] == [str(data / "a.jsonl")]
    left_out = {"path": str((data / "clean").resolve()), "reason": "the output folder"}
    assert left_out in skipped["read_report"]["files_skipped"]
    with pytest.raises(ConfigError, match=r"input .*train-00000\.jsonl is inside the output"):
        run_pipeline(
            PipelineConfig(inputs=[str(data / "clean" / "train-00000.jsonl")]), data / "clean"
        )


def test_a_crash_after_the_shards_are_replaced_leaves_no_stale_manifest(
    tmp_path: Path, monkeypatch
) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [f"document {i} " * 50 for i in range(40)])
    cfg = PipelineConfig(inputs=[str(path)], shard_bytes=1000, dedup=DedupConfig(near=False))
    out = tmp_path / "out"
    run_pipeline(cfg, out)
    assert len(list(out.glob("train-*.jsonl"))) > 3

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the shards were renamed into place

    monkeypatch.setattr("lmforge.data.pipeline.write_report", crash)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(dataclasses.replace(cfg, shard_bytes=10**6), out)
    assert list(out.glob("train-*.jsonl")) == [out / "train-00000.jsonl"]
    assert not (out / "manifest.json").exists()  # not the old one, naming deleted shards


def parallel_corpus(root: Path) -> list[str]:
    """Small files grouped into tasks, a large file cut into strides, duplicates across them."""
    texts = c4_texts()
    small_files(root / "small", n_files=3, per_file=20)
    write_jsonl(root / "large.jsonl", texts[60:] + texts[:5])
    return [str(root / "small"), str(root / "large.jsonl")]


@needs_c4
@pytest.mark.slow
def test_two_workers_write_what_one_writes(tmp_path: Path) -> None:
    inputs = parallel_corpus(tmp_path / "in")
    steps = [{"name": "test_drop_short", "min_words": 80}]
    cfg = PipelineConfig(inputs=inputs, steps=steps, task_bytes=150_000, write_rejected=True)
    m1 = run_pipeline(cfg, tmp_path / "w1")
    assert m1["pipeline"]["tasks"] >= 5  # several groups and strides
    assert rows(m1)["exact_dedup"]["dropped"]["exact_duplicate"] >= 4
    m2 = run_pipeline(dataclasses.replace(cfg, workers=2), tmp_path / "w2")
    one = dataclasses.replace(cfg, task_bytes=2**30)
    m3 = run_pipeline(one, tmp_path / "one-task")
    assert m3["pipeline"]["tasks"] == 1
    assert shards(tmp_path / "w1") == shards(tmp_path / "w2") == shards(tmp_path / "one-task")
    assert m1["splits"] == m2["splits"] == m3["splits"]
    assert m1["pipeline"]["steps"] == m2["pipeline"]["steps"] == m3["pipeline"]["steps"]
    dedup = [rejected(tmp_path / d, "dedup.jsonl") for d in ("w1", "w2", "one-task")]
    assert dedup[0] == dedup[1] == dedup[2]


@needs_c4
@pytest.mark.slow
def test_dask_engine_writes_what_the_local_engine_writes(tmp_path: Path) -> None:
    pytest.importorskip("dask")
    inputs = parallel_corpus(tmp_path / "in")
    cfg = PipelineConfig(inputs=inputs, steps=[{"name": "test_drop_short"}], task_bytes=150_000)
    local = run_pipeline(cfg, tmp_path / "local")
    dask = run_pipeline(dataclasses.replace(cfg, engine="dask", workers=2), tmp_path / "dask")
    assert dask["pipeline"]["engine"] == "dask"
    assert shards(tmp_path / "local") == shards(tmp_path / "dask")
    assert local["pipeline"]["steps"] == dask["pipeline"]["steps"]


def test_dask_engine_without_dask_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dask", None)  # as if it were not installed
    path = write_jsonl(tmp_path / "in.jsonl", ["a document"])
    with pytest.raises(ConfigError, match=r"needs dask.*pip install 'lmforge\[dask\]'"):
        run_pipeline(PipelineConfig(inputs=[str(path)], engine="dask"), tmp_path / "out")


# --- recipes and the command line -------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ('[[steps]]\nname = "nope"\n', r"\[steps\[0\]\]: unknown step 'nope'; known steps: \["),
        (
            '[[steps]]\nname = "test_drop_short"\n[[steps]]\nname = "test_drop_short"\n'
            "min_wordz = 3\n",
            r"unknown field\(s\) \['min_wordz'\] in \[steps\[1\]\.test_drop_short\]",
        ),
        ("[[steps]]\nmin_words = 3\n", r"\[steps\[0\]\]: every step needs a `name`"),
        ("[pipeline]\nworkerz = 2\n", r"unknown field\(s\) \['workerz'\] in \[pipeline\]"),
        ("[dedup]\nthreshhold = 0.5\n", r"unknown field\(s\) \['threshhold'\] in \[dedup\]"),
        ("[dedup]\nthreshold = 2\n", r"threshold=2.0; expected a Jaccard similarity"),
        ("[dedup]\nthreshold = 0.99\n", r"threshold=0.99 with num_perm=128: .*raise num_perm"),
        ('[pipeline]\nengine = "ray"\n', r"engine='ray'; expected one of"),
        ("[pipline]\nworkers = 2\n", r"unknown table\(s\) \['pipline'\]"),
        # Tasks share large files by themselves; a reader's share is not a recipe setting.
        ("[read]\nrecord_shard = [0, 4]\n", r"unknown field\(s\) \['record_shard'\] in \[read\]"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path: Path, recipe: str, match: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(recipe)
    with pytest.raises(ConfigError, match=match):
        load_pipeline_config(path)


def test_overrides_reach_tables_and_steps(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[pipeline]\ninputs = ["x"]\n[[steps]]\nname = "test_drop_short"\n'
        '[[steps]]\nname = "test_drop_marker"\n'
    )
    cfg = load_pipeline_config(
        path,
        {
            "pipeline.workers": 3,
            "dedup.threshold": 0.7,
            "steps.test_drop_short.min_words": 7,
            "steps.1.marker": "XX",
        },
    )
    assert cfg.workers == 3 and cfg.dedup.threshold == 0.7
    assert cfg.steps == [
        {"name": "test_drop_short", "min_words": 7},
        {"name": "test_drop_marker", "marker": "XX"},
    ]
    with pytest.raises(ConfigError, match=r"no step 'length'; the steps are"):
        load_pipeline_config(path, {"steps.length.min_words": 7})


def test_the_shipped_web_recipe_loads() -> None:
    import lmforge.data.clean  # noqa: F401  (the library's steps)

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "data-web.toml"
    if not {"fix_unicode", "language", "pii"} <= set(STEPS):
        pytest.skip("needs the clean steps")
    cfg = load_pipeline_config(recipe)
    assert [s["name"] for s in cfg.steps] == [
        "fix_unicode", "normalize_whitespace", "repetition", "gopher_quality", "c4_quality",
        "language", "pii",
    ]  # fmt: skip
    assert cfg.dedup.exact and cfg.dedup.near and cfg.dedup.threshold == 0.8
    assert [Path(p).name for p in cfg.inputs] == ["c4_demo.jsonl", "html-sample", "warc-sample"]


@needs_c4
def test_cli_runs_a_recipe_and_reports_errors_in_one_line(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nname = "test_drop_short"\nmin_words = 100\n')
    out = tmp_path / "out"
    args = ["data", "pipeline", str(C4), "--recipe", str(recipe), "--out", str(out)]
    assert main([*args, "--no-progress", "--dedup.near", "false", "--write-rejected"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["dedup"]["near"] is False and m["config"]["write_rejected"] is True
    kept = rows(m)["test_drop_short"]["docs_out"]
    assert f"test_drop_short: {kept:,} documents" in printed
    assert (out / "rejected" / "task-00000.jsonl").exists()

    recipe.write_text('[[steps]]\nname = "nope"\n')
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown step 'nope'" in err

    assert main(["data", "steps"]) == 0
    listing = capsys.readouterr().out
    assert "test_drop_short: Test step: drop documents of fewer than" in listing
    assert "    min_words = 50  (int)" in listing


# --- with the library's own steps and readers -------------------------------------------------


@needs_c4
@pytest.mark.skipif(
    not {"fix_unicode", "gopher_quality", "pii"} <= set(STEPS), reason="needs the clean steps"
)
def test_library_steps_on_c4(tmp_path: Path) -> None:
    steps = [{"name": "fix_unicode"}, {"name": "gopher_quality"}, {"name": "pii"}]
    out = tmp_path / "out"
    m = run_pipeline(PipelineConfig(inputs=[str(C4)], steps=steps), out)
    table = m["pipeline"]["steps"]
    assert [r["name"] for r in table] == [
        "read", "fix_unicode", "gopher_quality", "pii", "output", "exact_dedup", "near_dedup",
    ]  # fmt: skip
    for before, after in zip(table, table[1:]):
        assert after["docs_in"] == before["docs_out"]
    for r in table:
        assert r["docs_in"] - r["docs_out"] == sum(r["dropped"].values())
    assert rows(m)["gopher_quality"]["docs_out"] < 300
    texts = [r["text"] for r in all_records(out)]
    assert len(texts) == rows(m)["near_dedup"]["docs_out"]
    assert any("<EMAIL>" in t for t in texts)
    assert not any("@gmail.com" in t for t in texts)
    with_pii = [r for r in all_records(out) if "pii" in r.get("meta", {})]
    assert with_pii and all(r["meta"]["pii"] for r in with_pii)


@pytest.mark.skipif(not HTML.exists(), reason="needs ../shared/data/html-sample")
def test_html_and_warc_sources_keep_their_metadata(tmp_path: Path) -> None:
    warc = SHARED_DATA / "warc-sample"
    recipe = tmp_path / "r.toml"
    inputs = f'["{HTML}/[b-c]*.html", "{warc}/w*"]'  # 5 pages; whirlwind and warcio WARCs
    recipe.write_text(f"[pipeline]\ninputs = {inputs}\n[read]\nhtml_fast = true\n")
    out = tmp_path / "out"
    m = run_pipeline(load_pipeline_config(recipe, {"dedup.near": False}), out)
    r = rows(m)
    assert m["config"]["read"]["html_fast"] is True
    assert len(m["read_report"]["files_read"]) == 5 + 4
    assert m["documents_read"] == r["read"]["docs_out"] >= 5 + 3
    records = all_records(out)
    assert (
        len(records)
        == r["exact_dedup"]["docs_out"]
        == m["documents_read"] - sum(m["dropped"].values())
    )
    python = next(x for x in records if x["id"].endswith("blog.python.org.html"))
    assert python["meta"]["title"] == "Python 3.6.0 is now available!"
    assert python["meta"]["url"].startswith("http://blog.python.org/2016/12/")
    from_warc = [x for x in records if x["source"].startswith(str(warc))]
    assert from_warc and all(x["meta"]["url"].startswith("http") for x in from_warc)
    assert {x["meta"]["url"] for x in from_warc} >= {"http://example.com/"}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "whirlwind.warc.wat.gz`: unknown suffix" in md
    assert "record(s) left out on purpose: warc request record" in md


def test_nothing_left_leaves_the_output_alone_and_says_why(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", ["short one", "DROPME please", "tiny"])
    out = tmp_path / "out"
    run_pipeline(PipelineConfig(inputs=[str(path)]), out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    steps = [{"name": "test_drop_marker"}, {"name": "test_drop_short", "min_words": 3}]
    with pytest.raises(ValueError, match=r"no documents left in .*work/report\.md shows"):
        run_pipeline(PipelineConfig(inputs=[str(path)], steps=steps), out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    md = (out / "work" / "report.md").read_text(encoding="utf-8")
    assert "| test_drop_short | 2 | 0 | 2 |" in md and "too_short 2" in md
