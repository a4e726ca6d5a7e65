"""``RedisTokenBucket``: one account rate limit shared by many processes through Redis.

A FastAPI backend runs several worker processes (often on several machines) on one RunComfy
account, whose limit (1 request/s, API.md section 0) holds for all of them together. Each process
keeps the in-process semantics of :class:`~runcomfy_async.TokenBucket` (USER before BACKGROUND,
FIFO within a priority, a cancelled waiter gives its place back) in a local priority queue, and
only the waiter at the head of that queue asks Redis for a token:

- The bucket lives in one Redis hash (tokens, last refill, pause-until) updated by a Lua script,
  so taking a token is atomic across every process. The script reads the clock with ``TIME`` on
  the Redis server, so machines whose clocks disagree still share one correct bucket.
- When no token is free the script answers how long to wait; the local head sleeps that long and
  asks again. No lock is ever held across an ``await``, and nothing needs releasing: a process
  that dies mid-acquire leaves no state behind but tokens it already took.
- The hash expires once the bucket would be full again (or the pause has ended), so a quiet or
  abandoned key cleans itself up; an expired key is the same as a full bucket.
- :meth:`RedisTokenBucket.pause` (after a 429) writes a pause-until into the hash, which the
  script of every process honours.

Why not a library: ``aiolimiter`` is in-process only. ``limits`` (``limits.aio``) offers fixed
and moving windows with a non-blocking ``hit``, but no token bucket with burst, no waiting, and no
pause that every process honours. ``pyrate-limiter`` has Redis buckets and blocking acquires, but
no priority order among waiters, no cancellation that gives the place back, and no shared pause
after a 429. Each would still need this module's queue and pause around it, so the bucket itself
is one short script here, run with redis-py's ``register_script`` (EVALSHA, falling back to
loading the script when the server does not know it).

``redis`` is the optional extra: ``pip install 'runcomfy-async[redis]'``.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from . import errors
from ._limiter import Priority

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisTokenBucket"]

DEFAULT_KEY: Final = "runcomfy:ratelimit:default"

# Times are microseconds of the Redis server's clock. Numbers are stored with %.17g because
# Lua's own number-to-string conversion keeps only 14 digits (a microsecond timestamp has 16).
_PRELUDE: Final = """
local key = KEYS[1]
local per_us = tonumber(ARGV[1]) / 1000000
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function num(v) return string.format('%.17g', v) end
local function expire(paused_until)
  local quiet = math.max(paused_until - now, 0) + burst / per_us
  redis.call('PEXPIRE', key, math.ceil(quiet / 1000) + 1000)
end
"""

# ARGV: rate (tokens/s), burst. Returns 0 when a token was taken, else microseconds to wait.
_ACQUIRE_LUA: Final = (
    _PRELUDE
    + """
local state = redis.call('HMGET', key, 'tokens', 'stamp', 'paused_until')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
local paused_until = tonumber(state[3]) or 0
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
if now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) * per_us)
  stamp = now
end
local wait = 0
if now < paused_until then
  wait = paused_until - now
elseif tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / per_us
end
redis.call('HSET', key, 'tokens', num(tokens), 'stamp', num(stamp))
expire(paused_until)
return math.ceil(wait)
"""
)

# ARGV: rate, burst, seconds. Empties the bucket until now + seconds (never shortens a pause);
# the refill stamp is set so that exactly one token is ready when the pause ends.
_PAUSE_LUA: Final = (
    _PRELUDE
    + """
local until_us = now + tonumber(ARGV[3]) * 1000000
local paused_until = tonumber(redis.call('HGET', key, 'paused_until')) or 0
if until_us > paused_until then
  redis.call('HSET', key, 'tokens', '0', 'stamp', num(until_us - 1 / per_us),
             'paused_until', num(until_us))
  expire(until_us)
end
return 0
"""
)


def _import_redis() -> Any:
    """``redis.asyncio``, or an error saying which extra to install."""
    try:
        import redis.asyncio
    except ImportError as exc:
        raise errors.ConfigurationError(
            "RedisTokenBucket needs the 'redis' package; install it with "
            "pip install 'runcomfy-async[redis]'"
        ) from exc
    return redis.asyncio


def _describe(url: str) -> str:
    """Where the Redis server is, for error messages: host, port and db, never a password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisTokenBucket:
    """A token bucket kept in Redis and shared by every process that uses the same ``key``.

    Within one process, waiters are served like :class:`~runcomfy_async.TokenBucket` serves them:
    ``Priority.USER`` before ``Priority.BACKGROUND``, first come first served within a priority,
    and a cancelled waiter gives its place back. Across processes, whoever asks Redis first when
    a token is free gets it. Every process sharing a key must use the same ``rate`` and ``burst``.
    Use one instance per event loop (like the client it is passed to).

    Args:
        redis_url_or_client: a ``redis://`` / ``rediss://`` / ``unix://`` URL (the bucket then
            owns the connection pool it creates and :meth:`aclose` closes it), or a
            ``redis.asyncio.Redis`` client to borrow (never closed here).
        key: the Redis key of the bucket; one per RunComfy account.
        rate: tokens added per second (the account's requests per second).
        burst: bucket capacity: how many requests may go back to back after a quiet spell.

    Raises:
        ConfigurationError: the ``redis`` package is missing, or the URL is not a Redis URL.
        ValueError: a non-positive rate, a burst below 1, or an empty key.
    """

    def __init__(
        self,
        redis_url_or_client: str | Redis,
        *,
        key: str = DEFAULT_KEY,
        rate: float = 1.0,
        burst: int = 2,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        if not key:
            raise ValueError("key must be a non-empty Redis key, e.g. 'runcomfy:ratelimit:prod'")
        redis_asyncio = _import_redis()
        self.key = key
        self.rate = float(rate)
        self.burst = int(burst)
        if isinstance(redis_url_or_client, str):
            try:
                # Bounded waits: a Redis that stopped answering fails calls, never hangs them
                # (options in the URL's query string take precedence).
                client: Redis = redis_asyncio.Redis.from_url(
                    redis_url_or_client, socket_connect_timeout=5.0, socket_timeout=10.0
                )
            except ValueError as exc:
                raise errors.ConfigurationError(
                    f"not a Redis URL: {_describe(redis_url_or_client)!r}; use e.g. "
                    "'redis://localhost:6379/0'"
                ) from exc
            self._where = _describe(redis_url_or_client)
            self._owns_client = True
        else:
            client = redis_url_or_client
            self._where = "the given Redis client"
            self._owns_client = False
        self._redis = client
        self._redis_error: type[Exception] = redis_asyncio.RedisError
        self._acquire_script: AsyncScript = client.register_script(_ACQUIRE_LUA)
        self._pause_script: AsyncScript = client.register_script(_PAUSE_LUA)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._driver: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"RedisTokenBucket(key={self.key!r}, rate={self.rate}, burst={self.burst}, "
            f"waiting={self.waiting})"
        )

    @property
    def waiting(self) -> int:
        """How many callers in this process are queued for a token."""
        return sum(1 for *_, fut in self._waiters if not fut.done())

    async def acquire(self, priority: Priority = Priority.USER) -> None:
        """Wait until the shared bucket grants this process one request.

        Args:
            priority: ``Priority.USER`` callers are served before ``Priority.BACKGROUND`` ones
                queued in this process.

        Raises:
            TransportError: Redis could not be reached (the caller's request is not sent).
            ClientClosedError: the limiter was closed while the caller waited.
        """
        if self._closed:
            raise errors.ClientClosedError("this RedisTokenBucket is closed; create a new one")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._seq), fut))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive(), name=f"RedisTokenBucket({self.key})")
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted, but the caller is gone: the token goes to the next waiter here.
                self._grant_next()
            raise

    async def pause(self, seconds: float) -> None:
        """Hold every process sharing this bucket for ``seconds`` (the server answered 429).

        A longer pause already in force is kept; one token is ready when the pause ends.

        Raises:
            TransportError: Redis could not be reached.
        """
        try:
            await self._pause_script(
                keys=[self.key], args=[self.rate, self.burst, max(0.0, float(seconds))]
            )
        except self._redis_error as exc:
            raise self._unreachable(exc) from exc

    async def aclose(self) -> None:
        """Stop asking Redis, fail queued callers, and close the client if this bucket made it.

        A borrowed client stays open. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        driver, self._driver = self._driver, None
        if driver is not None and not driver.done():
            driver.cancel()
            await asyncio.wait([driver])
        self._fail_all(lambda: errors.ClientClosedError("the RedisTokenBucket was closed"))
        if self._owns_client:
            await self._redis.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _drive(self) -> None:
        """Ask Redis on behalf of the head of the local queue until the queue is empty."""
        try:
            while self._has_waiters():
                try:
                    wait_us = await self._acquire_script(
                        keys=[self.key], args=[self.rate, self.burst]
                    )
                except self._redis_error as exc:
                    self._fail_all(functools.partial(self._unreachable, exc))
                    return
                if int(wait_us) <= 0:
                    self._grant_next()
                else:
                    await asyncio.sleep(int(wait_us) / 1_000_000)
        except BaseException:
            # cleanup that re-raises (aclose's cancellation, or a bug): nobody may wait forever
            self._fail_all(lambda: errors.ClientClosedError("the RedisTokenBucket stopped"))
            raise

    def _has_waiters(self) -> bool:
        """Drop cancelled waiters from the top of the queue; is anyone still waiting?"""
        while self._waiters and self._waiters[0][2].done():
            heapq.heappop(self._waiters)
        return bool(self._waiters)

    def _grant_next(self) -> None:
        """Give one token to the best waiter; with nobody left, it is dropped (the safe side)."""
        if self._has_waiters():
            _, _, fut = heapq.heappop(self._waiters)
            fut.set_result(None)

    def _fail_all(self, error: Callable[[], Exception]) -> None:
        """Wake every queued caller with its own instance of ``error()``."""
        waiters, self._waiters = self._waiters, []
        for _, _, fut in waiters:
            if not fut.done():
                fut.set_exception(error())

    def _unreachable(self, exc: Exception) -> errors.TransportError:
        """The error a caller sees when Redis fails: where, and what to check."""
        error = errors.TransportError(
            f"the shared rate limiter could not reach Redis at {self._where} "
            f"({type(exc).__name__}: {exc}); check that the server runs and the URL is right"
        )
        error.__cause__ = exc
        return error
