"""``RedisTokenBucket``: one account rate limit shared by many processes through Redis.

A FastAPI backend runs several worker processes (often on several machines) on one RunComfy
account, whose limit (1 request/s, docs/wire.md) holds for all of them together. Each process
keeps the in-process semantics of :class:`~runcomfy_async.TokenBucket` (its latency order or
arrival order, a cancelled waiter gives its place back) in a local queue, and only the best waiter
of that queue asks Redis for a token (the order is per process: across processes, whichever asks
first when a token is free gets it):

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

When Redis goes away (a restart, a failover, a maintenance window) the bucket degrades instead
of failing its callers:

1. **Ride out.** Callers are held and Redis is asked again with jittered backoff for
   ``retry_for`` seconds (5 by default). A restart shorter than that shows only as delay.
2. **Fall back.** Past that bound the process serves its queue from a local bucket at
   ``fallback_rate`` (``rate / workers`` by default: this process's share of the account), honouring
   the last shared pause it knew of, and logs one warning. Redis is probed every
   ``probe_interval`` seconds while callers wait; when it answers the shared bucket is in force
   again (one info line) and a pause still running locally is written back to it.
   With ``on_unavailable="raise"`` the callers get ``TransportError`` instead (fail closed).
3. **Cleanup never waits on Redis.** ``Priority.CLEANUP`` callers (a machine's stop, the cancel of
   an abandoned request) take a slot of the local bucket at once while Redis is known to be
   unavailable, in either mode: a stop that failed would keep a machine billing.

``redis`` is the optional extra: ``pip install 'runcomfy-async[redis]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

import attrs

from . import errors
from ._schedule import Order, Priority, WaitQueue

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["LimiterHealth", "RedisTokenBucket", "SharedLimitState"]

logger = logging.getLogger("runcomfy_async")

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

# ARGV: rate (tokens/s), burst. Returns {0, 0} when a token was taken, else {microseconds to
# wait, 1 when the wait is a pause set after a 429 (else 0)}.
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
local paused = 0
if now < paused_until then
  wait = paused_until - now
  paused = 1
elseif tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / per_us
end
redis.call('HSET', key, 'tokens', num(tokens), 'stamp', num(stamp))
expire(paused_until)
return {math.ceil(wait), paused}
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


# How long one Redis command may take before it counts as Redis being unavailable, and how long a
# probe (PING) may take. Short: a local Redis answers in well under a millisecond.
_CALL_TIMEOUT: Final = 2.0
_PROBE_TIMEOUT: Final = 1.0
# Backoff between Redis attempts while riding out a failure: full jitter, capped.
_BACKOFF_BASE: Final = 0.05
_BACKOFF_CAP: Final = 0.5


class SharedLimitState(enum.Enum):
    """Where a :class:`RedisTokenBucket` takes its tokens from right now."""

    #: Redis answers: every process shares the one account limit.
    SHARED = "shared"
    #: Redis failed moments ago: callers are held while it is asked again (``retry_for``).
    RIDING_OUT = "riding_out"
    #: Redis has been unavailable longer than ``retry_for``: this process serves its callers
    #: from a local bucket at its ``fallback_rate`` until Redis answers again.
    FALLBACK = "fallback"
    #: As FALLBACK, but ``on_unavailable="raise"``: calls fail with ``TransportError``
    #: (cleanup calls still go out through the local bucket).
    UNAVAILABLE = "unavailable"


@attrs.frozen(kw_only=True)
class LimiterHealth:
    """A snapshot of a :class:`RedisTokenBucket` for a readiness probe or a status page.

    Attributes:
        state: where tokens come from right now.
        redis_reachable: whether Redis answered a PING just now.
        ready: whether calls through this limiter go out (False only while failing closed).
        down_for: seconds since Redis first failed in the current outage; None while it answers.
        last_error: the last Redis error (type and message, credentials masked), if any.
        where: where Redis is (scheme, host, port, db; credentials masked).
    """

    state: SharedLimitState
    redis_reachable: bool
    ready: bool
    down_for: float | None
    last_error: str | None
    where: str


def _import_redis() -> Any:
    """``redis.asyncio``, or an error saying which extra to install."""
    try:
        import redis.asyncio
    except ImportError as exc:
        raise errors.ConfigurationError(
            "RedisTokenBucket needs the 'redis' package; install it with "
            "pip install 'runcomfy-async[redis]' (or pip install -e '.[redis]' in a checkout)"
        ) from exc
    return redis.asyncio


def _describe(url: str) -> str:
    """Where the Redis server is, for reprs and messages: credentials replaced by ``***``."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    credentials = "***@" if parts.username or parts.password else ""
    return f"{parts.scheme}://{credentials}{host}{port}{parts.path}"


class _LocalShare:
    """The fallback bucket: slots ``1 / rate`` apart, no burst, honouring the last pause.

    It hands out reservations (the time of the caller's slot), so a cleanup call takes the next
    slot at once without a queue of its own.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._paused_until = 0.0

    def start(self, now: float) -> None:
        """Begin a fallback spell: the first slot at a random phase within one interval.

        Processes that lost Redis at the same moment would otherwise all send at once.
        """
        self._next = max(self._next, now + random.uniform(0.0, self.interval))

    def pause_until(self, until: float) -> None:
        """Hold slots until ``until`` (monotonic seconds); a longer pause is kept."""
        self._paused_until = max(self._paused_until, until)

    def wait(self, now: float) -> float:
        """Seconds until the next slot is free (0 when it is)."""
        return max(self._next, self._paused_until, now) - now

    def reserve(self, now: float) -> float:
        """Take the next slot; seconds until it is due."""
        slot = max(self._next, self._paused_until, now)
        self._next = slot + self.interval
        return slot - now


class RedisTokenBucket:
    """A token bucket kept in Redis and shared by every process that uses the same ``key``.

    Within one process, waiters are served like :class:`~runcomfy_async.TokenBucket` serves them
    (``order``), and a cancelled waiter gives its place back. Across processes, whoever asks
    Redis first when a token is free gets it: each process puts its own answers first, none
    can put its calls ahead of another process's. Every process sharing a key must use
    the same ``rate`` and ``burst``. Use one instance per event loop (like the client it is
    passed to).

    When Redis is unavailable the bucket first holds its callers and retries for ``retry_for``
    seconds, then falls back to a local bucket at ``fallback_rate`` (or raises, with
    ``on_unavailable="raise"``), and returns to the shared bucket as soon as Redis answers.
    Cleanup calls never wait on Redis. See ``docs/reliability.md``.

    Args:
        redis_url_or_client: a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, with a
            password or ACL user and password if needed (``redis://user:pass@host:6379/0``;
            they are masked in every repr and message); the bucket then owns the connection
            pool it creates and :meth:`aclose` closes it. Or a ``redis.asyncio.Redis`` client to
            borrow (never closed here), e.g. ``Sentinel(...).master_for("mymaster")``, or a
            ``redis.asyncio.RedisCluster``.
        key: the Redis key of the bucket; one per RunComfy account.
        rate: tokens added per second (the account's requests per second).
        burst: bucket capacity: how many requests may go back to back after a quiet spell.
        on_unavailable: ``"fallback"`` (fail open, the default) serves callers from a local
            bucket once Redis has been unavailable for ``retry_for`` seconds; ``"raise"`` (fail
            closed) fails them with ``TransportError`` instead.
        retry_for: seconds to hold callers and retry Redis before falling back or raising.
        workers: how many processes share the key; sets the default ``fallback_rate``.
        fallback_rate: this process's requests per second while Redis is unavailable;
            ``rate / workers`` by default, so all processes together stay within the account's
            limit (if ``workers`` is right).
        probe_interval: seconds between PINGs to Redis while falling back.
        order: how this process's queued callers are ordered: ``"latency"`` (calls that
            complete an answer first, new work never starved) or ``"arrival"`` (priority, then
            arrival order).

    Raises:
        ConfigurationError: the ``redis`` package is missing, or the URL is not a Redis URL.
        ValueError: a non-positive rate, a burst below 1, an empty key, or a bad fallback setting.
    """

    def __init__(
        self,
        redis_url_or_client: str | Redis,
        *,
        key: str = DEFAULT_KEY,
        rate: float = 1.0,
        burst: int = 2,
        on_unavailable: Literal["fallback", "raise"] = "fallback",
        retry_for: float = 5.0,
        workers: int = 4,
        fallback_rate: float | None = None,
        probe_interval: float = 0.5,
        order: Order = "latency",
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        if not key:
            raise ValueError("key must be a non-empty Redis key, e.g. 'runcomfy:ratelimit:prod'")
        if on_unavailable not in ("fallback", "raise"):
            raise ValueError(
                f"on_unavailable must be 'fallback' or 'raise', got {on_unavailable!r}"
            )
        if retry_for < 0 or probe_interval <= 0:
            raise ValueError("retry_for must be >= 0 and probe_interval > 0 seconds")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        if fallback_rate is not None and fallback_rate <= 0:
            raise ValueError(f"fallback_rate must be > 0 requests/s, got {fallback_rate!r}")
        redis_asyncio = _import_redis()
        self.key = key
        self.rate = float(rate)
        self.burst = int(burst)
        self.on_unavailable = on_unavailable
        self.retry_for = float(retry_for)
        self.fallback_rate = float(fallback_rate) if fallback_rate else self.rate / workers
        self.probe_interval = float(probe_interval)
        self._secrets: tuple[str, ...] = ()
        if isinstance(redis_url_or_client, str):
            parts = urlsplit(redis_url_or_client)
            self._secrets = tuple(s for s in (parts.password, parts.username) if s)
            try:
                # Bounded waits: a Redis that stopped answering fails calls, never hangs them
                # (options in the URL's query string take precedence).
                client: Redis = redis_asyncio.Redis.from_url(
                    redis_url_or_client, socket_connect_timeout=2.0, socket_timeout=5.0
                )
            except ValueError as exc:
                raise errors.ConfigurationError(
                    f"not a Redis URL: {_describe(redis_url_or_client)!r}; use e.g. "
                    "'redis://localhost:6379/0' or 'rediss://user:password@host:6380/0'"
                ) from None if self._secrets else exc
            self._where = _describe(redis_url_or_client)
            self._owns_client = True
        else:
            client = redis_url_or_client
            self._where = "the given Redis client"
            self._owns_client = False
        self._redis = client
        self._unavailable_errors: tuple[type[Exception], ...] = (
            redis_asyncio.RedisError,
            OSError,
            TimeoutError,
        )
        self._acquire_script: AsyncScript = client.register_script(_ACQUIRE_LUA)
        self._pause_script: AsyncScript = client.register_script(_PAUSE_LUA)
        self._queue = WaitQueue(order)
        self._driver: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._state = SharedLimitState.SHARED
        self._down_since: float | None = None
        self._attempt = 0
        self._last_error: str | None = None
        self._paused_until = 0.0  # monotonic; the last shared pause this process knows of
        self._local = _LocalShare(self.fallback_rate)
        self._next_probe = 0.0

    def __repr__(self) -> str:
        return (
            f"RedisTokenBucket({self._where!r}, key={self.key!r}, rate={self.rate}, "
            f"burst={self.burst}, state={self._state.value}, waiting={self.waiting})"
        )

    @property
    def waiting(self) -> int:
        """How many callers in this process are queued for a token."""
        return len(self._queue)

    @property
    def state(self) -> SharedLimitState:
        """Where tokens come from right now (without asking Redis; see :meth:`health`)."""
        return self._state

    async def acquire(self, priority: Priority = Priority.USER) -> None:
        """Wait until the shared bucket (or, with Redis unavailable, the fallback) grants a request.

        Args:
            priority: who asks (ranked among the callers queued in this process);
                ``Priority.CLEANUP`` never waits on an unavailable Redis.

        Raises:
            TransportError: Redis was unavailable for longer than ``retry_for`` and
                ``on_unavailable="raise"`` (the caller's request is not sent).
            ClientClosedError: the limiter was closed while the caller waited.
        """
        if self._closed:
            raise errors.ClientClosedError("this RedisTokenBucket is closed; create a new one")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        queued = not (priority <= Priority.CLEANUP and self._down_since is not None)
        if queued:
            self._queue.push(priority, fut)
            if self._driver is None or self._driver.done():
                self._driver = loop.create_task(self._drive(), name=f"RedisTokenBucket({self.key})")
        else:
            self._grant_locally(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if queued and fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted, but the caller is gone: the token goes to the next waiter here.
                self._grant_next()
            raise

    async def pause(self, seconds: float) -> None:
        """Hold every process sharing this bucket for ``seconds`` (the server answered 429).

        A longer pause already in force is kept; one token is ready when the pause ends. The
        pause is also kept locally, so it holds through a fallback spell, and is written back to
        Redis when Redis answers again.

        Raises:
            TransportError: Redis could not be reached and ``on_unavailable="raise"``.
        """
        seconds = max(0.0, float(seconds))
        self._note_pause(time.monotonic() + seconds)
        if self._state is SharedLimitState.FALLBACK:
            return  # Redis is known to be away; the pause is written back on recovery
        try:
            await asyncio.wait_for(
                self._pause_script(keys=[self.key], args=[self.rate, self.burst, seconds]),
                _CALL_TIMEOUT,
            )
        except self._unavailable_errors as exc:
            self._last_error = self._scrub(f"{type(exc).__name__}: {exc}")
            if self.on_unavailable == "raise":
                raise self._unreachable(exc) from None
            logger.debug("shared rate limiter: pause kept locally, Redis failed (%s)", exc)

    async def health(self) -> LimiterHealth:
        """PING Redis (at most 1 s) and report where tokens come from; never raises.

        Meant for a readiness probe: ``ready`` is False only while failing closed. A PING that
        succeeds during a fallback spell switches back to the shared bucket at once.
        """
        reachable = await self._ping()
        if reachable and self._state in (SharedLimitState.FALLBACK, SharedLimitState.UNAVAILABLE):
            await self._recover()
        now = time.monotonic()
        return LimiterHealth(
            state=self._state,
            redis_reachable=reachable,
            ready=self._state is not SharedLimitState.UNAVAILABLE,
            down_for=None if self._down_since is None else now - self._down_since,
            last_error=self._last_error,
            where=self._where,
        )

    async def aclose(self) -> None:
        """Stop asking Redis, fail queued callers, and close the client if this bucket made it.

        A borrowed client stays open. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._driver, self._probe_task) if t is not None and not t.done()]
        self._driver = self._probe_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._fail_all(lambda: errors.ClientClosedError("the RedisTokenBucket was closed"))
        if self._owns_client:
            await self._redis.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _drive(self) -> None:
        """Ask Redis (or the fallback) on behalf of the head of the local queue until it empties."""
        try:
            while self._has_waiters():
                if self._state is SharedLimitState.FALLBACK:
                    await self._serve_locally()
                    continue
                try:
                    wait_us, paused = await asyncio.wait_for(
                        self._acquire_script(keys=[self.key], args=[self.rate, self.burst]),
                        _CALL_TIMEOUT,
                    )
                except self._unavailable_errors as exc:
                    if not await self._redis_failed(exc):
                        return
                    continue
                if self._down_since is not None:
                    await self._recover()
                wait = int(wait_us) / 1_000_000
                if int(paused):
                    self._note_pause(time.monotonic() + wait)
                if wait <= 0:
                    self._grant_next()
                else:
                    await asyncio.sleep(wait)
        except BaseException:
            # cleanup that re-raises (aclose's cancellation, or a bug): nobody may wait forever
            self._fail_all(lambda: errors.ClientClosedError("the RedisTokenBucket stopped"))
            raise

    async def _redis_failed(self, exc: Exception) -> bool:
        """Carry out what a failed Redis call means now; False when the driver should stop.

        Within ``retry_for`` of the first failure: back off and try again. Past it: fall back
        to the local bucket, or fail the queued callers (``on_unavailable="raise"``).
        """
        now = time.monotonic()
        self._last_error = self._scrub(f"{type(exc).__name__}: {exc}")
        if self._down_since is None:
            self._down_since = now
            self._attempt = 0
            if self._state is SharedLimitState.SHARED:
                self._state = SharedLimitState.RIDING_OUT
                logger.info(
                    "shared rate limiter: Redis at %s failed (%s); holding callers and "
                    "retrying for up to %g s",
                    self._where,
                    self._last_error,
                    self.retry_for,
                )
        self._divert_cleanup()
        left = self._down_since + self.retry_for - now
        if left > 0:
            self._attempt += 1
            ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**self._attempt)
            await asyncio.sleep(min(left, random.uniform(0.01, ceiling)))
            return True
        if self.on_unavailable == "raise":
            if self._state is not SharedLimitState.UNAVAILABLE:
                self._state = SharedLimitState.UNAVAILABLE
                logger.warning(
                    "shared rate limiter: Redis at %s unavailable for %.1f s (%s); failing "
                    "calls until it answers (on_unavailable='raise'); cleanup calls still go out",
                    self._where,
                    now - self._down_since,
                    self._last_error,
                )
            self._fail_all(lambda: self._unreachable(exc))
            return False
        self._state = SharedLimitState.FALLBACK
        self._local.start(now)
        self._next_probe = now + self.probe_interval
        logger.warning(
            "shared rate limiter: Redis at %s unavailable for %.1f s (%s); this process now "
            "limits itself to %g requests/s on its own (its share of the account's %g), so "
            "processes that do not share this setting may exceed the account limit; back to "
            "the shared bucket when Redis answers",
            self._where,
            now - self._down_since,
            self._last_error,
            self.fallback_rate,
            self.rate,
        )
        return True

    async def _serve_locally(self) -> None:
        """One step of a fallback spell: probe Redis when due, else grant or wait for a slot."""
        now = time.monotonic()
        if now >= self._next_probe and (self._probe_task is None or self._probe_task.done()):
            self._next_probe = now + self.probe_interval
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())
        wait = self._local.wait(now)
        if wait <= 0:
            self._local.reserve(now)
            self._grant_next()
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), min(wait, self._next_probe - now))

    async def _probe(self) -> None:
        """PING Redis once; when it answers, switch back and wake the driver."""
        if await self._ping() and self._state is SharedLimitState.FALLBACK:
            await self._recover()
            self._wake.set()

    async def _ping(self) -> bool:
        """Whether Redis answers a PING within the probe timeout."""
        try:
            await asyncio.wait_for(self._redis.ping(), _PROBE_TIMEOUT)
        except self._unavailable_errors as exc:
            self._last_error = self._scrub(f"{type(exc).__name__}: {exc}")
            return False
        return True

    async def _recover(self) -> None:
        """Redis answered: the shared bucket is in force again; a local pause goes back to it."""
        if self._down_since is None:
            return
        was, down_for = self._state, time.monotonic() - self._down_since
        self._state = SharedLimitState.SHARED
        self._down_since = None
        if was in (SharedLimitState.FALLBACK, SharedLimitState.UNAVAILABLE):
            logger.info(
                "shared rate limiter: Redis at %s answers again after %.1f s; the shared "
                "bucket is in force again",
                self._where,
                down_for,
            )
        left = self._paused_until - time.monotonic()
        if was is SharedLimitState.FALLBACK:
            # Every process spent the account's rate on its own until now: a Redis that
            # restarted would hand out a full burst on top of that, so the shared bucket starts
            # empty (one token a 1/rate from now), or paused longer if a 429 said so.
            left = max(left, 1.0 / self.rate)
        if left > 0:
            # A Redis that restarted without persistence forgot the pause after a 429.
            with contextlib.suppress(*self._unavailable_errors):
                await asyncio.wait_for(
                    self._pause_script(keys=[self.key], args=[self.rate, self.burst, left]),
                    _CALL_TIMEOUT,
                )

    def _note_pause(self, until: float) -> None:
        """Remember a shared pause (monotonic end) for the fallback bucket."""
        self._paused_until = max(self._paused_until, until)
        self._local.pause_until(until)

    def _divert_cleanup(self) -> None:
        """Take queued cleanup callers out of the queue: they go out through the fallback now."""
        for fut in self._queue.take(lambda priority: priority <= Priority.CLEANUP):
            self._grant_locally(fut)

    def _grant_locally(self, fut: asyncio.Future[None]) -> None:
        """Resolve ``fut`` at the next slot of the fallback bucket."""
        wait = self._local.reserve(time.monotonic())
        if wait <= 0:
            fut.set_result(None)
        else:
            asyncio.get_running_loop().call_later(wait, _resolve, fut)

    def _has_waiters(self) -> bool:
        """Is anyone still waiting (cancelled waiters do not count)?"""
        return bool(self._queue)

    def _grant_next(self) -> None:
        """Give one token to the best waiter; with nobody left, it is dropped (the safe side)."""
        fut = self._queue.pop(asyncio.get_running_loop().time())
        if fut is not None:
            fut.set_result(None)

    def _fail_all(self, error: Callable[[], Exception]) -> None:
        """Wake every queued caller with its own instance of ``error()``."""
        for fut in self._queue.drain():
            fut.set_exception(error())

    def _scrub(self, text: str) -> str:
        """``text`` with the URL's password and user name masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _unreachable(self, exc: Exception) -> errors.TransportError:
        """The error a caller sees when Redis fails: where, and what to check."""
        error = errors.TransportError(
            f"the shared rate limiter could not reach Redis at {self._where} "
            f"({self._last_error or type(exc).__name__}); check that the server runs and the "
            "URL is right, or pass on_unavailable='fallback' to keep going on a local share"
        )
        error.__cause__ = exc
        return error


def _resolve(fut: asyncio.Future[None]) -> None:
    """Grant a fallback slot unless the caller gave up meanwhile."""
    if not fut.done():
        fut.set_result(None)
