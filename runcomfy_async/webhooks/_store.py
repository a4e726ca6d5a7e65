"""Where a receiver remembers which statuses of which requests it already handled.

The state of one request is a small map ``status -> rank`` (rank None for a status this library
does not know). Recording a status answers whether it is *new*: not seen before for that request
and not behind the furthest status seen (a late ``in_progress`` after ``succeeded`` is not new,
and neither is a second, different final status). Duplicates and late deliveries thus change
nothing, whatever order they arrive in, and every process sharing one store agrees.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final, Protocol, runtime_checkable

import attrs

from .. import errors

__all__ = ["DEFAULT_TTL", "DeliveryStore", "MemoryDeliveryStore", "is_new"]

DEFAULT_TTL: Final = 25 * 3600.0
"""Seconds a request is remembered: the service retries a delivery for up to 24 hours."""


@runtime_checkable
class DeliveryStore(Protocol):
    """What a webhook receiver needs from its memory; implement it to plug in your own.

    Each method must be atomic for one request id across every process sharing the store.
    """

    async def record(self, request_id: str, status: str, rank: int | None) -> bool:
        """Remember that ``request_id`` reached ``status``; True when that is new.

        New means: ``status`` was not recorded for the request before, and ``rank`` (None
        for an unknown status) is above every rank recorded for it (see :func:`is_new`).
        """
        ...

    async def forget(self, request_id: str, status: str) -> None:
        """Undo :meth:`record` of ``status`` (its handler failed: let a later delivery retry)."""
        ...

    async def furthest(self, request_id: str) -> int | None:
        """The highest rank recorded for the request, None when nothing is."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def is_new(seen: Mapping[str, int | None], status: str, rank: int | None) -> bool:
    """The rule every store applies: unseen, and not behind the furthest known rank.

    A status of unknown rank is new once (it cannot be ordered, so it never looks late).
    """
    if status in seen:
        return False
    if rank is None:
        return True
    return all(r is None or r < rank for r in seen.values())


@attrs.define(kw_only=True)
class MemoryDeliveryStore:
    """A :class:`DeliveryStore` in this process's memory, bounded in size and age.

    Right for one worker process. Several workers (``uvicorn --workers 4``) each see only the
    deliveries routed to them, so use :class:`RedisDeliveryStore` there.

    Args:
        max_requests: requests remembered at most; the least recently touched go first.
        ttl: seconds a request is remembered after its last delivery (25 hours by default:
            the service retries for up to 24).
        clock: monotonic seconds (a parameter for tests).

    Raises:
        ValidationError: ``max_requests`` below 1 or ``ttl`` not positive.
    """

    max_requests: int = 100_000
    ttl: float = DEFAULT_TTL
    clock: Callable[[], float] = time.monotonic
    _requests: OrderedDict[str, tuple[float, dict[str, int | None]]] = attrs.field(
        init=False, factory=OrderedDict
    )

    def __attrs_post_init__(self) -> None:
        if self.max_requests < 1:
            raise errors.ValidationError(
                f"max_requests must be at least 1, got {self.max_requests}"
            )
        if not self.ttl > 0:
            raise errors.ValidationError(
                f"ttl must be a positive number of seconds, got {self.ttl}"
            )

    def __len__(self) -> int:
        """Requests remembered right now (expired ones included until the next call)."""
        return len(self._requests)

    async def record(self, request_id: str, status: str, rank: int | None) -> bool:
        """See :meth:`DeliveryStore.record`."""
        seen = self._touch(request_id)
        new = is_new(seen, status, rank)
        seen.setdefault(status, rank)
        return new

    async def forget(self, request_id: str, status: str) -> None:
        """See :meth:`DeliveryStore.forget`."""
        self._touch(request_id).pop(status, None)

    async def furthest(self, request_id: str) -> int | None:
        """See :meth:`DeliveryStore.furthest`."""
        ranks = [r for r in self._touch(request_id).values() if r is not None]
        return max(ranks, default=None)

    async def aclose(self) -> None:
        """Nothing to release; kept for the protocol."""

    def _touch(self, request_id: str) -> dict[str, int | None]:
        """The request's map, expiring old entries and evicting past ``max_requests``."""
        now = self.clock()
        while self._requests:
            oldest, (expires, _) = next(iter(self._requests.items()))
            if expires > now and len(self._requests) <= self.max_requests:
                break
            del self._requests[oldest]
        _, seen = self._requests.pop(request_id, (0.0, {}))
        self._requests[request_id] = (now + self.ttl, seen)
        if len(self._requests) > self.max_requests:
            self._requests.popitem(last=False)
        return seen
