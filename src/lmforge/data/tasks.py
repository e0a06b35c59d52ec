"""Map tasks of the data pipeline: cutting the inputs into tasks, running one, reading it back.

A task is a group of small input files, one file, or every n-th record of a large file (each
such task reads the whole file but extracts, runs the steps on and reports on only its share;
see `plan_tasks`). Running a task reads its documents, runs the steps in order, counts per step the
documents and bytes in and out and the reasons for drops, gives every kept text the cleaning of
`data prepare` (line endings, control characters, NFC; texts left empty are dropped as
`output: empty`), and writes, under temporary names renamed into place when the task is complete.
The parts of a large document are kept or dropped together (see `_Judged`): when a step rejects
one part, every part is dropped and the document is counted once, with that part's reason.

- `work/map/task-NNNNN.jsonl`: the kept documents, each with its key (input file, document,
  part), in that order;
- `work/map/task-NNNNN.npz`: the keys, byte sizes, exact-dedup hashes and MinHash signatures,
  so that dedup never reads the texts (numpy arrays, loaded without pickle);
- `rejected/task-NNNNN.jsonl`, with `write_rejected`: each dropped document (every part of a
  large one) with its step, reason and detail;
- `work/map/task-NNNNN.json`: the counts, renamed last; a task with this file is done, and a
  rerun skips it.

`run_task` is the one function every engine runs, locally or on a dask worker.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data import engines
from lmforge.data.clean.base import Kept, Rejected, Step
from lmforge.data.dedup import DedupConfig, Signer
from lmforge.data.document import DataError, Document
from lmforge.data.prepare import clean_text
from lmforge.data.readers import ReadContext, ReadOptions, ReadReport, read_file

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 200  # documents between progress messages from a worker
# Formats whose records a reader numbers, so that several tasks can share a large file (see
# plan_tasks and `ReadContext.shard`).
_SPLITTABLE = ("jsonl", "csv", "tsv", "parquet", "hf_dataset", "warc", "wikipedia")


@dataclass(frozen=True)
class Task:
    """One unit of map work: whole files, or every `stride`-th record of one file, from record
    `offset` on (the reader's `ReadContext.shard` is `(offset, stride)`)."""

    index: int
    # (input number, path, format, compression), as `list_input_files` gives them
    files: tuple[tuple[int, str, str, str | None], ...]
    stride: int = 1
    offset: int = 0


def plan_tasks(
    files: list[tuple[Path, str, str | None]], task_bytes: int, max_file_splits: int
) -> list[Task]:
    """Cut the inputs into tasks; the plan depends only on the inputs and these settings.

    Small files are grouped into tasks of about a sixteenth of the input (at least 1 MiB, at
    most `task_bytes`), so that even a small corpus keeps several workers busy. A larger file
    of numbered records (JSONL, CSV/TSV, Parquet, a saved dataset, WARC, a Wikipedia dump)
    is cut into `ceil(size / task_bytes)` (at most `max_file_splits`) tasks that each read
    the whole file, which is cheap (decompressing and splitting it into records), and extract,
    clean and report on every n-th record, which is not (HTML extraction, wikitext parsing,
    the steps). Text, HTML and zip files are read whole by one task.
    """
    sizes = [_bytes(path) for path, _, _ in files]
    group_bytes = min(task_bytes, max(2**20, sum(sizes) // 16))
    tasks: list[Task] = []
    group: list[tuple[int, str, str, str | None]] = []
    size = 0

    def flush() -> None:
        nonlocal group, size
        if group:
            tasks.append(Task(index=len(tasks), files=tuple(group)))
        group, size = [], 0

    for i, ((path, fmt, compression), n) in enumerate(zip(files, sizes)):
        entry = (i, str(path), fmt, compression)
        if n > group_bytes:
            flush()
            splits = min(max_file_splits, -(-n // task_bytes)) if fmt in _SPLITTABLE else 1
            for k in range(splits):
                tasks.append(Task(index=len(tasks), files=(entry,), stride=splits, offset=k))
            continue
        if size and size + n > group_bytes:
            flush()
        group.append(entry)
        size += n
    flush()
    return tasks


def task_units(tasks: list[Task]) -> list[list[Task]]:
    """Consecutive tasks whose documents interleave (the strides of one file) form a unit."""
    units: list[list[Task]] = []
    for t in tasks:
        if t.stride > 1 and t.offset > 0:
            units[-1].append(t)
        else:
            units.append([t])
    return units


@dataclass(frozen=True)
class MapSpec:
    """What every map task needs, sent to the workers."""

    work_dir: str
    rejected_dir: str
    read: ReadOptions
    keep_meta: bool
    write_rejected: bool
    dedup: DedupConfig
    steps: tuple[Step, ...]
    steps_key: str


def task_paths(work_dir: str | Path, index: int) -> dict[str, Path]:
    """A map task's files: kept documents, dedup index, and the stats that mark it done."""
    base = Path(work_dir) / "map" / f"task-{index:05d}"
    return {
        "docs": base.with_suffix(".jsonl"),
        "index": base.with_suffix(".npz"),
        "stats": base.with_suffix(".json"),
    }


# Per worker process: the steps already set up, by `MapSpec.steps_key`.
_READY_STEPS: dict[str, tuple[Step, ...]] = {}


def _ready_steps(spec: MapSpec) -> tuple[Step, ...]:
    if spec.steps_key not in _READY_STEPS:
        for step in spec.steps:
            step.setup()
        _READY_STEPS.clear()
        _READY_STEPS[spec.steps_key] = spec.steps
    return _READY_STEPS[spec.steps_key]


def new_row(name: str) -> dict[str, Any]:
    row = {"name": name, "docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0}
    return row | {"dropped": {}, "notes": {}}  # notes: documents kept with a `Kept` note


class StepError(DataError):
    """A step raised on a document; the message names the step, the document and the task."""


class _Judged:
    """What the parts of one document did so far; its last part decides how it is counted.

    Keeping or dropping is decided for the whole document: once a step rejects one part, the
    document's earlier parts are taken back out of the task's output and its later parts are
    not run through the steps (they count with their read size up to the step that dropped
    the document). Each row then counts the document once, and its bytes in and out are those
    of its parts, so every row still starts from what the row above kept.
    """

    __slots__ = ("start", "index_len", "read", "bytes_in", "bytes_out", "unjudged", "rejected")
    __slots__ += ("rejected_part", "written", "empty", "notes")

    def __init__(self, n_steps: int, start: int, index_len: int) -> None:
        self.start, self.index_len = start, index_len  # where its records and index begin
        self.read = 0
        self.bytes_in = [0] * (n_steps + 1)  # per step, then the output cleaning
        self.bytes_out = [0] * (n_steps + 1)
        self.unjudged = 0  # bytes of the parts after the rejected one
        self.rejected: tuple[int, Rejected] | None = None  # (step number, why)
        self.rejected_part = -1
        self.written = 0  # parts written, not empty after cleaning
        self.empty: list[Document] = []  # parts empty after cleaning (for write_rejected)
        self.notes: dict[int, set[str]] | None = None  # by step number, from `Kept`

    def count(self, rows: list[dict[str, Any]]) -> None:
        """Add the whole document to `rows` (read, one per step, output)."""
        read, steps, out = rows[0], rows[1:-1], rows[-1]
        read["docs_out"] += 1
        read["bytes_out"] += self.read
        k = self.rejected[0] if self.rejected else len(steps)
        for j, row in enumerate(steps[: k + 1] if self.rejected else steps):
            row["docs_in"] += 1
            row["bytes_in"] += self.bytes_in[j] + self.unjudged
            for note in self.notes.get(j, ()) if self.notes else ():
                row["notes"][note] = row["notes"].get(note, 0) + 1
            if j < k:
                row["docs_out"] += 1
                row["bytes_out"] += self.bytes_out[j] + self.unjudged
        if self.rejected:
            reason = self.rejected[1].reason
            steps[k]["dropped"][reason] = steps[k]["dropped"].get(reason, 0) + 1
            return
        out["docs_in"] += 1
        out["bytes_in"] += self.bytes_in[-1]
        if self.written:
            out["docs_out"] += 1
            out["bytes_out"] += self.bytes_out[-1]
        else:
            out["dropped"]["empty"] = out["dropped"].get("empty", 0) + 1


def _run_steps(
    doc: Document, nbytes: int, steps: tuple[Step, ...], judged: _Judged, task: int
) -> tuple[Document, int] | tuple[int, Rejected]:
    """Run `doc` (of `nbytes`) through the steps: `(document, bytes)` or `(step number, why
    dropped)`; the bytes in and out of each step are added to `judged`."""
    for j, step in enumerate(steps):
        judged.bytes_in[j] += nbytes
        text = doc.text
        try:
            result = step.process(doc)
        except Exception as e:
            raise StepError(
                f"step {step.name!r} failed on document {doc.id!r} ({doc.source}) in map task "
                f"{task}: {type(e).__name__}: {e}; finished tasks are kept, so fix the step "
                "or the input and run again to go on"
            ) from e
        if isinstance(result, Rejected):
            return j, result
        if isinstance(result, Kept):
            if judged.notes is None:
                judged.notes = {}
            judged.notes.setdefault(j, set()).add(result.note)
            result = result.doc
        doc = result
        if doc.text is not text:
            nbytes = len(doc.text.encode("utf-8"))
        judged.bytes_out[j] += nbytes
    return doc, nbytes


class _Output:
    """A map task's kept records and their dedup index, as they are written."""

    def __init__(self, docs: Any, rejected: Any, spec: MapSpec, names: list[str]) -> None:
        self.docs, self.rejected, self.spec, self.names = docs, rejected, spec, names
        self.signer = Signer(spec.dedup)
        self.keys: list[list[int]] = []
        self.nbytes: list[int] = []
        self.digests: list[bytes] = []
        self.sigs: list[np.ndarray] = []

    def write(self, key: list[int], doc: Document, text: str) -> int:
        """Write a kept part with its cleaned `text`; its size in bytes."""
        record = {"k": key, "id": doc.id, "source": doc.source, "text": text}
        record["multi"] = doc.part > 0 or not doc.last
        if self.spec.keep_meta and doc.meta:
            record["meta"] = doc.meta
        self.docs.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        size = len(text.encode("utf-8"))
        digest, sig = self.signer(text)
        self.keys.append(key)
        self.nbytes.append(size)
        self.digests.append(digest)
        if sig is not None:
            self.sigs.append(sig)
        return size

    def drop(self, judged: _Judged, doc: Document) -> None:
        """`doc` was rejected: take back its document's parts written so far (to the rejected
        file, with `write_rejected`, in part order, the rejected part last)."""
        if self.spec.write_rejected:
            _take_back(self.docs, self.rejected, judged, self.names, doc)
        else:
            self.docs.seek(judged.start)
            self.docs.truncate()
        n = judged.index_len
        del self.keys[n:], self.nbytes[n:], self.digests[n:], self.sigs[n:]

    def save_index(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(
                f,
                keys=np.array(self.keys, dtype=np.int64).reshape(-1, 3),
                nbytes=np.array(self.nbytes, dtype=np.int64),
                digests=np.frombuffer(b"".join(self.digests), dtype=np.uint8).reshape(-1, 16),
                sigs=np.array(self.sigs, dtype=np.uint32).reshape(
                    len(self.sigs), self.spec.dedup.num_perm
                ),
            )


def _map_part(
    doc: Document,
    key: list[int],
    judged: _Judged,
    steps: tuple[Step, ...],
    output: _Output,
    task: Task,
) -> None:
    """Run one part through the steps and write it, or drop its whole document."""
    size = len(doc.text.encode("utf-8"))
    judged.read += size
    if judged.rejected is not None:  # an earlier part dropped the document
        judged.unjudged += size
        if output.spec.write_rejected:
            _write_dropped_part(output.rejected, doc, output.names, judged)
        return
    result = _run_steps(doc, size, steps, judged, task.index)
    if isinstance(result[1], Rejected):
        judged.rejected, judged.rejected_part = result, doc.part
        output.drop(judged, doc)
        return
    doc, size = result
    judged.bytes_in[-1] += size
    text, _ = clean_text(doc.text)
    if text.strip():
        judged.bytes_out[-1] += output.write(key, doc, text)
        judged.written += 1
    elif output.spec.write_rejected:  # dropped as empty only if every part is
        judged.empty.append(doc)


def run_task(task: Task, spec: MapSpec) -> dict[str, Any]:
    """Run one map task (or return the stats of its finished run); the same in every engine."""
    paths = task_paths(spec.work_dir, task.index)
    if paths["stats"].exists():
        return json.loads(paths["stats"].read_text(encoding="utf-8"))
    t0 = time.time()
    steps = _ready_steps(spec)
    rows = [new_row(s.name) for s in steps]
    read, out = new_row("read"), new_row("output")
    all_rows = [read, *rows, out]
    report = ReadReport()
    tmp = {k: p.with_name(f".{p.name}.tmp-{os.getpid()}") for k, p in paths.items()}
    rejected_path = Path(spec.rejected_dir) / f"task-{task.index:05d}.jsonl"
    rejected_tmp = rejected_path.with_name(f".{rejected_path.name}.tmp-{os.getpid()}")
    tmp["docs"].parent.mkdir(parents=True, exist_ok=True)
    if spec.write_rejected:
        rejected_path.parent.mkdir(parents=True, exist_ok=True)
    pending = 0
    try:
        with (
            open(tmp["docs"], "w+b") as docs_out,
            open(rejected_tmp if spec.write_rejected else os.devnull, "w", encoding="utf-8") as rej,
        ):
            output = _Output(docs_out, rej, spec, [s.name for s in steps])
            for file_no, path, fmt, compression in task.files:
                judged: _Judged | None = None
                for doc_no, doc in _documents(path, fmt, compression, spec, report, task):
                    pending += 1
                    if pending == _PROGRESS_EVERY:
                        engines.report_progress(pending)
                        pending = 0
                    if doc.part == 0:
                        if judged is not None:  # a document whose last part never came
                            judged.count(all_rows)
                        judged = _Judged(len(steps), docs_out.tell(), len(output.keys))
                    _map_part(doc, [file_no, doc_no, doc.part], judged, steps, output, task)
                    if doc.last:
                        if spec.write_rejected and not judged.written and judged.rejected is None:
                            for part in judged.empty:
                                _write_rejected(rej, part, "output", Rejected("empty"))
                        judged.count(all_rows)
                        judged = None
                if judged is not None:
                    judged.count(all_rows)
        output.save_index(tmp["index"])
        read["docs_in"], read["bytes_in"] = read["docs_out"], read["bytes_out"]
        stats = {
            "task": task.index,
            "steps": all_rows,
            "read_report": report.to_dict(),
            "seconds": round(time.time() - t0, 3),
            "finished_at": time.time(),
        }
        with open(tmp["stats"], "w", encoding="utf-8") as f:
            json.dump(stats, f)
        os.replace(tmp["docs"], paths["docs"])
        os.replace(tmp["index"], paths["index"])
        if spec.write_rejected:
            os.replace(rejected_tmp, rejected_path)
        os.replace(tmp["stats"], paths["stats"])  # last: its presence marks the task done
    finally:
        for p in [*tmp.values(), rejected_tmp]:
            p.unlink(missing_ok=True)
    engines.report_progress(pending)
    return stats


def _documents(
    path: str, fmt: str, compression: str | None, spec: MapSpec, report: ReadReport, task: Task
) -> Iterator[tuple[int, Document]]:
    """`(document number in the file, document or part)` for this task's share of `path`.

    A file shared by several tasks is numbered by its records (`ReadContext.record`), so that
    the documents of all its tasks sort in file order; each task yields only its own.
    """
    ctx = ReadContext(spec.read, report, shard=(task.offset, task.stride))
    if ctx.reports_file:
        report.files_read.append(path)
    doc_no = -1
    try:
        for doc in read_file(Path(path), fmt, compression, ctx):
            doc_no = ctx.record if task.stride > 1 else doc_no + (doc.part == 0)
            yield doc_no, doc
    except DataError as e:
        if spec.read.on_bad_record == "fail":
            raise
        if not ctx.reports_file:  # every task sharing the file stops here; one reports it
            return
        # The readers count most bad input themselves; what they raise ends this file only.
        where = f"record {ctx.record + 1}" if task.stride > 1 else f"{doc_no + 1} document(s)"
        log.warning("%s: stopped reading after %s: %s", path, where, e)
        report.read_errors.append({"path": path, "position": f"after {where}", "reason": str(e)})


def _bytes(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_rejected(f, doc: Document, step: str, why: Rejected, rejected_part: int = 0) -> None:
    record = {"id": doc.id, "source": doc.source, "step": step, "reason": why.reason}
    if why.detail:
        record["detail"] = why.detail
    if doc.part > 0 or not doc.last:  # one line per part; `rejected_part` is the one judged
        record["part"] = doc.part
        record["rejected_part"] = rejected_part
    record["text"] = doc.text
    f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_dropped_part(f, doc: Document, names: list[str], judged: _Judged) -> None:
    step, why = judged.rejected
    _write_rejected(f, doc, names[step], why, judged.rejected_part)


def _take_back(docs_out, rej, judged: _Judged, names: list[str], doc: Document) -> None:
    """Move the parts of a rejected document written so far from the task's output to the
    rejected file (in part order, with the part that was rejected last)."""
    docs_out.seek(judged.start)
    earlier = [(p.part, p) for p in judged.empty]
    for line in docs_out:
        rec = json.loads(line)
        part = Document(text=rec["text"], id=rec["id"], source=rec["source"], last=False)
        part.part = rec["k"][2]
        earlier.append((part.part, part))
    docs_out.seek(judged.start)
    docs_out.truncate()
    for _, part in sorted(earlier, key=lambda x: x[0]):
        _write_dropped_part(rej, part, names, judged)
    _write_dropped_part(rej, doc, names, judged)


def load_unit_index(work: Path, unit: list[Task]) -> dict[str, np.ndarray]:
    """The dedup index of a unit's documents, in (file, document, part) order."""
    parts = []
    for t in unit:
        with np.load(task_paths(work, t.index)["index"], allow_pickle=False) as z:
            parts.append({k: z[k] for k in z.files})
    index = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keys = index["keys"]
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    return {k: v[order] if len(v) else v for k, v in index.items()}


def task_records(work: Path, task: Task) -> Iterator[dict[str, Any]]:
    with open(task_paths(work, task.index)["docs"], encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def unit_records(work: Path, unit: list[Task]) -> Iterator[dict[str, Any]]:
    if len(unit) == 1:
        return task_records(work, unit[0])
    return heapq.merge(*(task_records(work, t) for t in unit), key=lambda r: r["k"])
