"""RedisTokenBucket against a real redis-server: shared rate, shared pause, dying processes."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio

from runcomfy_async import ClientClosedError, ConfigurationError, Limiter, Priority, TransportError
from runcomfy_async._redis_limiter import RedisTokenBucket
from runcomfy_async._schedule import Claim, RunTimes, claiming
from runcomfy_async.testing import Emulator
from tests._services import free_port, redis_url_fixture  # noqa: F401 (registers redis_url)

# A separate OS process: acquires ``count`` tokens (forever when 0) and prints the Redis server
# time of each grant, one per line, as microseconds.
_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import redis.asyncio as redis_asyncio
    from runcomfy_async._redis_limiter import RedisTokenBucket

    async def main(url, key, rate, burst, count):
        client = redis_asyncio.Redis.from_url(url)
        bucket = RedisTokenBucket(client, key=key, rate=rate, burst=burst)
        done = 0
        while count == 0 or done < count:
            await bucket.acquire()
            sec, usec = await client.time()
            print(sec * 1_000_000 + usec, flush=True)
            done += 1
        await bucket.aclose()
        await client.aclose()

    url, key, rate, burst, count = sys.argv[1:]
    asyncio.run(main(url, key, float(rate), int(burst), int(count)))
    """
)


async def _spawn(
    url: str, key: str, *, rate: float, burst: int, count: int
) -> asyncio.subprocess.Process:
    """Start one worker process acquiring from the bucket at ``key``."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WORKER,
        url,
        key,
        str(rate),
        str(burst),
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )


async def _grants(
    process: asyncio.subprocess.Process, *, until: float | None = None
) -> list[float]:
    """Grant times (Redis clock, seconds) a worker printed, to its end or until ``until``."""
    assert process.stdout is not None
    times: list[float] = []
    while until is None or time.monotonic() < until:
        try:
            line = await asyncio.wait_for(
                process.stdout.readline(), None if until is None else until - time.monotonic()
            )
        except TimeoutError:
            break
        if not line:
            break
        times.append(int(line) / 1_000_000)
    return times


async def _redis_now(client: redis_asyncio.Redis) -> float:
    """The Redis server's clock in seconds."""
    sec, usec = await client.time()
    return sec + usec / 1_000_000


def _max_in_window(times: list[float], window: float) -> int:
    """The most grants in any interval of ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    """A client on the test server, closed after the test."""
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def key() -> str:
    """A bucket key of its own for each test."""
    return f"runcomfy:ratelimit:test-{uuid.uuid4().hex}"


@pytest.mark.asyncio
async def test_three_processes_share_rate_and_burst(redis_url: str, key: str) -> None:
    """Three OS processes together get no more than burst + rate * t grants by Redis time."""
    rate, burst, per_process = 20.0, 3, 15
    workers = [
        await _spawn(redis_url, key, rate=rate, burst=burst, count=per_process) for _ in range(3)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(_grants(w) for w in workers)), 30)
    for worker in workers:
        assert await worker.wait() == 0
    times = sorted(t for grants in results for t in grants)
    assert len(times) == 3 * per_process
    # Every interval [times[i], times[j]] holds at most burst + rate * length grants; the
    # 5 ms slack covers the read of TIME after each grant.
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i] + 0.005), (i, j)
    # ...and the bucket was not needlessly slow: close to (n - burst) / rate overall.
    assert times[-1] - times[0] < (len(times) - burst) / rate + 1.0


@pytest.mark.asyncio
async def test_pause_holds_every_process(
    redis_url: str, key: str, redis_client: redis_asyncio.Redis
) -> None:
    """A pause set by one process holds another process's first grant until it ends."""
    here = RedisTokenBucket(redis_client, key=key, rate=10.0, burst=3)
    paused_at = await _redis_now(redis_client)
    await here.pause(2.0)
    worker = await _spawn(redis_url, key, rate=10.0, burst=3, count=1)
    (granted,) = await asyncio.wait_for(_grants(worker), 10)
    assert await worker.wait() == 0
    assert paused_at + 2.0 <= granted < paused_at + 2.6
    await here.aclose()


@pytest.mark.asyncio
async def test_shorter_pause_does_not_shorten_a_longer_one(
    key: str, redis_client: redis_asyncio.Redis
) -> None:
    """pause(0.1) after pause(1.0) keeps the longer pause, and one token is ready at its end."""
    bucket = RedisTokenBucket(redis_client, key=key, rate=50.0, burst=5)
    start = time.monotonic()
    await bucket.pause(1.0)
    await bucket.pause(0.1)
    await bucket.acquire()
    first = time.monotonic() - start
    await bucket.acquire()
    second = time.monotonic() - start
    assert 0.95 <= first < 1.3
    # A pause leaves one token at its end, not a full burst: the second comes one refill later
    # (measured from the pause's end: a late first grant lets tokens accrue meanwhile).
    assert second >= 1.0 + 1 / 50.0 - 0.005
    await bucket.aclose()


@pytest.mark.asyncio
async def test_killed_process_does_not_wedge_the_others(redis_url: str, key: str) -> None:
    """SIGKILL of a process mid-acquire: the survivor soon gets the whole rate."""
    rate = 10.0
    doomed = await _spawn(redis_url, key, rate=rate, burst=1, count=0)
    survivor = await _spawn(redis_url, key, rate=rate, burst=1, count=0)
    assert doomed.stdout is not None
    await asyncio.wait_for(doomed.stdout.readline(), 10)  # it is running and acquiring
    kill_at = time.monotonic() + 1.0
    before = await _grants(survivor, until=kill_at)
    doomed.send_signal(signal.SIGKILL)
    await doomed.wait()
    after_kill = await _grants(survivor, until=time.monotonic() + 2.0)
    survivor.kill()
    await survivor.wait()
    assert before, "the survivor got no token while sharing"
    # In two seconds alone, the survivor gets ~rate * 2 tokens (one may be the dead one's).
    assert len(after_kill) >= rate * 2 * 0.8


@pytest.mark.asyncio
async def test_cancelled_waiter_gives_place_back(
    key: str, redis_client: redis_asyncio.Redis
) -> None:
    """A waiter cancelled while queued takes no token: the next waiter gets it at once."""
    bucket = RedisTokenBucket(redis_client, key=key, rate=5.0, burst=1)
    await bucket.acquire()
    start = time.monotonic()
    first = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    # second was served at the first token (~0.2 s after the start), not the one after it.
    assert time.monotonic() - start < 0.3
    assert bucket.waiting == 0
    await bucket.aclose()


@pytest.mark.asyncio
async def test_user_priority_overtakes_background(
    key: str, redis_client: redis_asyncio.Redis
) -> None:
    """A USER waiter queued behind BACKGROUND waiters is served first; FIFO within a priority."""
    bucket = RedisTokenBucket(redis_client, key=key, rate=50.0, burst=1)
    await bucket.acquire()
    order: list[str] = []

    async def take(label: str, priority: Priority) -> None:
        await bucket.acquire(priority)
        order.append(label)

    tasks = [asyncio.create_task(take(f"bg{i}", Priority.BACKGROUND)) for i in range(4)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(take("user", Priority.USER)))
    await asyncio.gather(*tasks)
    assert order == ["user", "bg0", "bg1", "bg2", "bg3"]
    await bucket.aclose()


@pytest.mark.asyncio
async def test_latency_order_holds_within_each_process(
    key: str, redis_client: redis_asyncio.Redis
) -> None:
    """The process's queue serves a run's result fetch and its due poll ahead of its queued
    submits (oldest run first), as TokenBucket does; ``order="arrival"`` keeps the old order."""
    for order, expected in (
        ("latency", ["result", "poll", "u0", "u1"]),
        ("arrival", ["u0", "u1", "result", "poll"]),
    ):
        bucket = RedisTokenBucket(redis_client, key=f"{key}-{order}", rate=50.0, burst=1,
                                  order=order)  # type: ignore[arg-type]
        book = RunTimes()
        now = asyncio.get_running_loop().time()
        book.close(book.open("m", now - 1.0), 0.5)  # runs of "m" take 0.5 s
        older, old = book.open("m", now - 2.0), book.open("m", now - 1.0)
        await bucket.acquire()
        seen: list[str] = []

        async def take(label: str, priority: Priority, claim: Claim | None = None) -> None:
            with claiming(claim):
                await bucket.acquire(priority)  # noqa: B023 - awaited within the iteration
            seen.append(label)  # noqa: B023

        tasks = [asyncio.create_task(take(f"u{i}", Priority.USER)) for i in range(2)]
        tasks.append(asyncio.create_task(take("poll", Priority.BACKGROUND, old)))
        tasks.append(asyncio.create_task(take("result", Priority.FOLLOW_UP, older)))
        await asyncio.gather(*tasks)
        assert seen == expected, order
        await bucket.aclose()


@pytest.mark.asyncio
async def test_key_expires_when_idle(key: str, redis_client: redis_asyncio.Redis) -> None:
    """The bucket's key carries an expiry: about a full refill, or the pause when longer."""
    bucket = RedisTokenBucket(redis_client, key=key, rate=2.0, burst=2)
    await bucket.acquire()
    assert 0 < await redis_client.pttl(key) <= 2_000
    await bucket.pause(30.0)
    assert 30_000 < await redis_client.pttl(key) <= 32_000
    await bucket.aclose()


@pytest.mark.asyncio
async def test_borrowed_client_stays_open_owned_one_closes(
    redis_url: str, key: str, redis_client: redis_asyncio.Redis
) -> None:
    """aclose() leaves a borrowed client usable; a bucket made from a URL refuses further use."""
    borrowed = RedisTokenBucket(redis_client, key=key)
    await borrowed.acquire()
    await borrowed.aclose()
    assert await redis_client.ping()
    owned = RedisTokenBucket(redis_url, key=key)
    await owned.acquire()
    await owned.aclose()
    await owned.aclose()  # idempotent
    with pytest.raises(ClientClosedError):
        await owned.acquire()


@pytest.mark.asyncio
async def test_unreachable_redis_is_a_transport_error(key: str) -> None:
    """Failing closed, with no server at the URL acquire() raises TransportError after retry_for."""
    bucket = RedisTokenBucket(
        f"redis://admin:secret@127.0.0.1:{free_port()}/0",
        key=key,
        on_unavailable="raise",
        retry_for=0.3,
    )
    start = time.monotonic()
    with pytest.raises(
        TransportError, match=r"could not reach Redis at redis://\*\*\*@127\.0\.0\.1"
    ) as info:
        await asyncio.wait_for(bucket.acquire(), 10)
    assert 0.3 <= time.monotonic() - start < 2.0
    assert "secret" not in str(info.value)
    assert "admin" not in str(info.value)
    assert "secret" not in repr(bucket)
    assert "admin" not in repr(bucket)
    await bucket.aclose()


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the redis package the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'runcomfy-async\[redis\]'"):
        RedisTokenBucket("redis://127.0.0.1:6379/0")


def test_bad_arguments_and_protocol() -> None:
    """Bad rate, burst or key are refused; the bucket implements Limiter."""
    with pytest.raises(ValueError, match="rate"):
        RedisTokenBucket("redis://127.0.0.1:6379/0", rate=0)
    with pytest.raises(ValueError, match="burst"):
        RedisTokenBucket("redis://127.0.0.1:6379/0", burst=0)
    with pytest.raises(ValueError, match="key"):
        RedisTokenBucket("redis://127.0.0.1:6379/0", key="")
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        RedisTokenBucket("http://127.0.0.1:6379/0")
    assert isinstance(RedisTokenBucket("redis://127.0.0.1:6379/0"), Limiter)


@pytest.mark.asyncio
async def test_two_clients_share_the_emulator_limit_and_its_pause(
    redis_client: redis_asyncio.Redis, key: str
) -> None:
    """Two clients with their own buckets on one key: no 429 from pace, and a 429 pauses both."""
    async with Emulator(rate_limit=5.0, burst=3, speed=1000.0) as emu:
        buckets = [RedisTokenBucket(redis_client, key=key, rate=5.0, burst=2) for _ in range(2)]
        async with emu.client(limiter=buckets[0]) as a, emu.client(limiter=buckets[1]) as b:
            await asyncio.gather(*(rc.datasets.list() for rc in (a, b) for _ in range(8)))
            assert [r.status for r in emu.log if r.status == 429] == []
            emu.inject("429", count=1, retry_after=1.0)
            await asyncio.gather(a.datasets.list(), b.datasets.list(), b.datasets.list())
        for bucket in buckets:
            await bucket.aclose()
        log = [r for r in emu.log if r.api == "trainer"]
    (rejected,) = [r for r in log if r.status == 429]
    later = [r.at - rejected.at for r in log if r.at > rejected.at]
    assert len(later) == 3
    assert min(later) >= 1.0 - 0.01  # nobody, in either client, sent during the pause
