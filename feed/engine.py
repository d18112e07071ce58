"""One walk from start to watermark: fetch, diff, checkpoint, publish, confirm removals.

The order of steps is what makes a crash harmless (``docs/guarantees.md``):

1. pages are diffed into the snapshot inside an open SQLite transaction, and their
   events are written to the outbox in that same transaction;
2. every ``batch_events`` events or ``batch_seconds`` seconds, the transaction is
   committed together with the walk's cursor and seen-set: that is the checkpoint;
3. the outbox is then published to Kafka (one transaction per batch, with a commit
   marker) and emptied;
4. when the walk is complete, links it did not see are looked up by id; those the
   lookup does not find are removed, and a watermark closes the walk.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from feed import failpoints, metrics
from feed.client import UpstreamClient
from feed.diff import diff_confirmed, diff_page
from feed.errors import (
    FatalUpstreamError,
    ProducerFencedError,
    PublishError,
    TransientError,
    WalkIncomplete,
)
from feed.events import (
    Change,
    LinkRow,
    cloudevent_headers,
    dead_letter_body,
    encode_headers,
    event_body,
    event_id,
    message_key,
    now_iso,
    watermark_body,
)
from feed.links import RowRejection
from feed.prefetch import Prefetch
from feed.publisher import Publisher
from feed.settings import Settings
from feed.shards import ShardedWalk, ShardState, list_albums
from feed.store import OutboxRecord, SnapshotStore, WalkState
from feed.walk import PageWalk, WalkPage, WalkResult

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 10.0
# Room for Kafka's per-record framing when checking a record against message.max.bytes.
RECORD_OVERHEAD = 512
CLIP_CHARS = 256


def _record_size(record: OutboxRecord) -> int:
    # The stored headers (JSON) are a little longer than on the wire: a safe estimate.
    return len(record.value) + len(record.key or b"") + len(record.headers)


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > CLIP_CHARS:
        return value[:CLIP_CHARS] + f"...({len(value)} chars)"
    return value


@dataclass
class _Walker:
    """What the engine needs of a walker once the pages are done."""

    result: WalkResult
    close: Callable[[], None]


def _list_failed(exc: WalkIncomplete | TransientError) -> WalkIncomplete:
    """The album list of a walk by album failed: a doubtful list is read again from the
    start, a failed one at the next attempt; either way the log says it was the list."""
    reason = f"could not read the album list: {exc}"
    resumable = exc.resumable if isinstance(exc, WalkIncomplete) else True
    return WalkIncomplete(reason, reason=reason, resumable=resumable)


class Stopped(Exception):
    """A stop was requested; everything up to the last checkpoint is safe."""


@dataclass
class WalkReport:
    """The figures of one walk, for the log, `feed status` and tests."""

    walk: int = 0
    outcome: str = "running"
    reason: str = ""
    started_at: float = 0.0
    seconds: float = 0.0
    pages: int = 0
    rows: int = 0
    rejected: int = 0
    duplicates: int = 0
    events: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    removal_candidates: int = 0
    resumed: bool = False

    def count(self, change_type: str) -> None:
        self.events[change_type] = self.events.get(change_type, 0) + 1


class Feed:
    """The publisher: one library, one state file, one producer."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        dry_run: Callable[[bytes], None] | None = None,
    ) -> None:
        self.settings = settings
        self.library = settings.api.library_id or "default"
        self.stop_event = stop or threading.Event()
        self._dry_run = dry_run
        self.client = UpstreamClient(settings.api, stop=self.stop_event)
        self.publisher: Publisher | None = None
        try:
            # One writer per state file: a second run, once or snapshot stops at once.
            self.store = SnapshotStore(settings.state.path, self.library, exclusive=dry_run is None)
        except BaseException:
            self.client.close()
            raise
        try:
            if dry_run is None:
                self.publisher = Publisher(settings.kafka, self.library, self.store.state_id)
        except BaseException:
            self.store.close()
            self.client.close()
            raise
        self._seq = 0
        self._published = 0
        self._staged: list[OutboxRecord] = []  # in the open SQLite transaction
        self._committed: list[OutboxRecord] = []  # committed, not yet in Kafka
        self._began = time.monotonic()

    # -- life cycle --------------------------------------------------------------------

    def open(self) -> None:
        """Check topics, settle the outbox against Kafka, publish what is left of it."""
        self._seq = self.store.next_seq() - 1
        if self.publisher is None:
            return
        self.publisher.ensure_topics()
        held = self._with_backoff(self.publisher.start, "starting the Kafka producer")
        self._published = int(self.store.get_meta("published_seq", 0))
        if held > self._published:
            log.info(
                "Kafka already holds outbox records up to %d; not publishing them again",
                held,
            )
            self.store.mark_published(held)
            self._published = held
        self.drain()

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        self.store.close()
        self.client.close()

    # -- the walk ----------------------------------------------------------------------

    def run_walk(self) -> WalkReport:
        """One walk, resumed from the checkpoint if one was in progress."""
        walk = self.store.load_walk()
        if walk is None:
            self.store.begin()
            walk = self.store.new_walk()
            if self._dry_run is None:
                self.store.commit()
        report = WalkReport(walk=walk.walk_id, started_at=walk.started_at, resumed=walk.resumed)
        if walk.resumed:
            log.info(
                "resuming walk %d %s (%d pages done)", walk.walk_id, walk.position(), walk.pages
            )
        began = self._began = time.monotonic()
        try:
            complete = self._walk_pages(walk, report)
            if complete:
                self._finish(walk, report)
        except TransientError as exc:
            # The id lookups that confirm removals failed: the walk stays open and the
            # next attempt confirms again; nothing was removed.
            report.outcome, report.reason = "incomplete", f"removal lookups failed: {exc}"
            metrics.WALKS.labels("incomplete").inc()
        finally:
            self._rollback()  # only what a checkpoint committed counts
            report.seconds = time.monotonic() - began
            self._record(report)
        return report

    def _walk_pages(self, walk: WalkState, report: WalkReport) -> bool:
        self.store.begin()
        try:
            pages, resume, walker = self._pages(walk)
        except (WalkIncomplete, TransientError) as exc:
            # A walk by album reads the album list first. A doubtful or unreadable list
            # ends the walk as a doubtful page does; it must not stop the service.
            self._give_up(walk, report, _list_failed(exc))
            return False
        pending = 0
        last_checkpoint = last_progress = time.monotonic()
        try:
            for page in pages:
                failpoints.hit("after_fetch")
                pending += self._apply_page(walk, page, report)
                walk.resume = resume(page)
                failpoints.hit("after_diff")
                now = time.monotonic()
                if now - last_progress >= PROGRESS_EVERY_SECONDS:
                    self._progress(report, walk, now)
                    last_progress = now
                if self.stop_event.is_set():
                    self._checkpoint(walk)
                    report.outcome, report.reason = "stopped", "stop requested"
                    raise Stopped
                if pending >= self.settings.kafka.batch_events or (
                    now - last_checkpoint >= self.settings.kafka.batch_seconds
                ):
                    self._checkpoint(walk)
                    pending, last_checkpoint = 0, time.monotonic()
        except WalkIncomplete as exc:
            self._give_up(walk, report, exc)
            return False
        except FatalUpstreamError as exc:
            self._checkpoint(walk)
            report.outcome, report.reason = "failed", str(exc)
            raise
        finally:
            walker.close()
            report.pages, report.rows = walker.result.pages, walker.result.rows
            report.rejected = walker.result.rejected
        self._checkpoint(walk)
        return True

    def _pages(
        self, walk: WalkState
    ) -> tuple[Iterable[WalkPage], Callable[[WalkPage], Any], _Walker]:
        """The pages of this walk, how to checkpoint after each, and the walker itself.

        A walk keeps the mode it started in; a new walk is split by album when
        FEED_API__CONCURRENCY is above 1.
        """
        sharded = isinstance(walk.resume, dict) or (
            not walk.resume and self.settings.api.concurrency > 1
        )
        if not sharded:
            plain = PageWalk(self.client, resume=walk.resume)  # type: ignore[arg-type]
            # The next page travels while this one is diffed; each page carries its
            # own resume point, so fetching ahead never runs ahead of the checkpoint.
            ahead = Prefetch(plain)
            return ahead, lambda page: page.resume, _Walker(plain.result, ahead.close)
        if isinstance(walk.resume, dict):
            state = ShardState.load(walk.resume)
        else:
            state = ShardState(list_albums(self.client))
            walk.resume = state.dump()
        shards = ShardedWalk(self.client, state, self.settings.api.concurrency)
        # The shard state moves as pages are handed over, i.e. as they are applied.
        pages = (item.page for item in shards)
        return pages, lambda _page: state.dump(), _Walker(shards.result, shards.close)

    def _apply_page(self, walk: WalkState, page: WalkPage, report: WalkReport) -> int:
        diff = diff_page(self.store, walk, page.links)
        report.duplicates += diff.duplicates
        records = self._records(diff.changes, walk, report)
        records += self._reject(page.rejected, walk, report)
        self._stage(records)
        walk.pages += 1
        walk.rows += len(page.links) + len(page.rejected)
        log.debug(
            "page %d: %d links, %d changes, %d rejected",
            page.number,
            len(page.links),
            len(diff.changes),
            len(page.rejected),
        )
        return len(records)

    def _give_up(self, walk: WalkState, report: WalkReport, exc: WalkIncomplete) -> None:
        """Keep what the pages showed, never infer a removal, and decide how to go on."""
        if not exc.resumable:
            self.store.end_walk()  # the next walk starts over from the first page
        self._checkpoint(walk, ended=not exc.resumable)
        report.outcome = "incomplete"
        report.reason = exc.reason
        metrics.WALKS.labels("incomplete").inc()
        log.warning(
            "walk %d is incomplete: %s. No removal is inferred from it; %s",
            walk.walk_id,
            exc.reason,
            "the next walk resumes from its cursor"
            if exc.resumable
            else "the next walk starts from the first page",
        )

    def _finish(self, walk: WalkState, report: WalkReport) -> None:
        """Confirm removals by id, publish them and the watermark, close the walk."""
        self.store.begin()
        candidates = 0
        for batch in self.store.unseen(walk, batch=100):
            rows: list[LinkRow] = [tuple(r[1:]) for r in batch]  # type: ignore[misc]
            candidates += len(rows)
            still_there = self.client.lookup([r[0] for r in rows])
            changes = diff_confirmed(self.store, rows, still_there)
            self._stage(self._records(changes, walk, report))
            if self.stop_event.is_set():
                self._rollback()
                report.outcome, report.reason = "stopped", "stop requested"
                raise Stopped
        report.removal_candidates = candidates
        self._watermark(walk)
        self.store.end_walk()
        report.outcome = "complete"
        self._checkpoint(walk, ended=True)
        metrics.WALKS.labels("complete").inc()
        metrics.LAST_COMPLETE_WALK.set(time.time())
        metrics.WATERMARK.set(walk.started_at)

    def _watermark(self, walk: WalkState) -> None:
        # Every change visible upstream when this walk started has been seen by it:
        # rows only escape a walk by changing after it passed them.
        self._seq += 1
        ident, body = watermark_body(self.library, walk.walk_id, walk.started_at, self._seq)
        topic = self.settings.kafka.watermark_topic
        headers = cloudevent_headers(self.library, "watermark", ident, now_iso(), None)
        record = OutboxRecord(
            self._seq,
            "watermark",
            topic,
            self.library.encode(),
            body,
            ident,
            encode_headers(headers),
        )
        self._stage([record])
        self.store.set_meta("watermark", walk.started_at)

    def publish_snapshot(self) -> int:
        """Publish every known link as a ``link_snapshot`` event; the diff state is untouched.

        Consumers that start from nothing can fold these instead of the whole history.
        The run's number salts the event ids, so two snapshots do not collide.
        """
        self.store.begin()
        run = int(self.store.get_meta("snapshot_counter", 0)) + 1
        self.store.set_meta("snapshot_counter", run)
        self.store.commit()
        kafka = self.settings.kafka
        topic = f"{kafka.topic}.link_snapshot" if kafka.topic_per_type else kafka.topic
        detected = now_iso()
        count = 0
        for rows in self.store.iter_links(batch=kafka.batch_events):
            self.store.begin()
            records = []
            for row in rows:
                self._seq += 1
                change = Change("link_snapshot", row[1:])
                ident = event_id(self.library, change, salt=f"snapshot-{run}")
                body = event_body(
                    self.library,
                    change,
                    event_id_=ident,
                    walk=0,
                    seq=self._seq,
                    detected_at=detected,
                    bootstrap=True,
                )
                record = self._event_record(change, topic, body, ident, detected)
                if not self._fits(record):
                    nowalk, noreport = WalkState(walk_id=0, started_at=0.0), WalkReport()
                    detail = {"bytes": _record_size(record), "type": change.type}
                    reason = "event larger than message.max.bytes"
                    record = self._dead_letter(nowalk, row[1], reason, detail, noreport)
                    count -= 1
                records.append(record)
            self._stage(records)
            self._commit()
            self.drain()
            count += len(records)
        return count

    # -- events ------------------------------------------------------------------------

    def _records(
        self, changes: Sequence[Change], walk: WalkState, report: WalkReport
    ) -> list[OutboxRecord]:
        kafka = self.settings.kafka
        records = []
        detected = now_iso()
        for change in changes:
            self._seq += 1
            # The walk is part of the id: a link removed and re-added with the very same
            # values is two changes, and a consumer de-duplicating on ids must see both.
            ident = event_id(self.library, change, salt=f"walk-{walk.walk_id}")
            body = event_body(
                self.library,
                change,
                event_id_=ident,
                walk=walk.walk_id,
                seq=self._seq,
                detected_at=detected,
            )
            topic = f"{kafka.topic}.{change.type}" if kafka.topic_per_type else kafka.topic
            record = self._event_record(change, topic, body, ident, detected)
            if not self._fits(record):
                # Key and headers count too: a record Kafka refuses would block the
                # outbox forever, so it goes to the dead-letter topic instead.
                records.append(
                    self._dead_letter(
                        walk,
                        change.link[0],
                        "event larger than message.max.bytes",
                        {"bytes": _record_size(record), "type": change.type},
                        report,
                    )
                )
                continue
            records.append(record)
            report.count(change.type)
            if self._dry_run is not None:
                self._dry_run(body)
        return records

    def _reject(
        self, rejected: Sequence[RowRejection], walk: WalkState, report: WalkReport
    ) -> list[OutboxRecord]:
        records = []
        known = self.store.get_many([r.link_id for r in rejected if r.link_id])
        for rejection in rejected:
            log.warning("row set aside, not published: %s", rejection.describe())
            metrics.ROWS_REJECTED.inc()
            old = known.get(rejection.link_id or "")
            if old is not None:
                walk.seen.add(old[0])  # unreadable is not removed
            detail = {
                "field": rejection.field,
                "value": rejection.value,
                "error": rejection.reason,
                "row": rejection.raw,
            }
            records.append(
                self._dead_letter(walk, rejection.link_id, "invalid row", detail, report)
            )
        return records

    def _dead_letter(
        self,
        walk: WalkState,
        link_id: str | None,
        reason: str,
        detail: dict[str, Any],
        report: WalkReport,
    ) -> OutboxRecord:
        self._seq += 1
        record = self._dead_letter_record(walk, link_id, reason, detail)
        if not self._fits(record):
            # A huge row: keep what names it and why, drop the rest, so that the dead
            # letter itself can never be refused by Kafka and block the outbox.
            short = {k: _clip(v) for k, v in detail.items() if k != "row"}
            short["truncated_bytes"] = _record_size(record)
            record = self._dead_letter_record(walk, _clip(link_id), reason, short)
        report.dead_letters += 1
        metrics.DEAD_LETTERS.inc()
        return record

    def _dead_letter_record(
        self, walk: WalkState, link_id: str | None, reason: str, detail: dict[str, Any]
    ) -> OutboxRecord:
        ident, body = dead_letter_body(self.library, walk.walk_id, link_id, reason, detail)
        key = link_id.encode() if link_id else None
        headers = cloudevent_headers(self.library, "dead_letter", ident, now_iso(), link_id)
        return OutboxRecord(
            self._seq,
            "dead_letter",
            self.settings.kafka.dead_letter_topic,
            key,
            body,
            ident,
            encode_headers(headers),
        )

    def _fits(self, record: OutboxRecord) -> bool:
        """Whether Kafka can take this record (value, key and headers together)."""
        if self.publisher is None:
            return True
        return _record_size(record) + RECORD_OVERHEAD <= self.publisher.max_message_bytes

    def _event_record(
        self, change: Change, topic: str, body: bytes, ident: str, detected: str
    ) -> OutboxRecord:
        # Keyed by the previous values for an update, so that a link's events share a
        # partition even if the upstream ever moved it (docs/guarantees.md, Ordering).
        key = message_key(change.previous or change.link, self.settings.kafka.key)
        headers = cloudevent_headers(self.library, change.type, ident, detected, change.link[0])
        return OutboxRecord(
            self._seq, change.type, topic, key, body, ident, encode_headers(headers)
        )

    # -- checkpoint and publishing -----------------------------------------------------

    def _checkpoint(self, walk: WalkState, ended: bool = False) -> None:
        if self._dry_run is not None:
            return  # a dry run changes nothing: its transaction is rolled back at the end
        if not ended:
            self.store.save_walk(walk)
        failpoints.hit("before_state_commit")
        self._commit()
        failpoints.hit("after_state_commit")
        self.drain()
        self.store.begin()

    def _stage(self, records: list[OutboxRecord]) -> None:
        """Add records to the outbox, in the open SQLite transaction."""
        self.store.add_outbox(records)
        self._staged.extend(records)

    def _commit(self) -> None:
        self.store.commit()
        # Committed records are published from memory; the outbox table is read back
        # only after a restart, or when memory does not hold the next record.
        self._committed.extend(self._staged)
        self._staged.clear()

    def _rollback(self) -> None:
        self.store.rollback()
        self._staged.clear()

    def _next_batch(self) -> list[OutboxRecord]:
        limit = self.settings.kafka.batch_events
        held = self._committed
        if held and held[0].seq == self._published + 1:
            batch = held[:limit]
            del held[:limit]
            return batch
        held.clear()
        return self.store.outbox(self._published, limit)

    def drain(self) -> None:
        """Publish the outbox until it is empty, waiting out broker outages."""
        if self.publisher is None:
            return
        publisher = self.publisher
        while True:
            records = self._next_batch()
            metrics.OUTBOX.set(len(records) + len(self._committed))
            if not records:
                return
            walk_id = int(self.store.get_meta("walk_counter", 0))
            self._with_backoff(
                functools.partial(publisher.publish, records, walk_id),
                f"publishing {len(records)} records",
            )
            failpoints.hit("after_kafka_commit")
            for record in records:
                if record.kind.startswith("link_"):
                    metrics.EVENTS.labels(record.kind).inc()
            self.store.mark_published(records[-1].seq)
            self._published = records[-1].seq
            log.info(
                "published %d record(s), outbox seq %d..%d",
                len(records),
                records[0].seq,
                records[-1].seq,
            )

    def _with_backoff(self, action: Callable[[], Any], what: str) -> Any:
        delay = 0.5
        while True:
            try:
                result = action()
                metrics.LIVENESS.problem = None
                return result
            except ProducerFencedError:
                raise
            except PublishError as exc:
                metrics.LIVENESS.problem = f"Kafka: {exc}"
                log.warning(
                    "%s failed: %s; the checkpoint is safe, retrying in %.1f s",
                    what,
                    exc,
                    delay,
                )
                if self.stop_event.wait(delay):
                    raise Stopped from None
                delay = min(delay * 2, 30.0)

    # -- reporting ---------------------------------------------------------------------

    def _progress(self, report: WalkReport, walk: WalkState, now: float) -> None:
        rate = walk.rows / max(1e-9, now - self._began)
        line = (
            f"walk {walk.walk_id}: {walk.pages} pages, {walk.rows} links, "
            f"{sum(report.events.values())} events, {rate:.0f} links/s"
        )
        if sys.stderr.isatty() and self._dry_run is None:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
        else:
            log.info("%s", line)

    def _record(self, report: WalkReport) -> None:
        metrics.WALK_SECONDS.observe(report.seconds)
        if self._dry_run is not None:
            return
        self.store.set_meta("last_walk", asdict(report))
        log.info(
            "walk %d %s in %.1f s: %d pages, %d rows, events %s, %d rejected, "
            "%d duplicates, %d removal candidates%s",
            report.walk,
            report.outcome,
            report.seconds,
            report.pages,
            report.rows,
            report.events or "{}",
            report.rejected,
            report.duplicates,
            report.removal_candidates,
            f" ({report.reason})" if report.reason else "",
        )
