"""RedisTokenBucket when Redis goes away: ride out, fall back, recover, fail closed, cleanup first.

Every test runs a real ``redis-server`` of its own and stops or restarts it; the clients talk to
the emulator over real sockets. The multi-process runs (``uvicorn --workers 4``) are in
``tests/test_fastapi_example.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import time
import uuid

import pytest

from runcomfy_async import (
    LimiterHealth,
    Priority,
    RedisTokenBucket,
    SharedLimitState,
    TransportError,
)
from runcomfy_async.testing import Emulator
from tests._services import RedisServer, redis_server_fixture  # noqa: F401 (registers redis_server)


def _key() -> str:
    """A bucket key of the test's own."""
    return f"runcomfy:ratelimit:test-{uuid.uuid4().hex}"


async def _restart(server: RedisServer, *, down_for: float) -> None:
    """Stop the server, keep it down ``down_for`` seconds, start it again (off the loop)."""
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(down_for)
    await asyncio.to_thread(server.start)


def _state(bucket: RedisTokenBucket) -> SharedLimitState:
    """The bucket's state now (a call, so a type checker does not keep an earlier narrowing)."""
    return bucket.state


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """The limiter's log lines at exactly ``level``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and "shared rate limiter" in r.getMessage()
    ]


@pytest.mark.asyncio
async def test_restart_shorter_than_retry_for_is_only_delay(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """8 callers x 6 status calls with Redis restarted (down 1 s): all 48 succeed, no fallback."""
    caplog.set_level(logging.INFO, logger="runcomfy_async")
    bucket = RedisTokenBucket(redis_server.url, key=_key(), rate=8.0, burst=2)
    async with Emulator(rate_limit=10.0, burst=3, speed=1000.0) as emu:
        async with emu.client(limiter=bucket) as rc:
            dataset = await rc.datasets.create("dogs")

            async def caller() -> int:
                for _ in range(6):
                    await dataset.status()
                return 6

            callers = [asyncio.create_task(caller()) for _ in range(8)]
            await asyncio.sleep(0.5)
            await _restart(redis_server, down_for=1.0)
            done = await asyncio.gather(*callers)
        assert [r.status for r in emu.log if r.status == 429] == []
    assert sum(done) == 48
    assert bucket.state is SharedLimitState.SHARED
    assert _messages(caplog, logging.WARNING) == []  # never fell back
    await bucket.aclose()


@pytest.mark.asyncio
async def test_outage_falls_back_to_the_local_share_then_recovers_within_a_second(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Past retry_for: grants at fallback_rate, one warning; Redis back: shared within 1 s."""
    caplog.set_level(logging.INFO, logger="runcomfy_async")
    key = _key()
    bucket = RedisTokenBucket(
        redis_server.url, key=key, rate=100.0, burst=1, retry_for=0.3, fallback_rate=10.0
    )
    await bucket.acquire()
    await asyncio.to_thread(redis_server.stop)
    start = time.monotonic()
    grants = []
    for _ in range(12):
        await bucket.acquire()
        grants.append(time.monotonic() - start)
    assert bucket.state is SharedLimitState.FALLBACK
    assert grants[0] >= 0.3  # held for retry_for first
    spacing = [b - a for a, b in itertools.pairwise(grants)]
    assert min(spacing) >= 0.1 - 0.01  # 10/s, no burst
    (warning,) = _messages(caplog, logging.WARNING)
    assert "10 requests/s" in warning
    assert "unavailable" in warning

    await asyncio.to_thread(redis_server.start)
    back = time.monotonic()
    while _state(bucket) is not SharedLimitState.SHARED:
        await bucket.acquire()
    assert time.monotonic() - back < 1.0
    assert any("answers again" in m for m in _messages(caplog, logging.INFO))
    # The shared bucket is what grants now: its key is in the restarted server.
    burst_start = time.monotonic()
    for _ in range(10):
        await bucket.acquire()
    assert time.monotonic() - burst_start < 0.5  # 100/s again, not 10/s
    health = await bucket.health()
    assert (health.state, health.redis_reachable, health.ready) == (
        SharedLimitState.SHARED,
        True,
        True,
    )
    await bucket.aclose()


@pytest.mark.asyncio
async def test_pause_is_honoured_through_the_fallback(redis_server: RedisServer) -> None:
    """A 429 pause set while Redis answered still holds the fallback bucket after Redis dies."""
    bucket = RedisTokenBucket(
        redis_server.url, key=_key(), rate=100.0, burst=1, retry_for=0.1, fallback_rate=50.0
    )
    await bucket.pause(1.0)
    start = time.monotonic()
    await asyncio.to_thread(redis_server.stop)
    await bucket.acquire()
    assert bucket.state is SharedLimitState.FALLBACK
    assert time.monotonic() - start >= 0.9
    await bucket.aclose()


@pytest.mark.asyncio
async def test_fail_closed_raises_then_recovers(redis_server: RedisServer) -> None:
    """on_unavailable='raise': TransportError after retry_for, fast while down; fine once back."""
    bucket = RedisTokenBucket(redis_server.url, key=_key(), on_unavailable="raise", retry_for=0.3)
    await bucket.acquire()
    await asyncio.to_thread(redis_server.stop)
    with pytest.raises(TransportError, match="could not reach Redis"):
        await asyncio.wait_for(bucket.acquire(), 5)
    start = time.monotonic()
    with pytest.raises(TransportError):
        await bucket.acquire()
    assert time.monotonic() - start < 0.5  # no second hold while it is known down
    health = await bucket.health()
    assert (health.state, health.ready, health.redis_reachable) == (
        SharedLimitState.UNAVAILABLE,
        False,
        False,
    )
    assert health.last_error is not None
    await asyncio.to_thread(redis_server.start)
    await asyncio.wait_for(bucket.acquire(), 5)
    assert bucket.state is SharedLimitState.SHARED
    await bucket.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("on_unavailable", ["fallback", "raise"])
async def test_cleanup_never_waits_on_redis(
    redis_server: RedisServer, on_unavailable: str
) -> None:
    """With Redis down, a CLEANUP caller is granted at once while a USER caller is still held."""
    bucket = RedisTokenBucket(
        redis_server.url,
        key=_key(),
        retry_for=30.0,
        on_unavailable="raise" if on_unavailable == "raise" else "fallback",
    )
    await asyncio.to_thread(redis_server.stop)
    user = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.2)  # the user's call is being held (riding out)
    start = time.monotonic()
    await asyncio.wait_for(bucket.acquire(Priority.CLEANUP), 2)
    assert time.monotonic() - start < 0.5
    assert not user.done()
    assert bucket.state is SharedLimitState.RIDING_OUT
    await asyncio.to_thread(redis_server.start)
    await asyncio.wait_for(user, 5)  # Redis back within retry_for: the user never noticed
    await bucket.aclose()


@pytest.mark.asyncio
async def test_machine_exit_during_outage_stops_it(redis_server: RedisServer) -> None:
    """Leaving `async with machine` while Redis is down sends the stop at once; billing ends."""
    bucket = RedisTokenBucket(redis_server.url, key=_key(), rate=10.0, retry_for=30.0)
    async with Emulator(rate_limit=10.0, speed=1000.0) as emu, emu.client(limiter=bucket) as rc:
        version = (await rc.machines.workflows())[0].version_id
        assert version is not None
        machine = await rc.machines.launch(version)
        async with machine:
            await machine
            await asyncio.to_thread(redis_server.stop)
            start = time.monotonic()
        assert time.monotonic() - start < 2.0
        assert machine.main_service_url is None
        stops = [r for r in emu.log if r.method == "DELETE" and r.api == "server"]
        assert [r.status for r in stops] == [200]
    await bucket.aclose()


@pytest.mark.asyncio
async def test_password_in_the_url_is_masked_everywhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A password-protected server works from its URL; no repr, log line or health names it."""
    binary = shutil.which("redis-server")
    assert binary is not None  # the redis_server fixture of the other tests checks CI
    server = RedisServer(binary, password="hunter2-s3cret")
    server.start()
    caplog.set_level(logging.DEBUG, logger="runcomfy_async")
    try:
        bucket = RedisTokenBucket(server.url, key=_key(), retry_for=0.1, fallback_rate=50.0)
        await bucket.acquire()
        server.stop()
        await bucket.acquire()  # through the fallback
        health: LimiterHealth = await bucket.health()
        texts = [repr(bucket), repr(health), *(r.getMessage() for r in caplog.records)]
        assert "***@127.0.0.1" in repr(bucket)
        assert not [t for t in texts if "hunter2" in t]
        await bucket.aclose()
    finally:
        server.stop()
