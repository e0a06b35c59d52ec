"""The data pipeline's audit trail: per-step counts merged over tasks, `report.md`, `report.png`.

Every step row counts documents (a large text file is one document, however many parts it is
read in) and UTF-8 bytes in and out, the reasons for its drops, and the notes of documents it
kept but could not judge (`clean.base.Kept`); rows are kept in pipeline order, so the first
row ("read") is what the readers gave and each later row starts from what the one before it
kept. Reader problems (files skipped or cut short, bad records, undecodable bytes) are listed
with file and position as the readers reported them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmforge.io import atomic_path, write_text_atomic

MAX_EXAMPLES = 20


def merge_step_stats(per_task: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Add up the step rows of many tasks (each a list of rows in the same order)."""
    merged: list[dict[str, Any]] = []
    for rows in per_task:
        if not merged:
            merged = [{**r, "dropped": dict(r["dropped"]), "notes": {}} for r in rows]
            for m, r in zip(merged, rows):
                m["notes"].update(r.get("notes", {}))
            continue
        if [r["name"] for r in rows] != [m["name"] for m in merged]:
            raise ValueError("tasks ran different steps; the work folder mixes two recipes")
        for m, r in zip(merged, rows):
            for key in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
                m[key] += r[key]
            for key in ("dropped", "notes"):
                for reason, n in r.get(key, {}).items():
                    m[key][reason] = m[key].get(reason, 0) + n
    return merged


def merge_read_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One `ReadReport.to_dict()`-shaped dict from many: counts add, lists join, maps merge."""
    out: dict[str, Any] = {}
    for rep in reports:
        for key, value in rep.items():
            if isinstance(value, bool) or value is None:
                out.setdefault(key, value)
            elif isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
            elif isinstance(value, list):
                joined = out.get(key, []) + value
                out[key] = joined[:MAX_EXAMPLES] if key.endswith("examples") else joined
            elif isinstance(value, dict):
                merged = dict(out.get(key, {}))
                for k, v in value.items():
                    both = isinstance(v, (int, float)) and isinstance(merged.get(k), (int, float))
                    merged[k] = merged[k] + v if both else v
                out[key] = merged
            else:
                out.setdefault(key, value)
    return out


def _human(n: float) -> str:
    for scale, suffix in ((1e9, " GB"), (1e6, " MB"), (1e3, " kB")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f} B"


def _reasons(dropped: dict[str, int]) -> str:
    items = sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{reason} {n:,}" for reason, n in items) or "-"


def render_markdown(manifest: dict[str, Any]) -> str:
    """`report.md` of a pipeline manifest."""
    p = manifest["pipeline"]
    rows = p["steps"]
    lines = [
        "# Data pipeline report",
        "",
        f"Inputs: {', '.join(manifest['inputs'])}  ",
        f"Engine: {p['engine']}, {p['workers']} worker(s), {p['tasks']} map task(s) "
        f"({p['tasks_reused']} reused from an earlier run)  ",
        f"Time: map {p['seconds']['map']:.1f} s, dedup {p['seconds']['dedup']:.1f} s, "
        f"write {p['seconds']['write']:.1f} s",
        "",
        "## Steps",
        "",
        "Each row starts from what the row above kept. A large text file counts as one "
        "document, kept or dropped whole.",
        "",
        "| step | docs in | docs out | dropped | bytes in | bytes out | drop reasons |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['docs_in']:,} | {r['docs_out']:,} | "
            f"{r['docs_in'] - r['docs_out']:,} | {_human(r['bytes_in'])} | "
            f"{_human(r['bytes_out'])} | {_reasons(r['dropped'])} |"
        )
    noted = [f"- {r['name']}: {_reasons(r['notes'])}" for r in rows if r.get("notes")]
    if noted:
        lines += ["", "Documents kept with a note (what the step could not judge):", ""] + noted
    lines += ["", "## Output", "", "| split | documents | records | bytes | files |"]
    lines.append("|---|---:|---:|---:|---|")
    for split, info in manifest["splits"].items():
        lines.append(
            f"| {split} | {info['documents']:,} | {info['records']:,} | "
            f"{_human(info['bytes'])} | {', '.join(info['files'])} |"
        )
    d = p["dedup"]
    lines += [
        "",
        "## Deduplication",
        "",
        f"Exact: {'on' if d['exact'] else 'off'} (normalize = {d['normalize']}); near: "
        + (
            f"on (MinHash LSH, Jaccard >= {d['threshold']}, {d['num_perm']} permutations, "
            f"{d['shingle_words']}-word shingles, seed {d['seed']})"
            if d["near"]
            else "off"
        ),
    ]
    lines += ["", "## Reader problems", ""]
    rep = manifest["read_report"]
    problems = []
    for s in rep.get("files_skipped", []):
        problems.append(f"- skipped `{s['path']}`: {s['reason']}")
    if rep.get("bad_records"):
        problems.append(f"- {rep['bad_records']:,} bad record(s); the first:")
        problems += [f"  - `{e}`" for e in rep.get("bad_record_examples", [])]
    for e in rep.get("read_errors", []):
        problems.append(f"- `{e['path']}`: reading stopped at {e['position']} ({e['reason']})")
    for path in rep.get("empty_files", []):
        problems.append(f"- `{path}`: empty")
    for path, n in rep.get("replaced_bytes", {}).items():
        problems.append(f"- `{path}`: {n:,} byte(s) not valid in its encoding, replaced by U+FFFD")
    for reason, n in sorted(rep.get("skipped_records", {}).items()):
        problems.append(f"- {n:,} record(s) left out on purpose: {reason}")
    shown = {
        "files_read", "files_skipped", "bad_records", "bad_record_examples", "read_errors",
        "empty_files", "replaced_bytes", "replaced_bytes_total", "skipped_records",
    }  # fmt: skip
    for key, value in rep.items():  # anything else the readers count
        if key in shown or not value:
            continue
        if isinstance(value, list):
            problems.append(f"- {key}:")
            problems += [f"  - `{v}`" for v in value[:MAX_EXAMPLES]]
        else:
            problems.append(f"- {key}: {value}")
    lines += problems or ["None."]
    lines += ["", f"{len(rep.get('files_read', [])):,} file(s) read."]
    return "\n".join(lines) + "\n"


def render_png(manifest: dict[str, Any], path: str | os.PathLike) -> None:
    """A bar chart of documents and bytes kept after each step, and of the drop reasons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = manifest["pipeline"]["steps"]
    names = [r["name"] for r in rows]
    reasons: dict[str, int] = {}
    for r in rows:
        for reason, n in r["dropped"].items():
            key = f"{r['name']}: {reason}"
            reasons[key] = reasons.get(key, 0) + n
    fig, axes = plt.subplots(1, 3, figsize=(15, max(3.0, 0.45 * max(len(names), len(reasons)))))
    y = list(range(len(names)))[::-1]
    axes[0].barh(y, [r["docs_out"] for r in rows], color="tab:blue")
    axes[0].set_title("documents kept after each step")
    axes[1].barh(y, [r["bytes_out"] / 1e6 for r in rows], color="tab:green")
    axes[1].set_title("MB kept after each step")
    for ax in axes[:2]:
        ax.set_yticks(y, names)
    ax = axes[2]
    if reasons:
        ordered = sorted(reasons.items(), key=lambda kv: kv[1])
        ax.barh(range(len(ordered)), [n for _, n in ordered], color="tab:red")
        ax.set_yticks(range(len(ordered)), [k for k, _ in ordered])
    else:
        ax.text(0.5, 0.5, "nothing dropped", ha="center", va="center")
        ax.set_yticks([])
    ax.set_title("documents dropped, by reason")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def write_report(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write `report.md` and `report.png` for a pipeline manifest into `out_dir`."""
    out = Path(out_dir)
    write_text_atomic(out / "report.md", render_markdown(manifest))
    render_png(manifest, out / "report.png")
