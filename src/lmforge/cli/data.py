"""`lmforge data ...`: prepare, crawl, pipeline and the list of pipeline steps."""

from __future__ import annotations

import argparse
import json

from lmforge.cli import _print_json, command, parse_overrides


def _data_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        help="files, folders or glob patterns ('data/*.jsonl.gz'): .txt/.md, .jsonl/.json, "
        ".parquet, .csv/.tsv, HTML pages (.html/.htm, main text by trafilatura), WARC/WET "
        "(.warc, .warc.gz, .warc.wet.gz), Wikipedia XML dumps (.xml.bz2), .zip archives, "
        "and folders saved by Hugging Face datasets; all but .parquet/.zip may be "
        ".gz/.bz2/.zst compressed; folders are read recursively",
    )
    p.add_argument(
        "--builtin",
        metavar="NAME",
        help="use a corpus bundled with lmforge instead of (or besides) INPUTS: tinyshakespeare",
    )
    p.add_argument("--out", required=True, help="output folder for JSONL shards + manifest.json")
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of documents for validation"
    )
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of documents for test")
    p.add_argument(
        "--text-field", default="text", help="field/column holding the text in JSONL/CSV/Parquet"
    )
    p.add_argument(
        "--on-bad-record",
        choices=["skip", "fail"],
        default="skip",
        help="a bad record (a JSONL line that is not JSON or lacks the text field, a page with "
        "no main text) or a file that breaks off (truncated .gz/.warc.gz): skip and count it "
        "in the manifest's read_report, or stop",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command(
    "data",
    "prepare",
    help="read, clean and split a corpus into JSONL shards",
    args=_data_prepare_args,
)
def cmd_data_prepare(a: argparse.Namespace) -> int:
    from lmforge.corpora import corpus_path
    from lmforge.data.prepare import PrepareConfig, prepare_corpus

    inputs = list(a.inputs)
    if a.builtin:
        inputs.append(str(corpus_path(a.builtin)))
    if not inputs:
        raise ValueError("give input files or folders, or --builtin tinyshakespeare")
    cfg = PrepareConfig(
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
        text_field=a.text_field,
        on_bad_record=a.on_bad_record,
    )
    manifest = prepare_corpus(inputs, a.out, cfg, progress=not a.no_progress)
    for split, info in manifest["splits"].items():
        print(
            f"{split:>5}: {info['documents']:,} documents, {info['chars']:,} characters, "
            f"{info['bytes']:,} bytes"
        )
    print(f"wrote {a.out}/manifest.json")
    return 0


def _data_crawl_args(p: argparse.ArgumentParser) -> None:
    from lmforge.data.crawl import DEFAULT_USER_AGENT

    p.add_argument("urls", help="a text file of http(s) URLs, one a line (# starts a comment)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: pages-NNNNN.warc.gz (one per run) and crawl.log (JSON lines); "
        "`lmforge data prepare OUT` reads the pages",
    )
    p.add_argument(
        "--delay",
        type=float,
        default=1.0,
        help="minimum seconds between two requests to the same host (robots.txt Crawl-delay "
        "can make it longer)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries after a 429, 5xx, timeout or connection error (never after other 4xx)",
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        help="seconds before the first retry, doubled for each next one, unless the server "
        "sends Retry-After",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a response")
    p.add_argument(
        "--max-bytes",
        type=int,
        default=16 * 2**20,
        help="pages larger than this many bytes are not saved",
    )
    p.add_argument(
        "--user-agent",
        default=DEFAULT_USER_AGENT,
        help="User-Agent header, also the name robots.txt rules are matched against; "
        "put a contact URL in it",
    )
    p.add_argument(
        "--redirects",
        choices=["same_host", "listed_hosts", "any"],
        default="listed_hosts",
        help="which redirect targets are fetched: on the redirecting URL's host, on a host of "
        "a listed URL (default; a redirect never leads to a host nobody listed), or anywhere",
    )
    p.add_argument(
        "--max-redirects",
        type=int,
        default=5,
        help="redirects followed from one listed URL",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.epilog = (
        "robots.txt is always obeyed. A rerun with the same --out skips every URL the log "
        "lists as fetched, disallowed, redirected or answered with a 4xx, and retries the rest."
    )


@command(
    "data",
    "crawl",
    help="fetch a list of URLs politely (robots.txt, rate limit, retries) into WARC files",
    args=_data_crawl_args,
)
def cmd_data_crawl(a: argparse.Namespace) -> int:
    from lmforge.data.crawl import CrawlConfig, crawl

    cfg = CrawlConfig(
        user_agent=a.user_agent,
        delay=a.delay,
        retries=a.retries,
        backoff=a.backoff,
        timeout=a.timeout,
        max_bytes=a.max_bytes,
        redirects=a.redirects,
        max_redirects=a.max_redirects,
    )
    summary = crawl(a.urls, a.out, cfg, progress=not a.no_progress)
    outcomes = ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items()) or "nothing to do"
    print(f"{summary['urls']} URLs, {summary['already_done']} already done: {outcomes}")
    if summary["warc"]:
        print(f"wrote {a.out}/{summary['warc']}")
    print(f"log: {summary['log']}")
    return 0


def _data_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        default=[],
        help="files, folders or glob patterns to read, in any format the readers take "
        "(replace the recipe's pipeline.inputs)",
    )
    p.add_argument(
        "--recipe",
        default=argparse.SUPPRESS,
        help="a TOML recipe with [pipeline], [read], [dedup] and [[steps]] tables (see "
        "recipes/data-web.toml); without one: no steps, exact + near dedup",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder: {train,val,test}-NNNNN.jsonl, manifest.json, report.md, "
        "report.png, rejected/ and work/ (what a rerun resumes from)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=argparse.SUPPRESS,
        help="processes running map tasks (default: the recipe's pipeline.workers, else 1)",
    )
    p.add_argument(
        "--engine",
        choices=["local", "dask"],
        default=argparse.SUPPRESS,
        help="local: worker processes here; dask: dask's scheduler (pip install lmforge[dask]), "
        "on a cluster with --pipeline.dask_address tcp://HOST:8786 (default: the recipe's "
        "pipeline.engine, else local)",
    )
    p.add_argument(
        "--write-rejected",
        action="store_true",
        help="write every dropped document with its step, reason and detail to out/rejected/",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.epilog = (
        "Any recipe field can be overridden as --TABLE.FIELD VALUE, for example "
        "--pipeline.val_fraction 0.01 --dedup.threshold 0.7 --dedup.near false, and a step's "
        "setting as --steps.NAME.FIELD VALUE (every step named NAME) or --steps.N.FIELD VALUE "
        "(the N-th step, from 0). A rerun with the same --out skips the work already done; "
        "`lmforge data steps` lists the steps and their settings."
    )


@command(
    "data",
    "pipeline",
    help="read, clean, filter and deduplicate a corpus into JSONL shards, with a report",
    args=_data_pipeline_args,
    overrides=True,
)
def cmd_data_pipeline(a: argparse.Namespace) -> int:
    from lmforge.data.pipeline import load_pipeline_config, run_pipeline

    overrides = parse_overrides(a.extra)
    if a.inputs:
        overrides["pipeline.inputs"] = list(a.inputs)
    if "workers" in a:
        overrides["pipeline.workers"] = a.workers
    if "engine" in a:
        overrides["pipeline.engine"] = a.engine
    if a.write_rejected:
        overrides["pipeline.write_rejected"] = True
    cfg = load_pipeline_config(getattr(a, "recipe", None), overrides)
    manifest = run_pipeline(cfg, a.out, progress=not a.no_progress)
    rows = manifest["pipeline"]["steps"]
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(row["dropped"].items()))
        noted = ", ".join(f"{k} {v:,}" for k, v in sorted(row.get("notes", {}).items()))
        print(
            f"{row['name']:>{width}}: {row['docs_out']:,} documents, {row['bytes_out']:,} bytes"
            + (f" (dropped: {dropped})" if dropped else "")
            + (f" (kept with a note: {noted})" if noted else "")
        )
    for split, info in manifest["splits"].items():
        print(f"{split:>{width}}: {info['documents']:,} documents, {info['bytes']:,} bytes")
    print(f"wrote {a.out}/manifest.json and {a.out}/report.md")
    return 0


def _data_steps_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the steps as JSON")


@command(
    "data",
    "steps",
    help="list the steps a pipeline recipe can use, with their settings and defaults",
    args=_data_steps_args,
)
def cmd_data_steps(a: argparse.Namespace) -> int:
    from lmforge.data.pipeline import describe_steps

    steps = describe_steps()
    if a.json:
        _print_json(steps)
        return 0
    for step in steps:
        print(f"{step['name']}: {step['doc']}")
        for s in step["settings"]:
            print(f"    {s['name']} = {json.dumps(s['default'])}  ({s['type']})")
    if not steps:
        print("no steps are registered")
    return 0
