"""Case 15: the broker goes away while the publisher runs. A broker of its own (not the
shared one) is stopped and started here, so other tests are not disturbed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from helpers import (
    REPO,
    consume,
    fold,
    kafka_cmd,
    make_settings,
    private_broker,
    seed_links,
    settings_env,
    truth,
)

from feed.simulator import Library, Simulator

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OUTAGE_HOME = REPO / ".local" / "kafka-outage"


def broker(*args: str) -> str:
    return kafka_cmd(*args, home=OUTAGE_HOME)


@pytest.fixture(scope="module")
def own_broker() -> Iterator[str]:
    yield from private_broker(OUTAGE_HOME)


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def status(env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, "-m", "feed", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return dict(orjson.loads(out.stdout)) if out.returncode == 0 else {}


def test_case_15_broker_outages(
    sim: Simulator, library: Library, own_broker: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, own_broker, tmp_path)
    settings.kafka.config = {
        "message.timeout.ms": 3000,
        "socket.timeout.ms": 3000,
        "transaction.timeout.ms": 10000,
    }
    settings.poll.interval_seconds, settings.poll.jitter_seconds = 0.3, 0
    env = settings_env(settings)
    seed_links(library, 10)
    log = (tmp_path / "feed.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "feed", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_until(lambda: status(env).get("links") == 10, 60, "the first walk")

        # A restart while new events are in flight.
        broker("stop")
        more = [library.add(f"album_asset_b{n}") for n in range(10)]
        time.sleep(2)
        broker("start")
        wait_until(
            lambda: status(env).get("links") == 20 and status(env).get("outbox_pending") == 0,
            120,
            "the 10 events",
        )

        # Down for longer than message.timeout.ms while links keep arriving.
        broker("stop")
        for burst in range(3):
            more += [library.add(f"album_asset_c{burst}{n}") for n in range(5)]
            time.sleep(2)
        library.remove("album_asset_1")
        assert proc.poll() is None, "the publisher died while the broker was away"
        broker("start")
        wait_until(
            lambda: status(env).get("links") == 34 and status(env).get("outbox_pending") == 0,
            180,
            "the backlog",
        )
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
    assert proc.returncode == 0, (tmp_path / "feed.log").read_text()[-3000:]

    events = consume(own_broker, settings.kafka.topic)
    assert len({e["event_id"] for e in events}) == len(events), "an event was delivered twice"
    assert fold(events) == truth(library)
    text = (tmp_path / "feed.log").read_text()
    assert "the checkpoint is safe, retrying" in text
