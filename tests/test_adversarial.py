"""Faults found by adversarial testing, each as a regression test named after it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import consume, make_settings, seed_links, walk_once

from feed.engine import Feed
from feed.settings import Settings
from feed.simulator import Library, Simulator
from feed.store import SnapshotStore

pytestmark = pytest.mark.kafka


@pytest.mark.timeout(90)
def test_regression_oversized_record_blocks_the_outbox(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """A huge row must never become a record Kafka refuses: such a record stayed in the
    outbox and was retried forever, so nothing after it was ever published.

    Two ways in: a row that fails validation (its dead letter carried the whole raw
    row), and a valid row whose key (a huge album id) pushed the record over the limit
    although its body alone fitted.
    """
    settings = make_settings(sim, kafka, tmp_path)
    settings.kafka.config = {"message.max.bytes": 4000}
    seed_links(library, 2)
    # A valid link whose body fits but whose key (the album id) makes the record too big.
    library.add("album_asset_bigkey", album_id="album_" + "k" * 1900)
    # An invalid row with a huge field: its dead letter must be cut down, not refused.
    library.add("album_asset_badbig")
    library.raw["album_asset_badbig"] = {
        "id": "album_asset_badbig",
        "album_id": "album_" + "x" * 20_000,
        "asset_id": "asset_1",
        "created_at": "not a date",
        "updated_at": "2024-01-01T00:00:00Z",
    }
    report = walk_once(settings)
    assert report.outcome == "complete"
    events = consume(kafka, settings.kafka.topic)
    assert sorted(e["link"]["id"] for e in events) == ["album_asset_1", "album_asset_2"]
    dead = {d["link_id"]: d for d in consume(kafka, settings.kafka.dead_letter_topic)}
    assert dead["album_asset_bigkey"]["reason"] == "event larger than message.max.bytes"
    assert dead["album_asset_badbig"]["reason"] == "invalid row"
    assert dead["album_asset_badbig"]["detail"]["field"] == "created_at"
    # `feed snapshot` must not be blocked by the oversized link either.
    feed = Feed(settings)
    try:
        feed.open()
        assert feed.publish_snapshot() == 2
    finally:
        feed.close()


class _DiskFullOnCommit:
    """A connection whose COMMIT fails the way a full disk makes it fail: SQLite rolls
    the transaction back itself and reports SQLITE_FULL."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self._db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_regression_disk_full_error_hidden_by_rollback(tmp_path: Path) -> None:
    """A full disk made the checkpoint's COMMIT fail and SQLite roll back on its own; the
    store then issued its own ROLLBACK, which raised "cannot rollback - no transaction is
    active" and replaced the real error in the operator's message (and a restart after
    freeing space could not tell what had happened)."""
    store = SnapshotStore(tmp_path / "state.sqlite3", "lib")
    real = store._db
    store._db = _DiskFullOnCommit(real)  # type: ignore[assignment]
    store.begin()
    store.insert_links([("album_asset_1", "album_1", "asset_1", "t", "t")])
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.commit()
    store.rollback()  # must not raise: the transaction is already gone
    store._db = real
    store.begin()  # the store is usable again
    store.insert_links([("album_asset_2", "album_1", "asset_2", "t", "t")])
    store.commit()
    assert store.count_links() == 1
    store.close()


def test_regression_unopenable_state_called_damaged(tmp_path: Path) -> None:
    """A state file that cannot be *opened* (a read-only mount, a directory without write
    permission, a path that is a directory) was reported as damaged, with the advice to
    restore a backup or move the file aside, which re-publishes every link for nothing.
    """
    from feed.errors import StateError

    with pytest.raises(StateError) as caught:
        SnapshotStore(tmp_path, "lib")  # a directory: SQLITE_CANTOPEN, not corruption
    assert "cannot open the state file" in str(caught.value)
    assert "move it aside to start over" not in str(caught.value)
    # Real damage keeps its own message.
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=r"cannot be read.*re-publish every link"):
        SnapshotStore(damaged, "lib")


@pytest.mark.parametrize(
    "config",
    [
        {"no.such.key": 1},
        {"linger.ms": -5},
        {"message.max.bytes": "abc", "sasl.password": "hunter2"},
    ],
)
def test_regression_bad_librdkafka_setting_is_a_traceback(
    sim: Simulator, kafka: str, tmp_path: Path, config: dict[str, Any]
) -> None:
    """A setting librdkafka refuses in FEED_KAFKA__CONFIG crashed with a KafkaException or
    ValueError traceback (exit 1) instead of a configuration error (exit 2) naming it;
    the message must not echo other settings, which may be secrets."""
    from feed.errors import ConfigError

    settings = make_settings(sim, kafka, tmp_path)
    settings.kafka.config = config
    with pytest.raises(ConfigError, match="FEED_KAFKA__CONFIG") as caught:
        walk_once(settings)
    assert "hunter2" not in str(caught.value)


def test_regression_sigterm_ignored_while_retrying(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """A stop request (SIGTERM, SIGINT) was not honoured while a request waited to retry:
    with `Retry-After: 30` the process went on retrying for up to the retry budget (300 s
    by default), long past any container's grace period. The wait now ends at once and
    the walk ends incomplete and resumable, with nothing removed."""
    import threading
    import time

    settings = make_settings(sim, kafka, tmp_path, max_attempts=8, max_delay_seconds=60)
    seed_links(library, 4)
    sim.faults.add("status", status=503, times=100, headers={"Retry-After": "30"})
    stop = threading.Event()
    feed = Feed(settings, stop=stop)
    try:
        feed.open()
        threading.Timer(1.0, stop.set).start()
        began = time.monotonic()
        report = feed.run_walk()
        took = time.monotonic() - began
    finally:
        feed.close()
    assert took < 10, f"the stop request waited {took:.0f} s"
    assert report.outcome == "incomplete"
    assert consume(kafka, settings.kafka.topic) == []


def test_regression_oauthbearer_config_shown_by_feed_config() -> None:
    """`feed config` masked sasl.password but printed sasl.oauthbearer.config, which
    holds client credentials as text, in the clear."""
    from feed.settings import masked

    settings = Settings(
        kafka={"config": {"sasl.oauthbearer.config": "clientId=a clientSecret=s3cr3t"}}
    )
    assert "s3cr3t" not in str(masked(settings))


def test_regression_state_deleted_while_running(tmp_path: Path) -> None:
    """Deleting (or replacing) the state file under a running feed went unnoticed: it kept
    checkpointing into the unlinked file, and the next start found no state and published
    every link again as link_added. The next checkpoint now stops with a StateError."""
    from feed.errors import StateError

    path = tmp_path / "state.sqlite3"
    store = SnapshotStore(path, "lib")
    store.begin()
    store.insert_links([("album_asset_1", "album_1", "asset_1", "t", "t")])
    store.commit()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store.begin()
    store.insert_links([("album_asset_2", "album_1", "asset_2", "t", "t")])
    with pytest.raises(StateError, match="deleted or replaced"):
        store.commit()
    store.close()


@pytest.mark.kafka
def test_regression_readded_link_reuses_its_event_id(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """A link removed and re-added with the very same values got the id of its first
    link_added, so a consumer de-duplicating on ids dropped the re-add."""
    from helpers import fold, truth

    settings = make_settings(sim, kafka, tmp_path)
    library.add("album_asset_x", album_id="album_a", asset_id="asset_a")
    first = library.render("album_asset_x")
    walk_once(settings)
    library.remove("album_asset_x")
    walk_once(settings)
    library.add("album_asset_x", album_id="album_a", asset_id="asset_a")
    library.raw["album_asset_x"] = dict(first)  # the very same values as the first time
    walk_once(settings)
    events = consume(kafka, settings.kafka.topic)
    assert [e["type"] for e in events] == ["link_added", "link_removed", "link_added"]
    assert len({e["event_id"] for e in events}) == 3
    unique = list({e["event_id"]: e for e in events}.values())
    assert fold(unique) == truth(library)


def test_regression_second_writer_on_one_state_file(tmp_path: Path) -> None:
    """feed snapshot during feed run broke both, with advice about disk space."""
    from feed.errors import StateError

    first = SnapshotStore(tmp_path / "state.sqlite3", "lib", exclusive=True)
    try:
        with pytest.raises(StateError, match="another feed process is using the state file"):
            SnapshotStore(tmp_path / "state.sqlite3", "lib", exclusive=True)
        reader = SnapshotStore(tmp_path / "state.sqlite3", "lib")  # feed status still reads
        reader.close()
    finally:
        first.close()
    SnapshotStore(tmp_path / "state.sqlite3", "lib", exclusive=True).close()
