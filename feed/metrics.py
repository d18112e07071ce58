"""Prometheus metrics of the feed, and the facts /readyz is judged on."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram, Info

from feed import __version__

PAGES = Counter("feed_pages_fetched_total", "Pages fetched from the upstream.")
ROWS = Counter("feed_rows_fetched_total", "Rows fetched from the upstream.")
ROWS_REJECTED = Counter("feed_rows_rejected_total", "Rows that failed validation.")
RETRIES = Counter("feed_upstream_retries_total", "Upstream retries by reason.", ["reason"])
REQUESTS = Counter("feed_upstream_requests_total", "Upstream requests by outcome.", ["outcome"])
EVENTS = Counter("feed_events_published_total", "Events published by type.", ["type"])
DEAD_LETTERS = Counter("feed_dead_letters_total", "Records sent to the dead-letter topic.")
ERRORS = Counter("feed_errors_total", "Errors by kind.", ["kind"])
WALKS = Counter("feed_walks_total", "Walks by outcome.", ["outcome"])
WALK_SECONDS = Histogram(
    "feed_walk_duration_seconds",
    "Duration of walks.",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf")),
)
LAST_COMPLETE_WALK = Gauge(
    "feed_last_complete_walk_timestamp_seconds", "When the last complete walk ended."
)
WATERMARK = Gauge("feed_watermark_timestamp_seconds", "The published watermark.")
OUTBOX = Gauge("feed_outbox_pending_events", "Events checkpointed but not yet in Kafka.")
INFO = Info("feed", "The running feed.")
INFO.info({"version": __version__})
PRODUCERS = Counter("feed_producers_created_total", "Kafka producers created.")


class Liveness:
    """When the upstream and the broker last answered, for /readyz."""

    def __init__(self) -> None:
        self.upstream_ok_at: float | None = None
        self.broker_ok_at: float | None = None
        self.problem: str | None = None

    def upstream_ok(self) -> None:
        self.upstream_ok_at = time.time()

    def broker_ok(self) -> None:
        self.broker_ok_at = time.time()

    def ready(self, within: float, need_broker: bool = True) -> tuple[bool, str]:
        now = time.time()
        if self.problem:
            return False, self.problem
        if self.upstream_ok_at is None or now - self.upstream_ok_at > within:
            return False, "the upstream has not answered recently"
        if need_broker and (self.broker_ok_at is None or now - self.broker_ok_at > within):
            return False, "the Kafka broker has not answered recently"
        return True, "ready"


LIVENESS = Liveness()
