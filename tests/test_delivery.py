"""State and delivery against the real local Kafka broker: the cases of cases.md that
concern the checkpoint and Kafka, and the events' schema and headers."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import consume, fold, make_settings, seed_links, truth, walk_once

from feed.engine import Feed
from feed.settings import Settings
from feed.simulator import Library, Simulator

pytestmark = pytest.mark.kafka


def link_events(settings: Settings) -> list[dict[str, Any]]:
    return consume(settings.kafka.bootstrap_servers, settings.kafka.topic)


def assert_exactly_once(events: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event id was delivered twice"


def test_first_walk_then_changes_fold_to_the_truth(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path)
    seed_links(library, 450)
    assert walk_once(settings).events == {"link_added": 450}

    changed = library.churn(adds=7, removes=5, updates=6)
    report = walk_once(settings)
    assert report.outcome == "complete"
    assert report.events == {"link_added": 7, "link_removed": 5, "link_updated": 6}

    events = link_events(settings)
    assert_exactly_once(events)
    assert fold(events) == truth(library)
    removed = {e["link"]["id"] for e in events if e["type"] == "link_removed"}
    assert removed == set(changed["removed"])
    updates = [e for e in events if e["type"] == "link_updated"]
    assert all(e["previous"]["updated_at"] < e["link"]["updated_at"] for e in updates)


def test_events_follow_the_schema_and_cloudevents_headers(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path)
    seed_links(library, 20)
    walk_once(settings)
    library.churn(adds=2, removes=2, updates=2)
    walk_once(settings)

    schema = json.loads(resources.files("feed").joinpath("schemas/link-event.v1.json").read_text())
    events = link_events(settings)
    assert {e["type"] for e in events} == {"link_added", "link_removed", "link_updated"}
    for event in events:
        headers, key, partition = event.pop("_headers"), event.pop("_key"), event.pop("_partition")
        jsonschema.validate(event, schema)
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_id"] == event["event_id"]
        assert headers["ce_type"] == f"ai.gumnut.album_asset.{event['type']}"
        assert headers["content-type"] == "application/json"
        assert headers["ce_source"].endswith("/album-assets")
        assert key == event["link"]["album_id"]
        assert partition >= 0

    marks = consume(kafka, settings.kafka.watermark_topic)
    assert [m["walk"] for m in marks] == [1, 2]


def test_event_ids_are_deterministic(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """Two publishers with separate state see the same changes: the same event ids."""
    seed_links(library, 30)
    first = make_settings(sim, kafka, tmp_path / "a")
    second = make_settings(sim, kafka, tmp_path / "b")
    walk_once(first)
    walk_once(second)
    ids_a = sorted(e["event_id"] for e in link_events(first))
    ids_b = sorted(e["event_id"] for e in link_events(second))
    assert ids_a == ids_b and len(ids_a) == 30


def test_case_03_failed_walk_removes_nothing_and_walks_again(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path, limit=2, max_attempts=3)
    seed_links(library, 4)
    walk_once(settings)
    library.remove("album_asset_4")  # a removal, once a walk can be trusted

    sim.faults.add("status", status=503, times=10, cursor="album_asset_2")
    report = walk_once(settings)
    assert report.outcome == "incomplete"
    assert "album_asset_2" in report.reason
    assert [e["type"] for e in link_events(settings)] == ["link_added"] * 4

    sim.faults.clear()
    assert walk_once(settings).outcome == "complete"  # the next poll walks again
    events = link_events(settings)
    assert [e["link"]["id"] for e in events if e["type"] == "link_removed"] == ["album_asset_4"]
    assert fold(events) == truth(library)


def test_case_04a_row_on_two_pages_gives_one_event(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path, limit=2)
    seed_links(library, 6)
    sim.faults.add("overlap", cursor="album_asset_2")
    sim.faults.add("overlap", cursor="album_asset_3")
    report = walk_once(settings)
    assert report.outcome == "complete"
    assert report.duplicates == 2
    events = link_events(settings)
    assert sorted(e["link"]["id"] for e in events) == sorted(library.ids)
    assert_exactly_once(events)


def test_case_04b_link_missed_by_a_walk_is_not_removed(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """The walk never sees a1 (it moved behind the cursor); the id lookup finds it."""
    settings = make_settings(sim, kafka, tmp_path, limit=2)
    seed_links(library, 3)
    walk_once(settings)

    library.update("album_asset_1")
    sim.faults.hidden = {"album_asset_1"}
    report = walk_once(settings)
    assert report.outcome == "complete"
    assert report.removal_candidates == 1
    events = link_events(settings)
    assert [e["type"] for e in events if e["link"]["id"] == "album_asset_1"] == [
        "link_added",
        "link_updated",
    ]
    assert fold(events) == truth(library)

    # Unchanged and missed again: no event at all.
    report = walk_once(settings)
    assert report.events == {}


def test_rejected_row_goes_to_dead_letters_and_is_not_removed(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path)
    seed_links(library, 5)
    walk_once(settings)
    bad = dict(library.render("album_asset_3"), updated_at="yesterday")
    library.raw["album_asset_3"] = bad
    report = walk_once(settings)
    assert report.outcome == "complete"
    assert report.dead_letters == 1
    assert "link_removed" not in report.events
    dead = consume(kafka, settings.kafka.dead_letter_topic)
    assert len(dead) == 1
    assert dead[0]["link_id"] == "album_asset_3"
    assert dead[0]["detail"]["field"] == "updated_at"
    assert dead[0]["detail"]["value"] == "'yesterday'"


def test_case_10_unreadable_state_stops_with_a_clear_error(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    from feed.errors import StateError

    settings = make_settings(sim, kafka, tmp_path)
    seed_links(library, 5)
    walk_once(settings)
    settings.state.path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(settings.state.path) + suffix).unlink(missing_ok=True)
    with pytest.raises(StateError, match=r"cannot be read.*re-publish every link"):
        walk_once(settings)
    assert len(link_events(settings)) == 5


def test_message_key_and_topic_per_type(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path)
    settings.kafka.key = "link"
    settings.kafka.topic_per_type = True
    seed_links(library, 4)
    walk_once(settings)
    library.remove("album_asset_2")
    walk_once(settings)
    added = consume(kafka, f"{settings.kafka.topic}.link_added")
    removed = consume(kafka, f"{settings.kafka.topic}.link_removed")
    assert sorted(e["_key"] for e in added) == sorted(f"album_asset_{n}" for n in range(1, 5))
    assert [e["_key"] for e in removed] == ["album_asset_2"]


def test_snapshot_republishes_state_without_touching_the_diff(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path)
    seed_links(library, 25)
    walk_once(settings)
    feed = Feed(settings)
    try:
        feed.open()
        assert feed.publish_snapshot() == 25
    finally:
        feed.close()
    events = link_events(settings)
    snaps = [e for e in events if e["type"] == "link_snapshot"]
    assert len(snaps) == 25 and all(e["bootstrap"] for e in snaps)
    assert walk_once(settings).events == {}


def test_event_too_large_for_the_broker_goes_to_dead_letters(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(sim, kafka, tmp_path)
    settings.kafka.config = {"message.max.bytes": 2000}
    seed_links(library, 3)
    library.add("album_asset_big", asset_id="asset_" + "x" * 3000)
    report = walk_once(settings)
    assert report.outcome == "complete"
    assert report.dead_letters == 1
    assert sorted(e["link"]["id"] for e in link_events(settings)) == [
        "album_asset_1",
        "album_asset_2",
        "album_asset_3",
    ]
    dead = consume(kafka, settings.kafka.dead_letter_topic)
    assert [(d["link_id"], d["reason"]) for d in dead] == [
        ("album_asset_big", "event larger than message.max.bytes")
    ]
    # Known to the snapshot, so it is not re-reported, and never reported removed.
    assert walk_once(settings).events == {}


def test_missing_topic_that_may_not_be_created_is_a_clear_error(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    from feed.errors import ConfigError

    settings = make_settings(sim, kafka, tmp_path)
    settings.kafka.create_topics = False
    with pytest.raises(ConfigError, match=r"do not exist and FEED_KAFKA__CREATE_TOPICS"):
        walk_once(settings)


def test_replaced_producer_does_not_republish_what_the_marker_holds(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """A commit call can fail after the broker committed; the next producer asks the marker."""
    from feed.publisher import Publisher
    from feed.store import OutboxRecord

    settings = make_settings(sim, kafka, tmp_path)
    publisher = Publisher(settings.kafka, "default")
    publisher.ensure_topics()
    assert publisher.start() == 0

    def record(seq: int) -> OutboxRecord:
        body = {
            "type": "link_added",
            "event_id": f"e{seq}",
            "link": {"id": f"l{seq}"},
            "detected_at": "2026-01-01T00:00:00.000000Z",
        }
        return OutboxRecord(
            seq,
            "link_added",
            settings.kafka.topic,
            b"k",
            json.dumps(body).encode(),
            f"e{seq}",
            b"[]",
        )

    batch = [record(1), record(2), record(3)]
    publisher.publish(batch, walk=1)
    publisher._drop_producer()  # as after a fatal error
    publisher.publish(batch, walk=1)  # the same batch again, as the engine would retry it
    publisher._drop_producer()
    publisher.publish([*batch, record(4)], walk=1)  # only the new record goes out
    publisher.close()
    seen = consume(kafka, settings.kafka.topic)
    assert [e["event_id"] for e in seen] == ["e1", "e2", "e3", "e4"]


def test_state_file_moved_aside_publishes_everything_again(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """Found by a new user: a fresh state file met the old file's commit marker, whose
    sequence numbers it took for its own, and published nothing."""
    settings = make_settings(sim, kafka, tmp_path)
    seed_links(library, 30)
    walk_once(settings)
    settings.state.path.rename(tmp_path / "moved-aside.sqlite3")
    for suffix in ("-wal", "-shm"):
        Path(str(settings.state.path) + suffix).unlink(missing_ok=True)

    library.add("album_asset_new")
    assert walk_once(settings).events == {"link_added": 31}
    events = link_events(settings)
    assert len(events) == 61  # every link again, as the README promises
    assert fold(events) == truth(library)


def test_regression_unreadable_row_in_lookup_is_not_removed(
    sim: Simulator, library: Library, kafka: str, tmp_path: Path
) -> None:
    """Found by the convergence suite's author: a removal candidate that the id lookup
    returned in a row that does not validate was dropped, and so reported removed."""
    settings = make_settings(sim, kafka, tmp_path, limit=2)
    seed_links(library, 4)
    walk_once(settings)
    sim.faults.hidden = {"album_asset_2"}  # the walk misses it: a removal candidate
    library.raw["album_asset_2"] = dict(library.render("album_asset_2"), created_at="soon")
    report = walk_once(settings)
    assert report.outcome == "complete"
    assert report.removal_candidates == 1
    assert "link_removed" not in report.events
    assert {e["type"] for e in link_events(settings)} == {"link_added"}
