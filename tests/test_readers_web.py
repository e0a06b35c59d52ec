"""Readers for web and archive sources, on the real files in ../shared/data: HTML pages, WARC
and WET, Wikipedia dumps, zip archives and globs, Hugging Face datasets, and bad input."""

from __future__ import annotations

import bz2
import gzip
import json
import re
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from conftest import SHARED_DATA as SHARED
from conftest import shared
from lmforge.cli import main
from lmforge.config import ConfigError
from lmforge.data.document import DataError
from lmforge.data.prepare import read_manifest
from lmforge.data.readers import (
    ReadContext,
    ReadOptions,
    ReadReport,
    Source,
    detect_format,
    iter_documents,
    list_input_files,
    read_file,
    wikitext_to_text,
)
from lmforge.data.report import merge_read_reports

ENWIKI = "wikipedia-sample/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def read(inputs, **kw) -> tuple[list, ReadReport]:
    report = ReadReport()
    return list(iter_documents(inputs, report=report, **kw)), report


def name(doc) -> str:
    return re.split(r"[@:!]", doc.source.rsplit("/", 1)[-1])[0]


# --- HTML pages ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def html_sample():
    docs, report = read([shared("html-sample")])
    return {name(d): d for d in docs}, report


def test_html_pages_main_text_and_metadata(html_sample) -> None:
    docs, report = html_sample
    assert len(report.files_read) == 34
    assert len(docs) == 33  # one page is a "page being edited" stub with no main text
    assert report.bad_records == 1
    assert "lanouvellerepublique.fr.martin.html: no main text" in report.bad_record_examples[0]
    py = docs["blog.python.org.html"]
    assert py.meta == {
        "title": "Python 3.6.0 is now available!",
        "url": "http://blog.python.org/2016/12/python-360-is-now-available.html",
        "date": "2016-12-23",
    }
    assert py.text.startswith("Python 3.6.0 is now available!")
    assert docs["spiegel.de.albtraum.html"].meta["lang"] == "de"
    assert "Relotius" in docs["spiegel.de.albtraum.html"].text
    assert docs["zeit.de.zugverkehr.html"].text.startswith("36 Stunden.")
    assert docs["franceculture.fr.idees.html"].meta["lang"] == "fr"
    assert "只能想念你" in docs["chineselyrics4u.com.zhineng.html"].meta["title"]
    assert "爱 逝去的爱" in docs["chineselyrics4u.com.zhineng.html"].text
    for doc in docs.values():  # main text only: no markup, scripts or cookie banners
        assert not re.search(r"<(script|div|p|a)\b|function\s*\(|\{\s*var ", doc.text), doc.source
        assert len(doc.text) > 500, doc.source
        assert doc.meta["title"] and doc.meta["date"]
    # The page's own canonical URL is kept, for all but one page that has none.
    assert sum("url" in d.meta for d in docs.values()) == 32


def test_html_bad_pages_are_counted(tmp_path: Path) -> None:
    (tmp_path / "empty.html").write_bytes(b"")
    (tmp_path / "nobody.html").write_text("<html><head><title>Only a title</title></head></html>")
    (tmp_path / "script.htm").write_text("<html><body><script>var a = 1;</script></body></html>")
    page = shared("html-sample/lemire.me.json.html").read_bytes()
    (tmp_path / "page.html.gz").write_bytes(gzip.compress(page))
    (tmp_path / "cut.html.gz").write_bytes(gzip.compress(page)[:3000])
    docs, report = read([tmp_path])
    assert [name(d) for d in docs] == ["page.html.gz"]
    assert "simdjson" in docs[0].text
    assert report.bad_records == 3
    (cut,) = report.read_errors
    assert cut["path"] == str(tmp_path / "cut.html.gz")
    assert re.fullmatch(r"byte \d+ \(decompressed\)", cut["position"])
    assert report.empty_files == [str(tmp_path / "empty.html")]
    reasons = "\n".join(report.bad_record_examples)
    for bad in (
        "empty.html: an empty HTML file",
        "script.htm: no main text",
        "nobody.html: no main",
    ):
        assert bad in reasons
    docs, report = read([tmp_path / "page.html.gz"], max_record_bytes=10_000)
    assert docs == [] and "over max_record_bytes=10,000" in report.bad_record_examples[0]
    with pytest.raises(DataError, match=r"script\.htm: no main text"):
        read([tmp_path / "script.htm"], on_bad_record="fail")


# --- WARC and WET ----------------------------------------------------------------------------

WARC_COUNTS = {
    "dolma-sample-0000.warc.gz": 22,
    "dolma-sample-0001.warc.gz": 15,
    "resiliparse-clueweb-quirk.warc.gz": 29,
    "resiliparse-warcfile.warc.gz": 15,
    "warcio-example-iana.org-chunked.warc": 1,
    "warcio-example.warc.gz": 1,
    "whirlwind.warc.gz": 1,
    "whirlwind.warc.wet.gz": 1,
}


@pytest.fixture(scope="module")
def warc_sample():
    return read([shared("warc-sample")])


@pytest.mark.slow
def test_warc_every_sample_file(warc_sample) -> None:
    docs, report = warc_sample
    counts: dict[str, int] = {}
    for d in docs:
        counts[name(d)] = counts.get(name(d), 0) + 1
    assert counts == WARC_COUNTS
    # The WAT file holds no text and is not read; one Common Crawl page has no main text.
    assert report.files_skipped == [
        {"path": str(SHARED / "warc-sample/whirlwind.warc.wat.gz"), "reason": "unknown suffix"}
    ]
    assert report.bad_records == 1 and report.read_errors == []
    assert report.skipped_records == {
        "warc warcinfo record": 9,
        "warc request record": 58,
        "warc metadata record": 19,
        "warc resource record": 4,
        "warc revisit record": 1,
    }
    for d in docs:
        assert d.meta["url"].startswith("http") and "<" not in d.meta["url"]
        assert d.id == d.meta["warc_record_id"] and d.id.startswith("urn:uuid:")
        assert d.text.strip()


@pytest.mark.slow
def test_warc_record_details(warc_sample) -> None:
    docs, _ = warc_sample
    by_url = {d.meta["url"]: d for d in docs}
    # wget wraps WARC-Target-URI in <...>; the reader unwraps it.
    s2 = by_url["https://www.semanticscholar.org/research/research-team"]
    assert s2.source.endswith("dolma-sample-0000.warc.gz@865")
    assert s2.meta["title"] == "Semantic Scholar | Research | Research Team"
    assert s2.meta["date"] == "2024-04-25T16:24:44Z" and s2.meta["lang"] == "en"
    # A chunked HTTP body, uncompressed WARC.
    assert by_url["http://www.iana.org/"].text.startswith("Management of the DNS Root Zone")
    # ClueWeb: EUC-JP pages with a malformed WARC-Date, kept as written.
    clue = [d for d in docs if name(d) == "resiliparse-clueweb-quirk.warc.gz"]
    assert all(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", d.text) for d in clue)
    assert clue[0].meta["date"] == "2008-10-294T05:21:46-0700"
    # WET: Common Crawl's own text extract, as is.
    (wet,) = [d for d in docs if name(d) == "whirlwind.warc.wet.gz"]
    assert wet.text.startswith("Escopete - Biquipedia, a enciclopedia libre\nIr al contenido\n")
    assert wet.meta["lang"] == "spa" and wet.meta["url"] == "https://an.wikipedia.org/wiki/Escopete"


@pytest.mark.slow
def test_truncated_warc_keeps_the_records_before_the_cut(tmp_path: Path, warc_sample) -> None:
    src = shared("warc-sample/resiliparse-warcfile.warc.gz")
    data = src.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) // 2])
    full = [d for d in warc_sample[0] if name(d) == src.name]
    docs, report = read([cut])
    assert 0 < len(docs) < len(full)
    assert [d.id for d in docs] == [d.id for d in full[: len(docs)]]
    (err,) = report.read_errors
    offset = int(re.fullmatch(r"the record at byte (\d+)", err["position"]).group(1))
    assert err["path"] == str(cut) and 0 < offset < len(data) // 2
    assert "bytes of its block are missing" in err["reason"]
    with pytest.raises(
        DataError, match=rf"cut\.warc\.gz: reading stopped at the record at byte {offset}"
    ):
        read([cut], on_bad_record="fail")


def test_file_that_is_not_warc_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "notes.warc").write_text("these lines are no WARC records\n" * 3)
    docs, report = read([tmp_path / "notes.warc"])
    assert docs == [] and report.files_skipped == [
        {"path": str(tmp_path / "notes.warc"), "reason": "not a WARC file"}
    ]


# --- Wikipedia dumps -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enwiki():
    return read([shared(ENWIKI)])


@pytest.mark.slow
def test_enwiki_dump_gives_clean_articles(enwiki) -> None:
    docs, report = enwiki
    # 206 <page>s: 100 redirects (one of them in the Wikipedia: namespace) and 106 articles.
    assert len(docs) == 106
    assert report.skipped_records == {"wikipedia redirect": 100}
    assert report.bad_records == 0 and report.read_errors == []
    first = docs[0]
    assert first.meta == {
        "title": "Anarchism",
        "page_id": "12",
        "url": "https://en.wikipedia.org/wiki/Anarchism",
    }
    assert first.id == "enwiki-12"
    assert first.text.startswith("Anarchism is a political philosophy that advocates self-governed")
    assert "\nEtymology and terminology\n" in first.text  # headings are lines of their own
    for d in docs:
        for markup in ("{{", "}}", "[[", "]]", "<ref", "{|", "|}", "thumb|", "'''", "<!--"):
            assert markup not in d.text, (d.meta["title"], markup)
        assert not re.search(r"^\s*(Category|File|Image):", d.text, re.M), d.meta["title"]
    texts = {d.meta["title"]: d.text for d in docs}
    # Link text stays, the link goes: "[[stateless society|stateless societies]]".
    assert "described as stateless societies, although" in texts["Anarchism"]
    assert "Infinitely Demanding by Simon Critchley" not in texts["Anarchism"]  # a <ref>
    assert sum(len(t) for t in texts.values()) > 2_500_000


def test_table_markup_dump_leaves_no_table_syntax() -> None:
    docs, report = read([shared("wikipedia-sample/enwiki-table-markup.xml.bz2")])
    assert [d.meta["title"] for d in docs] == [
        "Constructive vote of no confidence",
        "List of Prison Break characters",
        "Academy Award for Best Production Design",
        "Economy of Estonia",
        "Brahui language",
    ]
    for d in docs:
        assert not re.search(r"\{\||\|\}|^\s*\|-|^\s*!|\|\||!!|class=|style=", d.text, re.M)
        assert len(d.text) > 500
    assert "Estonia" in docs[3].text


def test_utf16_bgwiki_dump() -> None:
    path = shared("wikipedia-sample/bgwiki-latest-pages-articles-shortened.xml.bz2")
    assert bz2.open(path).read(2) == b"\xff\xfe"  # UTF-16 LE with a BOM
    (doc,), report = read([path])
    assert doc.meta["title"] == "Григориански календар" and doc.id == "bgwiki-558"
    assert doc.text.startswith("Григорианският календар (понякога наричан и Грегориански")
    assert doc.meta["url"].startswith("https://bg.wikipedia.org/wiki/%D0%93")
    assert report.skipped_records == {"wikipedia page in namespace 4": 2}
    assert "thumb|" not in doc.text  # [[Файл:...]]: the local name of File: is known too


def test_wikitext_to_text_rules() -> None:
    wikitext = (
        "{{Infobox|name=x}}'''Bold''' and ''italic'' [[Target page|shown text]] and [[Plain]]."
        "<ref name=a>A citation.</ref><!-- hidden -->\n== Heading ==\n"
        "* item one\n{| class=wikitable\n|-\n| cell || cell\n|}\n"
        "[[File:X.jpg|thumb|A caption]][[Category:Things]][[de:Ding]] [http://x.org label] "
        "[http://bare.org] &amp; __NOTOC__ [[:Category:Shown]]"
    )
    assert wikitext_to_text(wikitext) == (
        "Bold and italic shown text and Plain.\n\nHeading\n\nitem one\nlabel & Category:Shown"
    )


def test_wiki_dump_detection_and_truncation(tmp_path: Path) -> None:
    assert detect_format(shared(ENWIKI)) == ("wikipedia", ".bz2")  # by content, not by name
    (tmp_path / "other.xml").write_text("<?xml version='1.0'?><rss><channel/></rss>")
    assert detect_format(tmp_path / "other.xml") is None
    with pytest.raises(DataError, match=r"other\.xml: cannot read.*only when it is a MediaWiki"):
        list_input_files([tmp_path / "other.xml"])
    data = bz2.decompress(shared("wikipedia-sample/enwiki-table-markup.xml.bz2").read_bytes())
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(bz2.compress(data[: len(data) // 2]))
    docs, report = read([cut])
    assert len(docs) == 2
    (err,) = report.read_errors
    assert err["path"] == str(cut) and re.fullmatch(r"line \d+, column \d+ \(after 2 pages\)",
                                                     err["position"])  # fmt: skip


@pytest.mark.parametrize(
    "rel",
    [
        "warc-sample/dolma-sample-0001.warc.gz",
        "wikipedia-sample/enwiki-table-markup.xml.bz2",
        "web-text/dolma-cc_en_head-0091.jsonl.gz",
    ],
)
def test_shards_of_a_file_yield_each_document_and_report_each_problem_once(rel: str) -> None:
    path = shared(rel)
    (entry,) = list_input_files([path])

    def read_shard(shard: tuple[int, int]) -> tuple[list, dict]:
        report = ReadReport()
        ctx = ReadContext(ReadOptions(html_fast=True, warn=False), report, shard=shard)
        return list(read_file(*entry, ctx)), report.to_dict()

    whole, whole_report = read_shard((0, 1))
    shards = [read_shard((i, 3)) for i in range(3)]
    assert all(docs for docs, _ in shards)  # the work is shared...
    got = sorted((d.id, d.text) for docs, _ in shards for d in docs)
    assert got == sorted((d.id, d.text) for d in whole)  # ...and every document read once
    assert merge_read_reports([r for _, r in shards]) == whole_report
    with pytest.raises(ValueError, match=r"shard=\(3, 3\)"):
        ReadContext(ReadOptions(), ReadReport(), shard=(3, 3))


def test_shards_report_bad_records_and_undecodable_bytes_once(tmp_path: Path) -> None:
    rows = [json.dumps({"text": f"document {i}"}).encode() for i in range(10)]
    rows[3] = b"{not json"
    rows[6] = b'{"text": "caf\xe9"}'  # Latin-1, not UTF-8
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(rows) + b"\n")[:-12])  # and truncated at the end
    (entry,) = list_input_files([path])
    whole, shards = ReadReport(), [ReadReport() for _ in range(4)]
    docs = list(read_file(*entry, ReadContext(ReadOptions(warn=False), whole)))
    parts = [
        list(read_file(*entry, ReadContext(ReadOptions(warn=False), r, shard=(i, 4))))
        for i, r in enumerate(shards)
    ]
    assert sorted(d.source for p in parts for d in p) == sorted(d.source for d in docs)
    merged, expected = merge_read_reports([r.to_dict() for r in shards]), whole.to_dict()
    for report in (merged, expected):  # the shards' examples come shard by shard
        report["bad_record_examples"].sort()
    assert merged == expected
    # Line 4, and line 10 that the truncation cut short; one undecodable byte; one read error.
    assert merged["bad_records"] == 2 and merged["replaced_bytes"] == {str(path): 1}
    assert len(merged["read_errors"]) == 1


# --- zip archives, globs, Hugging Face datasets ------------------------------------------------


def test_zip_members_by_their_own_suffix(tmp_path: Path) -> None:
    docs, report = read([shared("public-domain-prose/inaugural.zip")])
    assert len(docs) == 59
    zip_path = SHARED / "public-domain-prose/inaugural.zip"
    assert docs[0].source == f"{zip_path}!inaugural/1789-Washington.txt"
    assert docs[0].text.startswith("Fellow-Citizens of the Senate and of the House")
    assert report.files_skipped == [
        {"path": f"{zip_path}!inaugural/README", "reason": "unknown suffix"}
    ]
    assert report.replaced_bytes == {f"{zip_path}!inaugural/2005-Bush.txt": 55}

    page = shared("html-sample/dw.com.colonial.html").read_bytes()
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(mixed, "w") as z:
        z.writestr("a/notes.txt", "plain text\n")
        z.writestr("a/records.jsonl.gz", gzip.compress(b'{"text": "one"}\n{"text": "two"}\n'))
        z.writestr("b/page.html", page)
        z.writestr("b/dump.bin", b"\x00")
        z.writestr("inner.zip", b"PK")
        z.writestr("__MACOSX/a/._notes.txt", b"junk")
    docs, report = read([mixed])
    assert [d.text for d in docs[:3]] == ["plain text\n", "one", "two"]
    assert docs[1].source == f"{mixed}!a/records.jsonl.gz:1"
    assert "colonial" in docs[3].meta["url"]
    assert [s["reason"] for s in report.files_skipped] == [
        "unknown suffix",
        "an archive inside an archive",
    ]


def test_glob_patterns(tmp_path: Path) -> None:
    docs, report = read([str(SHARED / "web-text" / "*.jsonl.gz")])
    assert len(docs) == 20 and len(report.files_read) == 2
    with pytest.raises(DataError, match=r"pattern .*\*\.nothing matched no files"):
        read([str(tmp_path / "*.nothing")])


def test_hf_datasets_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    urls = ["https://a.example/1", None, "https://a.example/3"]
    one = datasets.Dataset.from_dict(
        {"text": ["first", None, "third"], "id": [7, 8, 9]} | {"url": urls}
    )
    one.save_to_disk(str(tmp_path / "corpus" / "ds"))
    (tmp_path / "corpus" / "notes.txt").write_text("a note")
    docs, report = read([tmp_path / "corpus"])
    # A folder's own files come before its subfolders.
    assert [(d.text, d.id) for d in docs[1:]] == [("first", "7"), ("third", "9")]
    assert [d.meta for d in docs[1:]] == [{"url": urls[0]}, {"url": urls[2]}]
    assert docs[0].text == "a note" and docs[1].source == f"{tmp_path / 'corpus' / 'ds'}:1"
    assert report.bad_records == 1 and "is null" in report.bad_record_examples[0]

    body = datasets.Dataset.from_dict({"body": ["t1", "t2"]})
    datasets.DatasetDict({"train": body, "test": body.select([1])}).save_to_disk(
        str(tmp_path / "dd")
    )
    docs, _ = read([tmp_path / "dd"], text_field="body")
    assert [(d.text, d.meta["split"]) for d in docs] == [
        ("t1", "train"),
        ("t2", "train"),
        ("t2", "test"),
    ]
    docs, report = read([tmp_path / "dd"])
    assert docs == [] and "no column 'text' (columns: 'body')" in report.files_skipped[0]["reason"]


def test_a_saved_dataset_without_datasets_installed_stops_the_run(
    tmp_path: Path, monkeypatch
) -> None:
    saved = tmp_path / "corpus" / "ds"
    saved.mkdir(parents=True)
    (saved / "dataset_info.json").write_text("{}")
    (saved / "state.json").write_text("{}")
    (tmp_path / "corpus" / "notes.txt").write_text("a note")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    # A missing package is not bad input to skip: the run must not go on without the data.
    with pytest.raises(
        ConfigError, match=rf"{saved} is a Hugging Face.*pip install 'lmforge\[hf\]'"
    ):
        list_input_files([tmp_path / "corpus"])
    from lmforge.data.pipeline import PipelineConfig, run_pipeline

    with pytest.raises(ConfigError, match=r"needs the `datasets` package"):
        run_pipeline(PipelineConfig(inputs=[str(tmp_path / "corpus")]), tmp_path / "out")


# --- bad input -------------------------------------------------------------------------------


class BreaksOff:
    """A stream that gives `data` and then fails, as a dropped connection or a truncated
    download does."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        if self.pos >= len(self.data):
            raise OSError("connection reset")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    read1 = read

    def close(self) -> None:
        pass


def test_a_character_cut_where_the_stream_breaks_is_counted() -> None:
    from lmforge.data.readers.base import decoded_chunks

    report = ReadReport()
    src = Source("cut.txt", lambda: BreaksOff("ab café".encode()[:-1]))  # half of the "é"
    text = "".join(decoded_chunks(src, ReadContext(ReadOptions(warn=False), report), "a file"))
    assert text == "ab caf\ufffd" and report.replaced_bytes == {"cut.txt": 1}
    (error,) = report.read_errors
    assert error["position"] == "byte 7 (decompressed)" and "connection reset" in error["reason"]


def test_truncated_gz_and_bz2_keep_what_came_before(tmp_path: Path) -> None:
    lines = b"".join(
        json.dumps({"text": f"record {i} " * 20}).encode() + b"\n" for i in range(3000)
    )
    gz = gzip.compress(lines)
    (tmp_path / "cut.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    small_blocks = bz2.compress(lines, compresslevel=1)  # 100 kB blocks: several in the file
    (tmp_path / "cut.txt.bz2").write_bytes(small_blocks[: len(small_blocks) // 2])
    (tmp_path / "one_block.txt.bz2").write_bytes(bz2.compress(lines)[:1000])
    (tmp_path / "z_after.txt").write_text("the next file is read\n")
    docs, report = read([tmp_path])
    records = [d for d in docs if name(d) == "cut.jsonl.gz"]
    assert len(records) > 100 and records[-1].text.startswith(f"record {len(records) - 1} ")
    (text,) = [d.text for d in docs if name(d) == "cut.txt.bz2"]
    assert 100_000 < len(text) < len(lines) and lines.decode().startswith(text)
    assert docs[-1].text == "the next file is read\n"
    errors = {Path(e["path"]).name: e for e in report.read_errors}
    assert set(errors) == {"cut.jsonl.gz", "cut.txt.bz2", "one_block.txt.bz2"}
    assert re.fullmatch(r"byte \d+ \(decompressed\)", errors["cut.jsonl.gz"]["position"])
    assert errors["cut.txt.bz2"]["position"] == f"byte {len(text)} (decompressed)"
    assert errors["one_block.txt.bz2"]["position"] == "byte 0 (decompressed)"
    assert errors["cut.txt.bz2"]["reason"].startswith("EOFError")
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: reading stopped at byte \d+"):
        read([tmp_path / "cut.jsonl.gz"], on_bad_record="fail")


def test_huge_single_lines_stay_out_of_memory(tmp_path: Path) -> None:
    line = "x" * (50 * 2**20)
    (tmp_path / "a.jsonl").write_text(
        '{"text": "before"}\n{"text": "' + line + '"}\n{"text": "after"}\n'
    )
    (tmp_path / "b.txt").write_text(line)
    del line
    tracemalloc.start()
    try:
        report = ReadReport()
        sizes = [
            (name(d), len(d.text))
            for d in iter_documents([tmp_path], report=report, max_record_bytes=8 * 2**20)
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes[:2] == [("a.jsonl", 6), ("a.jsonl", 5)]  # "before", "after"
    assert sum(n for f, n in sizes if f == "b.txt") == 50 * 2**20
    assert max(n for f, n in sizes if f == "b.txt") <= 2_000_000  # parts of ~1M characters
    assert report.bad_record_examples == [
        f"{tmp_path / 'a.jsonl'}:2: a line of 52,428,813 characters, over "
        "max_record_bytes=8,388,608"
    ]
    assert peak < 40 * 2**20, peak  # never the whole 50 MB line at once


def test_empty_and_utf16_files(tmp_path: Path) -> None:
    for fname in ("e.txt", "e.jsonl", "e.html", "e.warc.gz", "e.csv"):
        (tmp_path / fname).write_bytes(b"")
    (tmp_path / "e.xml.bz2").write_bytes(bz2.compress(b""))
    rows = '{"text": "héllo"}\n{"text": "wörld ✓"}\n'
    (tmp_path / "u16.jsonl").write_bytes(rows.encode("utf-16"))
    docs, report = read([tmp_path], on_bad_record="skip")
    assert [d.text for d in docs if d.text] == ["héllo", "wörld ✓"]
    empty = {Path(p).name for p in report.empty_files}
    assert empty == {"e.txt", "e.jsonl", "e.html", "e.warc.gz", "e.csv"}
    assert detect_format(tmp_path / "e.xml.bz2") is None  # no <mediawiki> root to detect


def test_prepare_reads_web_sources(tmp_path: Path, capsys) -> None:
    inputs = [
        str(shared("warc-sample/whirlwind.warc.wet.gz")),
        str(shared("warc-sample/warcio-example.warc.gz")),
        str(shared("wikipedia-sample/enwiki-table-markup.xml.bz2")),
        str(shared("html-sample/lemire.me.json.html")),
    ]
    out = tmp_path / "prepared"
    assert main(["data", "prepare", *inputs, "--out", str(out), "--no-progress"]) == 0
    manifest = read_manifest(out)
    assert manifest["documents_read"] == 1 + 1 + 5 + 1
    assert manifest["read_report"]["skipped_records"]["warc request record"] == 2
    records = [
        json.loads(line)
        for split in ("train", "val", "test")
        for line in open(out / f"{split}-00000.jsonl", encoding="utf-8")
    ]
    assert any(r["text"].startswith("This domain is established") for r in records)
    # What the command prints is what it wrote: every document read, in some split.
    printed = capsys.readouterr().out
    assert sum(info["documents"] for info in manifest["splits"].values()) == 8
    for split, info in manifest["splits"].items():
        assert f"{split:>5}: {info['documents']:,} documents" in printed
    assert f"wrote {out}/manifest.json" in printed
