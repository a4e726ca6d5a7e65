"""The account rate limit the real service enforces: a token bucket per bearer token.

docs/wire.md: 1 request/s per account with small bursts, 429 ``rate_limited`` beyond.
Real (monotonic) time drives it, never the emulator's scaled clock: the limit is what a client
must pace itself against.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs

__all__ = ["AccountLimiter"]


@attrs.define
class _Bucket:
    """Tokens left and when they were last refilled."""

    tokens: float
    stamp: float


class AccountLimiter:
    """Token buckets keyed by token: ``rate`` tokens/s, capacity ``burst``; ``rate=None`` is off."""

    def __init__(
        self,
        rate: float | None,
        burst: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate_limit must be > 0 or None, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._monotonic = monotonic
        self._buckets: dict[str, _Bucket] = {}

    def try_acquire(self, key: str) -> float | None:
        """Take one token for ``key``; ``None`` on success, else seconds until one is available."""
        if self.rate is None:
            return None
        now = self._monotonic()
        bucket = self._buckets.setdefault(key, _Bucket(tokens=float(self.burst), stamp=now))
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate

    def describe(self) -> str:
        """The limit in words, for the 429 message."""
        rate = self.rate if self.rate is not None else 0.0
        plural = "" if rate == 1 else "s"
        return f"the limit is {rate:g} request{plural} per second per account"

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(wait)))
