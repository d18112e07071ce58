"""The publisher is killed with SIGKILL at every step boundary, restarted, and the events
a read_committed consumer folds must equal the simulator's truth: nothing lost, nothing
invented, and (with transactions) nothing twice."""

from __future__ import annotations

import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import consume, fold, make_settings, run_feed, seed_links, settings_env, truth

from feed.failpoints import POINTS
from feed.settings import Settings
from feed.simulator import Library, Simulator

pytestmark = pytest.mark.kafka


def crash_then_recover(
    settings: Settings, failpoints: str, library: Library, churn: bool = True
) -> None:
    env = settings_env(settings)
    crashed = run_feed({**env, "FEED_FAILPOINTS": failpoints}, "once")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    if churn:
        library.churn(adds=9, removes=6, updates=7)
    for _ in range(3):
        done = run_feed(env, "once")
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr[-2000:]
    # A resumed walk cannot see changes behind its cursor; the walk after it, which
    # starts after the last change, must bring the feed level with the upstream.
    final = run_feed(env, "once")
    assert final.returncode == 0, final.stderr[-2000:]


def assert_same_ids_same_content(events: list[dict[str, Any]]) -> None:
    by_id: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for event in events:
        by_id[event["event_id"]].add(
            (event["type"], event["link"]["id"], event["link"]["updated_at"])
        )
    assert all(len(v) == 1 for v in by_id.values()), "one event id names two changes"


@pytest.mark.parametrize("transactions", [True, False], ids=["txn", "no-txn"])
@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_step_boundary(
    point: str,
    transactions: bool,
    sim: Simulator,
    library: Library,
    kafka: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(sim, kafka, tmp_path, transactions=transactions, limit=50)
    settings.kafka.batch_events = 60
    settings.kafka.batch_seconds = 60
    seed_links(library, 300)
    # The second pass through each point: a checkpoint has already been taken.
    crash_then_recover(settings, f"{point}=2", library)

    events = consume(kafka, settings.kafka.topic)
    assert fold(events) == truth(library)
    ids = [e["event_id"] for e in events]
    if transactions:
        assert len(ids) == len(set(ids)), "read_committed saw an event twice"
    else:
        assert_same_ids_same_content(events)


@pytest.mark.parametrize("transactions", [True, False], ids=["txn", "no-txn"])
def test_sigkill_during_removals(
    transactions: bool, sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path, transactions=transactions, limit=50)
    seed_links(library, 120)
    assert run_feed(settings_env(settings), "once").returncode == 0
    library.churn(removes=30, updates=5)
    # Pages of the second walk pass before_state_commit a few times; the kill lands
    # on the final checkpoint, the one that holds the removals.
    crash_then_recover(settings, "after_state_commit=1", library, churn=False)
    events = consume(kafka, settings.kafka.topic)
    assert fold(events) == truth(library)
    if transactions:
        assert len({e["event_id"] for e in events}) == len(events)


@pytest.mark.parametrize("transactions", [True, False], ids=["txn", "no-txn"])
def test_case_11_checkpoint_ahead_of_delivery(
    transactions: bool, sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """S0={}; a1..a3 found; the process dies after a1 is in Kafka and before a2 is."""
    settings = make_settings(sim, kafka, tmp_path, transactions=transactions)
    settings.kafka.batch_events = 1
    seed_links(library, 3)
    crash_then_recover(settings, "after_kafka_commit=1", library, churn=False)

    events = consume(kafka, settings.kafka.topic)
    ids = [e["link"]["id"] for e in events]
    assert sorted(set(ids)) == ["album_asset_1", "album_asset_2", "album_asset_3"]
    if transactions:
        assert sorted(ids) == ["album_asset_1", "album_asset_2", "album_asset_3"]
    else:
        assert ids.count("album_asset_1") <= 2
        assert_same_ids_same_content(events)


def test_case_10_torn_checkpoint_restart_emits_nothing(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """SIGKILL while the snapshot and cursor are being written; the upstream unchanged."""
    settings = make_settings(sim, kafka, tmp_path, limit=20)
    seed_links(library, 200)
    env = settings_env(settings)
    assert run_feed(env, "once").returncode == 0
    before = consume(kafka, settings.kafka.topic)

    library.update("album_asset_7")  # one real change, so the walk has something to write
    crash_then_recover(settings, "before_state_commit=1", library, churn=False)
    assert run_feed(env, "once").returncode == 0
    after = consume(kafka, settings.kafka.topic)
    assert len(after) == len(before) + 1
    new = [e for e in after if e["event_id"] not in {b["event_id"] for b in before}]
    assert [(e["type"], e["link"]["id"]) for e in new] == [("link_updated", "album_asset_7")]
    assert fold(after) == truth(library)
