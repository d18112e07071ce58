"""The exceptions of feed. The type of an error decides what happens next.

    FeedError
    ├── ConfigError              a setting is invalid; fix it and start again
    ├── UpstreamError            the album-assets API answered badly
    │   ├── TransientError       worth retrying: timeouts, resets, 408/409/429/5xx,
    │   │   └── PageFormatError  a body that is not a page (not JSON, wrong shape)
    │   ├── FatalUpstreamError   retrying cannot help: 4xx other than the above
    │   │   └── AuthError        401/403: the API key is missing or wrong
    │   └── CursorLostError      the row named by starting_after_id is gone
    ├── WalkIncomplete           the walk stopped early; no removal may be inferred
    ├── StateError               the checkpoint store is unreadable or too new
    └── PublishError             Kafka refused or could not take the events
        └── ProducerFencedError  another publisher took over this transactional id

The retry policy retries ``TransientError`` only. The removal logic acts only on a
walk that ended without ``WalkIncomplete``.
"""

from __future__ import annotations


class FeedError(Exception):
    """Root of every error feed raises on purpose."""


class ConfigError(FeedError):
    """A setting is invalid. The message names the setting and what is allowed."""


class UpstreamError(FeedError):
    """The upstream API answered with something other than a good page."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(UpstreamError):
    """An answer that may well be different a moment later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        reason: str = "transient",
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.reason = reason


class PageFormatError(TransientError):
    """A 200 whose body is not a page: not JSON, truncated, or the wrong shape."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="bad_body")


class FatalUpstreamError(UpstreamError):
    """An answer that retrying will not change."""


class AuthError(FatalUpstreamError):
    """The upstream refused the API key."""


class CursorLostError(UpstreamError):
    """The row named by ``starting_after_id`` no longer exists upstream."""

    def __init__(self, message: str, *, status: int | None, cursor: str) -> None:
        super().__init__(message, status=status)
        self.cursor = cursor


class WalkIncomplete(FeedError):
    """A walk that ended before the last page; it proves nothing about removals."""

    def __init__(self, message: str, *, reason: str, resumable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.resumable = resumable


class StateError(FeedError):
    """The checkpoint store cannot be used as it is."""


class PublishError(FeedError):
    """Kafka did not take a batch of events."""


class ProducerFencedError(PublishError):
    """Another publisher with the same transactional id is running."""
