"""Link records and pages: validation, canonical timestamps, rejections (pure, no HTTP)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from feed.errors import PageFormatError, TransientError
from feed.links import canonical_time, parse_link, parse_page


def row(link_id: str, **fields: Any) -> dict[str, Any]:
    base = {
        "id": link_id,
        "album_id": "album_1",
        "asset_id": "asset_1",
        "created_at": "2023-11-07T05:31:56Z",
        "updated_at": "2023-11-07T05:31:56Z",
    }
    base.update(fields)
    return base


def body(rows: list[Any], has_more: Any = False) -> bytes:
    return orjson.dumps({"data": rows, "has_more": has_more})


# -- timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2023-11-07T05:31:56Z", "2023-11-07T05:31:56.000000Z"),
        ("2023-11-07T05:31:56.123456Z", "2023-11-07T05:31:56.123456Z"),
        ("2023-11-07T05:31:56.1Z", "2023-11-07T05:31:56.100000Z"),
        ("2023-11-07T07:31:56+02:00", "2023-11-07T05:31:56.000000Z"),
        ("2023-11-07T00:31:56-05:00", "2023-11-07T05:31:56.000000Z"),
        ("2023-11-07T05:31:56+00:00", "2023-11-07T05:31:56.000000Z"),
        ("2023-11-07T05:31:56", "2023-11-07T05:31:56.000000Z"),
    ],
)
def test_every_spelling_of_an_instant_becomes_one_canonical_utc_string(
    given: str, expected: str
) -> None:
    assert canonical_time(given) == expected


def test_canonical_strings_sort_in_time_order_across_zones() -> None:
    earlier = canonical_time("2023-11-07T07:31:55+02:00")
    later = canonical_time("2023-11-07T05:31:56Z")
    assert earlier < later


def test_an_aware_datetime_is_accepted_as_is() -> None:
    moment = datetime(2023, 11, 7, 5, 31, 56, tzinfo=UTC)
    assert canonical_time(moment) == "2023-11-07T05:31:56.000000Z"


@pytest.mark.parametrize("bad", ["yesterday", "", "2023-13-45T99:00:00Z", 1699335116, None])
def test_a_value_that_is_no_timestamp_is_a_validation_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        canonical_time(bad)


def test_zoneless_stamps_are_reported_by_link_and_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [row("a1", updated_at="2023-11-07T05:31:56"), row("a2")]
    with caplog.at_level(logging.WARNING, logger="feed.links"):
        page = parse_page(body(rows))
    assert [link.id for link in page.links] == ["a1", "a2"]
    assert page.naive_timestamps == ["a1 updated_at=2023-11-07T05:31:56"]
    assert "without a zone" in caplog.text
    assert "a1" in caplog.text


def test_a_rejected_rows_naive_stamp_is_not_reported_as_read() -> None:
    rows = [
        row("a1", created_at="2023-11-07T05:31:56"),
        row("a2", created_at="2023-11-07T05:31:56", asset_id=""),
    ]
    page = parse_page(body(rows))
    assert page.naive_timestamps == ["a1 created_at=2023-11-07T05:31:56"]
    assert [r.link_id for r in page.rejected] == ["a2"]


# -- pages -------------------------------------------------------------------------------


def test_a_good_page_keeps_every_row_and_the_cursor() -> None:
    page = parse_page(body([row("a1"), row("a2")], has_more=True))
    assert [link.id for link in page.links] == ["a1", "a2"]
    assert page.has_more is True
    assert page.row_count == 2
    assert page.last_id == "a2"
    assert page.rejected == []


def test_unknown_fields_are_ignored_so_that_upstream_additions_break_nothing() -> None:
    page = parse_page(body([row("a1", colour="blue", library_id="lib")]))
    assert page.links[0].as_row()[0] == "a1"


def test_an_empty_last_page_has_no_cursor() -> None:
    page = parse_page(body([]))
    assert (page.links, page.row_count, page.last_id, page.has_more) == ([], 0, None, False)


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b'{"data": [{"id": "a1", "album', "not JSON"),
        (b"", "not JSON"),
        (b'{"items": [], "next": null}', "not a page"),
        (b"[]", "not a page"),
        (b'{"data": {}, "has_more": false}', "not a page"),
        (b'{"data": []}', "has_more"),
        (b'{"data": [], "has_more": "false"}', "has_more"),
        (b'{"data": [], "has_more": null}', "has_more"),
    ],
)
def test_a_body_that_is_not_a_page_is_a_transient_page_format_error(raw: bytes, what: str) -> None:
    with pytest.raises(PageFormatError, match=what) as caught:
        parse_page(raw)
    # Transient by type: a proxy's error page or a cut body may be gone a moment later.
    assert isinstance(caught.value, TransientError)
    assert caught.value.reason == "bad_body"


def test_a_bad_row_is_set_aside_by_id_field_and_value_and_the_rest_goes_on() -> None:
    rows = [row("a1"), row("a2", updated_at="yesterday"), row("a3")]
    page = parse_page(body(rows, has_more=True))
    assert [link.id for link in page.links] == ["a1", "a3"]
    assert len(page.rejected) == 1
    rejection = page.rejected[0]
    assert (rejection.link_id, rejection.field, rejection.value) == (
        "a2",
        "updated_at",
        "'yesterday'",
    )
    assert rejection.raw == rows[1]
    assert "'a2'" in rejection.describe()
    assert "updated_at" in rejection.describe()
    assert "yesterday" in rejection.describe()
    # The cursor still moves past the rejected rows: they are not re-read forever.
    assert page.row_count == 3
    assert page.last_id == "a3"


def test_a_missing_field_is_named_as_missing() -> None:
    bad = row("a2")
    del bad["album_id"]
    rejection = parse_page(body([bad])).rejected[0]
    assert (rejection.link_id, rejection.field, rejection.value) == (
        "a2",
        "album_id",
        "(missing)",
    )


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (row("", album_id="x"), "id"),
        (row("a1", album_id=""), "album_id"),
        (row("a1", asset_id=None), "asset_id"),
        (row("a1", created_at=17), "created_at"),
    ],
)
def test_each_field_is_checked(bad: dict[str, Any], field: str) -> None:
    page = parse_page(body([row("ok"), bad]))
    assert [link.id for link in page.links] == ["ok"]
    assert page.rejected[0].field == field


def test_a_row_that_is_not_an_object_is_rejected_without_an_id() -> None:
    page = parse_page(body([row("a1"), "album_asset_2"]))
    assert [link.id for link in page.links] == ["a1"]
    rejection = page.rejected[0]
    assert rejection.link_id is None
    assert "without a usable id" in rejection.describe()
    assert page.last_id is None  # the walk cannot go on from it


def test_a_last_row_with_a_numeric_id_gives_no_cursor() -> None:
    page = parse_page(body([row("a1"), row(7)]))  # type: ignore[arg-type]
    assert page.last_id is None
    assert page.rejected[0].link_id is None


def test_a_long_bad_value_is_shortened_in_the_report() -> None:
    rejection = parse_page(body([row("a1", created_at="x" * 500)])).rejected[0]
    assert len(rejection.value) <= 120
    assert rejection.raw["created_at"] == "x" * 500


def test_parse_link_validates_one_row() -> None:
    link = parse_link(row("a1", created_at="2023-11-07T07:31:56+02:00"))
    assert link.as_row() == (
        "a1",
        "album_1",
        "asset_1",
        "2023-11-07T05:31:56.000000Z",
        "2023-11-07T05:31:56.000000Z",
    )
