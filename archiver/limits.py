"""Two small guards: a per-user rate limit and a circuit breaker for the upstream.

Both are plain in-process state driven by a monotonic clock passed in, so they are
tested without sleeping. With several instances each keeps its own counts (a user is
routed to one instance, so the per-user limit still holds per user).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimit:
    """A token bucket per user: ``per_minute`` chats, a full minute's worth of burst."""

    per_minute: float
    max_users: int = 100_000
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, user: str, now: float) -> float:
        """Take one token; return 0 if allowed, else the seconds until one is available."""
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= self.max_users:
                self._forget_full(now)
            bucket = self._buckets[user] = _Bucket(self.per_minute, now)
        bucket.tokens = min(self.per_minute, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate

    def wait(self, user: str, now: float) -> float:
        """What :meth:`take` would answer now, taking nothing: 0, or the seconds to wait."""
        if self.per_minute <= 0:
            return 0.0
        bucket = self._buckets.get(user)
        if bucket is None:
            return 0.0
        rate = self.per_minute / 60.0
        tokens = min(self.per_minute, bucket.tokens + (now - bucket.updated) * rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / rate

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled carries no information: drop those.
        rate = self.per_minute / 60.0
        for user, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * rate >= self.per_minute:
                del self._buckets[user]


@dataclass
class Breaker:
    """Open after ``failures`` consecutive failures; let one try through after ``cooldown``."""

    failures: int
    cooldown: float
    consecutive: int = 0
    opened_at: float | None = None

    def retry_after(self, now: float) -> float:
        """0 if a call may go ahead now, else the seconds until it may."""
        if self.opened_at is None:
            return 0.0
        remaining = self.opened_at + self.cooldown - now
        return max(0.0, remaining)

    @property
    def state(self) -> str:
        return "closed" if self.opened_at is None else "open"

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None

    def failure(self, now: float) -> bool:
        """Count a failure; return True if this one opened (or re-opened) the breaker."""
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self.opened_at = now
            return True
        return False


def ceil_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))
