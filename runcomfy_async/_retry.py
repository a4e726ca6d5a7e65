"""Retry policy: exponential backoff with full jitter, bounded by attempts and total time.

Pure: the caller supplies the random source and the clock, so tests replay decisions exactly.
"""

from __future__ import annotations

import random

import attrs

__all__ = ["RetryPolicy"]


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often and how long to retry a failed API call.

    Args:
        max_attempts: total tries of one call, the first included.
        base_delay: the first backoff's upper bound, in seconds.
        max_delay: cap of any one backoff.
        max_retry_after: a server-requested wait longer than this is not waited out: the error
            surfaces instead (a caller rarely wants to hang for minutes silently).
        total_timeout: give up retrying once this many seconds have passed since the first try.
    """

    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    max_delay: float = attrs.field(default=20.0, validator=attrs.validators.gt(0))
    max_retry_after: float = 120.0
    total_timeout: float | None = 300.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter delay before try ``attempt + 1`` (``attempt`` counts from 1)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 1)))
        return rng.uniform(0.0, ceiling)

    def next_delay(
        self,
        attempt: int,
        *,
        elapsed: float,
        retry_after: float | None,
        rng: random.Random,
    ) -> float | None:
        """Seconds to wait before retrying, or None when the budget is spent.

        A server's ``Retry-After`` is honoured (plus a little jitter so paused callers do not
        all return in the same instant) unless it exceeds ``max_retry_after``.
        """
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            delay = retry_after + rng.uniform(0.0, min(0.25, self.base_delay))
        else:
            delay = self.backoff(attempt, rng)
        if self.total_timeout is not None and elapsed + delay > self.total_timeout:
            return None
        return delay
