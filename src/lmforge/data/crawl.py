"""`lmforge data crawl`: fetch a list of URLs politely into WARC files the readers read.

Politeness and robustness, each a small piece:
- robots.txt is fetched once per host (`urllib.robotparser`) and obeyed, its Crawl-delay too.
  As RFC 9309 says, up to five redirects are followed to find it (to any host: the rules
  still apply to the host that was asked); one that answers 4xx, or is not reached within
  five redirects, allows everything; one that cannot be fetched (5xx, no connection)
  disallows the host for this run.
- Requests to one host are at least `delay` seconds apart. URLs are taken from whichever host
  is ready first, so a slow host does not hold up the others (one connection at a time).
- 429, 5xx, timeouts and connection errors are retried with exponential backoff (`backoff`,
  doubled each time), or after the Retry-After the server asks for; other 4xx are final.
- Redirects are not followed blindly: the target is queued as a URL of its own, so it gets
  the robots check and the rate limit too, and only when it is an http(s) URL on a host that
  `redirects` allows (by default, one of the hosts of the listed URLs: a redirect must not
  take the crawler to an intranet address nobody listed) within `max_redirects` hops.
- Every 2xx page is saved as a WARC `response` record (warcio) with its URL and headers; the
  body is stored decoded (no Content-Encoding). `lmforge data prepare DIR` reads them.
- Resumable: every outcome (url, status, time, file) is appended to `crawl.log` (JSON lines) in
  the output folder after the page is on disk, and a rerun skips URLs with a final outcome
  (fetched, robots, 4xx, redirect). A run writes `.pages-NNNNN.warc.gz.partial` and renames it
  to `pages-NNNNN.warc.gz` when it ends; a partial file left by a killed run is renamed into
  place by the next run (its records are whole up to the last one the log lists). A lock file
  (`.crawl.lock`) keeps a second crawl out of a folder that one is writing into.

The log and the WARC are append-only streams, so they are not written to a temporary file and
renamed like lmforge's other outputs; the log's torn last line (after a crash) is ignored.
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import os
import time
import urllib.robotparser
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from tqdm import tqdm

from lmforge import __version__
from lmforge.config import ConfigError
from lmforge.data.document import DataError

log = logging.getLogger(__name__)

# JSON lines, but not named .jsonl, so that `data prepare DIR` reads only the pages.
LOG_NAME = "crawl.log"
# Held (flock) by the crawl writing into the folder; hidden, so that readers skip it.
LOCK_NAME = ".crawl.lock"
DEFAULT_USER_AGENT = f"lmforge/{__version__} (+https://pypi.org/project/lmforge/)"
# Outcomes after which a URL is not fetched again; "retry" and "failed" are not final.
FINAL = ("fetched", "robots", "http_error", "redirect", "too_large", "invalid")
# Which redirect targets are followed: on the redirecting URL's host, on any host of a listed
# URL, or anywhere.
REDIRECT_POLICIES = ("same_host", "listed_hosts", "any")
# RFC 9309 2.3.1.2: follow at least five consecutive redirects to find robots.txt.
_ROBOTS_REDIRECTS = 5
_RETRY_STATUSES = (408, 429)
_DROP_HEADERS = ("content-encoding", "transfer-encoding", "content-length")


@dataclass(kw_only=True)
class CrawlConfig:
    """How politely and how persistently to fetch."""

    user_agent: str = DEFAULT_USER_AGENT
    # Minimum seconds between two requests to the same host (robots.txt Crawl-delay can raise it).
    delay: float = 1.0
    # Retries after the first attempt, for 429/5xx/timeouts/connection errors.
    retries: int = 3
    # Seconds before the first retry; doubled for each further one.
    backoff: float = 1.0
    # Upper bound on any wait (backoff or Retry-After), in seconds.
    max_wait: float = 300.0
    # Seconds to connect and between bytes received.
    timeout: float = 30.0
    # A body larger than this is not saved (outcome "too_large").
    max_bytes: int = 16 * 2**20
    # Redirect hops followed from one listed URL.
    max_redirects: int = 5
    # Which redirect targets are followed (see REDIRECT_POLICIES): "same_host", "listed_hosts"
    # (the hosts of the listed URLs) or "any". A host is its name and port (another port is
    # another host), the scheme's default port left out (http:// to https:// is the same).
    redirects: str = "listed_hosts"

    def __post_init__(self) -> None:
        if self.redirects not in REDIRECT_POLICIES:
            raise ConfigError(f"redirects={self.redirects!r}; expected one of {REDIRECT_POLICIES}")
        if not self.user_agent.strip():
            raise ConfigError("user_agent is empty; give one like 'mybot/1.0 (+https://me.org)'")
        for name in ("delay", "backoff", "max_wait"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}; expected 0 or more seconds")
        for name in ("timeout", "max_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}; expected a positive number")
        for name in ("retries", "max_redirects"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}; expected 0 or more")


def _check_url(url: str, where: str) -> str:
    """`url` if it is an absolute http(s) URL that httpx can request, else a `DataError`."""
    import httpx

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        ok = False
    if not ok:
        raise DataError(f"{where}: {url!r} is not an http(s) URL; write one absolute URL a line")
    return url


def read_url_list(path: str | os.PathLike) -> list[str]:
    """URLs of a text file, one a line; blank lines and `#` comments are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the URL list ({e})") from e
    urls = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        urls.append(_check_url(line, f"{path}:{lineno}"))
    return urls


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a crawl's log; a torn last line (a crash mid-write) is left out."""
    path = Path(out_dir) / LOG_NAME
    if not path.exists():
        return []
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: ignoring a torn line", path)
    return entries


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _site(url: str) -> tuple[str | None, int | None]:
    """Host name and port of `url`, the port None when it is the scheme's default (so that a
    redirect from http:// to https:// stays on the same site, and another port does not)."""
    parts = urlsplit(url)
    port = parts.port
    return parts.hostname, None if port == {"http": 80, "https": 443}.get(parts.scheme) else port


def _bad_location(e: Exception) -> bool:
    """True when httpx refused a response because of its Location header (it parses it even
    when not following redirects, and raises instead of returning the response)."""
    import httpx

    return isinstance(e, httpx.RemoteProtocolError) and "location header" in str(e).lower()


def _recover_partials(out: Path) -> None:
    """Rename WARC files a killed run left behind into place, so their pages are read."""
    for partial in sorted(out.glob(".pages-*.warc.gz.partial")):
        final = out / partial.name[1 : -len(".partial")]
        if partial.stat().st_size == 0:
            partial.unlink()
        elif final.exists():
            log.warning("leaving %s alone: %s exists too", partial.name, final.name)
        else:
            log.info("recovering %s from an interrupted crawl", final.name)
            os.replace(partial, final)


@contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """Hold the output folder for this crawl: a second crawl into it would take the first
    one's WARC file, still being written, for one a killed run left behind."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: crawl without the lock
        yield
        return
    with open(out / LOCK_NAME, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"{out}: another crawl is writing into this folder (it holds {LOCK_NAME}); "
                "wait for it to end, or crawl into another folder"
            ) from None
        yield  # the lock goes with the file's closing


def crawl(
    urls: Iterable[str] | str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: CrawlConfig | None = None,
    *,
    progress: bool = False,
    client: Any = None,
) -> dict[str, Any]:
    """Fetch `urls` (a list, or a file of one URL a line) into WARC files in `out_dir`.

    Returns a summary: outcome counts of this run, URLs skipped as already done, the WARC
    file written. `client` is an `httpx.Client` to use instead of a new one (tests). Only one
    crawl at a time writes into a folder (a lock file, `LOCK_NAME`).
    """
    cfg = cfg or CrawlConfig()
    if isinstance(urls, (str, os.PathLike)):
        urls = read_url_list(urls)
    else:
        urls = [_check_url(u.strip(), f"URL {i + 1} of the list") for i, u in enumerate(urls)]
    urls = list(dict.fromkeys(urls))  # keep the order, drop repeats
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out):
        return _crawl(urls, out, cfg, progress, client)


def _crawl(
    urls: list[str], out: Path, cfg: CrawlConfig, progress: bool, client: Any
) -> dict[str, Any]:
    import httpx

    _recover_partials(out)
    crawler = _Crawler(out, cfg, client)
    crawler.listed = {_site(u) for u in urls}
    redirects: list[tuple[str, str, int]] = []
    for entry in read_log(out):
        if entry.get("outcome") in FINAL:
            crawler.done.add(entry["url"])
        if entry.get("outcome") == "redirect" and entry.get("location"):
            # A target a killed run may not have fetched yet: judged again, hops and all.
            redirects.append((entry["url"], entry["location"], entry.get("hops", 0)))
    already = sum(u in crawler.done for u in urls)
    own_client = client is None
    if own_client:
        client = httpx.Client(timeout=cfg.timeout, follow_redirects=False)
    crawler.client = client
    log_path = out / LOG_NAME
    if log_path.exists() and log_path.stat().st_size:
        with open(log_path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    else:
        torn = False
    try:
        with open(log_path, "a", encoding="utf-8") as log_file:
            if torn:
                log_file.write("\n")  # end a torn last line so the next entry stands alone
            crawler._log = log_file
            for u in urls:
                crawler.enqueue(_Item(u))
            for url, location, hops in redirects:
                crawler.follow(url, location, hops)
            total = sum(len(h.queue) for h in crawler.hosts.values())
            with tqdm(total=total, desc="crawl", unit="url", disable=not progress) as bar:
                crawler.bar = bar
                crawler.run()
    finally:
        if crawler.warc is not None:
            crawler.warc.close()
        if own_client:
            client.close()
    summary = {
        "urls": len(urls),
        "already_done": already,
        "outcomes": dict(sorted(crawler.counts.items())),
        "warc": crawler.warc.name if crawler.warc is not None and crawler.warc.records else None,
        "log": str(log_path),
    }
    log.info("crawl into %s: %s", out, summary["outcomes"])
    return summary


@dataclass
class _Item:
    url: str
    attempt: int = 0
    hops: int = 0


@dataclass
class _Host:
    delay: float
    ready_at: float = 0.0
    last: float = 0.0  # when the last request to the host ended
    robots: urllib.robotparser.RobotFileParser | None = None
    # Why robots.txt could not be read (5xx, no connection): the host is not crawled this run.
    robots_error: str | None = None
    queue: deque[_Item] = field(default_factory=deque)


class _WarcOut:
    """This run's WARC file: written under a hidden partial name, renamed when closed."""

    def __init__(self, out: Path, user_agent: str) -> None:
        from warcio.warcwriter import WARCWriter

        taken = [p.name[6:11] for p in out.glob("pages-*.warc.gz")]
        n = max((int(t) + 1 for t in taken if t.isdigit()), default=0)
        self.name = f"pages-{n:05d}.warc.gz"
        self.final = out / self.name
        self.partial = out / f".{self.name}.partial"
        self._fh = open(self.partial, "xb")
        self.writer = WARCWriter(self._fh, gzip=True)
        self.records = 0
        info = self.writer.create_warcinfo_record(
            self.name, {"software": f"lmforge/{__version__}", "http-header-user-agent": user_agent}
        )
        self.writer.write_record(info)

    def write(self, url: str, status: int, reason: str, headers: Any, body: bytes) -> None:
        from warcio.statusandheaders import StatusAndHeaders

        kept = [(k, v) for k, v in headers.multi_items() if k.lower() not in _DROP_HEADERS]
        kept.append(("Content-Length", str(len(body))))
        http = StatusAndHeaders(f"{status} {reason}".strip(), kept, protocol="HTTP/1.1")
        record = self.writer.create_warc_record(
            url, "response", payload=io.BytesIO(body), http_headers=http
        )
        self.writer.write_record(record)
        self._fh.flush()  # on disk before the log says it is
        self.records += 1

    def close(self) -> None:
        self._fh.close()
        if self.records:
            os.replace(self.partial, self.final)
        else:
            self.partial.unlink(missing_ok=True)


class _Crawler:
    def __init__(self, out: Path, cfg: CrawlConfig, client: Any) -> None:
        self.out, self.cfg, self.client = out, cfg, client
        self.hosts: dict[str, _Host] = {}
        self.done: set[str] = set()
        self.queued: set[str] = set()
        self.counts: dict[str, int] = {}
        self.warc: _WarcOut | None = None
        self._log: Any = None
        self.bar: Any = None
        self.listed: set[tuple[str | None, int | None]] = set()  # `_site`s of the listed URLs

    # --- bookkeeping -------------------------------------------------------------------------

    def record(self, item: _Item, outcome: str, **fields: Any) -> None:
        entry = {
            "url": item.url,
            "outcome": outcome,
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "attempt": item.attempt + 1,
            **fields,
        }
        self._log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._log.flush()
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if outcome in FINAL:
            self.done.add(item.url)
        if outcome != "retry" and self.bar is not None:
            self.bar.update(1)

    def enqueue(self, item: _Item) -> bool:
        if item.url in self.done or item.url in self.queued:
            return False
        host = _host(item.url)
        if host not in self.hosts:
            self.hosts[host] = _Host(delay=self.cfg.delay)
        self.hosts[host].queue.append(item)
        self.queued.add(item.url)
        if self.bar is not None:
            self.bar.total += 1
            self.bar.refresh()
        return True

    def follow(self, url: str, location: str, hops: int) -> str | None:
        """Queue the target of a redirect from `url`, which took `hops` redirects to reach;
        None, or why the target is not followed (it is then never fetched)."""
        try:
            target = _check_url(urljoin(url, location), "redirect")
        except ValueError:  # DataError, or urljoin's own for a malformed host
            return "not an http(s) URL"
        if hops >= self.cfg.max_redirects:
            return f"more than max_redirects={self.cfg.max_redirects} redirects"
        site, policy = _site(target), self.cfg.redirects
        if (policy == "same_host" and site != _site(url)) or (
            policy == "listed_hosts" and site not in self.listed
        ):
            return f"{urlsplit(target).netloc} is not a host that redirects={policy!r} allows"
        self.enqueue(_Item(target, hops=hops + 1))
        return None

    # --- requests ----------------------------------------------------------------------------

    def _wait_for(self, host: _Host) -> None:
        pause = host.ready_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    def _get(self, host: _Host, url: str):
        """`(status, reason, headers, body, too_large)`; raises httpx errors."""
        self._wait_for(host)
        try:
            headers = {"User-Agent": self.cfg.user_agent}
            with self.client.stream("GET", url, headers=headers) as r:
                body, too_large = bytearray(), False
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > self.cfg.max_bytes:
                        too_large = True
                        break
                return r.status_code, r.reason_phrase, r.headers, bytes(body), too_large
        finally:
            host.last = time.monotonic()
            host.ready_at = host.last + host.delay

    def _load_robots(self, name: str, host: _Host) -> None:
        import httpx

        url = f"{name}/robots.txt"
        rp = urllib.robotparser.RobotFileParser(url)
        status, body, unavailable = None, b"", None
        try:
            for _ in range(_ROBOTS_REDIRECTS + 1):
                status, _, headers, body, _ = self._get(host, url)
                if not 300 <= status < 400:
                    break
                if not headers.get("location"):
                    unavailable = f"answered HTTP {status} with no Location"
                    break
                url = _check_url(urljoin(url, headers["location"]), "robots.txt redirect")
            else:
                unavailable = f"not reached within {_ROBOTS_REDIRECTS} redirects"
        except ValueError:  # a redirect to a URL that is not http(s), or malformed
            unavailable = "redirected to a URL that is not http(s)"
        except httpx.HTTPError as e:
            if _bad_location(e):
                unavailable = "redirected to an invalid URL"
            else:
                status, body = None, b""
                host.robots_error = f"robots.txt: {type(e).__name__}: {e}"
        if unavailable is not None:  # RFC 9309 2.3.1.2: like a 4xx, it allows everything
            log.warning("%s: robots.txt %s; taken as unavailable (allows all)", name, unavailable)
            rp.allow_all = True
        elif status is not None and 200 <= status < 300:
            rp.parse(body.decode("utf-8", errors="replace").splitlines())
        elif status is not None and 400 <= status < 500:
            rp.allow_all = True
        else:
            rp.disallow_all = True
            host.robots_error = host.robots_error or f"robots.txt: HTTP {status}"
        if host.robots_error:
            log.warning("%s: %s; not crawling this host in this run", name, host.robots_error)
        delay = rp.crawl_delay(self.cfg.user_agent)
        if delay:
            host.delay = max(host.delay, float(delay))
            # The robots.txt request counts: the first page waits the Crawl-delay after it.
            host.ready_at = max(host.ready_at, host.last + host.delay)
        host.robots = rp

    def _retry(self, host: _Host, item: _Item, why: str, wait: float | None, **fields) -> None:
        if item.attempt >= self.cfg.retries:
            self.record(item, "failed", error=why, **fields)
            return
        if wait is None:
            wait = self.cfg.backoff * 2**item.attempt
        wait = min(wait, self.cfg.max_wait)
        self.record(item, "retry", error=why, wait=round(wait, 3), **fields)
        host.ready_at = max(host.ready_at, time.monotonic() + wait)
        item.attempt += 1
        host.queue.appendleft(item)

    def fetch(self, name: str, host: _Host, item: _Item) -> None:
        import httpx

        if host.robots_error:  # not final: a later run tries again
            self.record(item, "failed", error=host.robots_error)
            return
        if not host.robots.can_fetch(self.cfg.user_agent, item.url):
            self.record(item, "robots")
            return
        try:
            status, reason, headers, body, too_large = self._get(host, item.url)
        except (httpx.TimeoutException, httpx.TransportError) as e:
            if isinstance(e, httpx.UnsupportedProtocol) or _bad_location(e):
                self.record(item, "invalid", error=f"{type(e).__name__}: {e}")
            else:
                self._retry(host, item, f"{type(e).__name__}: {e}", None)
            return
        except httpx.HTTPError as e:
            self.record(item, "invalid", error=f"{type(e).__name__}: {e}")
            return
        if status in _RETRY_STATUSES or status >= 500:
            wait = _retry_after(headers.get("retry-after"))
            self._retry(host, item, f"HTTP {status}", wait, status=status)
        elif 300 <= status < 400 and headers.get("location"):
            try:
                target = urljoin(item.url, headers["location"])
            except ValueError:
                target = headers["location"]
            why_not = self.follow(item.url, target, item.hops)
            fields = {"status": status, "location": target, "hops": item.hops}
            if why_not:
                fields["not_followed"] = why_not
                skipped = self.counts.get("redirect_not_followed", 0)
                self.counts["redirect_not_followed"] = skipped + 1
                log.info("%s: not following the redirect to %s: %s", item.url, target, why_not)
            self.record(item, "redirect", **fields)
        elif too_large:
            self.record(item, "too_large", status=status, limit=self.cfg.max_bytes)
        elif 200 <= status < 300:
            if self.warc is None:
                self.warc = _WarcOut(self.out, self.cfg.user_agent)
            self.warc.write(item.url, status, reason, headers, body)
            self.record(item, "fetched", status=status, bytes=len(body), file=self.warc.name)
        else:
            self.record(item, "http_error", status=status)

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            ready = [(h.ready_at, name) for name, h in self.hosts.items() if h.queue]
            if not ready:
                return
            _, name = min(ready)
            host = self.hosts[name]
            if host.robots is None:
                self._load_robots(name, host)
                continue
            item = host.queue.popleft()
            self.queued.discard(item.url)
            self.fetch(name, host, item)
