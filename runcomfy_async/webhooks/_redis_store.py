"""``RedisDeliveryStore``: the receiver's memory shared by every worker process through Redis.

One Redis hash per request (``<prefix><request_id>``, field = status, value = rank or "" for an
unknown status) updated by a Lua script, so recording a status is one atomic step whichever
worker gets the delivery. Each hash expires ``ttl`` seconds after its last delivery.
``redis`` is the optional extra: ``pip install 'runcomfy-async[redis]'``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import urlsplit

from .. import errors
from ._store import DEFAULT_TTL

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisDeliveryStore"]

T = TypeVar("T")

# KEYS[1] the request's hash; ARGV: status, rank ("" when unknown), ttl seconds. Returns 1 when
# the status is new (the rule of _store.is_new), 0 otherwise; the status is recorded either way.
_RECORD_LUA: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 0
end
local rank = tonumber(ARGV[2])
local new = 1
if rank then
  for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
    local seen = tonumber(value)
    if seen and seen >= rank then new = 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return new
"""


class RedisDeliveryStore:
    """A :class:`~runcomfy_async.webhooks.DeliveryStore` in Redis, shared by every worker.

    Args:
        redis_url_or_client: a ``redis://``/``rediss://``/``unix://`` URL (the store then owns
            the connection pool and :meth:`aclose` closes it; credentials are masked in every
            message), or a ``redis.asyncio.Redis`` client to borrow (never closed here).
        prefix: the start of every key the store writes; one per application.
        ttl: seconds a request is remembered after its last delivery (25 hours by default:
            the service retries a delivery for up to 24).

    Raises:
        ConfigurationError: the ``redis`` package is missing, or the URL is not a Redis URL.
        ValidationError: an empty prefix or a ttl below one second.
    """

    def __init__(
        self,
        redis_url_or_client: str | Redis,
        *,
        prefix: str = "runcomfy:webhooks:",
        ttl: float = DEFAULT_TTL,
    ) -> None:
        if not prefix:
            raise errors.ValidationError("prefix must be a non-empty Redis key prefix")
        if not ttl >= 1:
            raise errors.ValidationError(f"ttl must be at least 1 second, got {ttl!r}")
        try:
            import redis.asyncio as redis_asyncio
        except ImportError as exc:
            raise errors.ConfigurationError(
                "RedisDeliveryStore needs the 'redis' package; install it with "
                "pip install 'runcomfy-async[redis]'"
            ) from exc
        self.prefix = prefix
        self.ttl = int(ttl)
        self._owned = isinstance(redis_url_or_client, str)
        if isinstance(redis_url_or_client, str):
            parts = urlsplit(redis_url_or_client)
            self._where = f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or ''}"
            try:
                client: Redis = redis_asyncio.Redis.from_url(
                    redis_url_or_client, socket_connect_timeout=2.0, socket_timeout=5.0
                )
            except ValueError:
                # from None: the parser's message may repeat the URL with its password.
                raise errors.ConfigurationError(
                    f"not a Redis URL: {self._where!r}; use e.g. redis://localhost:6379/0"
                ) from None
        else:
            client = redis_url_or_client
            self._where = "a borrowed Redis client"
        self._redis = client
        self._record = client.register_script(_RECORD_LUA)

    def __repr__(self) -> str:
        return f"RedisDeliveryStore({self._where!r}, prefix={self.prefix!r}, ttl={self.ttl})"

    async def record(self, request_id: str, status: str, rank: int | None) -> bool:
        """See :meth:`DeliveryStore.record <runcomfy_async.webhooks.DeliveryStore.record>`."""
        key = self.prefix + request_id
        rank_arg = "" if rank is None else str(rank)
        answer = await self._call(
            lambda: self._record(keys=[key], args=[status, rank_arg, self.ttl])
        )
        return bool(answer)

    async def forget(self, request_id: str, status: str) -> None:
        """See :meth:`DeliveryStore.forget <runcomfy_async.webhooks.DeliveryStore.forget>`."""
        await self._call(lambda: self._redis.hdel(self.prefix + request_id, status))

    async def furthest(self, request_id: str) -> int | None:
        """See :meth:`DeliveryStore.furthest <runcomfy_async.webhooks.DeliveryStore.furthest>`."""
        values = await self._call(lambda: self._redis.hvals(self.prefix + request_id))
        ranks = [int(v) for v in values if v not in (b"", "")]
        return max(ranks, default=None)

    async def aclose(self) -> None:
        """Close the connection pool this store created (a borrowed client is left open)."""
        if self._owned:
            await self._redis.aclose()

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis command; a Redis failure becomes TransportError naming where."""
        from redis.exceptions import RedisError

        try:
            return await command()
        except (RedisError, OSError) as exc:
            raise errors.TransportError(
                f"the webhook store's Redis at {self._where} failed: {type(exc).__name__}; "
                "check that Redis is running (the delivery is handled again when it is "
                "redelivered or polled)"
            ) from exc
