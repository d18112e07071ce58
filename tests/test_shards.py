"""Walking by album, several albums at once, against the real broker: the same events as
a sequential walk, crash-safe, and no removal from an album walk that failed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers import (
    consume,
    fold,
    make_settings,
    run_feed,
    seed_links,
    settings_env,
    truth,
    walk_once,
)

from feed.simulator import Library, Simulator

pytestmark = pytest.mark.kafka


def sharded(sim: Simulator, kafka: str, tmp_path: Path, **api: object):  # type: ignore[no-untyped-def]
    return make_settings(sim, kafka, tmp_path, concurrency=3, limit=10, **api)


def test_sharded_walk_publishes_what_a_sequential_walk_does(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    seed_links(library, 300)
    by_album = sharded(sim, kafka, tmp_path / "a")
    in_sequence = make_settings(sim, kafka, tmp_path / "b", limit=10)
    assert walk_once(by_album).events == {"link_added": 300}
    walk_once(in_sequence)
    ids = sorted(e["event_id"] for e in consume(kafka, by_album.kafka.topic))
    assert ids == sorted(e["event_id"] for e in consume(kafka, in_sequence.kafka.topic))
    assert any("album_id=" in r for r in sim.requests), "the walk did not go by album"

    library.churn(adds=12, removes=9, updates=10)
    library.empty_album(library.rows["album_asset_1"].album_id)
    assert walk_once(by_album).outcome == "complete"
    events = consume(kafka, by_album.kafka.topic)
    assert len({e["event_id"] for e in events}) == len(events)
    assert fold(events) == truth(library)


def test_failed_album_walk_removes_nothing_and_resumes(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = sharded(sim, kafka, tmp_path, max_attempts=2)
    seed_links(library, 120)
    walk_once(settings)
    victim = library.ids[-1]
    library.remove(victim)
    # One album's second page keeps failing: that album walk, hence the walk, fails.
    album = library.rows[library.ids[0]].album_id
    tenth = [i for i in library.ids if library.rows[i].album_id == album][9]
    sim.faults.add("status", status=503, times=50, cursor=tenth)
    report = walk_once(settings)
    assert report.outcome == "incomplete"
    assert "link_removed" not in report.events

    sim.faults.clear()
    report = walk_once(settings)
    assert report.outcome == "complete"
    assert report.events == {"link_removed": 1}
    assert fold(consume(kafka, settings.kafka.topic)) == truth(library)


@pytest.mark.parametrize("point", ["after_diff=4", "after_state_commit=2", "mid_produce=1"])
def test_sigkill_during_a_sharded_walk(
    point: str, sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = sharded(sim, kafka, tmp_path)
    settings.kafka.batch_events = 40
    seed_links(library, 250)
    env = settings_env(settings)
    crashed = run_feed({**env, "FEED_FAILPOINTS": point}, "once")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    library.churn(adds=5, removes=5, updates=5)
    for _ in range(2):
        done = run_feed(env, "once")
        assert done.returncode == 0, done.stderr[-2000:]
    events = consume(kafka, settings.kafka.topic)
    assert len({e["event_id"] for e in events}) == len(events)
    assert fold(events) == truth(library)
