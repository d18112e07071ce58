"""Fetch-ahead keeps order, hands errors over where they happened, and stops when closed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from feed.prefetch import Prefetch


def test_items_arrive_in_order() -> None:
    with Prefetch(iter(range(100)), depth=3) as ahead:
        assert list(ahead) == list(range(100))


def test_an_error_arrives_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("page 3 was bad")

    seen = []
    with Prefetch(source()) as ahead, pytest.raises(ValueError, match="page 3"):
        for item in ahead:
            seen.append(item)
    assert seen == [1, 2]


def test_close_stops_the_source_within_depth() -> None:
    produced = []

    def source() -> Iterator[int]:
        for n in range(1000):
            produced.append(n)
            yield n

    ahead = Prefetch(source(), depth=2)
    first = next(iter(ahead))
    ahead.close()
    assert first == 0
    assert len(produced) <= 4, "fetched far beyond what the consumer took"
