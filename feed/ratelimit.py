"""A token bucket: at most N requests a second, shared by every walk of the process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Hands out one token per request; waits when the bucket is empty."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is free. Returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            # A negative balance is a reservation: this caller waits until it is repaid,
            # and the next caller queues behind it.
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


_shared: dict[float, TokenBucket] = {}
_shared_lock = threading.Lock()


def shared_bucket(rate: float) -> TokenBucket:
    """The process-wide bucket for this rate, so that concurrent walks share one budget."""
    with _shared_lock:
        bucket = _shared.get(rate)
        if bucket is None:
            bucket = _shared[rate] = TokenBucket(rate)
        return bucket
