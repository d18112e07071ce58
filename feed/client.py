"""The HTTP client of Gumnut's album-assets API: one page, one id lookup, the albums.

Each call is one logical request: transient failures are retried by the RetryPolicy,
every other failure is raised as the error type that says what to do about it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import orjson

from feed import metrics
from feed.errors import (
    AuthError,
    ConfigError,
    CursorLostError,
    FatalUpstreamError,
    PageFormatError,
    TransientError,
    WalkIncomplete,
)
from feed.links import Link, ParsedPage, parse_link, parse_page
from feed.ratelimit import TokenBucket, shared_bucket
from feed.retry import RetryPolicy, retry_after_seconds, should_retry
from feed.settings import MAX_IDS_PER_LOOKUP, MAX_PAGE_LIMIT, ApiSettings

log = logging.getLogger(__name__)

LINKS_PATH = "/api/album-assets"
ALBUMS_PATH = "/api/albums"


class UpstreamClient:
    """Talks to the album-assets API with retries, a request budget and clear errors."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        bucket: TokenBucket | None = None,
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise ConfigError(
                "no API key: set FEED_API__API_KEY (or --api-key) to the upstream's API key"
            )
        self.settings = settings
        self.limit = settings.limit
        self._bucket = bucket or shared_bucket(settings.requests_per_second)
        self._policy = policy or RetryPolicy(
            settings,
            sleep=time.sleep if stop is None else _stoppable_sleep(stop),
            on_retry=lambda reason, _: metrics.RETRIES.labels(reason).inc(),
        )
        self._http = httpx.Client(
            base_url=settings.base_url,
            headers={
                "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
                "Accept": "application/json",
                "User-Agent": "feed/0.1 (+album-asset change feed)",
            },
            timeout=httpx.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
        )

    def __repr__(self) -> str:
        return f"UpstreamClient(base_url={self.settings.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> UpstreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the calls -------------------------------------------------------------------

    def page(self, cursor: str | None, album_id: str | None = None) -> ParsedPage:
        """One page of links after ``cursor`` (None: the first page)."""
        params = self._base_params(album_id)
        params.append(("limit", str(self.limit)))
        if cursor is not None:
            params.append(("starting_after_id", cursor))
        where = f"page after {cursor!r}" if cursor is not None else "first page"
        return self._policy.call(
            lambda: parse_page(self._get(LINKS_PATH, params, cursor=cursor)),
            f"GET {LINKS_PATH} ({where})",
        )

    def lookup(self, ids: Sequence[str]) -> dict[str, Link | None]:
        """The links among ``ids`` that exist now, in batches of at most 100 ids.

        A link the upstream returned in a row that does not validate maps to None: it
        exists, so it must not be taken for removed.
        """
        found: dict[str, Link | None] = {}
        for start in range(0, len(ids), MAX_IDS_PER_LOOKUP):
            batch = ids[start : start + MAX_IDS_PER_LOOKUP]
            found.update(self._lookup_batch(batch))
        return found

    def albums(self) -> Iterator[dict[str, Any]]:
        """Every album of the library, walked page by page.

        Raises WalkIncomplete when the paging goes wrong (an empty page that claims more,
        a cursor that comes back), so that a partial list is never taken for the whole.
        """
        cursor: str | None = None
        sent: set[str | None] = set()
        while True:
            sent.add(cursor)
            params = self._base_params(None, with_album=False)
            params.append(("limit", str(MAX_PAGE_LIMIT)))
            if cursor is not None:
                params.append(("starting_after_id", cursor))
            rows, has_more = self._policy.call(
                functools.partial(self._album_page, params), f"GET {ALBUMS_PATH}"
            )
            yield from rows
            if not has_more:
                return
            cursor = _next_album_cursor(rows, sent)

    # -- the plumbing ----------------------------------------------------------------

    def _lookup_batch(self, batch: Sequence[str]) -> dict[str, Link | None]:
        params = self._base_params(None) + [("ids", i) for i in batch]
        params.append(("limit", str(min(len(batch), 200))))

        def attempt() -> dict[str, Link | None]:
            doc = parse_page(self._get(LINKS_PATH, params))
            if doc.has_more:
                # Every id asked for fits in one answer, so "more" means this one was cut
                # short, and an id missing from it proves nothing: a removal needs a
                # whole answer. Retried like any other malformed page.
                raise PageFormatError(
                    f"an id lookup of {len(batch)} ids answered has_more true with "
                    f"{doc.row_count} rows; a cut answer cannot confirm removals"
                )
            asked = set(batch)
            found: dict[str, Link | None] = {
                r.link_id: None for r in doc.rejected if r.link_id in asked
            }
            found.update((link.id, link) for link in doc.links if link.id in asked)
            return found

        what = f"GET {LINKS_PATH} (ids lookup of {len(batch)})"
        return self._policy.call(attempt, what)

    def _album_page(self, params: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], bool]:
        # Parsed inside the retried call: a cut or foreign body is as transient here as
        # on the links.
        body = self._get(ALBUMS_PATH, params)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PageFormatError(f"the albums page is not JSON ({exc})") from None
        rows = doc.get("data") if isinstance(doc, dict) else None
        has_more = doc.get("has_more") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or not isinstance(has_more, bool):
            raise PageFormatError("the albums page is not a page: expected `data` and `has_more`")
        return [row for row in rows if isinstance(row, dict)], has_more

    def _base_params(
        self, album_id: str | None, *, with_album: bool = True
    ) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if self.settings.library_id:
            params.append(("library_id", self.settings.library_id))
        # /api/albums has no album filter: the configured album only narrows the links.
        album = album_id or self.settings.album_id
        if album and with_album:
            params.append(("album_id", album))
        return params

    def _get(self, path: str, params: list[tuple[str, str]], cursor: str | None = None) -> bytes:
        self._bucket.acquire()
        try:
            response = self._http.get(path, params=tuple(params))
        except httpx.TimeoutException as exc:
            metrics.REQUESTS.labels("timeout").inc()
            raise TransientError(f"timed out: {exc!r}", reason="timeout") from None
        except httpx.TransportError as exc:
            # Resets, refused connections and a keep-alive connection that the server
            # closed while idle ("server disconnected without sending a response").
            metrics.REQUESTS.labels("connection").inc()
            raise TransientError(f"connection failed: {exc!r}", reason="connection") from None
        status = response.status_code
        metrics.REQUESTS.labels(str(status)).inc()
        if status == 200:
            metrics.LIVENESS.upstream_ok()
            return response.content
        self._raise_for(response, cursor)
        raise AssertionError("unreachable")  # pragma: no cover

    def _redact(self, text: str) -> str:
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else ""
        return text.replace(key, "**********") if key else text

    def _raise_for(self, response: httpx.Response, cursor: str | None) -> None:
        status = response.status_code
        headers = response.headers
        # Some servers echo the credentials they refuse; the key must never reach a log.
        text = self._redact(response.text)[:300]
        if cursor is not None and _names_lost_cursor(status, text):
            raise CursorLostError(
                f"the cursor row {cursor!r} no longer exists upstream ({status}: {text})",
                status=status,
                cursor=cursor,
            )
        if status in (401, 403):
            raise AuthError(
                f"the upstream refused the API key ({status}): it is missing, wrong or "
                f"lacks access; check FEED_API__API_KEY (and FEED_API__LIBRARY_ID). "
                f"Server said: {text}",
                status=status,
            )
        if should_retry(status, headers):
            raise TransientError(
                f"HTTP {status}: {text}",
                status=status,
                retry_after=retry_after_seconds(headers),
                reason=str(status),
            )
        hint = ""
        if status == 400 and "library" in text.lower():
            hint = " The account has several libraries: set FEED_API__LIBRARY_ID."
        raise FatalUpstreamError(f"HTTP {status} from the upstream: {text}.{hint}", status=status)


def _stoppable_sleep(stop: threading.Event) -> Callable[[float], None]:
    """A retry wait that a stop request cuts short: the request then fails as transient,
    which ends the walk as incomplete and resumable (nothing removed, cursor kept)."""

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise TransientError("stop requested while waiting to retry", reason="stopped")

    return sleep


def _next_album_cursor(rows: list[dict[str, Any]], sent: set[str | None]) -> str:
    if not rows:
        raise WalkIncomplete(
            "the albums listing sent an empty page with has_more true",
            reason="empty page with has_more",
            resumable=False,
        )
    last = rows[-1].get("id")
    if not isinstance(last, str) or not last:
        raise WalkIncomplete(
            "the last album of a page has no usable id to continue from",
            reason="no cursor",
            resumable=False,
        )
    if last in sent:
        raise WalkIncomplete(
            f"the albums listing led back to cursor {last!r}: a paging loop",
            reason="paging loop",
            resumable=False,
        )
    return last


def _names_lost_cursor(status: int, text: str) -> bool:
    """A 404, or a 400/422 about ``starting_after_id``: the cursor row is gone."""
    if status == 404:
        return True
    return status in (400, 422) and "starting_after_id" in text


__all__ = ["LINKS_PATH", "PageFormatError", "UpstreamClient", "parse_link"]
