"""The token bucket, on a fake clock: rate, burst, reservations, sharing."""

from __future__ import annotations

import threading

import pytest

from feed.ratelimit import TokenBucket, shared_bucket


class FakeTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds


def bucket(rate: float, burst: float | None = None) -> tuple[TokenBucket, FakeTime]:
    fake = FakeTime()
    return TokenBucket(rate, burst, clock=fake.clock, sleep=fake.sleep), fake


def test_a_full_bucket_lets_a_burst_through_without_waiting() -> None:
    tokens, fake = bucket(rate=5)
    assert [tokens.acquire() for _ in range(5)] == [0.0] * 5
    assert fake.slept == []


def test_past_the_burst_requests_are_spaced_at_the_rate() -> None:
    tokens, fake = bucket(rate=2)
    waits = [tokens.acquire() for _ in range(6)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert fake.now == pytest.approx(102.0)


def test_waiting_callers_queue_behind_each_other_when_time_stands_still() -> None:
    fake = FakeTime()
    # A sleep that does not move the clock: each caller reserves the next free slot.
    tokens = TokenBucket(4, burst=1, clock=fake.clock, sleep=lambda _: None)
    assert [tokens.acquire() for _ in range(4)] == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_an_idle_bucket_refills_only_up_to_its_capacity() -> None:
    tokens, fake = bucket(rate=2, burst=3)
    for _ in range(3):
        tokens.acquire()
    fake.now += 3600  # an hour idle must not bank 7200 tokens
    waits = [tokens.acquire() for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.5])


def test_a_slow_rate_still_has_a_burst_of_one() -> None:
    tokens, _ = bucket(rate=0.5)
    assert tokens.capacity == 1.0
    assert tokens.acquire() == 0.0
    assert tokens.acquire() == pytest.approx(2.0)


@pytest.mark.parametrize("rate", [0, -1])
def test_a_rate_that_is_not_positive_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate)


def test_concurrent_callers_together_keep_to_the_rate() -> None:
    tokens, fake = bucket(rate=10, burst=1)
    threads = [threading.Thread(target=tokens.acquire) for _ in range(21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    # 21 tokens at 10 a second, one in hand: the clock moved by two seconds, no less.
    assert fake.now - 100.0 >= 2.0 - 1e-9


def test_walks_of_one_process_share_one_bucket_per_rate() -> None:
    assert shared_bucket(123.0) is shared_bucket(123.0)
    assert shared_bucket(123.0) is not shared_bucket(124.0)
