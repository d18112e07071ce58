"""The simulator keeps the upstream's documented contract, and its faults do what they say.

Everything here goes over real HTTP on loopback with a plain httpx client, so that the
simulator is checked independently of feed's own client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from helpers import seed_links

from feed.simulator import Library, Simulator
from feed.simulator.library import iso

LINKS = "/api/album-assets"


@pytest.fixture
def http(sim: Simulator) -> Iterator[httpx.Client]:
    auth = {"Authorization": f"Bearer {sim.api_key}"}
    with httpx.Client(base_url=sim.url, headers=auth, timeout=5) as client:
        yield client


def ids_of(response: httpx.Response) -> list[str]:
    return [row["id"] for row in response.json()["data"]]


# -- the contract ------------------------------------------------------------------------


def test_healthz_needs_no_key(sim: Simulator) -> None:
    assert httpx.get(f"{sim.url}/healthz", timeout=5).json() == {"status": "ok"}


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "sim-key"])
def test_a_missing_or_wrong_key_is_a_401_and_is_still_logged(
    sim: Simulator, auth: str | None
) -> None:
    extra = {"Authorization": auth} if auth else {}
    response = httpx.get(f"{sim.url}{LINKS}", headers=extra, timeout=5)
    assert response.status_code == 401
    assert list(sim.requests) == [LINKS]


def test_pages_follow_the_cursor_in_id_order(http: httpx.Client, library: Library) -> None:
    ids = seed_links(library, 5)
    first = http.get(LINKS, params={"limit": 2})
    assert ids_of(first) == sorted(ids)[:2]
    assert first.json()["has_more"] is True
    second = http.get(LINKS, params={"limit": 2, "starting_after_id": sorted(ids)[1]})
    assert ids_of(second) == sorted(ids)[2:4]
    last = http.get(LINKS, params={"limit": 2, "starting_after_id": sorted(ids)[3]})
    assert ids_of(last) == sorted(ids)[4:]
    assert last.json()["has_more"] is False


def test_a_row_has_the_documented_fields(http: httpx.Client, library: Library) -> None:
    library.add("album_asset_1", album_id="album_x", asset_id="asset_y")
    (row,) = http.get(LINKS).json()["data"]
    assert set(row) == {"id", "album_id", "asset_id", "created_at", "updated_at"}
    assert (row["album_id"], row["asset_id"]) == ("album_x", "asset_y")
    assert row["created_at"].endswith("Z")


def test_the_default_limit_is_20(http: httpx.Client, library: Library) -> None:
    seed_links(library, 25)
    assert len(ids_of(http.get(LINKS))) == 20


@pytest.mark.parametrize("limit", ["0", "201", "500", "-1", "ten"])
def test_a_limit_outside_1_to_200_is_a_422(http: httpx.Client, limit: str) -> None:
    response = http.get(LINKS, params={"limit": limit})
    assert response.status_code == 422
    assert "limit" in response.json()["detail"]


def test_ids_lookup_takes_repeated_or_comma_separated_ids(
    http: httpx.Client, library: Library
) -> None:
    seed_links(library, 4)
    repeated = http.get(LINKS, params=[("ids", "album_asset_1"), ("ids", "album_asset_3")])
    assert ids_of(repeated) == ["album_asset_1", "album_asset_3"]
    comma = http.get(LINKS, params={"ids": "album_asset_2,album_asset_4,album_asset_9"})
    assert ids_of(comma) == ["album_asset_2", "album_asset_4"]


def test_more_than_100_ids_is_a_422(http: httpx.Client) -> None:
    response = http.get(LINKS, params=[("ids", f"album_asset_{n}") for n in range(101)])
    assert response.status_code == 422


def test_one_link_by_id_and_a_404_for_an_unknown_one(http: httpx.Client, library: Library) -> None:
    library.add("album_asset_a/b c")
    found = http.get(f"{LINKS}/album_asset_a%2Fb%20c")
    assert found.json()["id"] == "album_asset_a/b c"
    assert http.get(f"{LINKS}/album_asset_nope").status_code == 404


def test_album_and_asset_filters(http: httpx.Client, library: Library) -> None:
    library.add("album_asset_1", album_id="album_a", asset_id="asset_1")
    library.add("album_asset_2", album_id="album_b", asset_id="asset_1")
    library.add("album_asset_3", album_id="album_a", asset_id="asset_2")
    assert ids_of(http.get(LINKS, params={"album_id": "album_a"})) == [
        "album_asset_1",
        "album_asset_3",
    ]
    assert ids_of(http.get(LINKS, params={"asset_id": "asset_1"})) == [
        "album_asset_1",
        "album_asset_2",
    ]


@pytest.mark.parametrize(("mode", "status"), [("error404", 404), ("error400", 400)])
def test_a_deleted_cursor_is_an_error_naming_starting_after_id(
    http: httpx.Client, sim: Simulator, library: Library, mode: Any, status: int
) -> None:
    seed_links(library, 4)
    library.remove("album_asset_2")
    sim.faults.deleted_cursor = mode
    response = http.get(LINKS, params={"limit": 2, "starting_after_id": "album_asset_2"})
    assert response.status_code == status
    assert "starting_after_id" in response.text


def test_a_deleted_cursor_in_continue_mode_goes_on_after_where_it_was(
    http: httpx.Client, sim: Simulator, library: Library
) -> None:
    seed_links(library, 4)
    library.remove("album_asset_2")
    sim.faults.deleted_cursor = "continue"
    response = http.get(LINKS, params={"limit": 2, "starting_after_id": "album_asset_2"})
    assert ids_of(response) == ["album_asset_3", "album_asset_4"]


def test_several_libraries_need_a_library_id() -> None:
    one, two = Library(library_id="lib_1"), Library(library_id="lib_2")
    one.add("album_asset_1")
    two.add("album_asset_2")
    with (
        Simulator([one, two]) as sim,
        httpx.Client(
            base_url=sim.url, headers={"Authorization": "Bearer sim-key"}, timeout=5
        ) as http,
    ):
        missing = http.get(LINKS)
        assert missing.status_code == 400
        assert "library_id" in missing.text
        assert http.get(LINKS, params={"library_id": "lib_9"}).status_code == 404
        assert ids_of(http.get(LINKS, params={"library_id": "lib_2"})) == ["album_asset_2"]


def test_albums_page_by_cursor(sim: Simulator, http: httpx.Client) -> None:
    library = Library(albums=5)
    sim.libraries = {library.library_id: library}
    first = http.get("/api/albums", params={"limit": 3})
    assert ids_of(first) == [f"album_{n:06d}" for n in range(3)]
    assert first.json()["has_more"] is True
    rest = http.get("/api/albums", params={"limit": 3, "starting_after_id": "album_000002"})
    assert ids_of(rest) == ["album_000003", "album_000004"]
    assert rest.json()["has_more"] is False
    assert {"id", "name", "asset_count"} <= set(rest.json()["data"][0])


# -- the library -------------------------------------------------------------------------


def test_seeded_links_are_in_id_order_and_deterministic() -> None:
    one, two = Library(links=50, seed=3), Library(links=50, seed=3)
    assert one.ids == sorted(one.ids)
    assert one.truth() == two.truth()
    assert len(one) == 50


def test_each_change_gets_a_later_updated_at() -> None:
    library = Library(links=3)
    before = library.truth()["album_asset_000000001"]["updated_at"]
    library.update("album_asset_000000001")
    after = library.truth()["album_asset_000000001"]["updated_at"]
    assert after > before


def test_churn_reports_what_it_changed() -> None:
    library = Library(links=100, seed=1)
    changed = library.churn(adds=5, removes=4, updates=3)
    assert len(library) == 101
    assert all(link_id in library.rows for link_id in changed["added"])
    assert not any(link_id in library.rows for link_id in changed["removed"])
    assert len(changed["updated"]) == 3


def test_a_raw_row_is_served_verbatim_and_goes_with_its_link() -> None:
    library = Library()
    library.add("album_asset_1")
    library.raw["album_asset_1"] = {"id": "album_asset_1", "created_at": "whenever"}
    assert library.lookup(["album_asset_1"]) == [library.raw["album_asset_1"]]
    library.remove("album_asset_1")
    assert library.raw == {}


def test_iso_drops_a_zero_fraction() -> None:
    assert iso(1_704_067_200) == "2024-01-01T00:00:00Z"
    assert iso(1_704_067_200.25) == "2024-01-01T00:00:00.250000Z"


# -- the admin API -----------------------------------------------------------------------


def test_admin_truth_stats_and_churn(http: httpx.Client, library: Library) -> None:
    seed_links(library, 3)
    http.get(LINKS)
    truth = http.get("/_sim/truth").json()
    assert sorted(truth[library.library_id]) == [f"album_asset_{n}" for n in (1, 2, 3)]
    stats = http.get("/_sim/stats").json()
    assert stats["links"] == {library.library_id: 3}
    assert stats["counts"]["album-assets"] == 1
    changed = http.post("/_sim/churn", content=orjson.dumps({"adds": 2})).json()
    assert len(changed["added"]) == 2
    assert len(library) == 5


def test_admin_faults_take_a_plan(http: httpx.Client, sim: Simulator) -> None:
    plan = {"queue": [{"action": "status", "status": 502, "times": 2}]}
    assert http.post("/_sim/faults", content=orjson.dumps(plan)).json() == {"pending": 2}
    assert [http.get(LINKS).status_code for _ in range(3)] == [502, 502, 200]


def test_the_churn_thread_changes_the_library_while_serving() -> None:
    library = Library(links=100, seed=2)
    before = library.truth()
    with Simulator([library], churn_per_second=100):
        deadline = time.monotonic() + 5
        while library.truth() == before and time.monotonic() < deadline:
            time.sleep(0.05)
    assert library.truth() != before


# -- faults ------------------------------------------------------------------------------


def test_a_scripted_fault_fires_its_times_then_stops(http: httpx.Client, sim: Simulator) -> None:
    sim.faults.add("status", status=503, times=2, headers={"Retry-After": "7"})
    first = http.get(LINKS)
    assert (first.status_code, first.headers["retry-after"]) == (503, "7")
    assert http.get(LINKS).status_code == 503
    assert http.get(LINKS).status_code == 200
    assert sim.faults.pending() == 0


def test_a_fault_can_wait_for_one_cursor(
    http: httpx.Client, sim: Simulator, library: Library
) -> None:
    seed_links(library, 4)
    sim.faults.add("status", status=500, cursor="album_asset_2")
    assert http.get(LINKS, params={"limit": 2}).status_code == 200
    assert http.get(LINKS, params={"starting_after_id": "album_asset_1"}).status_code == 200
    assert http.get(LINKS, params={"starting_after_id": "album_asset_2"}).status_code == 500


def test_list_faults_spare_id_lookups_unless_asked(http: httpx.Client, sim: Simulator) -> None:
    sim.faults.add("status", status=500)
    assert http.get(LINKS, params={"ids": "album_asset_1"}).status_code == 200
    sim.faults.clear()
    sim.faults.add("status", status=500, list_only=False)
    assert http.get(LINKS, params={"ids": "album_asset_1"}).status_code == 500


def test_a_fault_can_target_the_albums(http: httpx.Client, sim: Simulator) -> None:
    sim.faults.add("status", status=500, path="/api/albums")
    assert http.get(LINKS).status_code == 200
    assert http.get("/api/albums").status_code == 500


@pytest.mark.parametrize(
    ("action", "check"),
    [
        ("malformed", lambda r: r.content.startswith(b"<html>")),
        ("wrong_shape", lambda r: "data" not in r.json()),
        ("empty_has_more", lambda r: r.json() == {"data": [], "has_more": True}),
        ("truncate", lambda r: r.content.startswith(b'{"data":[{"id"')),
    ],
)
def test_body_faults_answer_200_with_a_body_that_is_not_a_good_page(
    http: httpx.Client, sim: Simulator, library: Library, action: Any, check: Any
) -> None:
    seed_links(library, 3)
    sim.faults.add(action)
    response = http.get(LINKS)
    assert response.status_code == 200
    assert check(response)
    if action == "truncate":
        with pytest.raises(ValueError):
            orjson.loads(response.content)


def test_repeat_serves_the_cursor_row_again(
    http: httpx.Client, sim: Simulator, library: Library
) -> None:
    seed_links(library, 4)
    sim.faults.add("repeat")
    response = http.get(LINKS, params={"limit": 2, "starting_after_id": "album_asset_2"})
    assert response.json() == {"data": [library.render("album_asset_2")], "has_more": True}


def test_long_page_serves_more_rows_than_asked(
    http: httpx.Client, sim: Simulator, library: Library
) -> None:
    seed_links(library, 3)
    sim.faults.add("long_page")
    assert len(ids_of(http.get(LINKS, params={"limit": 2}))) > 2


def test_drop_closes_the_connection_without_an_answer(http: httpx.Client, sim: Simulator) -> None:
    sim.faults.add("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(LINKS)
    assert http.get(LINKS).status_code == 200


def test_timeout_holds_the_answer_back(http: httpx.Client, sim: Simulator) -> None:
    sim.faults.add("timeout", seconds=1.0)
    with pytest.raises(httpx.ReadTimeout):
        http.get(LINKS, timeout=0.2)


def test_delay_answers_late_but_right(http: httpx.Client, sim: Simulator, library: Library) -> None:
    seed_links(library, 1)
    sim.faults.add("delay", seconds=0.2)
    started = time.monotonic()
    assert ids_of(http.get(LINKS)) == ["album_asset_1"]
    assert time.monotonic() - started >= 0.2


def test_random_faults_follow_their_rates_and_seed(sim: Simulator, http: httpx.Client) -> None:
    def statuses() -> list[int]:
        sim.faults.configure({"rates": {"503": 0.3, "429": 0.2}, "seed": 11})
        return [http.get(LINKS).status_code for _ in range(60)]

    first = statuses()
    assert first == statuses()  # the same seed, the same storm
    assert 5 < first.count(503) < 35
    assert 2 < first.count(429) < 25
    sim.faults.clear()
    assert http.get(LINKS).status_code == 200


def test_hidden_rows_are_left_out_of_pages_without_leaving_a_hole(
    http: httpx.Client, sim: Simulator, library: Library
) -> None:
    seed_links(library, 3)
    sim.faults.hidden = {"album_asset_2"}
    # A page never comes back short or empty because of a hidden row: the next row
    # takes its place, as it would if the row had moved behind the cursor.
    page = http.get(LINKS, params={"limit": 1, "starting_after_id": "album_asset_1"})
    assert page.json() == {"data": [library.render("album_asset_3")], "has_more": False}
    assert ids_of(http.get(LINKS, params={"limit": 2})) == [
        "album_asset_1",
        "album_asset_3",
    ]
    assert ids_of(http.get(LINKS, params={"ids": "album_asset_2"})) == ["album_asset_2"]


def test_overlap_puts_the_cursor_row_again_at_the_top(
    http: httpx.Client, sim: Simulator, library: Library
) -> None:
    seed_links(library, 4)
    sim.faults.add("overlap")
    response = http.get(LINKS, params={"limit": 2, "starting_after_id": "album_asset_1"})
    assert ids_of(response) == ["album_asset_1", "album_asset_2"]
    assert response.json()["has_more"] is True
