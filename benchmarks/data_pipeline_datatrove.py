"""The datatrove side of `benchmarks/data_pipeline.py`: one run, in a process of its own.

    python benchmarks/data_pipeline_datatrove.py CONFIG.json

CONFIG (written by data_pipeline.py) names the input folders (html/, warc/, wiki/), the work
folder, the number of tasks and workers, the MinHash bands, rows and shingle size, and the
word tokenizer. The run is six `LocalPipelineExecutor` stages, the way datatrove's own
examples (examples/fineweb.py, examples/minhash_deduplication.py) chain them:

1. read -> `Trafilatura` -> `FTFYFormatter` -> whitespace -> `GopherRepetitionFilter` ->
   `GopherQualityFilter` -> `JsonlWriter` (mid1) -> `ExactDedupSignature`
2. `ExactFindDedups`
3. mid1 -> `ExactDedupFilter` -> `JsonlWriter` (mid2) -> `MinhashDedupSignature`
4. `MinhashDedupBuckets`, one task per band
5. `MinhashDedupCluster`
6. mid2 -> `MinhashDedupFilter` -> `JsonlWriter` (out)

Exact and MinHash dedup take separate passes because both filters find the documents to drop
by their position in the stream they read. Written here, because datatrove has no such step:
a reader of HTML files (one document per file) and a formatter with lmforge's
`normalize_whitespace` rules; and, for `tokenizer = "whitespace"`, a word tokenizer that
splits at whitespace (datatrove's default for English is spaCy's rule-based tokenizer).
Writes result.json (stage wall times, documents after extraction) into the work folder.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.formatters import FTFYFormatter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers import JsonlReader, WarcReader
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.text import simplify_text
from datatrove.utils.word_tokenizers import WordTokenizer

_RUN = re.compile(r"[^\S\n]+")
_TRAILING = re.compile(r"[^\S\n]+$", re.MULTILINE)
_LEADING = re.compile(r"^[^\S\n]+", re.MULTILINE)
_BLANKS = re.compile(r"\n{3,}")


class HtmlFileReader(BaseDiskReader):
    """One document per HTML file, its text the raw page (for the Trafilatura extractor)."""

    name = "HTML files"

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "rb") as f:
            data = f.read()
        with self.track_time():
            text = data.decode("utf-8", "replace")
            doc = self.get_document_from_dict({"text": text, "id": filepath}, filepath, 0)
        if doc:
            yield doc


class WhitespaceFormatter(BaseFormatter):
    """lmforge's `normalize_whitespace` defaults: runs of spaces as one, no spaces at line
    ends or starts, at most one blank line in a row."""

    name = "whitespace"

    def format(self, text: str) -> str:
        text = _TRAILING.sub("", text.replace("\r\n", "\n"))
        text = _LEADING.sub("", _RUN.sub(" ", text)).strip()
        return _BLANKS.sub("\n\n", text)


class SplitTokenizer(WordTokenizer):
    """Words split at whitespace, as in the Gopher paper and in lmforge."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in text.split("\n") if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"[^\n]+", text)]


def exact_key(doc: Document) -> str:
    """What exact dedup hashes: datatrove's own normalization (case, punctuation, digits)."""
    return simplify_text(doc.text)


def stages(c: dict) -> list[tuple[str, int, list]]:
    """`(name, tasks, pipeline)` of each stage, in order."""
    work, tasks = Path(c["work"]), c["tasks"]

    def w(name: str) -> str:
        return str(work / name)

    language = SplitTokenizer() if c["tokenizer"] == "whitespace" else c["tokenizer"]
    mh = MinhashConfig(n_grams=c["shingle"], num_buckets=c["bands"], hashes_per_bucket=c["rows"])
    ex = ExactDedupConfig(content_getter=exact_key)
    extract_filter = [
        HtmlFileReader(c["html"]),
        WarcReader(c["warc"]),
        # lmforge has no time limit per page; datatrove's default (1 s) drops slow pages
        Trafilatura(favour_precision=True, deduplicate=False, timeout=60),
        JsonlReader(c["wiki"]),  # after the extractor: these are text already
        FTFYFormatter(fix_latin_ligatures=True, normalization="NFC"),
        WhitespaceFormatter(),
        GopherRepetitionFilter(language=language),
        GopherQualityFilter(language=language),
        JsonlWriter(w("mid1"), compression=None),
        ExactDedupSignature(w("exact_sigs"), config=ex),
    ]
    exact_filter = [
        JsonlReader(w("mid1")),
        ExactDedupFilter(w("exact_dups"), config=ex),
        JsonlWriter(w("mid2"), compression=None),
        MinhashDedupSignature(w("mh_sigs"), config=mh, language=language),
    ]
    minhash_filter = [
        JsonlReader(w("mid2")),
        MinhashDedupFilter(w("mh_remove")),
        JsonlWriter(w("out"), compression=None, max_file_size=64 * 2**20),
    ]
    return [
        ("1_extract_filter", tasks, extract_filter),
        ("2_exact_find", 1, [ExactFindDedups(w("exact_sigs"), w("exact_dups"), config=ex)]),
        ("3_exact_filter_minhash_sigs", tasks, exact_filter),
        (
            "4_minhash_buckets",
            mh.num_buckets,
            [MinhashDedupBuckets(w("mh_sigs"), w("mh_buckets"), config=mh)],
        ),
        ("5_minhash_cluster", 1, [MinhashDedupCluster(w("mh_buckets"), w("mh_remove"), mh)]),
        ("6_minhash_filter_write", tasks, minhash_filter),
    ]


def main(config_path: str) -> None:
    c = json.loads(Path(config_path).read_text())
    work = Path(c["work"])
    seconds, stats = {}, {}
    for name, n, pipeline in stages(c):
        t0 = time.perf_counter()
        logs = work / "logs" / name
        LocalPipelineExecutor(
            pipeline, tasks=n, workers=min(c["workers"], n), logging_dir=str(logs)
        ).run()
        seconds[name] = round(time.perf_counter() - t0, 2)
        stats[name] = json.loads((logs / "stats.json").read_text())
        if name == "1_extract_filter":
            written = len(list((work / "mid1").glob("*.jsonl")))
            if written != c["tasks"]:  # later stages find documents by the rank of their file
                raise SystemExit(f"only {written} of {c['tasks']} tasks wrote documents")
    ftfy = next(s for s in stats["1_extract_filter"] if "FTFY" in s["name"])
    result = {"stage_wall_s": seconds, "docs_in": ftfy["stats"]["total"], "dropped": _drops(stats)}
    (work / "result.json").write_text(json.dumps(result))


def _drops(stats: dict[str, list[dict]]) -> dict[str, int]:
    """Documents dropped by each filter (by reason) and by each dedup, from datatrove's stats."""
    out: dict[str, int] = {}
    for steps in stats.values():
        for step in steps:
            name, counts = step["name"], step["stats"]
            if "FILTER" in name:
                for key, value in counts.items():
                    if key.startswith("dropped_"):
                        out[key.removeprefix("dropped_")] = value
            for what, label in (
                ("exact-deduplication stage 3", "exact_duplicate"),
                ("MinHash stage 4", "near_duplicate"),
            ):
                if what in name:
                    out[label] = counts.get("dropped", 0)
    return out


if __name__ == "__main__":
    main(sys.argv[1])
