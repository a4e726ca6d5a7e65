"""Client-side rate limiting: the ``Limiter`` protocol and the in-process ``TokenBucket``.

The account limit (1 request/s, docs/wire.md) is shared by every call of a client. Waiters are
served by priority, then in arrival order, so a user's own call is not stuck behind hundreds of
background polls. A 429 pauses the whole bucket, not just the caller that saw it. Capacity is taken
only when a wait succeeds: a cancelled waiter gives its place (and any token granted to it) back.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

from . import errors

__all__ = ["Limiter", "Priority", "TokenBucket"]


class Priority(enum.IntEnum):
    """Who is asking for a token; lower values are served first."""

    #: Calls that stop billing (a machine's stop, cancelling an abandoned request): ahead of
    #: every queued caller, after any server-set pause.
    CLEANUP = -1
    USER = 0
    #: The last call of a wait that already saw the final state (e.g. fetching a finished model
    #: request's result): it completes somebody's ``await``, so it goes before fresh polls.
    FOLLOW_UP = 1
    BACKGROUND = 2


@runtime_checkable
class Limiter(Protocol):
    """What the request pipeline needs from a rate limiter."""

    async def acquire(self, priority: Priority = Priority.USER) -> None:
        """Wait until one request may be sent; cancellation gives the place back."""

    async def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` (the server answered 429)."""

    async def aclose(self) -> None:
        """Release what the limiter holds (connections, timers)."""


class TokenBucket:
    """An in-process token bucket with a priority queue of waiters.

    Args:
        rate: tokens added per second (requests per second on average).
        burst: bucket capacity: how many requests may go back to back after a quiet spell.
    """

    def __init__(self, rate: float = 1.0, burst: int = 2) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, burst={self.burst}, waiting={len(self._waiters)})"

    @property
    def waiting(self) -> int:
        """How many callers are queued for a token."""
        return sum(1 for *_, fut in self._waiters if not fut.done())

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    async def acquire(self, priority: Priority = Priority.USER) -> None:
        """Wait for a token; callers of a lower ``priority`` value go first.

        Raises:
            ClientClosedError: the bucket was closed (before or while waiting).
        """
        if self._closed:
            raise errors.ClientClosedError("the client's rate limiter is closed")
        loop = asyncio.get_running_loop()
        self._loop = loop
        now = time.monotonic()
        self._refill(now)
        if not self._waiters and now >= self._paused_until and self._tokens >= 1.0:
            self._tokens -= 1.0
            return
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._seq), fut))
        self._schedule(now)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted, but the caller is gone: the token goes back to the bucket.
                self._tokens = min(float(self.burst), self._tokens + 1.0)
                self._dispatch()
            raise

    async def pause(self, seconds: float) -> None:
        """Stop granting tokens for ``seconds``; one token is ready when the pause ends."""
        now = time.monotonic()
        until = now + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            self._tokens = 0.0
            self._stamp = until - 1.0 / self.rate
        if self._loop is not None and self._waiters:
            self._schedule(now)

    async def aclose(self) -> None:
        """Cancel the wake-up timer and fail every queued caller with ClientClosedError.

        A caller still waiting for a token when its client closes would otherwise wait forever
        (e.g. background ``await req`` tasks at a FastAPI shutdown).
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters, self._waiters = self._waiters, []
        for *_, fut in waiters:
            if not fut.done():
                fut.set_exception(
                    errors.ClientClosedError(
                        "the client was closed while this call waited for a rate-limit token"
                    )
                )

    def _dispatch(self) -> None:
        """Grant tokens to the best waiters, then arm the timer for the next one."""
        self._timer = None
        now = time.monotonic()
        self._refill(now)
        while self._waiters and now >= self._paused_until and self._tokens >= 1.0:
            _, _, fut = heapq.heappop(self._waiters)
            if fut.done():  # cancelled while queued: its place is simply dropped
                continue
            self._tokens -= 1.0
            fut.set_result(None)
        while self._waiters and self._waiters[0][2].done():
            heapq.heappop(self._waiters)
        if self._waiters:
            self._schedule(now)

    def _schedule(self, now: float) -> None:
        if self._loop is None:
            return
        wait = max(self._paused_until - now, (1.0 - self._tokens) / self.rate, 0.0)
        when = self._loop.time() + wait
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._dispatch)
