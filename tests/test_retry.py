"""The retry policy as pure logic: what is retried, how long it waits, when it stops.

Time is faked here; the same policy over real HTTP is exercised in test_walk_cases.py.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from feed.errors import FatalUpstreamError, TransientError
from feed.retry import RetryPolicy, http_date, retry_after_seconds, should_retry
from feed.settings import ApiSettings

NOW = 1_700_000_000.0


def settings(**overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "max_attempts": 5,
        "backoff_initial_seconds": 0.5,
        "backoff_max_seconds": 8.0,
        "max_delay_seconds": 60.0,
    }
    values.update(overrides)
    return ApiSettings(**values)


def headers(**pairs: str) -> httpx.Headers:
    # httpx.Headers, as the client hands them over: names are case-insensitive.
    return httpx.Headers({k.replace("_", "-"): v for k, v in pairs.items()})


def failing(times: int, error: Exception, result: str = "ok") -> Any:
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return result

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


# -- which answers are transient ---------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_timeouts_conflicts_throttling_and_5xx_are_retried(status: int) -> None:
    assert should_retry(status, headers())


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 422])
def test_other_4xx_are_not_retried(status: int) -> None:
    assert not should_retry(status, headers())


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_x_should_retry_true_makes_a_4xx_transient(value: str) -> None:
    assert should_retry(400, headers(x_should_retry=value))


@pytest.mark.parametrize("value", ["false", "False"])
def test_x_should_retry_false_makes_a_5xx_final(value: str) -> None:
    assert not should_retry(503, headers(x_should_retry=value))


def test_an_unreadable_x_should_retry_leaves_the_status_rule() -> None:
    assert should_retry(503, headers(x_should_retry="maybe"))
    assert not should_retry(400, headers(x_should_retry="maybe"))


# -- the delay the server asks for -------------------------------------------------------


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert retry_after_seconds(headers(retry_after_ms="250", retry_after="7")) == 0.25


def test_an_unreadable_retry_after_ms_falls_back_to_retry_after() -> None:
    assert retry_after_seconds(headers(retry_after_ms="soon", retry_after="7")) == 7.0
    assert retry_after_seconds(headers(retry_after_ms="-5", retry_after="2")) == 2.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), ("1.5", 1.5), ("0", 0.0), (" 3 ", 3.0), ("86400", 86400.0)],
)
def test_retry_after_in_seconds(value: str, expected: float) -> None:
    assert retry_after_seconds(headers(retry_after=value)) == expected


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    when = http_date(datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=30))
    assert retry_after_seconds(headers(retry_after=when), now=lambda: NOW) == 30.0


def test_retry_after_as_a_past_date_means_now() -> None:
    when = http_date(datetime.fromtimestamp(NOW, UTC) - timedelta(hours=1))
    assert retry_after_seconds(headers(retry_after=when), now=lambda: NOW) == 0.0


def test_retry_after_as_a_date_without_a_zone_is_read_as_gmt() -> None:
    when = "Tue, 14 Nov 2023 22:13:50 -0000"  # NOW + 30 s; "-0000": no zone given
    assert retry_after_seconds(headers(retry_after=when), now=lambda: NOW) == 30.0


@pytest.mark.parametrize(
    "value", ["soon", "", "-1", "nan", "Mon, 99 Foo 2023", "Fri, 31 Feb 2023 00:00:00 GMT"]
)
def test_an_unreadable_retry_after_asks_for_nothing(value: str) -> None:
    assert retry_after_seconds(headers(retry_after=value), now=lambda: NOW) is None


def test_no_header_asks_for_nothing() -> None:
    assert retry_after_seconds(headers()) is None


# -- the policy's waits ------------------------------------------------------------------


def test_backoff_doubles_from_the_initial_delay_up_to_its_maximum() -> None:
    policy = RetryPolicy(settings())
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = [policy.delay_for(None, attempt) for _ in range(50)]
        # Jitter takes off at most a quarter, and never adds.
        assert all(0.75 * ceiling <= d <= ceiling for d in delays), (attempt, delays)
        assert len(set(delays)) > 1


def test_the_server_delay_is_used_as_asked() -> None:
    policy = RetryPolicy(settings())
    assert policy.delay_for(TransientError("429", retry_after=7.0), 1) == 7.0
    assert policy.delay_for(TransientError("429", retry_after=0.0), 3) == 0.0


def test_a_server_delay_over_the_cap_is_cut_to_the_cap_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RetryPolicy(settings(max_delay_seconds=45))
    with caplog.at_level(logging.WARNING, logger="feed.retry"):
        assert policy.delay_for(TransientError("429", retry_after=86400.0), 1) == 45.0
    assert "86400" in caplog.text
    assert "FEED_API__MAX_DELAY_SECONDS" in caplog.text


def test_the_cap_also_bounds_the_backoff() -> None:
    policy = RetryPolicy(settings(backoff_initial_seconds=5, max_delay_seconds=2))
    assert policy.delay_for(None, 4) <= 2.0


# -- the policy's loop -------------------------------------------------------------------


def test_a_transient_failure_is_retried_after_the_computed_waits() -> None:
    slept: list[float] = []
    retried: list[tuple[str, float]] = []
    policy = RetryPolicy(
        settings(), sleep=slept.append, on_retry=lambda r, d: retried.append((r, d))
    )
    fn = failing(2, TransientError("HTTP 429", retry_after=1.5, reason="429"))
    assert policy.call(fn, "GET test") == "ok"
    assert slept == [1.5, 1.5]
    assert retried == [("429", 1.5), ("429", 1.5)]


def test_retries_stop_at_max_attempts_and_the_last_error_is_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slept: list[float] = []
    policy = RetryPolicy(settings(max_attempts=3), sleep=slept.append)
    error = TransientError("HTTP 503", status=503, reason="503")
    fn = failing(10, error)
    with (
        caplog.at_level(logging.WARNING, logger="feed.retry"),
        pytest.raises(TransientError) as caught,
    ):
        policy.call(fn, "GET page")
    assert caught.value is error
    assert fn.calls["n"] == 3
    assert len(slept) == 2
    assert "attempt 1 of 3" in caplog.text
    assert "GET page" in caplog.text


def test_a_fatal_error_is_never_retried() -> None:
    slept: list[float] = []
    policy = RetryPolicy(settings(), sleep=slept.append)
    fn = failing(1, FatalUpstreamError("HTTP 400", status=400))
    with pytest.raises(FatalUpstreamError):
        policy.call(fn, "GET page")
    assert fn.calls["n"] == 1
    assert slept == []


def test_an_unexpected_exception_is_not_retried() -> None:
    policy = RetryPolicy(settings(), sleep=lambda _: None)
    fn = failing(1, KeyError("bug"))
    with pytest.raises(KeyError):
        policy.call(fn, "GET page")
    assert fn.calls["n"] == 1


def test_the_time_budget_ends_retries_before_max_attempts() -> None:
    # The budget is measured on the real clock, so this test takes real (short) time.
    fast = settings(
        max_attempts=1000,
        retry_budget_seconds=0.1,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.01,
    )
    policy = RetryPolicy(fast)
    fn = failing(1000, TransientError("timed out", reason="timeout"))

    def slow_failure() -> str:
        time.sleep(0.02)
        return str(fn())

    started = time.monotonic()
    with pytest.raises(TransientError):
        policy.call(slow_failure, "GET page")
    assert 2 <= fn.calls["n"] <= 10
    assert time.monotonic() - started < 1.0


def test_http_date_is_an_imf_fixdate_in_gmt() -> None:
    moment = datetime(2023, 11, 7, 7, 31, 56, tzinfo=UTC)
    assert http_date(moment) == "Tue, 07 Nov 2023 07:31:56 GMT"
