"""Fetch ahead: run an iterator in a thread, a few items in front of its consumer.

The walk's next page travels over the network while the previous one is diffed and
written to SQLite, so a walk costs about the slower of the two instead of their sum.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_DONE = object()


def put_unless_closed(out: queue.Queue[Any], item: object, closed: threading.Event) -> bool:
    """Put ``item`` on a bounded queue, giving up (False) once ``closed`` is set.

    A producer thread must not block for ever on a queue its consumer has abandoned.
    """
    while not closed.is_set():
        try:
            out.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


class Prefetch(Generic[T]):
    """Iterate over ``source`` from a daemon thread, at most ``depth`` items ahead.

    An exception raised by ``source`` is re-raised to the consumer at the point where
    it happened. ``close()`` (or leaving a ``with`` block) stops the thread at its next
    item, so an abandoned walk fetches at most ``depth`` pages more.
    """

    def __init__(self, source: Iterable[T], depth: int = 2) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer as is
            self._put(exc)
            return
        self._put(_DONE)

    def _put(self, item: object) -> bool:
        return put_unless_closed(self._queue, item, self._closed)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
