"""Streaming readers: raw sources in, `Document`s out.

| source | suffix (an outer .gz/.bz2/.zst allowed unless noted) | module |
|---|---|---|
| plain text (one document, in parts) | .txt .md | files.py |
| JSON lines, CSV/TSV, Parquet (no outer compression) | .jsonl .json .csv .tsv .parquet | files.py |
| HTML pages, main text by trafilatura | .html .htm .xhtml | html.py |
| WARC (HTML responses) and WET (text) | .warc .wet .warc.wet (.gz per record) | warc.py |
| Wikipedia `pages-articles` XML dumps | .xml, or any file starting `<mediawiki` | wikipedia.py |
| zip archives (members read by their own suffix) | .zip | inputs.py |
| Hugging Face `datasets` saved with `save_to_disk` | a folder | hf_datasets.py |

Inputs are files, folders (read recursively) and glob patterns (`data/*.jsonl.gz`). Nothing
is read whole: text is decoded in chunks, records one at a time, dumps element by element.
Bad input is never a traceback: it is counted in the `ReadReport` with the file and position
(`file:LINE`, `file@BYTE` for WARC records, `archive.zip!member`), or raised as a `DataError`
naming them with `on_bad_record="fail"`. The crawler that writes WARC files for these readers
is `lmforge.data.crawl`.
"""

from lmforge.data.document import DataError, Document
from lmforge.data.readers.base import (
    BAD_RECORD_MODES,
    COMPRESSIONS,
    DEFAULT_MAX_PART_CHARS,
    DEFAULT_MAX_RECORD_BYTES,
    MAX_EXAMPLES,
    ReadContext,
    ReadOptions,
    ReadReport,
    Source,
)
from lmforge.data.readers.html import extract_html
from lmforge.data.readers.inputs import (
    FORMATS,
    detect_format,
    iter_documents,
    list_input_files,
    read_file,
)
from lmforge.data.readers.wikipedia import wikitext_to_text

__all__ = [
    "BAD_RECORD_MODES",
    "COMPRESSIONS",
    "DEFAULT_MAX_PART_CHARS",
    "DEFAULT_MAX_RECORD_BYTES",
    "FORMATS",
    "MAX_EXAMPLES",
    "DataError",
    "Document",
    "ReadContext",
    "ReadOptions",
    "ReadReport",
    "Source",
    "detect_format",
    "extract_html",
    "iter_documents",
    "list_input_files",
    "read_file",
    "wikitext_to_text",
]
