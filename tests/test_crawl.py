"""The crawler against HTTP servers this test starts on 127.0.0.1 (never an outside host)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from lmforge.cli import main
from lmforge.data.crawl import LOCK_NAME, LOG_NAME, CrawlConfig, crawl, read_log, read_url_list
from lmforge.data.document import DataError
from lmforge.data.readers import ReadReport, iter_documents

DELAY = 0.25


def page(title: str, body: str) -> bytes:
    paragraphs = "".join(f"<p>{body} Sentence {i} of the {title} page.</p>" for i in range(8))
    return (
        f"<!doctype html><html lang='en'><head><title>{title}</title></head><body>"
        f"<nav><a href='/'>Home</a></nav><article><h1>{title}</h1>{paragraphs}</article>"
        "<footer>Copyright nobody</footer></body></html>"
    ).encode()


class Site:
    """A tiny web site that records every request it gets; `routes` add or replace paths."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]] | None = None) -> None:
        self.requests: list[tuple[str, float, str]] = []  # (path, arrival time, user agent)
        self.flaky_left = 2
        self.routes = routes or {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                site.requests.append(
                    (self.path, time.monotonic(), self.headers.get("User-Agent", ""))
                )
                status, headers, body = site.respond(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def respond(self, path: str) -> tuple[int, dict[str, str], bytes]:
        html = {"Content-Type": "text/html; charset=utf-8"}
        if path in self.routes:
            return self.routes[path]
        if path == "/robots.txt":
            return 200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n"
        if path in ("/a.html", "/b.html", "/c.html", "/private/secret.html"):
            name = path.strip("/").split(".")[0]
            return 200, html, page(f"Page {name}", f"The {name} story is told here.")
        if path == "/flaky.html":
            if self.flaky_left:
                self.flaky_left -= 1
                # The first 503 asks for a one-second pause; the second leaves it to backoff.
                return 503, {"Retry-After": "1"} if self.flaky_left == 1 else {}, b"busy"
            return 200, html, page("Flaky", "The flaky page finally answered.")
        if path == "/moved":
            return 301, {"Location": "/c.html"}, b""
        return 404, {"Content-Type": "text/plain"}, b"not found"

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy set in the environment must not see (or break) requests to
    # the test's own servers, and httpx does not exempt 127.0.0.1 from it by itself.
    with httpx.Client(timeout=5, follow_redirects=False, trust_env=False) as c:
        yield c


@pytest.fixture
def no_proxy(monkeypatch) -> None:
    """For crawls whose client the test cannot pass (the CLI): no proxy from the environment."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def urls_file(tmp_path: Path, site: Site, paths: list[str]) -> Path:
    f = tmp_path / "urls.txt"
    f.write_text("# pages to fetch\n\n" + "".join(f"{site.base}{p}\n" for p in paths))
    return f


CFG = CrawlConfig(delay=DELAY, backoff=0.05, retries=3, timeout=5)


@pytest.mark.slow
def test_crawl_obeys_robots_retries_rate_limits_and_resumes(
    tmp_path: Path, site: Site, client: httpx.Client
) -> None:
    listed = [
        "/a.html",
        "/private/secret.html",
        "/flaky.html",
        "/missing.html",
        "/moved",
        "/b.html",
    ]
    urls = urls_file(tmp_path, site, listed)
    out = tmp_path / "crawl"
    summary = crawl(urls, out, CFG, client=client)

    assert summary["outcomes"] == {
        "fetched": 4,  # a, flaky (third try), b, and c (the redirect's target)
        "http_error": 1,
        "redirect": 1,
        "retry": 2,
        "robots": 1,
    }
    paths = site.paths()
    assert "/private/secret.html" not in paths  # disallowed: never requested
    assert paths.count("/robots.txt") == 1  # once per host
    assert paths.count("/flaky.html") == 3  # 503, 503, 200
    assert paths.count("/missing.html") == 1  # a 404 is not retried
    assert paths.count("/c.html") == 1
    assert all(ua.startswith("lmforge/") for _, _, ua in site.requests)

    times = [t for _, t, _ in site.requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= DELAY * 0.95, gaps  # one host: requests at least `delay` apart
    flaky = [t for p, t, _ in site.requests if p == "/flaky.html"]
    assert flaky[1] - flaky[0] >= 0.95  # Retry-After: 1 was honoured

    entries = read_log(out)
    by_url = {e["url"]: e for e in entries if e["outcome"] != "retry"}
    assert by_url[f"{site.base}/a.html"]["status"] == 200
    assert by_url[f"{site.base}/a.html"]["file"] == summary["warc"] == "pages-00000.warc.gz"
    missing = by_url[f"{site.base}/missing.html"]
    assert (missing["outcome"], missing["status"]) == ("http_error", 404)
    assert by_url[f"{site.base}/moved"]["location"] == f"{site.base}/c.html"
    assert [e["attempt"] for e in entries if e["url"].endswith("/flaky.html")] == [1, 2, 3]
    assert all("time" in e for e in entries)

    # The saved pages are read back by the WARC reader, with their URLs.
    report = ReadReport()
    docs = list(iter_documents([out], report=report))
    assert sorted(d.meta["url"] for d in docs) == sorted(
        f"{site.base}{p}" for p in ("/a.html", "/b.html", "/c.html", "/flaky.html")
    )
    text = {d.meta["url"].rsplit("/", 1)[1]: d.text for d in docs}
    assert "The flaky page finally answered." in text["flaky.html"]
    assert "Copyright nobody" not in text["a.html"]  # boilerplate left out by trafilatura
    assert report.read_errors == [] and report.bad_records == 0

    # A rerun fetches nothing: every URL has a final outcome in the log.
    before = len(site.requests)
    again = crawl(urls, out, CFG, client=client)
    assert len(site.requests) == before
    assert again["outcomes"] == {} and again["already_done"] == len(listed)
    assert again["warc"] is None
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, LOG_NAME, "pages-00000.warc.gz"]


def test_killed_run_is_recovered(tmp_path: Path, site: Site, client: httpx.Client) -> None:
    out = tmp_path / "crawl"
    crawl(urls_file(tmp_path, site, ["/a.html"]), out, CrawlConfig(delay=0.01), client=client)
    # Simulate a kill: the WARC was never renamed into place and the log's last line is torn.
    os.replace(out / "pages-00000.warc.gz", out / ".pages-00000.warc.gz.partial")
    with open(out / LOG_NAME, "a") as f:
        f.write('{"url": "http://127.0.0.1/tor')
    urls = urls_file(tmp_path, site, ["/a.html", "/b.html"])
    summary = crawl(urls, out, CrawlConfig(delay=0.01), client=client)
    assert summary["already_done"] == 1
    assert summary["outcomes"] == {"fetched": 1}
    assert site.paths().count("/a.html") == 1  # not fetched again
    assert (out / "pages-00000.warc.gz").exists()  # the interrupted run's pages, recovered
    assert summary["warc"] == "pages-00001.warc.gz"
    entries = read_log(out)  # the torn line is skipped; the new entry stands on its own line
    assert [e["url"].rsplit("/", 1)[1] for e in entries] == ["a.html", "b.html"]
    docs = list(iter_documents([out]))
    assert sorted(d.meta["url"].rsplit("/", 1)[1] for d in docs) == ["a.html", "b.html"]


def test_hosts_are_interleaved(tmp_path: Path, site: Site, client: httpx.Client) -> None:
    other = Site()
    try:
        urls = [f"{s.base}/{p}.html" for s in (site, other) for p in ("a", "b")]
        crawl(urls, tmp_path / "out", CrawlConfig(delay=0.4), client=client)
    finally:
        other.close()
    # While the first host waits out its delay, the second one is served.
    assert other.requests[0][1] < site.requests[-1][1]
    for s in (site, other):
        assert s.paths() == ["/robots.txt", "/a.html", "/b.html"]


def test_unreachable_robots_is_not_final(tmp_path: Path, client: httpx.Client) -> None:
    # A port nothing listens on: robots.txt cannot be fetched, so the host is skipped this run
    # and the URL stays pending for the next one.
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = dead.server_address[1]
    dead.server_close()
    url = f"http://127.0.0.1:{port}/x.html"
    summary = crawl([url], tmp_path, CrawlConfig(timeout=2), client=client)
    assert summary["outcomes"] == {"failed": 1}
    (entry,) = read_log(tmp_path)
    assert entry["error"].startswith("robots.txt: ConnectError")


def test_url_list_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "urls.txt"
    f.write_text("http://127.0.0.1/a\n# comment\nftp://127.0.0.1/b\n")
    with pytest.raises(DataError, match=r"urls\.txt:3: 'ftp://127\.0\.0\.1/b' is not an http"):
        read_url_list(f)
    f.write_text("http://127.0.0.1/a\nhttp://[::1/x\n")  # a host neither urllib nor httpx takes
    with pytest.raises(DataError, match=r"urls\.txt:2: 'http://\[::1/x' is not an http"):
        read_url_list(f)
    with pytest.raises(ValueError, match="delay=-1"):
        CrawlConfig(delay=-1)


def test_cli_crawl(tmp_path: Path, site: Site, capsys, no_proxy) -> None:
    urls = urls_file(tmp_path, site, ["/a.html", "/missing.html"])
    args = ["data", "crawl", str(urls), "--out", str(tmp_path / "o"), "--delay", "0.01"]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 URLs, 0 already done: fetched 1, http_error 1" in out
    assert "pages-00000.warc.gz" in out
    log = [json.loads(line) for line in (tmp_path / "o" / LOG_NAME).read_text().splitlines()]
    assert {e["outcome"] for e in log} == {"fetched", "http_error"}
    (tmp_path / "bad.txt").write_text("not a url\n")
    assert main(["data", "crawl", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "bad.txt:1" in capsys.readouterr().err


def test_robots_txt_is_found_through_redirects(tmp_path: Path, client: httpx.Client) -> None:
    text = {"Content-Type": "text/plain"}
    moved = Site(
        {
            "/robots.txt": (301, {"Location": "/rules/robots.txt"}, b""),
            "/rules/robots.txt": (200, text, b"User-agent: *\nDisallow: /private/\n"),
        }
    )
    looping = Site({"/robots.txt": (302, {"Location": "/robots.txt?again"}, b"")})
    looping.routes["/robots.txt?again"] = (302, {"Location": "/robots.txt"}, b"")
    try:
        urls = [f"{moved.base}/a.html", f"{moved.base}/private/secret.html"]
        urls.append(f"{looping.base}/b.html")
        summary = crawl(urls, tmp_path / "out", CrawlConfig(delay=0.01), client=client)
    finally:
        moved.close()
        looping.close()
    # The rules found after a redirect apply to the host that was asked (RFC 9309 2.3.1.2).
    assert summary["outcomes"] == {"fetched": 2, "robots": 1}
    assert moved.paths() == ["/robots.txt", "/rules/robots.txt", "/a.html"]
    # Not reached within five redirects: taken as unavailable, which allows everything.
    assert looping.paths() == ["/robots.txt", "/robots.txt?again"] * 3 + ["/b.html"]


def test_redirects_stay_on_listed_hosts_and_are_judged_again_on_resume(
    tmp_path: Path, site: Site, client: httpx.Client
) -> None:
    elsewhere = Site()  # 127.0.0.1 too, on another port: another host
    off_site = f"{elsewhere.base}/a.html"
    site.routes.update(
        {
            "/off": (302, {"Location": off_site}, b""),
            "/ftp": (302, {"Location": "ftp://127.0.0.1/file"}, b""),
            "/broken": (302, {"Location": "http://[::1/x"}, b""),  # httpx rejects it
            "/r0": (302, {"Location": "/r1"}, b""),
            "/r1": (302, {"Location": "/r2"}, b""),
            "/r2": (302, {"Location": "/b.html"}, b""),
        }
    )
    urls = [f"{site.base}{p}" for p in ("/off", "/ftp", "/broken", "/r0", "/moved")]
    cfg = CrawlConfig(delay=0.01, max_redirects=2)
    out = tmp_path / "out"
    try:
        summary = crawl(urls, out, cfg, client=client)
        assert elsewhere.requests == []  # never asked: nobody listed it
        assert summary["outcomes"] == {
            "fetched": 1,  # /c.html, where /moved leads
            "invalid": 1,  # /broken: final, not retried
            "redirect": 6,  # /off, /ftp, /r0, /r1, /r2, /moved
            "redirect_not_followed": 3,  # /off, /ftp, and /r2 (a third hop)
        }
        entries = {e["url"].rsplit("/", 1)[1]: e for e in read_log(out)}
        assert "redirects='listed_hosts'" in entries["off"]["not_followed"]
        assert entries["ftp"]["not_followed"] == "not an http(s) URL"
        assert entries["r2"]["not_followed"] == "more than max_redirects=2 redirects"
        assert entries["r2"]["hops"] == 2 and entries["broken"]["outcome"] == "invalid"
        assert "/b.html" not in site.paths()

        # A rerun fetches nothing: the logged redirects are judged again with their hops.
        before = len(site.requests)
        assert crawl(urls, out, cfg, client=client)["outcomes"] == {}
        assert len(site.requests) == before and elsewhere.requests == []

        # With redirects = "any", the resumed crawl follows the redirect to the other host.
        again = crawl(urls, out, dataclasses.replace(cfg, redirects="any"), client=client)
        assert again["outcomes"] == {"fetched": 1}
        assert elsewhere.paths() == ["/robots.txt", "/a.html"]
    finally:
        elsewhere.close()
    with pytest.raises(ValueError, match=r"redirects='nowhere'; expected one of"):
        CrawlConfig(redirects="nowhere")


def test_crawl_delay_counts_from_the_robots_txt_request(
    tmp_path: Path, client: httpx.Client
) -> None:
    site = Site(
        {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nCrawl-delay: 1\n")}
    )
    try:
        summary = crawl([f"{site.base}/a.html"], tmp_path, CrawlConfig(delay=0.01), client=client)
    finally:
        site.close()
    assert summary["outcomes"] == {"fetched": 1}
    (robots, t0, _), (page_path, t1, _) = site.requests
    assert (robots, page_path) == ("/robots.txt", "/a.html")
    assert t1 - t0 >= 0.95  # robots.txt asks for a second between requests, the first too


def test_too_large_pages_are_final(tmp_path: Path, site: Site, client: httpx.Client) -> None:
    urls = [f"{site.base}/a.html", f"{site.base}/b.html"]
    cfg = CrawlConfig(delay=0.01, max_bytes=len(page("Page a", "The a story is told here.")) - 1)
    site.routes["/b.html"] = (200, {"Content-Type": "text/html"}, b"<p>small</p>")
    summary = crawl(urls, tmp_path, cfg, client=client)
    assert summary["outcomes"] == {"fetched": 1, "too_large": 1}
    entry = next(e for e in read_log(tmp_path) if e["url"].endswith("/a.html"))
    assert (entry["outcome"], entry["limit"]) == ("too_large", cfg.max_bytes)
    before = len(site.requests)
    assert crawl(urls, tmp_path, cfg, client=client)["outcomes"] == {}
    assert len(site.requests) == before


def test_a_second_crawl_into_a_busy_folder_is_refused(
    tmp_path: Path, site: Site, client: httpx.Client
) -> None:
    import fcntl

    out = tmp_path / "crawl"
    out.mkdir()
    live = out / ".pages-00000.warc.gz.partial"  # the running crawl's file
    live.write_bytes(b"records being written")
    with open(out / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the running crawl holds it
        with pytest.raises(DataError, match=r"another crawl is writing into this folder"):
            crawl([f"{site.base}/a.html"], out, CrawlConfig(delay=0.01), client=client)
    assert live.read_bytes() == b"records being written" and site.requests == []
    summary = crawl([f"{site.base}/a.html"], out, CrawlConfig(delay=0.01), client=client)
    assert summary["outcomes"] == {"fetched": 1}  # once it is free
