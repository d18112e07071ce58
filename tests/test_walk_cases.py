"""The walk side of the failure cases of cases.md, one test (or group) named after each.

The upstream is always the repo's simulator over real HTTP on loopback. Only case 5
fakes anything: the sleep of the retry policy, so that a 30 s wait is checked, not taken.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from helpers import REPO, api_settings, cursors, seed_links

from feed.client import UpstreamClient
from feed.errors import AuthError, ConfigError, FatalUpstreamError, WalkIncomplete
from feed.retry import RetryPolicy, http_date
from feed.settings import ApiSettings, load_settings
from feed.simulator import Library, Simulator
from feed.walk import PageWalk, WalkPage

A1, A2, A3, A4 = (f"album_asset_{n}" for n in range(1, 5))


def id_batches(sim: Simulator) -> list[list[str]]:
    """The ids of every lookup request, in order."""
    out = []
    for raw in list(sim.requests):
        query = parse_qs(urlsplit(raw).query)
        if "ids" in query:
            out.append(query["ids"])
    return out


def scripted_page(rows: list[dict[str, Any]], has_more: bool) -> str:
    return orjson.dumps({"data": rows, "has_more": has_more}).decode()


def read_all(walk: PageWalk) -> list[str]:
    return [link.id for page in walk for link in page.links]


# -- case 1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["empty_page", "same_row_again"])
def test_case_01_endless_walk(
    client: UpstreamClient, sim: Simulator, library: Library, variant: str
) -> None:
    seed_links(library, 2)  # S0 = {a1, a2}
    p1 = scripted_page([library.render(A1), library.render(A2)], has_more=True)
    sim.faults.add("status", status=200, body=p1)
    # The upstream would go on answering this way for ever: 50 firings are queued.
    action = "empty_has_more" if variant == "empty_page" else "repeat"
    sim.faults.add(action, cursor=A2, times=50)  # type: ignore[arg-type]

    walk = PageWalk(client)
    read: list[str] = []
    with pytest.raises(WalkIncomplete) as caught:
        for page in walk:
            read += [link.id for link in page.links]

    assert not walk.result.complete
    assert not caught.value.resumable  # walking on from here would do the same again
    assert set(read) == {A1, A2}  # nothing new: no event can come of it
    assert cursors(sim) == [None, A2]  # P(a2) is asked once, never in a loop


# -- case 2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error404", "error400", "continue"])
def test_case_02_cursor_row_deleted(
    client: UpstreamClient, sim: Simulator, library: Library, mode: Any
) -> None:
    seed_links(library, 4)  # S0 = {a1..a4}
    sim.faults.deleted_cursor = mode

    walk = PageWalk(client)
    read: list[str] = []
    for page in walk:
        read += [link.id for link in page.links]
        if page.number == 1:
            library.remove(A2)  # deleted between P1 and P(a2)

    assert walk.result.complete
    assert read == [A1, A2, A3, A4]  # a3 and a4 are not skipped
    sent = cursors(sim)
    assert sent.count(A2) == 1  # a lost cursor is not retried as transient
    assert sent.count(None) == 1  # and the walk does not start over
    if mode == "continue":
        assert sent == [None, A2]
    else:
        assert sent == [None, A2, A1]  # stepped back to the newest row still there

    # The next walk no longer sees a2 and sees everything else: only -a2 can follow.
    assert {A1, A2, A3, A4} - set(read_all(PageWalk(client))) == {A2}


# -- case 3 ------------------------------------------------------------------------------


def test_case_03_failed_walk(sim: Simulator, library: Library) -> None:
    seed_links(library, 4)  # S0 = {a1..a4}
    sim.faults.add("status", status=503, cursor=A2, times=4)
    upstream = UpstreamClient(api_settings(sim, limit=2, max_attempts=4))

    walk = PageWalk(upstream)
    pages: list[WalkPage] = []
    with pytest.raises(WalkIncomplete) as caught:
        pages.extend(walk)

    assert caught.value.resumable
    assert not walk.result.complete
    assert walk.result.resumable
    assert "503" in caught.value.reason
    assert cursors(sim) == [None, A2, A2, A2, A2]  # retried until out of attempts
    assert [link.id for page in pages for link in page.links] == [A1, A2]

    # The next poll resumes from the checkpointed cursor, not from page one.
    again = PageWalk(upstream, resume=pages[-1].resume)
    assert read_all(again) == [A3, A4]
    assert again.result.complete
    assert cursors(sim)[5:] == [A2]
    upstream.close()


# -- case 5 ------------------------------------------------------------------------------


def _in(seconds: float) -> Callable[[], str]:
    return lambda: http_date(datetime.now(UTC) + timedelta(seconds=seconds))


RETRY_AFTER_FORMS: list[Any] = [
    pytest.param(_in(30), (28.0, 30.0), False, id="http-date-30s-ahead"),
    pytest.param(lambda: "7", (7.0, 7.0), False, id="seconds-7"),
    pytest.param(lambda: "1.5", (1.5, 1.5), False, id="seconds-1.5"),
    pytest.param(_in(-3600), (0.0, 0.0), False, id="date-in-the-past"),
    # Not a number: the normal backoff, first step 0.5 s less up to a quarter of jitter.
    pytest.param(lambda: "in a while", (0.375, 0.5), False, id="not-a-number"),
    pytest.param(lambda: "86400", (45.0, 45.0), True, id="a-day-cut-to-the-cap"),
]


@pytest.mark.parametrize(("header", "expected", "capped"), RETRY_AFTER_FORMS)
def test_case_05_retry_after_forms(
    sim: Simulator,
    caplog: pytest.LogCaptureFixture,
    header: Callable[[], str],
    expected: tuple[float, float],
    capped: bool,
) -> None:
    seed_links(sim.library, 2)
    settings = api_settings(
        sim, backoff_initial_seconds=0.5, backoff_max_seconds=8, max_delay_seconds=45
    )
    waits: list[float] = []
    policy = RetryPolicy(settings, sleep=waits.append)
    sim.faults.add("status", status=429, headers={"Retry-After": header()})

    with caplog.at_level(logging.WARNING), UpstreamClient(settings, policy=policy) as up:
        page = up.page(None)  # never an exception, whatever the header says

    assert [link.id for link in page.links] == [A1, A2]
    assert len(waits) == 1  # one wait, then the 200: no hammering
    low, high = expected
    assert low <= waits[0] <= high
    cap_warning = "FEED_API__MAX_DELAY_SECONDS" in caplog.text
    assert cap_warning is capped


# -- case 6 ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["drop", "timeout"])
def test_case_06_dropped_keepalive(sim: Simulator, library: Library, fault: Any) -> None:
    seed_links(library, 7)
    settings = api_settings(sim, limit=2, timeout_seconds=0.3)
    with UpstreamClient(settings) as upstream:
        clean = read_all(PageWalk(upstream))
        sim.requests.clear()
        # The second request of the walk rides the connection the first one opened.
        sim.faults.add(fault, cursor=clean[1], seconds=1.0)
        walk = PageWalk(upstream)
        faulty = read_all(walk)

    assert walk.result.complete
    assert faulty == clean
    assert cursors(sim).count(clean[1]) == 2  # failed once, retried once


# -- case 7 ------------------------------------------------------------------------------


def test_case_07_401(sim: Simulator, library: Library, caplog: pytest.LogCaptureFixture) -> None:
    seed_links(library, 4)
    wrong = "sk-wrong-0123456789"
    upstream = UpstreamClient(api_settings(sim, api_key=wrong))
    walk = PageWalk(upstream)

    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as caught:
        read_all(walk)

    assert "FEED_API__API_KEY" in str(caught.value)
    assert len(sim.requests) == 1  # no retry storm
    assert not walk.result.complete
    for text in (str(caught.value), repr(caught.value), repr(upstream), caplog.text):
        assert wrong not in text
    upstream.close()


# -- case 8 ------------------------------------------------------------------------------


TIMESTAMP_FORMS = {
    A1: ("2023-11-07T05:31:56Z", "2023-11-07T05:31:56.000000Z"),
    A2: ("2023-11-07T05:31:56.123456Z", "2023-11-07T05:31:56.123456Z"),
    A3: ("2023-11-07T07:31:56+02:00", "2023-11-07T05:31:56.000000Z"),
    A4: ("2023-11-07T05:31:56", "2023-11-07T05:31:56.000000Z"),
}


def test_case_08_timestamp_forms(
    client: UpstreamClient, library: Library, caplog: pytest.LogCaptureFixture
) -> None:
    for link_id, (given, _) in TIMESTAMP_FORMS.items():
        library.add(link_id)
        row = library.render(link_id)
        library.raw[link_id] = {**row, "created_at": given, "updated_at": given}

    with caplog.at_level(logging.WARNING):
        pages = list(PageWalk(client))

    links = {link.id: link for page in pages for link in page.links}
    assert sorted(links) == sorted(TIMESTAMP_FORMS)  # no row dropped
    assert not any(page.rejected for page in pages)
    for link_id, (_, canonical) in TIMESTAMP_FORMS.items():
        assert links[link_id].created_at == canonical
        assert links[link_id].updated_at == canonical
    naive = [entry for page in pages for entry in page.naive_timestamps]
    assert naive == [
        f"{A4} created_at=2023-11-07T05:31:56",
        f"{A4} updated_at=2023-11-07T05:31:56",
    ]
    assert "without a zone" in caplog.text
    assert client.page(A3).naive_timestamps == naive  # the page itself reports them too


# -- case 16 -----------------------------------------------------------------------------


def test_case_16_limits(
    client: UpstreamClient,
    sim: Simulator,
    library: Library,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    # A limit above the upstream's maximum is refused, with the setting named.
    with pytest.raises(ValueError, match="less than or equal to 200"):
        ApiSettings(limit=500)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("FEED_API__LIMIT", "500")
    with pytest.raises(ConfigError, match=r"FEED_API__LIMIT = '500'.*200"):
        load_settings()

    # A confirmation of 150 ids goes as two lookups of at most 100.
    ids = seed_links(library, 150)
    assert sorted(client.lookup(ids)) == sorted(ids)
    assert [len(batch) for batch in id_batches(sim)] == [100, 50]

    # A 400 on a page is an error, never an empty last page that ends the walk.
    sim.requests.clear()
    sim.faults.add("status", status=400, body='{"detail": "bad request"}', cursor=A2)
    walk = PageWalk(client, resume=[A1, A2])
    with pytest.raises(FatalUpstreamError) as caught:
        read_all(walk)
    assert cursors(sim) == [A2]  # not retried, and not taken for the end
    assert caught.value.status == 400
    assert not walk.result.complete


# -- case 18 -----------------------------------------------------------------------------


LINKS_2M = 2_000_000
RSS_LIMIT_MB = 256

WALKER = """
import json, sys, time
from feed.client import UpstreamClient
from feed.settings import ApiSettings
from feed.walk import PageWalk

settings = ApiSettings(base_url=sys.argv[1], api_key="sim-key", limit=200,
                       requests_per_second=1_000_000, timeout_seconds=30)
started = time.monotonic()
rows = 0
previous = ""
ordered = True
with UpstreamClient(settings) as upstream:
    walk = PageWalk(upstream)
    for page in walk:
        for link in page.links:
            ordered = ordered and link.id > previous
            previous = link.id
        rows += len(page.links)
print(json.dumps({"rows": rows, "pages": walk.result.pages, "ordered": ordered,
                  "complete": walk.result.complete, "last": previous,
                  "seconds": round(time.monotonic() - started, 1)}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FEED_")}


def _wait_for_line(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = proc.stdout.readline()
                if marker in line:
                    return line
                if not line and proc.poll() is not None:
                    break
    raise AssertionError(f"no {marker!r} line from the simulator within {timeout} s")


@pytest.fixture
def big_simulator(tmp_path: Any) -> Iterator[str]:
    """A simulator of 2,000,000 links in a process of its own."""
    port = _free_port()
    cmd = [sys.executable, "-m", "feed", "simulate", "--links", str(LINKS_2M)]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
    )
    try:
        _wait_for_line(proc, "simulator on", timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_case_18_memory(big_simulator: str, tmp_path: Any) -> None:
    started = time.monotonic()
    out_path, err_path = tmp_path / "walker.out", tmp_path / "walker.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        walker = subprocess.Popen(
            [sys.executable, "-c", WALKER, big_simulator],
            stdout=out,
            stderr=err,
            cwd=REPO,
            env=_clean_env(),
        )
        peak_mb = _reap_peak_rss_mb(walker, timeout=420)
    elapsed = time.monotonic() - started
    assert walker.returncode == 0, err_path.read_text()[-2000:]
    report = json.loads(out_path.read_text().strip().splitlines()[-1])
    print(f"case 18: {report}; {elapsed:.1f} s in all, peak RSS {peak_mb:.0f} MB")

    assert report["complete"]
    assert report["rows"] == LINKS_2M
    assert report["ordered"]  # each row once: none twice, none skipped (ids are dense)
    assert report["last"] == f"album_asset_{LINKS_2M - 1:09d}"
    assert peak_mb < RSS_LIMIT_MB


def _reap_peak_rss_mb(proc: subprocess.Popen[Any], timeout: float) -> float:
    """Wait for the child with wait4, which reports the peak RSS of that one process."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss / 1024  # kilobytes on Linux
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"the 2M-link walk took longer than {timeout} s")
        time.sleep(0.2)
