"""Client-side rate limiting: the ``Limiter`` protocol and the in-process ``TokenBucket``.

The account limit (1 request/s, docs/wire.md) is shared by every call of a client. Waiters are
served in the latency order of :mod:`._schedule` (calls that finish somebody's answer first, new
work never starved), or by priority then arrival with ``order="arrival"``. A 429 pauses the whole
bucket, not just the caller that saw it. Capacity is taken only when a wait succeeds: a cancelled
waiter gives its place (and any token granted to it) back. Time is the event loop's clock.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from . import errors
from ._schedule import Order, Priority, WaitQueue

__all__ = ["Limiter", "Priority", "TokenBucket"]


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
    """An in-process token bucket with an ordered queue of waiters.

    Args:
        rate: tokens added per second (requests per second on average).
        burst: bucket capacity: how many requests may go back to back after a quiet spell.
        order: ``"latency"`` (the default) serves the calls that complete an answer first
            without starving new work; ``"arrival"`` serves by priority, then arrival order.
    """

    def __init__(self, rate: float = 1.0, burst: int = 2, *, order: Order = "latency") -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None  # loop time of the last refill; None: never used
        self._paused_until = 0.0
        self._queue = WaitQueue(order)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, burst={self.burst}, waiting={self.waiting})"

    @property
    def order(self) -> Order:
        """How queued callers are ordered (``"latency"`` or ``"arrival"``)."""
        return self._queue.order

    @property
    def waiting(self) -> int:
        """How many callers are queued for a token."""
        return len(self._queue)

    def _now(self) -> float:
        """The event loop's time, refilling the bucket up to it."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        now = loop.time()
        if self._stamp is None:
            self._stamp = now
        elif now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return now

    async def acquire(self, priority: Priority = Priority.USER) -> None:
        """Wait for a token, served in the bucket's order.

        Raises:
            ClientClosedError: the bucket was closed (before or while waiting).
        """
        if self._closed:
            raise errors.ClientClosedError("the client's rate limiter is closed")
        now = self._now()
        if not self._queue and now >= self._paused_until and self._tokens >= 1.0:
            self._tokens -= 1.0
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._queue.push(priority, fut)
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
        now = self._now()
        until = now + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            self._tokens = 0.0
            self._stamp = until - 1.0 / self.rate
        if self._queue:
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
        for fut in self._queue.drain():
            fut.set_exception(
                errors.ClientClosedError(
                    "the client was closed while this call waited for a rate-limit token"
                )
            )

    def _dispatch(self) -> None:
        """Grant tokens to the best waiters, then arm the timer for the next one."""
        self._timer = None
        now = self._now()
        while now >= self._paused_until and self._tokens >= 1.0:
            fut = self._queue.pop(now)
            if fut is None:
                break
            self._tokens -= 1.0
            fut.set_result(None)
        if self._queue:
            self._schedule(now)

    def _schedule(self, now: float) -> None:
        if self._loop is None:
            return
        wait = max(self._paused_until - now, (1.0 - self._tokens) / self.rate, 0.0)
        when = now + wait
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._dispatch)
