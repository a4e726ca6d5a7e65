"""Polling: adaptive intervals, and a fair share of the one rate budget.

Every poll asks the limiter for a token at ``Priority.BACKGROUND``. The limiter serves those
first-come first-served, so hundreds of pollers take turns (none starves), and any user call
(``Priority.USER``) gets one of the next tokens instead of queueing behind them. Each poller
backs off on its own (fast at first, then slower up to a cap) and starts fast again whenever the
state it watches changes.

A poller may carry a :class:`~._schedule.Claim` (what it waits for and when that should be
over): its polls then go ahead of new work once the run is expected to be done, and it wakes up
at that moment instead of at the next step of its back-off.

The deadline holds while a poll waits for its token too: under load a fetch can queue behind
hundreds of others for longer than the caller is willing to wait, so it is cut off at the deadline
(the limiter gives a cancelled waiter's place back).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

import attrs

from . import errors
from ._schedule import Claim, claiming

__all__ = ["PollPolicy", "poll_until"]

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How often to ask the server about something that changes over time.

    Args:
        initial: seconds before the second poll.
        factor: growth of the interval after each poll that saw no change.
        max_interval: the interval's cap (minutes suit hours-long training runs).
        jitter: fraction of randomness added to each interval so pollers do not align.
    """

    initial: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    factor: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    max_interval: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    jitter: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))

    def next_interval(self, current: float | None) -> float:
        """The interval after ``current`` (None: the first one)."""
        return self.initial if current is None else min(self.max_interval, current * self.factor)

    def jittered(self, interval: float, rng: random.Random) -> float:
        """``interval`` with up to ``jitter`` of it added at random."""
        return interval * (1.0 + rng.uniform(0.0, self.jitter))


_rng = random.Random()


async def poll_until(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    policy: PollPolicy,
    timeout: float | None = None,
    key: Callable[[T], Hashable] = lambda snapshot: snapshot,
    on_snapshot: Callable[[T], Awaitable[None] | None] | None = None,
    what: str = "the remote state",
    claim: Claim | None = None,
) -> T:
    """Call ``fetch`` until ``done(snapshot)``; return that snapshot.

    Args:
        fetch: one poll (it should take its token at ``Priority.BACKGROUND``).
        done: whether a snapshot is final.
        policy: the interval schedule.
        timeout: client-side deadline in seconds (None: wait as long as it takes).
        key: what counts as "a change" (resets the interval to ``policy.initial``).
        on_snapshot: called with every snapshot (progress reporting, artifact watching).
        what: names the awaited thing in the timeout error.
        claim: what the polls wait for, seen by the limiter (see :mod:`._schedule`).

    Raises:
        WaitTimeoutError: ``timeout`` passed first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    interval: float | None = None
    last_key: Hashable = object()
    while True:
        if deadline is None:
            with claiming(claim):
                snapshot = await fetch()
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timed_out(what, timeout)
            budget = asyncio.timeout(remaining)
            try:
                async with budget:
                    with claiming(claim):
                        snapshot = await fetch()
            except TimeoutError:
                if budget.expired():
                    raise _timed_out(what, timeout) from None
                raise  # the fetch's own timeout (APITimeoutError), not our deadline
        if on_snapshot is not None:
            maybe = on_snapshot(snapshot)
            if maybe is not None:
                await maybe
        if done(snapshot):
            return snapshot
        if claim is not None:
            claim.unfinished(asyncio.get_running_loop().time())
        current_key = key(snapshot)
        interval = None if current_key != last_key else interval
        last_key = current_key
        interval = policy.next_interval(interval)
        sleep_for = policy.jittered(interval, _rng)
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                continue
            sleep_for = min(sleep_for, remaining)
        if claim is None:
            await asyncio.sleep(sleep_for)
        else:
            await claim.nap(sleep_for)  # wakes early when the run should be over


def _timed_out(what: str, timeout: float | None) -> errors.WaitTimeoutError:
    """The error of a passed deadline, naming what was awaited and how to wait longer."""
    return errors.WaitTimeoutError(
        f"gave up waiting for {what} after {timeout:g}s; pass a larger timeout= or check its status"
    )
