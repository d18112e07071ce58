"""Fault injection for the simulator: what to do to the next requests, and how often.

Two kinds of fault, configurable per run:

- *scripted* faults, queued: "the next 3 list requests answer 503", "the page after
  cursor X is empty with has_more true". Each fires a set number of times.
- *random* faults, by rate per request, from a seeded generator: for soak tests.

Actions: ``status`` (any code, headers and body), ``drop`` (read the request, close the
connection without answering), ``timeout`` (answer after a long sleep), ``truncate``,
``malformed`` (not JSON), ``wrong_shape`` (JSON, not a page), ``empty_has_more`` (empty
page saying there is more), ``repeat`` (the same page again, the cursor goes nowhere),
``long_page`` (more rows than asked for), ``overlap`` (the previous page's last row
again at the top), ``delay`` (latency, then the real answer). ``hidden`` ids are left
out of list pages but found by id lookups.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal[
    "status",
    "drop",
    "timeout",
    "truncate",
    "malformed",
    "wrong_shape",
    "empty_has_more",
    "repeat",
    "long_page",
    "overlap",
    "delay",
]

CursorMode = Literal["error404", "error400", "continue"]


@dataclass
class Fault:
    action: Action
    times: int = 1
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: str = '{"error": "injected"}'
    seconds: float = 0.0
    path: str = "/api/album-assets"
    cursor: str | None = None  # only requests with this starting_after_id
    list_only: bool = True  # only page requests, not id lookups

    def matches(self, path: str, query: dict[str, list[str]]) -> bool:
        if not path.startswith(self.path):
            return False
        if self.list_only and "ids" in query:
            return False
        if self.cursor is not None:
            return query.get("starting_after_id", [None])[0] == self.cursor
        return True


class Faults:
    """The fault plan of one simulator; safe to change while it serves."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._queue: list[Fault] = []
        self._rng = random.Random(seed)
        self.rates: dict[str, float] = {}
        self.latency_seconds = 0.0
        self.deleted_cursor: CursorMode = "error404"
        self.timeout_seconds = 30.0
        self.retry_after: str | None = "1"
        # Links left out of list pages but still found by id: what a walk sees when a
        # row moves behind its cursor.
        self.hidden: set[str] = set()

    def add(self, action: Action, **kwargs: Any) -> Fault:
        fault = Fault(action=action, **kwargs)
        with self._lock:
            self._queue.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self.rates = {}
            self.latency_seconds = 0.0

    def pending(self) -> int:
        with self._lock:
            return sum(f.times for f in self._queue)

    def next_for(self, path: str, query: dict[str, list[str]]) -> Fault | None:
        """The fault this request meets, if any, consuming one firing of it."""
        with self._lock:
            for fault in self._queue:
                if fault.times > 0 and fault.matches(path, query):
                    fault.times -= 1
                    if fault.times == 0:
                        self._queue.remove(fault)
                    return fault
            if not path.startswith("/api/") or not self.rates:
                return None
            return self._random_fault()

    def _random_fault(self) -> Fault | None:
        roll = self._rng.random()
        for name, rate in sorted(self.rates.items()):
            if roll < rate:
                return self._fault_named(name)
            roll -= rate
        return None

    def _fault_named(self, name: str) -> Fault:
        if name == "429":
            retry = self.retry_after or "0.05"
            return Fault("status", status=429, headers={"Retry-After": retry})
        if name.isdigit():
            return Fault("status", status=int(name))
        return Fault(name, seconds=self.timeout_seconds)  # type: ignore[arg-type]

    def configure(self, spec: dict[str, Any]) -> None:
        """Apply a JSON plan (the admin endpoint's body)."""
        with self._lock:
            if "rates" in spec:
                self.rates = {str(k): float(v) for k, v in spec["rates"].items()}
            if "latency_seconds" in spec:
                self.latency_seconds = float(spec["latency_seconds"])
            if "deleted_cursor" in spec:
                self.deleted_cursor = spec["deleted_cursor"]
            if "timeout_seconds" in spec:
                self.timeout_seconds = float(spec["timeout_seconds"])
            if "retry_after" in spec:
                self.retry_after = spec["retry_after"]
            if "seed" in spec:
                self._rng.seed(spec["seed"])
        for item in spec.get("queue", []):
            fields = dict(item)
            self.add(fields.pop("action"), **fields)
