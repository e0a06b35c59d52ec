"""`lmforge data pipeline`: raw sources to deduplicated train/val/test shards, every drop counted.

A recipe names the inputs, how to read them, the steps (see `lmforge.data.clean.base`) and
the dedup settings, one table each (`--table.field value` overrides any of them):

    [pipeline]
    inputs = ["corpus/"]
    workers = 2

    [read]
    text_field = "body"

    [[steps]]
    name = "fix_unicode"

    [dedup]
    threshold = 0.8

The run goes in three stages, datatrove-style, each of which a rerun skips once it is done:

1. *map*: the input files are cut into tasks (groups of small files, single files, or every
   n-th record of a large JSONL/CSV/Parquet/WARC/Wikipedia file; see `tasks.plan_tasks`). Worker
   processes (or dask) run the tasks; each reads its documents, runs the steps in order, counts per
   step the documents and bytes in and out and the reasons for drops, optionally writes the
   rejected documents aside, and writes the kept ones with their dedup hash and MinHash
   signature to `work/map/task-NNNNN.*`, renamed into place when the task is complete.
2. *dedup*: exact and near duplicates are found over the signatures in input order (see
   `lmforge.data.dedup`), reading only the small index files, never the texts.
3. *write*: the surviving documents are split by `prepare.split_of` and written as the same
   JSONL shards and `manifest.json` that `lmforge data prepare` writes, so `tokenizer
   train/encode` read them unchanged, plus `report.md` and `report.png`.

Documents are ordered by (input file, document, part) everywhere, so the output does not depend
on how many workers ran or on the engine (`local` processes or `dask`). Memory does not grow
with the bytes of input: tasks stream, and only the dedup index grows with the number of
documents.

Large text files arrive as parts that share an id (see `lmforge.data.document`). Steps and
dedup judge each part (a quality filter sees a ~1 MB part), but keeping is decided for the
whole document: if a step rejects any part, or any part repeats a kept document, every part
is dropped, and the document is counted once with the reason of the first rejected part. A
kept document's parts are written together, in order, to the split of the document's id, the
last one marked as ending the document; a corpus of exactly one document is cut into
contiguous train/val/test blocks, as `data prepare` does.

Every kept text finally gets the cleaning of `data prepare` (line endings, control characters,
NFC) so that the shards obey its format; texts left empty are dropped as `output: empty`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lmforge import __version__
from lmforge.config import ConfigError, apply_overrides, from_dict, load_toml, to_dict
from lmforge.data import engines
from lmforge.data.clean.base import Step, build_step
from lmforge.data.dedup import DedupConfig, Deduplicator
from lmforge.data.document import DataError, Document
from lmforge.data.prepare import (
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    Piece,
    check_split_fractions,
    split_of,
    write_contiguous,
)
from lmforge.data.readers import ReadOptions, ReadReport, list_input_files
from lmforge.data.report import merge_read_reports, merge_step_stats, write_report
from lmforge.data.shards import SplitWriters
from lmforge.data.tasks import (
    MapSpec,
    Task,
    load_unit_index,
    new_row,
    plan_tasks,
    run_task,
    task_paths,
    task_units,
    unit_records,
)
from lmforge.io import write_json_atomic

log = logging.getLogger(__name__)

ENGINES = ("local", "dask")
RECIPE_TABLES = ("pipeline", "read", "dedup", "steps")
WORK = "work"
REJECTED = "rejected"


@dataclass(kw_only=True)
class PipelineConfig:
    """A data pipeline: where the text comes from, the steps, dedup, and how output is cut."""

    # Files, folders (read recursively), glob patterns: anything the readers accept.
    inputs: list[str] = field(default_factory=list)
    # Processes running map tasks at once.
    workers: int = 1
    # "local": worker processes on this machine; "dask": dask's scheduler (pip install
    # lmforge[dask]) on this machine, or on the cluster at `dask_address`.
    engine: str = "local"
    dask_address: str = ""
    # Small input files are grouped into map tasks (a sixteenth of the input each, at most
    # this many bytes); a JSONL/CSV/Parquet/WARC/Wikipedia file (or saved dataset) larger than
    # this is cut into at most `max_file_splits` tasks that each take every n-th record. A
    # task is also the unit a rerun resumes from.
    task_bytes: int = 16 * 2**20
    max_file_splits: int = 8
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    # A new output shard starts once a shard would grow past this many bytes.
    shard_bytes: int = 64 * 2**20
    # Write dropped documents with their step, reason and detail to out/rejected/.
    write_rejected: bool = False
    # Keep each document's metadata (url, title, language...) as "meta" in the shards.
    keep_meta: bool = True
    # Keep out/work (the map and dedup results) after success, so that a rerun with other
    # dedup or split settings reuses them; false deletes it.
    keep_work: bool = True
    # How inputs are read (text field, bad records, HTML extraction...): the [read] table.
    read: ReadOptions = field(default_factory=ReadOptions)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # The steps in order, each {"name": ..., **settings}; see `lmforge data steps`.
    steps: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_split_fractions(self.val_fraction, self.test_fraction)
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}; expected one of {ENGINES}")
        if self.dask_address and self.engine != "dask":
            raise ValueError("dask_address is set but engine is not 'dask'; set engine = 'dask'")
        for name in ("workers", "task_bytes", "max_file_splits", "shard_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected 1 or more")
        self.build_steps()  # a bad step table is an error now, not in a worker

    def build_steps(self) -> list[Step]:
        """The configured steps, in order."""
        import lmforge.data.clean  # noqa: F401  (registers the library's steps)

        steps = []
        for i, table in enumerate(self.steps):
            if not isinstance(table, dict):
                raise ConfigError(f"[steps[{i}]]: expected a table like {{name = ...}}")
            steps.append(build_step(table, where=f"steps[{i}]"))
        return steps


def describe_steps() -> list[dict[str, Any]]:
    """Every registered step: its name, what it does, and its settings with type and default."""
    import lmforge.data.clean  # noqa: F401  (registers the library's steps)
    from lmforge.data.clean.base import STEPS

    out = []
    for name in sorted(STEPS):
        cls = STEPS[name]
        settings = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None  # required
            tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            default = json.loads(json.dumps(default, default=str))  # printable as JSON
            settings.append({"name": f.name, "type": tp, "default": default})
        doc = " ".join((cls.__doc__ or "").split())
        out.append({"name": name, "doc": doc, "settings": settings})
    return out


def _apply_step_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`steps.N.field` (N counts from 0) or `steps.NAME.field` (every step named NAME)."""
    steps = [dict(s) if isinstance(s, dict) else s for s in data.get("steps", [])]
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) != 3:
            raise ConfigError(f"override --{dotted}: expected --steps.NAME.FIELD or N.FIELD")
        _, which, key = parts
        hits = [
            i
            for i, s in enumerate(steps)
            if isinstance(s, dict) and (str(i) == which or s.get("name") == which)
        ]
        if not hits:
            names = [s.get("name") if isinstance(s, dict) else s for s in steps]
            raise ConfigError(f"override --{dotted}: no step {which!r}; the steps are {names}")
        for i in hits:
            steps[i][key] = value
    return {**data, "steps": steps}


def load_pipeline_config(
    recipe: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """A `PipelineConfig` from a TOML recipe (or defaults) plus `table.field` overrides."""
    data = load_toml(recipe) if recipe else {}
    unknown = sorted(set(data) - set(RECIPE_TABLES))
    if unknown:
        raise ConfigError(
            f"unknown table(s) {unknown} in recipe {recipe}; a pipeline recipe has "
            "[pipeline], [read], [dedup] and [[steps]]"
        )
    overrides = overrides or {}
    step_ov = {k: v for k, v in overrides.items() if k.startswith("steps.")}
    other = {k: v for k, v in overrides.items() if not k.startswith("steps.")}
    for key in other:
        if key.split(".")[0] not in RECIPE_TABLES:
            raise ConfigError(f"override --{key}: the tables are {', '.join(RECIPE_TABLES)}")
    data = _apply_step_overrides(apply_overrides(data, other), step_ov)
    pipeline = data.get("pipeline", {})
    for key in ("read", "dedup", "steps"):
        if key in pipeline:
            raise ConfigError(f"[pipeline] has {key!r}; give it as its own [{key}] table")
    read = from_dict(ReadOptions, data.get("read", {}), "read")
    dedup = from_dict(DedupConfig, data.get("dedup", {}), "dedup")
    cfg = from_dict(PipelineConfig, {**pipeline, "steps": data.get("steps", [])}, "pipeline")
    return dataclasses.replace(cfg, read=read, dedup=dedup)


# --- the run ----------------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _size_and_time(path: Path) -> tuple[int, int]:
    """Bytes and latest modification of a file, or of all files in a folder (a saved dataset)."""
    if not path.is_dir():
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, 0
    for root, _, names in os.walk(path):
        for name in names:
            st = (Path(root) / name).stat()
            size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
    return size, mtime


def _fingerprints(
    cfg: PipelineConfig,
    files: list[tuple[Path, str, str | None]],
    tasks: list[Task],
    steps: list[Step],
) -> dict[str, str]:
    """What each stage's results depend on; a stage whose fingerprint changed is redone."""
    d = cfg.dedup
    map_fp = _digest(
        {
            "lmforge": __version__,  # a new version may read, clean or sign differently
            "inputs": [[str(p), fmt, comp, *_size_and_time(p)] for p, fmt, comp in files],
            "read": to_dict(cfg.read),
            "tasks": [[t.files, t.stride, t.offset] for t in tasks],
            "out": [cfg.keep_meta, cfg.write_rejected],
            # Settings, and the content of files they name (word lists): `Step.fingerprint`.
            "steps": [
                [f"{type(s).__module__}.{type(s).__qualname__}", s.fingerprint()] for s in steps
            ],
            "signature": [d.normalize, d.near, d.num_perm, d.shingle_words, d.seed],
        }
    )
    dedup_fp = _digest([map_fp, d.exact, d.near, d.threshold])
    write_fp = _digest([dedup_fp, cfg.val_fraction, cfg.test_fraction, cfg.shard_bytes])
    return {"map": map_fp, "dedup": dedup_fp, "write": write_fp}


def _prepare_work(out: Path, work: Path, fps: dict[str, str]) -> None:
    """Remove the results of stages whose inputs changed since they ran."""
    plan_path = work / "plan.json"
    if plan_path.exists():
        old = json.loads(plan_path.read_text(encoding="utf-8")).get("fingerprints", {})
        if old.get("map") != fps["map"]:
            log.warning("inputs or recipe changed since %s was made: map stage starts over", work)
            shutil.rmtree(work / "map", ignore_errors=True)
            for stale in (out / REJECTED).glob("task-*.jsonl"):
                stale.unlink()
        if old.get("dedup") != fps["dedup"]:
            for name in ("dedup.json", "dedup.npz"):
                (work / name).unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_path, {"fingerprints": fps})


def _dedup_stage(work: Path, tasks: list[Task], cfg: PipelineConfig, fp: str, progress: bool):
    """Find duplicates in input order; write work/dedup.npz (who is dropped) and dedup.json."""
    info_path = work / "dedup.json"
    if info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info["fingerprint"] == fp and "kept" in info:
            return info
    t0 = time.time()
    d = cfg.dedup
    dedup = Deduplicator(d) if d.exact or d.near else None
    rows = {"exact_duplicate": new_row("exact_dedup"), "near_duplicate": new_row("near_dedup")}
    dropped, reasons, dup_of, sims = [], [], [], []
    ordinal = documents = kept = 0
    with tqdm(desc="dedup", unit="doc", disable=not progress, dynamic_ncols=True) as bar:
        for unit in task_units(tasks):
            index = load_unit_index(work, unit)
            keys, digests, sigs = index["keys"], index["digests"], index["sigs"]
            if not len(keys):
                continue
            # Each document's parts are consecutive: (file, document) changes where one starts.
            firsts = np.flatnonzero(
                np.concatenate(([True], (keys[1:, :2] != keys[:-1, :2]).any(axis=1)))
            ).tolist()
            for i, j in zip(firsts, [*firsts[1:], len(keys)]):
                size = int(index["nbytes"][i]) if j == i + 1 else int(index["nbytes"][i:j].sum())
                dup = None
                if dedup is not None and j == i + 1:
                    dup = dedup.check(ordinal, digests[i].tobytes(), sigs[i] if d.near else None)
                elif dedup is not None:  # a large document: dropped whole if any part repeats
                    parts = [
                        (digests[p].tobytes(), sigs[p] if d.near else None) for p in range(i, j)
                    ]
                    dup = next(filter(None, (dedup.find(*part) for part in parts)), None)
                    if dup is None:
                        for n, part in enumerate(parts):
                            dedup.add(ordinal + n, *part)
                for reason, row in rows.items():
                    if reason == "near_duplicate" and dup and dup.reason == "exact_duplicate":
                        break
                    row["docs_in"] += 1
                    row["bytes_in"] += size
                    if dup is not None and dup.reason == reason:
                        row["dropped"][reason] = row["dropped"].get(reason, 0) + 1
                        break
                    row["docs_out"] += 1
                    row["bytes_out"] += size
                if dup is not None:
                    dropped += range(ordinal, ordinal + j - i)
                    reasons += [dup.reason == "near_duplicate"] * (j - i)
                    dup_of += [dup.of] * (j - i)
                    sims += [dup.similarity] * (j - i)
                ordinal += j - i
                documents += 1
                kept += dup is None
            bar.update(len(keys))
    tmp = work / f".dedup.npz.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(
            f,
            dropped=np.array(dropped, dtype=np.int64),
            near=np.array(reasons, dtype=bool),
            dup_of=np.array(dup_of, dtype=np.int64),
            similarity=np.array(sims, dtype=np.float32),
        )
    os.replace(tmp, work / "dedup.npz")
    used = [rows["exact_duplicate"]] if d.exact else []
    used += [rows["near_duplicate"]] if d.near else []
    info = {"fingerprint": fp, "documents": documents, "kept": kept, "steps": used}
    info["seconds"] = time.time() - t0
    write_json_atomic(info_path, info)
    return info


def _survivors(
    work: Path, tasks: list[Task], dropped: dict[int, tuple[bool, int, float]], rej: Any
) -> Iterator[dict[str, Any]]:
    """The records that dedup kept, in order; the dropped ones are written to `rej` if given."""
    referenced = {of for _, of, _ in dropped.values()}
    names: dict[int, dict[str, str]] = {}
    ordinal = 0
    for unit in task_units(tasks):
        for rec in unit_records(work, unit):
            if ordinal in referenced:
                names[ordinal] = {"id": rec["id"], "source": rec["source"]}
            if ordinal not in dropped:
                yield rec
            elif rej is not None:
                near, of, sim = dropped[ordinal]
                reason = "near_duplicate" if near else "exact_duplicate"
                line = {"id": rec["id"], "source": rec["source"], "step": "dedup"}
                line |= {"reason": reason, "duplicate_of": names[of]}
                if rec["multi"]:  # every part of a large document is dropped
                    line["part"] = rec["k"][2]
                line |= {"similarity": round(sim, 4), "text": rec["text"]}
                rej.write(json.dumps(line, ensure_ascii=False) + "\n")
            ordinal += 1


def _write_stage(
    out: Path, work: Path, tasks: list[Task], cfg: PipelineConfig, progress: bool, one_doc: bool
) -> SplitWriters:
    """Write the survivors of dedup to train/val/test shards (and duplicates aside).

    Documents go to a split by `split_of`; when `one_doc` (exactly one document survived),
    it is cut into contiguous blocks by `prepare.write_contiguous`. When no document
    survived, nothing is written and the writers say so (`documents == 0`).
    """
    with np.load(work / "dedup.npz", allow_pickle=False) as z:
        dropped = dict(
            zip(
                z["dropped"].tolist(),
                zip(z["near"].tolist(), z["dup_of"].tolist(), z["similarity"].tolist()),
            )
        )
    writers = SplitWriters(out, cfg.shard_bytes)
    rejected = out / REJECTED / "dedup.jsonl"
    rejected_tmp = rejected.with_name(f".dedup.jsonl.tmp-{os.getpid()}")
    if cfg.write_rejected:
        rejected.parent.mkdir(parents=True, exist_ok=True)
    pending: tuple[dict[str, Any], str] | None = None
    try:
        with (
            open(rejected_tmp if cfg.write_rejected else os.devnull, "w", encoding="utf-8") as rej,
            tqdm(desc="write", unit="doc", disable=not progress, dynamic_ncols=True) as bar,
        ):
            survivors = _survivors(work, tasks, dropped, rej if cfg.write_rejected else None)
            if one_doc:
                total = sum(len(r["text"]) for r in _survivors(work, tasks, dropped, None))
                head = next(survivors)
                doc = Document(text="", id=head["id"], source=head["source"])
                pieces = (
                    Piece(doc, r["text"], False, False, True) for r in chain([head], survivors)
                )
                meta = head.get("meta")
                write_contiguous(pieces, writers, cfg.val_fraction, cfg.test_fraction, total, meta)
                bar.update(1)
            for rec in survivors:  # (none left after the one document)
                bar.update(1)
                split = None
                if pending is not None:
                    prev, prev_split = pending
                    same_doc = prev["k"][:2] == rec["k"][:2]
                    _write_record(writers[prev_split], prev, last=not same_doc)
                    split = prev_split if same_doc else None
                if split is None:
                    key = rec["id"] if rec["multi"] else rec["text"]
                    split = split_of(key, cfg.val_fraction, cfg.test_fraction)
                pending = (rec, split)
            if pending is not None:
                _write_record(writers[pending[1]], pending[0], last=True)
        writers.close()
    except BaseException:
        writers.discard()
        rejected_tmp.unlink(missing_ok=True)
        raise
    if writers.documents == 0:
        writers.discard()
        rejected_tmp.unlink(missing_ok=True)
        return writers
    # The old manifest lists the shards that commit replaces: a crash before the new one is
    # written must leave no manifest (readers say to run again), not one naming missing files.
    (out / MANIFEST).unlink(missing_ok=True)
    writers.commit()
    if cfg.write_rejected:
        os.replace(rejected_tmp, rejected)
    else:
        rejected.unlink(missing_ok=True)  # from an earlier run that wrote it
    return writers


def _write_record(writer, rec: dict[str, Any], last: bool) -> None:
    writer.write(rec["id"], rec["source"], rec["text"], last, rec.get("meta"))


def run_pipeline(
    cfg: PipelineConfig, out_dir: str | os.PathLike, *, progress: bool = False
) -> dict[str, Any]:
    """Run the pipeline into `out_dir` (resuming what an earlier run finished); the manifest."""
    if not cfg.inputs:
        raise ConfigError(
            "no inputs: give files, folders or globs on the command line or as pipeline.inputs"
        )
    out = Path(out_dir)
    work = out / WORK
    plan_report = ReadReport()
    files = list_input_files(cfg.inputs, plan_report, exclude=out)  # not our own output
    steps = cfg.build_steps()
    tasks = plan_tasks(files, cfg.task_bytes, cfg.max_file_splits)
    fps = _fingerprints(cfg, files, tasks, steps)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        if old.get("pipeline", {}).get("fingerprint") == fps["write"]:
            log.info("%s is complete for this recipe and these inputs; nothing to do", out)
            return old
    _prepare_work(out, work, fps)

    t0 = time.time()
    todo = [t for t in tasks if not task_paths(work, t.index)["stats"].exists()]
    log.info(
        "map: %d task(s) over %d file(s), %d already done", len(tasks), len(files),
        len(tasks) - len(todo),
    )  # fmt: skip
    spec = MapSpec(
        work_dir=str(work),
        rejected_dir=str(out / REJECTED),
        read=cfg.read,
        keep_meta=cfg.keep_meta,
        write_rejected=cfg.write_rejected,
        dedup=cfg.dedup,
        steps=tuple(steps),
        steps_key=fps["map"],
    )
    engines.run_tasks(
        run_task,
        todo,
        spec,
        engine=cfg.engine,
        workers=cfg.workers,
        dask_address=cfg.dask_address,
        progress=progress,
    )
    task_stats = [
        json.loads(task_paths(work, t.index)["stats"].read_text(encoding="utf-8")) for t in tasks
    ]
    t1 = time.time()
    dedup_info = _dedup_stage(work, tasks, cfg, fps["dedup"], progress)
    t2 = time.time()
    one_doc = dedup_info["kept"] == 1
    writers = _write_stage(out, work, tasks, cfg, progress, one_doc)
    t3 = time.time()

    rows = merge_step_stats([s["steps"] for s in task_stats]) + dedup_info["steps"]
    read_report = merge_read_reports(
        [plan_report.to_dict()] + [s["read_report"] for s in task_stats]
    )
    dropped: dict[str, int] = {}
    for r in rows:
        for reason, n in r["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "lmforge_version": __version__,
        "inputs": list(cfg.inputs),
        "config": to_dict(cfg),
        "split_mode": "contiguous" if one_doc else "hash",
        "splits": writers.summary(),
        "documents_read": rows[0]["docs_out"],
        "dropped": dropped,
        "read_report": read_report,
        "pipeline": {
            "fingerprint": fps["write"],
            "engine": cfg.engine,
            "workers": cfg.workers,
            "tasks": len(tasks),
            "tasks_reused": len(tasks) - len(todo),
            "steps": rows,
            "dedup": {**dataclasses.asdict(cfg.dedup), "documents": dedup_info["documents"]},
            "seconds": {"map": t1 - t0, "dedup": t2 - t1, "write": t3 - t2},
        },
    }
    if writers.documents == 0:
        # Nothing in `out` changes; the report, in work/, says what each step dropped and why.
        write_report(work, manifest)
        raise DataError(
            f"no documents left in {', '.join(cfg.inputs)} after the steps and dedup; "
            f"{work}/report.md shows what each step dropped and why; nothing was written"
        )
    write_report(out, manifest)
    write_json_atomic(manifest_path, manifest)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "pipeline wrote %s: %s",
        out,
        ", ".join(f"{s} {i['documents']:,} docs" for s, i in manifest["splits"].items()),
    )
    return manifest
