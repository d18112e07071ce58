"""When and how long to wait before asking the upstream again.

The rules follow what the official SDK documents: ``retry-after-ms`` first, then
``Retry-After`` as seconds or as an HTTP date; ``x-should-retry`` overrides the status
rule; otherwise exponential backoff with jitter. A server's delay longer than the
configured cap is cut to the cap, with a warning.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

import tenacity

from feed.errors import TransientError
from feed.settings import ApiSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIED_STATUSES = frozenset({408, 409, 429})


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """Whether a status is transient, honouring ``x-should-retry``."""
    override = headers.get("x-should-retry", "").strip().lower()
    if override == "true":
        return True
    if override == "false":
        return False
    return status in RETRIED_STATUSES or status >= 500


def retry_after_seconds(
    headers: Mapping[str, str], now: Callable[[], float] = time.time
) -> float | None:
    """The delay the server asked for, in seconds, or None if it asked for none we can read.

    A date in the past means "now" (0). Negative and unreadable values are ignored.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        return _seconds_until_http_date(raw, now)
    return seconds if seconds >= 0 and not math.isnan(seconds) else None


def _seconds_until_http_date(raw: str, now: Callable[[], float]) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


class RetryPolicy:
    """Retries TransientError with the waits above, within attempts and a time budget."""

    def __init__(
        self,
        settings: ApiSettings,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str, float], None] | None = None,
    ) -> None:
        self.max_attempts = settings.max_attempts
        self.max_delay = settings.max_delay_seconds
        self.budget = settings.retry_budget_seconds
        self.initial = settings.backoff_initial_seconds
        self.backoff_max = settings.backoff_max_seconds
        self._sleep = sleep
        self._on_retry = on_retry

    def delay_for(self, error: BaseException | None, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        asked = error.retry_after if isinstance(error, TransientError) else None
        if asked is not None:
            if asked > self.max_delay:
                log.warning(
                    "the upstream asked to wait %.0f s; waiting the cap of %.0f s instead "
                    "(FEED_API__MAX_DELAY_SECONDS)",
                    asked,
                    self.max_delay,
                )
                return self.max_delay
            return asked
        doubled = self.initial * 2.0 ** (attempt - 1)
        ceiling = min(self.backoff_max, doubled, self.max_delay)
        # Jitter keeps many publishers from retrying in step after a shared outage.
        return ceiling * (0.75 + random.random() * 0.25)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn``, retrying transient failures; re-raise the last one at the end."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_after_delay(self.budget),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(state, what),
            reraise=True,
        )
        return retrying(fn)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return self.delay_for(error, state.attempt_number)

    def _log_retry(self, state: tenacity.RetryCallState, what: str) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        reason = error.reason if isinstance(error, TransientError) else "error"
        log.warning(
            "%s failed (attempt %d of %d, %s): %s; retrying in %.2f s",
            what,
            state.attempt_number,
            self.max_attempts,
            reason,
            error,
            delay,
        )
        if self._on_retry is not None:
            self._on_retry(reason, delay)


def http_date(moment: datetime) -> str:
    """Format an HTTP date, for the simulator and tests."""
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)
