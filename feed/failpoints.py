"""Crash points for the resumption tests: ``FEED_FAILPOINTS=name=N`` kills the process.

When the named point is reached for the N-th time, the process sends itself SIGKILL:
no cleanup, no flush, exactly what a crash or an OOM kill does. Unset in production,
where each call costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "after_fetch",  # a page was fetched and validated, nothing done with it yet
    "after_diff",  # a page was diffed into the open SQLite transaction
    "before_state_commit",  # a checkpoint is about to commit in SQLite
    "after_state_commit",  # the checkpoint is committed, Kafka has not seen it
    "mid_produce",  # half of a batch has been handed to the producer
    "before_kafka_commit",  # the whole batch is produced, the transaction is open
    "after_kafka_commit",  # Kafka committed; the outbox has not been emptied yet
)


def _parse(spec: str) -> dict[str, int]:
    plan = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition("=")
        plan[name] = int(count or 1)
    return plan


_plan = _parse(os.environ.get("FEED_FAILPOINTS", ""))
_hits: dict[str, int] = {}


def armed(name: str) -> bool:
    """Whether a crash is planned at ``name`` (tests only; False in production)."""
    return name in _plan


def hit(name: str) -> None:
    """Count a pass through ``name``; die here if the plan says so."""
    if not _plan:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _plan.get(name) == _hits[name]:
        os.kill(os.getpid(), signal.SIGKILL)
