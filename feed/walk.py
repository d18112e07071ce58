"""One walk over every page of the album-asset links, as a small state machine.

A walk starts at the first page (or resumes after a saved cursor), advances page by
page, and finishes either *complete* (the upstream said there is no more) or
*incomplete*. Only a complete walk may later be used to infer removals, so every
anomaly that makes the end of the walk doubtful ends it as incomplete:

- ``has_more: true`` with an empty page, or a cursor that comes back (a loop);
- a cursor row reported deleted that a later page lists again (a loop in disguise);
- a page longer than the ``limit`` asked for (the server ignores the contract);
- a last row without a usable id (no cursor to go on with);
- retries running out (the walk can be resumed from its cursor later).

The row named by ``starting_after_id`` may be deleted between two requests. The walk
remembers the last few ids it read and steps back to the newest one that still exists,
so it skips no row and rarely has to start over. Asking again after a remembered id is
deliberate, so it does not count as a loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from feed import metrics
from feed.client import UpstreamClient
from feed.errors import CursorLostError, TransientError, WalkIncomplete
from feed.links import Link, ParsedPage, RowRejection

log = logging.getLogger(__name__)

RESUME_DEPTH = 8
MAX_RESTARTS = 3


@dataclass
class WalkPage:
    """A validated page and where to resume after it."""

    number: int
    links: list[Link]
    rejected: list[RowRejection]
    resume: list[str]
    # "<link id> <field>=<value>" for each timestamp without a zone, read as UTC.
    naive_timestamps: list[str] = field(default_factory=list)


@dataclass
class WalkResult:
    """How a walk ended."""

    complete: bool = False
    reason: str = ""
    resumable: bool = False
    pages: int = 0
    rows: int = 0
    rejected: int = 0
    anomalies: list[str] = field(default_factory=list)


class PageWalk:
    """Iterate over the pages of one walk; read ``result`` when the iteration ends.

    Iteration raises ``WalkIncomplete`` when the walk cannot reach a trustworthy end,
    and lets fatal upstream errors (a refused API key, say) through unchanged.
    """

    def __init__(
        self,
        client: UpstreamClient,
        resume: list[str] | None = None,
        album_id: str | None = None,
    ) -> None:
        self._client = client
        self._album = album_id
        self._candidates: list[str] = list(resume or [])
        self.result = WalkResult()

    def __iter__(self) -> Iterator[WalkPage]:
        sent: set[str | None] = set()
        lost: set[str] = set()
        restarts = 0
        cursor = self._candidates[-1] if self._candidates else None
        while True:
            self._refuse_loop(cursor, sent, lost)
            try:
                page = self._client.page(cursor, self._album)
            except CursorLostError:
                if cursor is not None:
                    lost.add(cursor)
                cursor, restarts = self._step_back(cursor, restarts, sent)
                continue
            except TransientError as exc:
                where = "the first page" if cursor is None else f"the page after {cursor!r}"
                self._fail(f"gave up on {where}: {exc}", True)
            sent.add(cursor)
            self._count(page, cursor)
            if page.row_count == 0:
                if page.has_more:
                    self._fail(
                        f"the upstream sent an empty page after {cursor!r} with has_more "
                        "true; stopping instead of asking again",
                        False,
                    )
                break

            yield self._accept(page)

            if not page.has_more:
                break
            if page.last_id is None:
                self._fail("the last row of a page has no usable id to continue from", False)
            cursor = page.last_id

        if self.result.anomalies:
            self._fail("; ".join(self.result.anomalies), False)
        self.result.complete = True
        self.result.reason = "complete"

    def _refuse_loop(self, cursor: str | None, sent: set[str | None], lost: set[str]) -> None:
        if cursor in lost:
            self._fail(
                f"the upstream reported cursor row {cursor!r} deleted, then listed it "
                "again; its paging cannot be trusted",
                False,
            )
        if cursor in sent:
            self._fail(f"the upstream led back to cursor {cursor!r}: a paging loop", False)

    def _count(self, page: ParsedPage, cursor: str | None) -> None:
        metrics.PAGES.inc()
        metrics.ROWS.inc(page.row_count)
        self.result.pages += 1
        self.result.rows += page.row_count
        if page.row_count > self._client.limit:
            self._anomaly(
                f"page after {cursor!r} has {page.row_count} rows, more than the "
                f"limit of {self._client.limit}"
            )

    def _accept(self, page: ParsedPage) -> WalkPage:
        """Remember where to resume after ``page`` and hand it on."""
        ids = [link.id for link in page.links]
        if page.last_id is not None and (not ids or ids[-1] != page.last_id):
            ids.append(page.last_id)  # the last row was rejected but still has an id
        self._candidates = (self._candidates + ids)[-RESUME_DEPTH:]
        self.result.rejected += len(page.rejected)
        return WalkPage(
            self.result.pages,
            page.links,
            page.rejected,
            list(self._candidates),
            page.naive_timestamps,
        )

    def _step_back(
        self, lost: str | None, restarts: int, sent: set[str | None]
    ) -> tuple[str | None, int]:
        """Go on after the newest remembered id that still exists, else start over."""
        while self._candidates and self._candidates[-1] == lost:
            self._candidates.pop()
        if self._candidates:
            cursor = self._candidates[-1]
            # Asking again after an earlier cursor is a deliberate step, not a loop the
            # upstream led us into (with small pages every remembered id was a cursor).
            sent.discard(cursor)
            log.warning(
                "cursor row %r was deleted upstream; continuing after %r instead",
                lost,
                cursor,
            )
            return cursor, restarts
        if restarts >= MAX_RESTARTS:
            self._fail(f"cursor rows keep vanishing; gave up after {restarts} restarts", True)
        log.warning(
            "cursor row %r was deleted and no earlier row is known; restarting the walk "
            "from the first page (rows already seen count as seen)",
            lost,
        )
        sent.clear()
        return None, restarts + 1

    def _anomaly(self, message: str) -> None:
        log.warning("upstream anomaly: %s; this walk will not be used for removals", message)
        self.result.anomalies.append(message)

    def _fail(self, reason: str, resumable: bool) -> None:
        self.result.complete = False
        self.result.reason = reason
        self.result.resumable = resumable
        raise WalkIncomplete(reason, reason=reason, resumable=resumable)
