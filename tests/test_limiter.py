"""The in-process token bucket: rate, priority, pause and cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from runcomfy_async import ClientClosedError, Limiter, Priority, TokenBucket


@pytest.mark.asyncio
async def test_rate_and_burst() -> None:
    """N acquisitions at rate r with burst b take at least (N - b) / r seconds."""
    bucket = TokenBucket(rate=20.0, burst=2)
    start = time.monotonic()
    for _ in range(12):
        await bucket.acquire()
    assert time.monotonic() - start >= (12 - 2) / 20.0 - 0.01
    await bucket.aclose()


@pytest.mark.asyncio
async def test_user_priority_overtakes_background() -> None:
    """A USER waiter queued behind many BACKGROUND waiters is served first."""
    bucket = TokenBucket(rate=50.0, burst=1)
    await bucket.acquire()  # empty the bucket
    order: list[str] = []

    async def take(label: str, prio: Priority) -> None:
        await bucket.acquire(prio)
        order.append(label)

    tasks = [asyncio.create_task(take(f"bg{i}", Priority.BACKGROUND)) for i in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(take("user", Priority.USER)))
    await asyncio.gather(*tasks)
    assert order[0] == "user"
    assert order[1:] == [f"bg{i}" for i in range(5)]  # FIFO within a priority
    await bucket.aclose()


@pytest.mark.asyncio
async def test_pause_holds_everyone() -> None:
    """pause() holds every waiter until it ends."""
    bucket = TokenBucket(rate=100.0, burst=5)
    await bucket.pause(0.3)
    start = time.monotonic()
    await asyncio.gather(*(bucket.acquire() for _ in range(3)))
    assert time.monotonic() - start >= 0.29
    await bucket.aclose()


@pytest.mark.asyncio
async def test_cancelled_waiter_gives_place_back() -> None:
    """A waiter cancelled while queued takes no token: the next waiter gets it at once."""
    bucket = TokenBucket(rate=5.0, burst=1)
    await bucket.acquire()
    first = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    start = time.monotonic()
    await second
    # second was served at the first token (~0.2 s after the start), not the one after it.
    assert time.monotonic() - start < 0.3
    assert bucket.waiting == 0
    await bucket.aclose()


def test_satisfies_protocol() -> None:
    """TokenBucket implements the Limiter protocol."""
    assert isinstance(TokenBucket(), Limiter)


def test_bad_arguments() -> None:
    """A non-positive rate or burst is refused with a clear message."""
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(burst=0)


@pytest.mark.asyncio
async def test_close_fails_queued_callers() -> None:
    """Closing the bucket fails every queued caller with ClientClosedError instead of hanging."""
    bucket = TokenBucket(rate=0.1, burst=1)
    await bucket.acquire()
    waiters = [asyncio.create_task(bucket.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    await bucket.aclose()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 1.0)
    assert all(isinstance(r, ClientClosedError) for r in results)
