"""The simulated data: a library of album-asset links that tests can change at will.

Rows are kept in id order (the order the real service appears to use; feed does not
rely on it). A million links take a few seconds and a few hundred MB to create.
"""

from __future__ import annotations

import bisect
import itertools
import random
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

EPOCH_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z


def iso(epoch: float) -> str:
    """RFC 3339 in UTC with a Z, whole seconds when there is no fraction."""
    moment = datetime.fromtimestamp(epoch, UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class CursorMissing(LookupError):
    """The row named by ``starting_after_id`` does not exist."""


@dataclass(slots=True)  # millions of rows in the memory benchmark
class Row:
    album_id: str
    asset_id: str
    created_at: str
    updated_at: str


class Library:
    """One library's links, thread-safe, with a churn model and the ground truth."""

    def __init__(
        self,
        links: int = 0,
        albums: int = 10,
        seed: int = 0,
        library_id: str = "library_1",
    ) -> None:
        self.library_id = library_id
        self.lock = threading.RLock()
        self._rng = random.Random(seed)
        self._albums = [f"album_{n:06d}" for n in range(max(1, albums))]
        self._ids: list[str] = []
        self._by_album: dict[str, list[str]] = {}
        self.rows: dict[str, Row] = {}
        self.raw: dict[str, dict[str, Any]] = {}
        self._next = 0
        self._clock = float(EPOCH_2024)
        self._seed_links(links)

    # -- building ----------------------------------------------------------------------

    def _seed_links(self, count: int) -> None:
        albums = self._albums
        rng = self._rng
        stamps = [iso(EPOCH_2024 + n) for n in range(min(count, 86_400))]
        for n in range(count):
            link_id = f"album_asset_{n:09d}"
            stamp = stamps[n % len(stamps)] if stamps else iso(EPOCH_2024)
            album = albums[rng.randrange(len(albums))]
            self.rows[link_id] = Row(album, f"asset_{n:09d}", stamp, stamp)
            self._ids.append(link_id)
            self._by_album.setdefault(album, []).append(link_id)
        self._next = count
        self._clock = float(EPOCH_2024 + max(count, 1))

    def _tick(self) -> str:
        # Strictly increasing, at least wall-clock time: each change gets a new stamp.
        self._clock = max(self._clock + 0.001, time.time())
        return iso(round(self._clock, 6))

    # -- changes -----------------------------------------------------------------------

    def add(
        self,
        link_id: str | None = None,
        album_id: str | None = None,
        asset_id: str | None = None,
    ) -> str:
        with self.lock:
            if link_id is None:
                link_id = f"album_asset_{self._next:09d}"
                self._next += 1
            if link_id in self.rows:
                raise ValueError(f"link {link_id!r} exists")
            album = album_id or self._albums[self._rng.randrange(len(self._albums))]
            if album not in self._albums:
                self._albums.append(album)
            stamp = self._tick()
            self.rows[link_id] = Row(album, asset_id or f"asset_x{self._next:09d}", stamp, stamp)
            bisect.insort(self._ids, link_id)
            bisect.insort(self._by_album.setdefault(album, []), link_id)
            return link_id

    def remove(self, link_id: str) -> None:
        with self.lock:
            row = self.rows.pop(link_id)
            self.raw.pop(link_id, None)
            _remove_sorted(self._ids, link_id)
            _remove_sorted(self._by_album[row.album_id], link_id)

    def update(self, link_id: str) -> None:
        """Touch a link: a new ``updated_at`` (what a change of the link looks like)."""
        with self.lock:
            self.rows[link_id].updated_at = self._tick()

    def empty_album(self, album_id: str) -> list[str]:
        with self.lock:
            gone = list(self._by_album.get(album_id, []))
            for link_id in gone:
                self.remove(link_id)
            return gone

    def churn(self, adds: int = 0, removes: int = 0, updates: int = 0) -> dict[str, list[str]]:
        """Random changes; returns the ids touched, by kind."""
        with self.lock:
            removed = self._rng.sample(self._ids, min(removes, len(self._ids)))
            for link_id in removed:
                self.remove(link_id)
            updated = self._rng.sample(self._ids, min(updates, len(self._ids)))
            for link_id in updated:
                self.update(link_id)
            added = [self.add() for _ in range(adds)]
            return {"added": added, "removed": removed, "updated": updated}

    # -- reading -----------------------------------------------------------------------

    def render(self, link_id: str) -> dict[str, Any]:
        raw = self.raw.get(link_id)
        if raw is not None:
            return raw
        row = self.rows[link_id]
        return {
            "id": link_id,
            "album_id": row.album_id,
            "asset_id": row.asset_id,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }

    def page(
        self,
        cursor: str | None,
        limit: int,
        *,
        album_id: str | None = None,
        asset_id: str | None = None,
        cursor_must_exist: bool = True,
        hidden: Collection[str] = (),
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` rows after ``cursor``, and whether there are more.

        ``hidden`` rows are skipped before the page is cut, so that the next rows take
        their place: a hidden row looks moved away, not like a hole in the page.
        """
        with self.lock:
            ids = self._by_album.get(album_id, []) if album_id else self._ids
            start = 0
            if cursor is not None:
                if cursor_must_exist and cursor not in self.rows:
                    raise CursorMissing(cursor)
                start = bisect.bisect_right(ids, cursor)
            if asset_id is None and not hidden:
                chosen = ids[start : start + limit + 1]
            else:
                wanted = (
                    i
                    for i in itertools.islice(ids, start, None)
                    if i not in hidden and (asset_id is None or self.rows[i].asset_id == asset_id)
                )
                chosen = list(itertools.islice(wanted, limit + 1))
            return [self.render(i) for i in chosen[:limit]], len(chosen) > limit

    def lookup(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        with self.lock:
            return [self.render(i) for i in dict.fromkeys(ids) if i in self.rows]

    def albums(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {
                    "id": album,
                    "name": f"Album {album}",
                    "asset_count": len(self._by_album.get(album, [])),
                    "created_at": iso(EPOCH_2024),
                    "updated_at": iso(EPOCH_2024),
                }
                for album in sorted(self._albums)
            ]

    def truth(self) -> dict[str, dict[str, Any]]:
        """The ground truth at this instant: every link as the API would render it."""
        with self.lock:
            return {link_id: self.render(link_id) for link_id in self._ids}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return self._ids


def _remove_sorted(ids: list[str], link_id: str) -> None:
    at = bisect.bisect_left(ids, link_id)
    if at < len(ids) and ids[at] == link_id:
        del ids[at]
