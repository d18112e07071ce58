"""A walk split by album: one PageWalk per album (``album_id`` filter), several at once.

Against a real upstream every page costs a network round trip, and a sequential walk
of a large library costs pages times round trip. Walking albums concurrently overlaps those
round trips; ``FEED_API__CONCURRENCY`` bounds how many run at once (and the shared
request budget still bounds the rate).

The pages of all albums arrive in one stream, and the caller applies them one at a
time, so the snapshot keeps a single writer. The walk's state says which albums are
done and where each album in progress resumes; it moves only as pages are applied,
so a checkpoint of it never claims a page that was fetched but not diffed.

The walk is complete only when the album list was read whole and every album walk
ended complete. Links in an album created after the list was read are found by the
next walk; they cannot cause a removal, since removals need an id lookup anyway.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from feed.client import UpstreamClient
from feed.errors import WalkIncomplete
from feed.prefetch import put_unless_closed
from feed.walk import PageWalk, WalkPage, WalkResult

log = logging.getLogger(__name__)


@dataclass
class ShardState:
    """Which albums a sharded walk has finished, and where the others resume."""

    albums: list[str]
    done: set[str] = field(default_factory=set)
    cursors: dict[str, list[str]] = field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        return {"albums": self.albums, "done": sorted(self.done), "cursors": self.cursors}

    @classmethod
    def load(cls, doc: dict[str, Any]) -> ShardState:
        return cls(list(doc["albums"]), set(doc["done"]), dict(doc["cursors"]))


@dataclass
class ShardPage:
    album: str
    page: WalkPage


@dataclass
class _ShardEnd:
    album: str
    result: WalkResult
    error: BaseException | None = None


class ShardedWalk:
    """Iterate over the pages of every album; read ``result`` when the iteration ends."""

    def __init__(self, client: UpstreamClient, state: ShardState, concurrency: int) -> None:
        self._client = client
        self.state = state
        self._concurrency = max(1, concurrency)
        self._out: queue.Queue[ShardPage | _ShardEnd] = queue.Queue(maxsize=2 * concurrency)
        self._todo: queue.Queue[str] = queue.Queue()
        self._closed = threading.Event()
        self.result = WalkResult()

    def __iter__(self) -> Iterator[ShardPage]:
        pending = [a for a in self.state.albums if a not in self.state.done]
        for album in pending:
            self._todo.put(album)
        workers = [
            threading.Thread(target=self._work, name=f"shard-{n}", daemon=True)
            for n in range(min(self._concurrency, len(pending)))
        ]
        for worker in workers:
            worker.start()
        failures: list[WalkIncomplete] = []
        try:
            for _ in pending:
                yield from self._until_end(failures)
        finally:
            self._closed.set()
        self._finish(failures)

    def _until_end(self, failures: list[WalkIncomplete]) -> Iterator[ShardPage]:
        """Pages until one album ends (in whatever order albums finish)."""
        while True:
            item = self._out.get()
            if isinstance(item, ShardPage):
                self.state.cursors[item.album] = item.page.resume
                yield item
                continue
            self._add(item.result)
            if item.error is None:
                self.state.done.add(item.album)
                self.state.cursors.pop(item.album, None)
            elif isinstance(item.error, WalkIncomplete):
                failures.append(item.error)
            else:
                raise item.error
            return

    def _finish(self, failures: list[WalkIncomplete]) -> None:
        if not failures:
            self.result.complete = True
            self.result.reason = "complete"
            return
        resumable = all(f.resumable for f in failures)
        reason = f"{len(failures)} album walk(s) incomplete; first: {failures[0].reason}"
        self.result.reason, self.result.resumable = reason, resumable
        raise WalkIncomplete(reason, reason=reason, resumable=resumable)

    def _add(self, part: WalkResult) -> None:
        self.result.pages += part.pages
        self.result.rows += part.rows
        self.result.rejected += part.rejected
        self.result.anomalies += part.anomalies

    def _work(self) -> None:
        while not self._closed.is_set():
            try:
                album = self._todo.get_nowait()
            except queue.Empty:
                return
            walk = PageWalk(self._client, resume=self.state.cursors.get(album), album_id=album)
            error: BaseException | None = None
            try:
                for page in walk:
                    if not self._put(ShardPage(album, page)):
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer as is
                error = exc
            if not self._put(_ShardEnd(album, walk.result, error)):
                return

    def _put(self, item: ShardPage | _ShardEnd) -> bool:
        return put_unless_closed(self._out, item, self._closed)

    def close(self) -> None:
        self._closed.set()


def list_albums(client: UpstreamClient) -> list[str]:
    """The ids of every album, read whole (a partial list raises WalkIncomplete)."""
    albums = [str(row["id"]) for row in client.albums() if isinstance(row.get("id"), str)]
    log.info("sharded walk over %d albums", len(albums))
    return albums
