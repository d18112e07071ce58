"""The upstream client over real HTTP: what it sends, and the error type of every answer."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import api_settings, seed_links

from feed.client import UpstreamClient
from feed.errors import (
    AuthError,
    ConfigError,
    CursorLostError,
    FatalUpstreamError,
    PageFormatError,
    TransientError,
    WalkIncomplete,
)
from feed.retry import RetryPolicy
from feed.settings import ApiSettings
from feed.simulator import Library, Simulator


class Recorder:
    """A fake sleep that notes each wait instead of taking it."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make_client(sim: Simulator, sleep: Recorder | None = None, **overrides: Any) -> UpstreamClient:
    settings = api_settings(sim, **overrides)
    policy = RetryPolicy(settings, sleep=sleep) if sleep is not None else None
    return UpstreamClient(settings, policy=policy)


@pytest.fixture
def client(sim: Simulator) -> Iterator[UpstreamClient]:
    with make_client(sim, limit=2) as upstream:
        yield upstream


def queries(sim: Simulator, path: str = "/api/album-assets") -> list[dict[str, list[str]]]:
    """The decoded query of every request the simulator received on ``path``."""
    out = []
    for raw in list(sim.requests):
        parts = urlsplit(raw)
        if parts.path == path:
            out.append(parse_qs(parts.query, keep_blank_values=True))
    return out


# -- set-up ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, ""])
def test_no_api_key_is_a_config_error_naming_the_setting(key: str | None) -> None:
    with pytest.raises(ConfigError, match="FEED_API__API_KEY"):
        UpstreamClient(ApiSettings(api_key=key))


def test_the_key_is_not_in_the_clients_repr(sim: Simulator) -> None:
    with make_client(sim) as upstream:
        assert sim.api_key not in repr(upstream)
        assert sim.url in repr(upstream)


# -- pages -------------------------------------------------------------------------------


def test_a_page_asks_for_the_limit_and_the_cursor(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    seed_links(library, 3)
    first = client.page(None)
    second = client.page(first.last_id)
    assert [link.id for link in first.links + second.links] == [
        "album_asset_1",
        "album_asset_2",
        "album_asset_3",
    ]
    assert queries(sim) == [
        {"limit": ["2"]},
        {"limit": ["2"], "starting_after_id": ["album_asset_2"]},
    ]


def test_library_and_album_settings_travel_with_each_page(sim: Simulator) -> None:
    library = Library(library_id="lib_a")
    library.add("album_asset_1", album_id="album_x")
    library.add("album_asset_2", album_id="album_y")
    sim.libraries = {"lib_a": library}
    with make_client(sim, library_id="lib_a", album_id="album_y") as upstream:
        assert [link.id for link in upstream.page(None).links] == ["album_asset_2"]
    assert queries(sim)[0]["library_id"] == ["lib_a"]
    assert queries(sim)[0]["album_id"] == ["album_y"]


def test_a_transient_page_failure_is_retried_transparently(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    seed_links(library, 2)
    sim.faults.add("status", status=503, times=2)
    assert [link.id for link in client.page(None).links] == [
        "album_asset_1",
        "album_asset_2",
    ]
    assert len(queries(sim)) == 3


@pytest.mark.parametrize("action", ["malformed", "truncate", "wrong_shape"])
def test_a_bad_200_body_is_retried_as_transient(
    sim: Simulator, library: Library, action: Any
) -> None:
    seed_links(library, 2)
    sim.faults.add(action)
    with make_client(sim, limit=2) as upstream:
        assert len(upstream.page(None).links) == 2
    assert len(queries(sim)) == 2


def test_a_bad_200_body_that_persists_ends_as_a_page_format_error(
    sim: Simulator, library: Library
) -> None:
    seed_links(library, 2)
    sim.faults.add("malformed", times=10)
    with make_client(sim, max_attempts=3) as upstream, pytest.raises(PageFormatError):
        upstream.page(None)
    assert len(queries(sim)) == 3


# -- the error type of each answer -------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_an_auth_error_after_one_request(sim: Simulator, status: int) -> None:
    sim.faults.add("status", status=status, body='{"error": "forbidden"}')
    with make_client(sim) as upstream, pytest.raises(AuthError) as caught:
        upstream.page(None)
    assert "FEED_API__API_KEY" in str(caught.value)
    assert caught.value.status == status
    assert len(queries(sim)) == 1


def test_a_key_echoed_by_the_server_is_masked_in_the_error(sim: Simulator) -> None:
    echo = f'{{"error": "unauthorized", "detail": "key {sim.api_key} is revoked"}}'
    sim.faults.add("status", status=401, body=echo)
    with make_client(sim) as upstream, pytest.raises(AuthError) as caught:
        upstream.page(None)
    assert sim.api_key not in str(caught.value)
    assert sim.api_key not in repr(caught.value)
    assert "revoked" in str(caught.value)


@pytest.mark.parametrize("status", [400, 404, 405, 410, 422])
def test_other_4xx_on_the_first_page_are_fatal_at_once(sim: Simulator, status: int) -> None:
    sim.faults.add("status", status=status, body='{"error": "nope"}')
    with make_client(sim) as upstream, pytest.raises(FatalUpstreamError) as caught:
        upstream.page(None)
    assert not isinstance(caught.value, CursorLostError)
    assert caught.value.status == status
    assert len(queries(sim)) == 1


@pytest.mark.parametrize("mode", ["error404", "error400"])
def test_a_deleted_cursor_is_a_cursor_lost_error_not_retried(
    client: UpstreamClient, sim: Simulator, library: Library, mode: Any
) -> None:
    seed_links(library, 3)
    library.remove("album_asset_2")
    sim.faults.deleted_cursor = mode
    with pytest.raises(CursorLostError) as caught:
        client.page("album_asset_2")
    assert caught.value.cursor == "album_asset_2"
    assert len(queries(sim)) == 1


def test_a_400_after_a_cursor_about_something_else_is_fatal_not_a_lost_cursor(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    seed_links(library, 3)
    sim.faults.add("status", status=400, body='{"detail": "album_id is malformed"}')
    with pytest.raises(FatalUpstreamError) as caught:
        client.page("album_asset_1")
    assert not isinstance(caught.value, CursorLostError)


def test_x_should_retry_true_turns_a_400_into_a_retry(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    seed_links(library, 1)
    sim.faults.add("status", status=400, headers={"x-should-retry": "true"})
    assert len(client.page(None).links) == 1
    assert len(queries(sim)) == 2


def test_x_should_retry_false_makes_a_503_final(client: UpstreamClient, sim: Simulator) -> None:
    sim.faults.add("status", status=503, headers={"x-should-retry": "false"})
    with pytest.raises(FatalUpstreamError) as caught:
        client.page(None)
    assert caught.value.status == 503
    assert len(queries(sim)) == 1


def test_retry_after_ms_sets_the_wait(sim: Simulator, library: Library) -> None:
    seed_links(library, 1)
    sleep = Recorder()
    headers = {"retry-after-ms": "250", "Retry-After": "7"}
    sim.faults.add("status", status=429, headers=headers)
    with make_client(sim, sleep=sleep) as upstream:
        upstream.page(None)
    assert sleep.waits == [0.25]


def test_a_5xx_without_retry_after_backs_off_exponentially(sim: Simulator) -> None:
    sleep = Recorder()
    sim.faults.add("status", status=502, times=10)
    with (
        make_client(
            sim,
            sleep=sleep,
            max_attempts=4,
            backoff_initial_seconds=0.5,
            backoff_max_seconds=8,
        ) as upstream,
        pytest.raises(TransientError) as caught,
    ):
        upstream.page(None)
    assert caught.value.status == 502
    assert len(sleep.waits) == 3
    for wait, ceiling in zip(sleep.waits, [0.5, 1.0, 2.0], strict=True):
        assert 0.75 * ceiling <= wait <= ceiling


def test_a_refused_connection_is_transient(sim: Simulator) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings = api_settings(sim, base_url=f"http://127.0.0.1:{closed_port}", max_attempts=2)
    with UpstreamClient(settings) as upstream, pytest.raises(TransientError) as caught:
        upstream.page(None)
    assert caught.value.reason == "connection"


def test_a_read_timeout_is_transient(sim: Simulator) -> None:
    sim.faults.add("timeout", seconds=1.0, times=5)
    with (
        make_client(sim, timeout_seconds=0.1, max_attempts=2) as upstream,
        pytest.raises(TransientError) as caught,
    ):
        upstream.page(None)
    assert caught.value.reason == "timeout"


# -- id lookups --------------------------------------------------------------------------


def test_a_lookup_of_150_ids_goes_as_two_requests_of_at_most_100(
    client: UpstreamClient, sim: Simulator, library: Library
) -> None:
    ids = seed_links(library, 150)
    found = client.lookup(ids)
    assert sorted(found) == sorted(ids)
    sent = [q["ids"] for q in queries(sim)]
    assert [len(batch) for batch in sent] == [100, 50]
    assert sorted(sent[0] + sent[1]) == sorted(ids)


def test_a_lookup_returns_only_the_ids_that_exist(client: UpstreamClient, library: Library) -> None:
    seed_links(library, 3)
    library.remove("album_asset_2")
    found = client.lookup(["album_asset_1", "album_asset_2", "album_asset_3"])
    assert sorted(found) == ["album_asset_1", "album_asset_3"]
    assert found["album_asset_1"].id == "album_asset_1"


def test_a_lookup_of_nothing_sends_nothing(client: UpstreamClient, sim: Simulator) -> None:
    assert client.lookup([]) == {}
    assert queries(sim) == []


def test_a_lookup_is_retried_like_a_page(client: UpstreamClient, sim: Simulator) -> None:
    sim.faults.add("status", status=503, list_only=False)
    assert client.lookup(["album_asset_9"]) == {}
    assert len(queries(sim)) == 2


# -- albums ------------------------------------------------------------------------------


def test_albums_are_walked_over_every_page(sim: Simulator) -> None:
    library = Library(albums=450)
    sim.libraries = {library.library_id: library}
    with make_client(sim, album_id="album_000001") as upstream:
        albums = list(upstream.albums())
    assert [a["id"] for a in albums] == [f"album_{n:06d}" for n in range(450)]
    pages = queries(sim, "/api/albums")
    assert len(pages) == 3
    assert [q.get("starting_after_id") for q in pages] == [
        None,
        ["album_000199"],
        ["album_000399"],
    ]
    # The album filter narrows links only; /api/albums has no such parameter.
    assert all("album_id" not in q for q in pages)


@pytest.mark.parametrize("action", ["malformed", "wrong_shape"])
def test_a_bad_albums_body_is_retried(sim: Simulator, action: Any) -> None:
    sim.faults.add(action, path="/api/albums")
    with make_client(sim) as upstream:
        assert len(list(upstream.albums())) == 5
    assert len(queries(sim, "/api/albums")) == 2


def test_an_empty_albums_page_claiming_more_is_incomplete_not_the_end(
    sim: Simulator,
) -> None:
    sim.faults.add("empty_has_more", path="/api/albums")
    with make_client(sim) as upstream, pytest.raises(WalkIncomplete):
        list(upstream.albums())


def test_an_albums_cursor_that_comes_back_ends_the_listing(sim: Simulator) -> None:
    page = '{"data": [{"id": "album_000001"}], "has_more": true}'
    sim.faults.add("status", status=200, body=page, path="/api/albums", times=5)
    with make_client(sim) as upstream, pytest.raises(WalkIncomplete, match="loop"):
        list(upstream.albums())
    assert len(queries(sim, "/api/albums")) == 2
