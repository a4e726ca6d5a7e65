"""Retry policy: the bounds of backoff with full jitter, and of waiting out a server's pause.

Pure data: the decision that uses it (:func:`runcomfy_async._protocol.decide`) is handed the
jitter sample and the clock, so tests replay decisions exactly.
"""

from __future__ import annotations

import attrs

__all__ = ["RetryPolicy"]


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often and how long to retry a failed request.

    Args:
        max_attempts: total tries of one call, the first included.
        base_delay: the first backoff's upper bound, in seconds.
        max_delay: cap of any one backoff.
        max_retry_after: a server-requested wait longer than this is not waited out: the error
            surfaces instead (a caller rarely wants to hang for minutes silently). Cleanup calls
            (a machine's stop, a delete) wait this long and then try again.
        total_timeout: give up retrying once a call has spent this many seconds on the wire and
            in retry waits (time queued for a rate-limit token does not count).
        rate_limit_pause: seconds a 429 without a usable ``Retry-After`` pauses the rate-limit
            bucket (the account refills one request a second, hence 1 s).
    """

    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    max_delay: float = attrs.field(default=20.0, validator=attrs.validators.gt(0))
    max_retry_after: float = attrs.field(default=120.0, validator=attrs.validators.ge(0))
    total_timeout: float | None = 300.0
    rate_limit_pause: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))

    def backoff(self, attempt: int, jitter: float) -> float:
        """Full-jitter delay after try ``attempt`` (from 1); ``jitter`` is a sample of [0, 1)."""
        return jitter * min(self.max_delay, self.base_delay * 2.0 ** min(max(0, attempt - 1), 64))

    def after_server_wait(self, retry_after: float, jitter: float) -> float:
        """A server-requested wait plus a little jitter, so paused callers do not all return at
        once."""
        return retry_after + jitter * min(0.25, self.base_delay)
