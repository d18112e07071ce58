"""The feed command as an operator runs it: a subprocess, real signals, real exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import consume, fold, make_settings, run_feed, seed_links, settings_env, truth

from feed.simulator import Library, Simulator


def test_bad_setting_is_a_clear_message_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "FEED_API__LIMIT": "500", "FEED_API__API_KEY": "k"}
    result = run_feed(env, "once")
    assert result.returncode == 2
    assert "FEED_API__LIMIT = '500'" in result.stderr
    assert "less than or equal to 200" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_api_key_names_the_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEED_")}
    result = run_feed({**env, "FEED_STATE__PATH": str(tmp_path / "s.db")}, "once", "--dry-run")
    assert result.returncode == 2
    assert "FEED_API__API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_masks_the_api_key(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FEED_API__API_KEY": "very-secret-value",
        "FEED_KAFKA__CONFIG": '{"sasl.password": "hunter2", "linger.ms": 5}',
    }
    result = run_feed(env, "config")
    assert result.returncode == 0
    assert "very-secret-value" not in result.stdout and "hunter2" not in result.stdout
    doc = orjson.loads(result.stdout)
    assert doc["api"]["api_key"] == "**********"
    assert doc["kafka"]["config"]["linger.ms"] == 5


def test_case_07_401_exits_with_the_setting_named(
    sim: Simulator, library: Library, tmp_path: Path
) -> None:
    seed_links(library, 3)
    env = {
        **os.environ,
        "FEED_API__BASE_URL": sim.url,
        "FEED_API__API_KEY": "key-Zq81x",
        "FEED_STATE__PATH": str(tmp_path / "s.db"),
    }
    result = run_feed(env, "once", "--dry-run")
    assert result.returncode == 3
    assert "FEED_API__API_KEY" in result.stderr
    assert "key-Zq81x" not in result.stderr
    assert result.stdout == ""
    assert sum(1 for r in sim.requests if r.startswith("/api/")) == 1


def test_dry_run_prints_events_and_changes_nothing(
    sim: Simulator, library: Library, tmp_path: Path
) -> None:
    seed_links(library, 12)
    state = tmp_path / "s.db"
    env = {
        **os.environ,
        "FEED_API__BASE_URL": sim.url,
        "FEED_API__API_KEY": sim.api_key,
        "FEED_STATE__PATH": str(state),
        "FEED_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    result = run_feed(env, "once", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [d["type"] for d in lines if "type" in d] == ["link_added"] * 12
    assert not state.exists()


@pytest.mark.kafka
def test_status_json_parses_and_matches_the_walk(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path)
    seed_links(library, 40)
    env = settings_env(settings)
    assert run_feed(env, "once").returncode == 0
    result = run_feed(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    doc = orjson.loads(result.stdout)
    assert doc["links"] == 40
    assert doc["last_walk"]["outcome"] == "complete"
    assert doc["last_walk"]["events"] == {"link_added": 40}
    assert doc["outbox_pending"] == 0
    assert doc["walk_in_progress"] is None
    assert doc["watermark_age_seconds"] >= 0


def start_run(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "feed", "--log-level", "DEBUG", "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {needle!r}:\n{''.join(seen[-30:])}")


@pytest.mark.kafka
def test_sigterm_mid_walk_leaves_a_consistent_checkpoint(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path, limit=20)
    seed_links(library, 400)
    sim.faults.latency_seconds = 0.05  # 20 pages take a second: time to stop mid-walk
    env = settings_env(settings)
    proc = start_run(env)
    wait_for_line(proc, "page 5:")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert "stopped cleanly" in out

    status = orjson.loads(run_feed(env, "status", "--json").stdout)
    assert status["outbox_pending"] == 0
    progress = status["walk_in_progress"]
    assert progress is not None and 5 <= progress["pages"] < 20
    published = consume(kafka, settings.kafka.topic)
    assert len(published) == status["links"] == progress["rows"]

    sim.faults.latency_seconds = 0
    assert run_feed(env, "once").returncode == 0
    events = consume(kafka, settings.kafka.topic)
    assert len({e["event_id"] for e in events}) == len(events) == 400
    assert fold(events) == truth(library)


@pytest.mark.kafka
@pytest.mark.parametrize("transactions", [True, False], ids=["txn", "no-txn"])
def test_case_12_sigterm_with_messages_in_flight(
    transactions: bool, sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path, transactions=transactions)
    settings.kafka.config = {"linger.ms": 500}
    settings.poll.interval_seconds, settings.poll.jitter_seconds = 0.2, 0
    env = settings_env(settings)
    proc = start_run(env, "--max-walks", "1000")
    wait_for_line(proc, "walk 1 complete")
    seed_links(library, 50)
    # The page with the 50 new links has been diffed: its batch is about to be produced,
    # and linger.ms keeps it in the producer for half a second.
    wait_for_line(proc, "50 changes")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    events = consume(kafka, settings.kafka.topic)
    assert sorted(e["link"]["id"] for e in events) == sorted(library.ids)
    status = orjson.loads(run_feed(env, "status", "--json").stdout)
    assert status["outbox_pending"] == 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.kafka
def test_case_07_401_service_stays_up_and_not_ready(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    import httpx

    settings = make_settings(sim, kafka, tmp_path, api_key="key-Zq81x")
    port = free_port()
    env = {
        **settings_env(settings),
        "FEED_METRICS__ENABLED": "true",
        "FEED_METRICS__PORT": str(port),
        "FEED_POLL__INTERVAL_SECONDS": "0.5",
    }
    proc = start_run(env)
    try:
        wait_for_line(proc, "refused the API key")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and "API key" in ready.text
        metrics = httpx.get(f"{base}/metrics").text
        assert 'feed_errors_total{kind="upstream_fatal"}' in metrics
        time.sleep(1.5)
        assert proc.poll() is None
        # One request per poll, no retry storm.
        assert sum(1 for r in sim.requests if r.startswith("/api/")) <= 5
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "key-Zq81x" not in out
    assert consume(kafka, settings.kafka.topic) == []


@pytest.mark.kafka
def test_tail_prints_events_readably_and_filters(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path)
    seed_links(library, 6)
    env = settings_env(settings)
    assert run_feed(env, "once").returncode == 0
    album = library.rows["album_asset_1"].album_id
    result = run_feed(env, "tail", "--from-beginning", "--idle-timeout", "5", "--album", album)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected = sum(1 for row in library.rows.values() if row.album_id == album)
    assert len(lines) == expected
    assert all(f"album={album}" in line and "+ link_added" in line for line in lines)
