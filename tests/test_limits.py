"""The rate limit and the breaker, driven by a clock passed in (no sleeping)."""

from __future__ import annotations

from archiver.limits import Breaker, RateLimit, ceil_seconds


def test_a_full_bucket_allows_a_minute_of_burst_then_refills() -> None:
    limit = RateLimit(per_minute=3)
    assert [limit.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limit.take("a", 0.0)
    assert wait == 20.0  # one token every 20 s
    assert limit.take("b", 0.0) == 0.0, "another user has a bucket of their own"
    assert limit.take("a", 20.0) == 0.0


def test_refilled_buckets_are_forgotten_when_full() -> None:
    limit = RateLimit(per_minute=60, max_users=2)
    limit.take("a", 0.0)
    limit.take("b", 0.0)
    limit.take("c", 120.0)  # a and b have refilled by then
    assert set(limit._buckets) == {"c"}


def test_breaker_opens_after_failures_and_lets_one_try_after_the_cooldown() -> None:
    breaker = Breaker(failures=2, cooldown=10.0)
    assert not breaker.failure(0.0) and breaker.state == "closed"
    assert breaker.failure(1.0) and breaker.state == "open"
    assert breaker.retry_after(5.0) == 6.0
    assert breaker.retry_after(11.0) == 0.0
    breaker.success()
    assert breaker.state == "closed" and breaker.consecutive == 0


def test_ceil_seconds_is_at_least_one() -> None:
    assert [ceil_seconds(s) for s in (0.0, 0.2, 1.0, 1.01)] == [1, 1, 1, 2]


def test_wait_tells_what_take_would_without_taking() -> None:
    limit = RateLimit(per_minute=2)
    assert limit.wait("a", 0.0) == 0.0, "an address never seen has a full bucket"
    limit.take("a", 0.0)
    assert limit.wait("a", 0.0) == 0.0 and limit.wait("a", 0.0) == 0.0
    limit.take("a", 0.0)
    assert limit.wait("a", 0.0) == 30.0 == limit.take("a", 0.0)
    assert limit.wait("a", 15.0) == 15.0
    assert RateLimit(per_minute=0).wait("a", 0.0) == 0.0
