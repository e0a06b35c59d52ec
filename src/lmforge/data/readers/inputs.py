"""From the inputs a person names (files, folders, globs) to the reader of each file.

`detect_format` goes by suffix, looking inside the file only where the name cannot say: an
`.xml` file is read only when its root is `<mediawiki>`, and a file with an unknown suffix
(Wikipedia names its dump slices `...xml-p10p30302.bz2`) is read when it starts like a
MediaWiki dump or a WARC file. `list_input_files` expands folders (recursively, sorted, hidden
entries skipped), glob patterns and saved Hugging Face datasets into `(path, format,
compression)` entries; `read_file` reads one entry, and `iter_documents` all of them.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from lmforge.config import ConfigError
from lmforge.data.document import DataError, Document
from lmforge.data.readers.base import (
    COMPRESSIONS,
    STREAM_ERRORS,
    ReadContext,
    ReadOptions,
    ReadReport,
    Source,
    bom_encoding,
    decompress,
    read_exact,
)
from lmforge.data.readers.files import read_csv, read_jsonl, read_parquet, read_text
from lmforge.data.readers.hf_datasets import is_saved_dataset, read_hf_dataset, require_datasets
from lmforge.data.readers.html import read_html
from lmforge.data.readers.warc import read_warc
from lmforge.data.readers.wikipedia import read_wikipedia

log = logging.getLogger(__name__)

FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".warc": "warc",
    ".wet": "warc",
    ".xml": "wikipedia",
    ".zip": "zip",
}
# Formats whose files must be seekable, so they cannot be compressed as a whole.
_UNCOMPRESSED_ONLY = ("parquet", "zip")
_SUPPORTED = (
    f"{' '.join(FORMATS)} (.xml: MediaWiki dumps), optionally compressed as "
    f"{' '.join(COMPRESSIONS)} (e.g. x.jsonl.gz, x.warc.gz, x.xml.bz2), and folders saved by "
    "Hugging Face datasets"
)
_HINTS = {
    ".wat": "WAT files hold only metadata; read the matching .warc or .wet file",
    ".xml": "an .xml file is read only when it is a MediaWiki dump (root <mediawiki>)",
}
_SNIFF_BYTES = 4096


def _sniff(opener: Callable[[], BinaryIO], compression: str | None) -> str | None:
    """The format a file's first bytes show: "wikipedia", "warc" or None."""
    try:
        with opener() as raw, decompress(raw, compression) as f:
            head = read_exact(f, _SNIFF_BYTES)
    except (*STREAM_ERRORS, OSError):
        return None
    text = head.decode(bom_encoding(head), errors="ignore").lstrip("\ufeff \t\r\n")
    while text.startswith(("<?", "<!--")):  # an XML declaration, a comment
        end = text.find("?>" if text.startswith("<?") else "-->")
        if end == -1:
            return None
        text = text[end + (2 if text.startswith("<?") else 3) :].lstrip()
    if text.startswith("<mediawiki"):
        return "wikipedia"
    if text.startswith("WARC/"):
        return "warc"
    return None


def detect_format(
    path: str | os.PathLike, opener: Callable[[], BinaryIO] | None = None
) -> tuple[str, str | None] | None:
    """`(format, compression)` of a file, or None when it is not readable.

    `opener` returns the stored bytes (default: open `path`); it is used only for `.xml` and
    unknown suffixes. Formats: text, jsonl, parquet, csv, tsv, html, warc, wikipedia, zip.
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    last = suffixes[-1] if suffixes else ""
    fmt = FORMATS.get(last)
    if fmt in _UNCOMPRESSED_ONLY and compression:
        return None
    if last in _HINTS and fmt is None:
        return None
    if fmt is None or fmt == "wikipedia":
        sniffed = _sniff(opener or partial(open, path, "rb"), compression)
        if fmt == "wikipedia" and sniffed != "wikipedia":
            return None
        if sniffed is None:
            return None
        fmt = sniffed
    return fmt, compression


def _cannot_read(p: Path) -> DataError:
    suffix = next((s.lower() for s in reversed(p.suffixes) if s.lower() in _HINTS), None)
    hint = f" ({_HINTS[suffix]})" if suffix else ""
    return DataError(
        f"{p}: cannot read files named like this (suffix {''.join(p.suffixes)!r}){hint}; "
        f"readable: {_SUPPORTED}; rename or convert the file"
    )


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _walk(p: Path, report: ReadReport, exclude: Path | None) -> list[tuple[Path, str, str | None]]:
    found, skipped = [], []
    for root, dirs, files in os.walk(p):
        if is_saved_dataset(Path(root)):
            require_datasets(Path(root))
            found.append((Path(root), "hf_dataset", None))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if exclude is not None and exclude.parent == Path(root).resolve():
            if exclude.name in dirs:  # the output folder inside an input folder
                dirs.remove(exclude.name)
                report.skip_file(exclude, "the output folder")
        for name in sorted(files):
            if name.startswith("."):
                continue
            fp = Path(root) / name
            kind = detect_format(fp)
            if kind is None:
                skipped.append(fp)
                report.skip_file(fp, "unknown suffix")
            else:
                found.append((fp, *kind))
    if skipped:
        log.info("skipped %d file(s) with unknown suffixes in %s", len(skipped), p)
    if not found:
        names = ", ".join(f.name for f in skipped[:5]) or "none"
        raise DataError(
            f"folder {p} holds no readable files (non-hidden files seen: {names}); "
            f"readable: {_SUPPORTED}"
        )
    return found


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def list_input_files(
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    report: ReadReport | None = None,
    exclude: str | os.PathLike | None = None,
) -> list[tuple[Path, str, str | None]]:
    """Expand files, folders and glob patterns into `(path, format, compression)` entries.

    Folders are walked recursively in sorted order, hidden files and folders skipped; a folder
    saved by Hugging Face `datasets` is one entry of format "hf_dataset". Files with an
    unknown suffix inside a folder (or matched by a pattern) are skipped and recorded in
    `report`; a file named directly must be readable. `exclude` is a folder left out of the
    folders and patterns (the output folder of a run that reads its parent folder); naming
    something inside it directly is a `ConfigError`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise DataError("no inputs given: pass at least one file, folder or glob pattern")
    report = report if report is not None else ReadReport()
    skip = Path(exclude).resolve() if exclude is not None else None
    out: list[tuple[Path, str, str | None]] = []
    for given in inputs:
        p = Path(given)
        if p.exists() and _inside(p, skip):
            raise ConfigError(
                f"input {p} is inside the output folder {exclude}, whose files the run "
                "replaces; write the output somewhere else"
            )
        if not p.exists() and _is_glob(str(given)):
            matches = sorted(glob.glob(str(given), recursive=True))
            if not matches:
                raise DataError(f"pattern {given} matched no files; check it (** matches folders)")
            found = []
            for m in map(Path, matches):
                if _inside(m, skip):
                    continue
                if m.is_dir():
                    found += _walk(m, report, skip)
                elif (kind := detect_format(m)) is None:
                    report.skip_file(m, "unknown suffix")
                else:
                    found.append((m, *kind))
            if not found:
                raise DataError(
                    f"pattern {given} matched no readable files; readable: {_SUPPORTED}"
                )
            out += found
        elif not p.exists():
            raise DataError(f"input {p} does not exist; check the path (it is read as given)")
        elif p.is_dir():
            out += _walk(p, report, skip)
        else:
            kind = detect_format(p)
            if kind is None:
                raise _cannot_read(p)
            out.append((p, *kind))
    return out


def _read_source(src: Source, fmt: str, ctx: ReadContext) -> Iterator[Document]:
    if fmt == "text":
        return read_text(src, ctx)
    if fmt == "jsonl":
        return read_jsonl(src, ctx)
    if fmt in ("csv", "tsv"):
        return read_csv(src, ctx, "\t" if fmt == "tsv" else ",")
    if fmt == "parquet":
        return read_parquet(src, ctx)
    if fmt == "html":
        return read_html(src, ctx)
    if fmt == "warc":
        return read_warc(src, ctx)
    if fmt == "wikipedia":
        return read_wikipedia(src, ctx)
    raise DataError(f"{src.name}: format {fmt!r} cannot be read here")


def _read_zip(path: Path, ctx: ReadContext) -> Iterator[Document]:
    """Members of a .zip archive, each read by its own suffix, in archive order."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable zip archive ({e}); is it truncated?") from e
    with zf:
        for info in zf.infolist():
            member = info.filename
            base = member.rsplit("/", 1)[-1]
            if info.is_dir() or not base or base.startswith(".") or "__MACOSX/" in member:
                continue
            name = f"{path}!{member}"
            opener = partial(zf.open, info)
            kind = detect_format(member, opener)
            if kind is None or kind[0] == "zip":
                reason = "unknown suffix" if kind is None else "an archive inside an archive"
                ctx.report.skip_file(name, reason)
                continue
            ctx.report.files_read.append(name)
            try:
                yield from _read_source(Source(name, opener, kind[1]), kind[0], ctx)
            except zipfile.BadZipFile as e:  # a corrupt member: the others may be fine
                ctx.read_error(name, "its data", e, "an intact archive member")


def read_file(
    path: Path, fmt: str, compression: str | None, ctx: ReadContext
) -> Iterator[Document]:
    """Documents of one `list_input_files` entry."""
    if fmt == "hf_dataset":
        return read_hf_dataset(path, ctx)
    if fmt == "zip":
        return _read_zip(path, ctx)
    return _read_source(Source(str(path), partial(open, path, "rb"), compression), fmt, ctx)


def iter_documents(
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    *,
    report: ReadReport | None = None,
    options: ReadOptions | None = None,
    **settings: Any,
) -> Iterator[Document]:
    """Stream the documents (parts of documents, for .txt/.md) of every input.

    `settings` are `ReadOptions` fields (`text_field`, `on_bad_record`, `max_part_chars`,
    `max_record_bytes`, `warn`, `html_fast`, ...), applied over `options`. With
    `on_bad_record="skip"` bad records and unreadable stretches are counted in `report`;
    with "fail" the first raises `DataError`.
    """
    opts = dataclasses.replace(options, **settings) if options else ReadOptions(**settings)
    report = report if report is not None else ReadReport()
    ctx = ReadContext(opts, report)
    for path, fmt, compression in list_input_files(inputs, report):
        report.files_read.append(str(path))
        yield from read_file(path, fmt, compression, ctx)
