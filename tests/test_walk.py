"""The page walk as a state machine, against the simulator over real HTTP.

A walk must either reach a trustworthy end (complete) or say it did not
(WalkIncomplete); it must never skip a row it could have read, nor loop.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from helpers import api_settings, cursors, seed_links

from feed.client import UpstreamClient
from feed.errors import AuthError, FatalUpstreamError, WalkIncomplete
from feed.ratelimit import TokenBucket
from feed.simulator import Library, Simulator
from feed.walk import MAX_RESTARTS, RESUME_DEPTH, PageWalk, WalkPage


def seen(pages: list[WalkPage]) -> list[str]:
    return [link.id for page in pages for link in page.links]


def scripted_page(rows: list[dict[str, Any]], has_more: bool) -> str:
    return orjson.dumps({"data": rows, "has_more": has_more}).decode()


# -- a clean walk ------------------------------------------------------------------------


def test_a_clean_walk_reads_every_row_once_and_ends_complete(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 7))
    walk = PageWalk(client)
    pages = list(walk)
    assert seen(pages) == ids
    assert [page.number for page in pages] == [1, 2, 3, 4]
    assert walk.result.complete
    assert walk.result.reason == "complete"
    assert (walk.result.pages, walk.result.rows, walk.result.rejected) == (4, 7, 0)
    assert cursors(sim) == [None, ids[1], ids[3], ids[5]]


def test_a_walk_of_an_empty_library_is_one_request_and_complete(
    client: UpstreamClient, sim: Simulator
) -> None:
    walk = PageWalk(client)
    assert list(walk) == []
    assert walk.result.complete
    assert cursors(sim) == [None]


def test_an_exact_multiple_of_the_limit_ends_on_has_more_false(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    seed_links(library, 4)
    walk = PageWalk(client)
    assert len(seen(list(walk))) == 4
    assert walk.result.complete
    assert len(cursors(sim)) == 2  # the simulator knows the second page is the last


def test_each_page_carries_the_last_ids_to_resume_from(
    client: UpstreamClient, library: Library
) -> None:
    ids = sorted(seed_links(library, 12))
    pages = list(PageWalk(client))
    assert pages[0].resume == ids[:2]
    assert pages[-1].resume == ids[-RESUME_DEPTH:]


def test_a_walk_resumes_after_the_saved_cursor(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 6))
    walk = PageWalk(client, resume=ids[:4])
    assert seen(list(walk)) == ids[4:]
    assert walk.result.complete
    assert cursors(sim) == [ids[3]]


def test_a_walk_can_follow_one_album(client: UpstreamClient, library: Library) -> None:
    library.add("album_asset_1", album_id="album_x")
    library.add("album_asset_2", album_id="album_y")
    library.add("album_asset_3", album_id="album_x")
    assert seen(list(PageWalk(client, album_id="album_x"))) == [
        "album_asset_1",
        "album_asset_3",
    ]


def test_fatal_upstream_errors_pass_through_unchanged(sim: Simulator) -> None:
    settings = api_settings(sim, api_key="wrong-key")
    with UpstreamClient(settings) as upstream, pytest.raises(AuthError):
        list(PageWalk(upstream))
    sim.faults.add("status", status=422, body='{"detail": "bad"}')
    with UpstreamClient(api_settings(sim)) as upstream, pytest.raises(FatalUpstreamError):
        list(PageWalk(upstream))


# -- a cursor row that vanished ----------------------------------------------------------


def walk_deleting(
    client: UpstreamClient, library: Library, after_page: dict[int, list[str]], **kw: Any
) -> tuple[PageWalk, list[str]]:
    """Walk, deleting the given ids right after the given page numbers were read."""
    walk = PageWalk(client, **kw)
    ids: list[str] = []
    for page in walk:
        ids += [link.id for link in page.links]
        for link_id in after_page.get(page.number, []):
            library.remove(link_id)
    return walk, ids


@pytest.mark.parametrize("mode", ["error404", "error400", "continue"])
def test_a_deleted_cursor_row_steps_back_without_skipping_or_restarting(
    client: UpstreamClient, sim: Simulator, library: Library, mode: Any
) -> None:
    sim.faults.deleted_cursor = mode
    ids = sorted(seed_links(library, 6))
    walk, read = walk_deleting(client, library, {1: [ids[1]]})
    assert read == ids
    assert walk.result.complete
    assert cursors(sim).count(None) == 1  # never back to page one


def test_a_cursor_deleted_twice_in_a_row_steps_back_further(
    sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 9))
    with UpstreamClient(api_settings(sim, limit=3)) as upstream:
        # After page 1 (ids 0-2) the cursor row and the one before it both go.
        walk, read = walk_deleting(upstream, library, {1: [ids[2], ids[1]]})
    assert read == ids[:3] + ids[3:]
    assert walk.result.complete
    assert cursors(sim) == [None, ids[2], ids[1], ids[0], ids[5]]


def test_with_a_limit_of_one_a_deleted_cursor_steps_back_to_an_earlier_cursor(
    sim: Simulator, library: Library
) -> None:
    # With one row a page every remembered id has been a cursor already; going back to
    # one of them is a deliberate step, not the upstream leading the walk in a loop.
    ids = sorted(seed_links(library, 5))
    with UpstreamClient(api_settings(sim, limit=1)) as upstream:
        walk, read = walk_deleting(upstream, library, {3: [ids[2]]})
    assert read == ids
    assert walk.result.complete
    assert cursors(sim) == [None, ids[0], ids[1], ids[2], ids[1], ids[3]]


def test_when_every_remembered_row_is_gone_the_walk_starts_over(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 6))
    walk, read = walk_deleting(client, library, {1: ids[:2]})
    assert read == ids[:2] + ids[2:]
    assert walk.result.complete
    assert cursors(sim).count(None) == 2


def test_a_resumed_walk_whose_cursors_are_all_gone_starts_over(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 4))
    walk = PageWalk(client, resume=["album_asset_0a", "album_asset_0b"])
    assert seen(list(walk)) == ids
    assert cursors(sim) == ["album_asset_0b", "album_asset_0a", None, ids[1]]


def test_restarts_are_bounded_and_leave_the_walk_resumable(
    sim: Simulator, library: Library
) -> None:
    # Each first page names one row, whose cursor then comes back "deleted": each
    # restart finds nothing earlier to step back to.
    template = library.render(library.add("album_asset_1"))
    for n in range(MAX_RESTARTS + 1):
        first = scripted_page([{**template, "id": f"album_asset_gone_{n}"}], True)
        sim.faults.add("status", status=200, body=first)
        sim.faults.add("status", status=404, body='{"detail": "gone"}')
    with UpstreamClient(api_settings(sim, limit=2)) as upstream:
        walk = PageWalk(upstream)
        with pytest.raises(WalkIncomplete) as caught:
            list(walk)
    assert caught.value.resumable
    assert "restart" in caught.value.reason
    assert cursors(sim).count(None) == MAX_RESTARTS + 1


def test_a_cursor_reported_deleted_then_listed_again_ends_the_walk(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 4))
    # P(a2) says a2 is gone; stepping back to a1, the upstream lists a2 again as the
    # last row. Going on after a2 would only meet the same 404: a loop in disguise.
    sim.faults.add("status", status=404, body='{"detail": "gone"}', cursor=ids[1])
    again = scripted_page([library.render(ids[1])], True)
    sim.faults.add("status", status=200, body=again, cursor=ids[0])
    walk = PageWalk(client)
    with pytest.raises(WalkIncomplete, match="listed it again"):
        list(walk)
    assert cursors(sim) == [None, ids[1], ids[0]]


# -- guards ------------------------------------------------------------------------------


def test_a_page_longer_than_the_limit_makes_the_walk_incomplete_without_hanging(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 6))
    sim.faults.add("long_page")
    walk = PageWalk(client)
    with pytest.raises(WalkIncomplete) as caught:
        for _ in walk:
            pass
    assert "more than the limit" in caught.value.reason
    assert not caught.value.resumable
    assert not walk.result.complete
    assert len(walk.result.anomalies) == 1
    assert len(cursors(sim)) <= len(ids)


def test_a_rejected_last_row_still_moves_the_cursor(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 4))
    library.raw[ids[1]] = {**library.render(ids[1]), "updated_at": "not a time"}
    walk = PageWalk(client)
    pages = list(walk)
    assert seen(pages) == [ids[0], ids[2], ids[3]]
    assert [r.link_id for r in pages[0].rejected] == [ids[1]]
    assert pages[0].resume == ids[:2]
    assert walk.result.complete
    assert walk.result.rejected == 1
    assert cursors(sim) == [None, ids[1]]


def test_a_last_row_without_a_usable_id_ends_the_walk_incomplete(
    client: UpstreamClient, library: Library
) -> None:
    ids = sorted(seed_links(library, 4))
    library.raw[ids[1]] = {**library.render(ids[1]), "id": None}
    walk = PageWalk(client)
    with pytest.raises(WalkIncomplete, match="no usable id") as caught:
        list(walk)
    assert not caught.value.resumable


def test_a_row_repeated_across_pages_is_passed_on_and_the_walk_goes_on(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 5))
    rows = [library.render(i) for i in ids]
    sim.faults.add("status", status=200, body=scripted_page(rows[1:3], True), cursor=ids[1])
    walk = PageWalk(client)
    read = seen(list(walk))
    # The repeated row reaches the caller twice (the diff makes it one event at most);
    # the walk neither stops nor loops on it.
    assert read == [ids[0], ids[1], ids[1], ids[2], ids[3], ids[4]]
    assert walk.result.complete
    assert cursors(sim) == [None, ids[1], ids[2]]


def test_a_walk_through_churn_sees_every_row_that_stayed(sim: Simulator, library: Library) -> None:
    seed_links(library, 300)
    rng = random.Random(5)
    start = set(library.ids)
    sim.faults.deleted_cursor = "error404"
    with UpstreamClient(api_settings(sim, limit=7)) as upstream:
        walk = PageWalk(upstream)
        read: set[str] = set()
        for page in walk:
            read.update(link.id for link in page.links)
            # Delete the cursor row now and then, and churn elsewhere.
            if page.number % 3 == 0:
                library.remove(page.resume[-1])
            for victim in rng.sample(library.ids, 2):
                library.remove(victim)
            library.add()
    stayed = start & set(library.ids)
    assert stayed <= read
    assert walk.result.complete
    assert cursors(sim).count(None) == 1


@pytest.mark.parametrize("action", ["malformed", "truncate", "wrong_shape"])
def test_a_bad_200_body_once_is_retried_and_the_walk_is_whole(
    client: UpstreamClient, sim: Simulator, library: Library, action: Any
) -> None:
    ids = sorted(seed_links(library, 5))
    sim.faults.add(action, cursor=ids[1])
    walk = PageWalk(client)
    assert seen(list(walk)) == ids
    assert walk.result.complete
    assert cursors(sim) == [None, ids[1], ids[1], ids[3]]


@pytest.mark.parametrize("action", ["malformed", "truncate", "wrong_shape"])
def test_a_bad_200_body_that_persists_leaves_the_walk_incomplete_and_resumable(
    sim: Simulator, library: Library, action: Any
) -> None:
    ids = sorted(seed_links(library, 5))
    sim.faults.add(action, cursor=ids[1], times=100)
    with UpstreamClient(api_settings(sim, limit=2, max_attempts=3)) as upstream:
        walk = PageWalk(upstream)
        with pytest.raises(WalkIncomplete) as caught:
            list(walk)
    assert caught.value.resumable
    assert not walk.result.complete
    assert cursors(sim) == [None, ids[1], ids[1], ids[1]]


def test_rows_failing_validation_are_set_aside_and_the_page_goes_on(
    sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 5))
    library.raw[ids[1]] = {**library.render(ids[1]), "created_at": "last tuesday"}
    bad = library.render(ids[2])
    library.raw[ids[2]] = {k: v for k, v in bad.items() if k != "asset_id"}
    with UpstreamClient(api_settings(sim, limit=5)) as upstream:
        walk = PageWalk(upstream)
        (page,) = list(walk)
    assert [link.id for link in page.links] == [ids[0], ids[3], ids[4]]
    described = [(r.link_id, r.field, r.value) for r in page.rejected]
    assert described == [
        (ids[1], "created_at", "'last tuesday'"),
        (ids[2], "asset_id", "(missing)"),
    ]
    assert walk.result.complete
    assert walk.result.rejected == 2


def test_the_client_takes_one_token_per_request_retries_included(
    sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 7))
    clock = {"now": 0.0}

    def sleep(seconds: float) -> None:
        clock["now"] += seconds

    bucket = TokenBucket(10, burst=1, clock=lambda: clock["now"], sleep=sleep)
    sim.faults.add("status", status=503, cursor=ids[1])
    settings = api_settings(sim, limit=2)
    with UpstreamClient(settings, bucket=bucket) as upstream:
        assert seen(list(PageWalk(upstream))) == ids
    # Five requests at ten a second with one token in hand: 0.4 s of waiting.
    assert len(cursors(sim)) == 5
    assert clock["now"] == pytest.approx(0.4)


UNUSUAL_IDS = [
    "album_asset_ with spaces ",
    "album_asset_a/b/c",
    "album_asset_a+b",
    "album_asset_100%",
    "album_asset_%2F%20",
    "album_asset_a&ids=b#c?d",
    "album_asset_été",
    "album_asset_日本語",
    "album_asset_😀",
]


def test_ids_with_unusual_characters_travel_byte_for_byte(sim: Simulator, library: Library) -> None:
    for link_id in UNUSUAL_IDS:
        library.add(link_id)
    ordered = sorted(UNUSUAL_IDS)
    with UpstreamClient(api_settings(sim, limit=1)) as upstream:
        walk = PageWalk(upstream)
        # One row a page: every id serves as a cursor. A mangled one would meet a 404.
        assert seen(list(walk)) == ordered
        assert walk.result.complete
        assert cursors(sim) == [None, *ordered[:-1]]
        sim.requests.clear()
        assert sorted(upstream.lookup(UNUSUAL_IDS)) == ordered
    (lookup,) = [parse_qs(urlsplit(raw).query)["ids"] for raw in sim.requests]
    assert lookup == UNUSUAL_IDS


def test_with_two_libraries_a_walk_needs_a_library_id() -> None:
    one, two = Library(library_id="library_1"), Library(library_id="library_2")
    one.add("album_asset_1")
    two.add("album_asset_2")
    with Simulator([one, two]) as sim:
        with (
            UpstreamClient(api_settings(sim)) as upstream,
            pytest.raises(FatalUpstreamError) as caught,
        ):
            list(PageWalk(upstream))
        assert caught.value.status == 400
        assert "FEED_API__LIBRARY_ID" in str(caught.value)
        assert len(sim.requests) == 1
        with UpstreamClient(api_settings(sim, library_id="library_2")) as upstream:
            assert seen(list(PageWalk(upstream))) == ["album_asset_2"]


def test_a_walk_where_every_page_overlaps_the_last_reads_all_and_ends(
    sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 10))
    sim.faults.add("overlap", times=100)
    with UpstreamClient(api_settings(sim, limit=3)) as upstream:
        walk = PageWalk(upstream)
        read = seen(list(walk))
    assert walk.result.complete
    assert sorted(set(read)) == ids  # every row, the overlapping ones more than once
    assert len(read) > len(ids)
    assert len(cursors(sim)) == len(set(cursors(sim)))  # no cursor asked twice


def test_a_row_hidden_from_the_pages_is_not_seen_but_a_lookup_finds_it(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = sorted(seed_links(library, 5))
    sim.faults.hidden = {ids[2]}
    walk = PageWalk(client)
    read = seen(list(walk))
    assert walk.result.complete
    assert read == [i for i in ids if i != ids[2]]
    # Not seen by a walk is not yet removed: the id lookup is what settles it.
    assert list(client.lookup([ids[2]])) == [ids[2]]
