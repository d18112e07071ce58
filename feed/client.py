"""The HTTP client of Gumnut's album-assets API: one page, one id lookup, the albums.

Each call is one logical request: transient failures are retried by the RetryPolicy,
every other failure is raised as the error type that says what to do about it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
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
)
from feed.links import Link, ParsedPage, parse_link, parse_page
from feed.ratelimit import TokenBucket, shared_bucket
from feed.retry import RetryPolicy, retry_after_seconds, should_retry
from feed.settings import MAX_IDS_PER_LOOKUP, ApiSettings

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
    ) -> None:
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise ConfigError(
                "no API key: set FEED_API__API_KEY (or --api-key) to the upstream's API key"
            )
        self.settings = settings
        self.limit = settings.limit
        self._bucket = bucket or shared_bucket(settings.requests_per_second)
        self._policy = policy or RetryPolicy(
            settings, on_retry=lambda reason, _: metrics.RETRIES.labels(reason).inc()
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

    def lookup(self, ids: Sequence[str]) -> dict[str, Link]:
        """The links among ``ids`` that exist now, in batches of at most 100 ids."""
        found: dict[str, Link] = {}
        for start in range(0, len(ids), MAX_IDS_PER_LOOKUP):
            batch = ids[start : start + MAX_IDS_PER_LOOKUP]
            found.update(self._lookup_batch(batch))
        return found

    def albums(self) -> Iterator[dict[str, Any]]:
        """Every album of the library, walked page by page."""
        cursor: str | None = None
        while True:
            params = self._base_params(None) + [("limit", "200")]
            if cursor is not None:
                params.append(("starting_after_id", cursor))
            body = self._policy.call(
                lambda p=params: self._get(ALBUMS_PATH, p),
                f"GET {ALBUMS_PATH}",  # type: ignore[misc]
            )
            doc = orjson.loads(body)
            rows = doc.get("data") or []
            yield from rows
            if not rows or not doc.get("has_more") or rows[-1].get("id") == cursor:
                return
            cursor = rows[-1]["id"]

    # -- the plumbing ----------------------------------------------------------------

    def _lookup_batch(self, batch: Sequence[str]) -> dict[str, Link]:
        params = self._base_params(None) + [("ids", i) for i in batch]
        params.append(("limit", str(min(len(batch), 200))))

        def attempt() -> dict[str, Link]:
            doc = parse_page(self._get(LINKS_PATH, params))
            asked = set(batch)
            return {link.id: link for link in doc.links if link.id in asked}

        return self._policy.call(attempt, f"GET {LINKS_PATH} (ids lookup of {len(batch)})")

    def _base_params(self, album_id: str | None) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if self.settings.library_id:
            params.append(("library_id", self.settings.library_id))
        album = album_id or self.settings.album_id
        if album:
            params.append(("album_id", album))
        return params

    def _get(
        self, path: str, params: list[tuple[str, str]], cursor: str | None = None
    ) -> bytes:
        self._bucket.acquire()
        try:
            response = self._http.get(path, params=params)
        except httpx.TimeoutException as exc:
            metrics.REQUESTS.labels("timeout").inc()
            raise TransientError(f"timed out: {exc!r}", reason="timeout") from None
        except httpx.TransportError as exc:
            # Resets, refused connections and a keep-alive connection that the server
            # closed while idle ("server disconnected without sending a response").
            metrics.REQUESTS.labels("connection").inc()
            raise TransientError(
                f"connection failed: {exc!r}", reason="connection"
            ) from None
        status = response.status_code
        metrics.REQUESTS.labels(str(status)).inc()
        if status == 200:
            metrics.LIVENESS.upstream_ok()
            return response.content
        self._raise_for(response, cursor)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for(self, response: httpx.Response, cursor: str | None) -> None:
        status = response.status_code
        headers = response.headers
        text = response.text[:300]
        if cursor is not None and _names_lost_cursor(status, text):
            raise CursorLostError(
                f"the cursor row {cursor!r} no longer exists upstream ({status}: {text})",
                status=status,
                cursor=cursor,
            )
        if status in (401, 403):
            raise AuthError(
                f"the upstream refused the API key ({status}): it is missing, wrong or lacks "
                f"access; check FEED_API__API_KEY (and FEED_API__LIBRARY_ID). Server said: "
                f"{text}",
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
        raise FatalUpstreamError(
            f"HTTP {status} from the upstream: {text}.{hint}", status=status
        )


def _names_lost_cursor(status: int, text: str) -> bool:
    """A 404, or a 400/422 about ``starting_after_id``: the cursor row is gone."""
    if status == 404:
        return True
    return status in (400, 422) and "starting_after_id" in text


__all__ = ["LINKS_PATH", "PageFormatError", "UpstreamClient", "parse_link"]
