"""``WebhookReceiver``: deliveries in, each status of each request handed to you once.

A delivery is unsigned, may come twice, late, or never. So the receiver treats it as a hint:

1. ``accept`` checks the shared secret (constant time) and parses the body; the web endpoint
   answers 2xx right after, well inside the 10 s the service waits, and ``submit`` hands the
   event to a background task.
2. An intermediate status (``in_queue``, ``in_progress``, or one this library does not know)
   goes to your handler as delivered, once, unless the request is already further along.
3. A final status is looked up through the API first (the source of truth, through ``lookup``),
   and what the API says is recorded and handed to your handler, once. A duplicate final
   delivery costs no API call: the store already knows the request is finished.
4. ``poll`` looks a request up without any delivery, through the same path: the recovery for a
   delivery that never came. Call it for requests you submitted that have been quiet too long.

Deduplication is on (request id, status) and across processes when the store is shared
(:class:`RedisDeliveryStore`). A handler that raises un-records its status, so a redelivery or a
poll hands it over again: at least once, never twice for one that succeeded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from .. import errors
from ..types.webhooks import FINAL_RANK, WebhookEvent
from ._parse import check_secret, parse_event
from ._store import DeliveryStore, MemoryDeliveryStore

__all__ = ["RequestLookup", "WebhookHandler", "WebhookReceiver"]

logger = logging.getLogger("runcomfy_async.webhooks")

WebhookHandler = Callable[[WebhookEvent], Awaitable[object]]
"""Your code: called once per new status of a request (final events are verified)."""


class RequestLookup(Protocol):
    """How the receiver asks the API where a request really is.

    Return the request's current state as a verified event (``verified=True``): its status,
    and on a final status its outputs or error as the API's result reports them.
    """

    def __call__(self, request_id: str, deployment_id: str | None, /) -> Awaitable[WebhookEvent]:
        """Look ``request_id`` (of ``deployment_id``, when known) up through the API."""
        ...


class WebhookReceiver:
    """Turns webhook deliveries into one call of your handler per new status of a request.

    Use one per process, opened with ``async with`` (leaving the block waits for the events
    still being handled). See the module docs of :mod:`runcomfy_async.webhooks` for the rules.

    Args:
        handler: ``async def handler(event: WebhookEvent)``; called once per new status of a
            request; final events come from the API (``event.verified`` is True).
        lookup: looks a request up through the API (see :class:`RequestLookup`).
        store: what was already handled; a :class:`MemoryDeliveryStore` by default (one
            process). Several workers need a shared one (:class:`RedisDeliveryStore`).
        secret: when set, every delivery must carry it (see :meth:`accept`).
        concurrency: events handled at the same time, at most.

    Raises:
        ValidationError: an empty secret or a concurrency below 1.
    """

    def __init__(
        self,
        handler: WebhookHandler,
        *,
        lookup: RequestLookup,
        store: DeliveryStore | None = None,
        secret: str | None = None,
        concurrency: int = 16,
    ) -> None:
        if secret is not None and not secret:
            raise errors.ValidationError(
                "secret must be a non-empty string (e.g. secrets.token_urlsafe(32)), or None"
            )
        if concurrency < 1:
            raise errors.ValidationError(f"concurrency must be at least 1, got {concurrency}")
        self.handler = handler
        self.lookup = lookup
        self.store: DeliveryStore = store if store is not None else MemoryDeliveryStore()
        self._secret = secret
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __repr__(self) -> str:
        secret = "set" if self._secret else "none"
        return f"WebhookReceiver(store={self.store!r}, secret={secret}, pending={self.pending})"

    @property
    def pending(self) -> int:
        """Events submitted and not yet handled."""
        return len(self._tasks)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def accept(
        self, body: bytes | str | Mapping[str, Any], *, secret: str | None = None
    ) -> WebhookEvent:
        """Check a delivery's secret and parse its body; fast and free of I/O.

        Args:
            body: the delivery's body as received.
            secret: the secret the delivery carried (e.g. a query parameter of the webhook
                URL); checked in constant time when the receiver has one.

        Raises:
            WebhookSecretError: the receiver has a secret and the delivery did not carry it.
            InvalidWebhookError: the body is not a delivery.
        """
        if self._secret is not None:
            check_secret(secret, self._secret)
        return parse_event(body)

    def submit(self, event: WebhookEvent) -> None:
        """Handle ``event`` in the background (call it, then answer the delivery at once).

        Failures are logged on the ``runcomfy_async.webhooks`` logger; the event stays
        unhandled, so a redelivery or :meth:`poll` hands it over later.
        """
        task = asyncio.get_running_loop().create_task(self._background(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, event: WebhookEvent) -> WebhookEvent | None:
        """Handle one delivered event now; the event given to the handler, or None if none was.

        Raises:
            Exception: what ``lookup``, the store or the handler raised.
        """
        async with self._request_lock(event.request_id):
            if not event.final:
                return await self._dispatch(event)
            if await self.store.furthest(event.request_id) == FINAL_RANK:
                return None  # a duplicate (or a second, different) final: no API call
            truth = await self.lookup(event.request_id, event.deployment_id)
            if truth.status != event.status:
                logger.warning(
                    "a webhook delivery said request %s is %s; the API says %s (used)",
                    event.request_id,
                    event.status.value,
                    truth.status.value,
                )
            return await self._dispatch(truth)

    async def poll(self, request_id: str, deployment_id: str | None = None) -> WebhookEvent | None:
        """Look a request up through the API and hand its state over, if it is new.

        The recovery for a delivery that never came: call it for requests you submitted
        whose final event is overdue. No API call once the request's final event was handled.

        Returns:
            The event given to the handler, or None when nothing was new.

        Raises:
            Exception: what ``lookup``, the store or the handler raised.
        """
        async with self._request_lock(request_id):
            if await self.store.furthest(request_id) == FINAL_RANK:
                return None
            return await self._dispatch(await self.lookup(request_id, deployment_id))

    async def finished(self, request_id: str) -> bool:
        """True once the request's final event was handed to the handler."""
        return await self.store.furthest(request_id) == FINAL_RANK

    async def aclose(self, timeout: float | None = 30.0) -> None:
        """Wait for the events being handled in the background, then close the store.

        Args:
            timeout: seconds to wait; events still unhandled then are cancelled (and logged),
                which leaves them to a redelivery or :meth:`poll`. None waits as long as it takes.
        """
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                logger.warning(
                    "%d webhook event(s) were still being handled after %s s and were "
                    "cancelled; a redelivery or poll() hands them over again",
                    len(late),
                    timeout,
                )
                await asyncio.wait(late)
        await self.store.aclose()

    async def _dispatch(self, event: WebhookEvent) -> WebhookEvent | None:
        """Record the event; the handler gets it when new, and un-records it if it raises."""
        status = event.status.value
        if not await self.store.record(event.request_id, status, event.status.rank):
            return None
        try:
            await self.handler(event)
        except BaseException:
            await asyncio.shield(self.store.forget(event.request_id, status))
            raise
        return event

    async def _background(self, event: WebhookEvent) -> None:
        """``handle`` within the concurrency bound, logging what fails."""
        async with self._slots:
            try:
                await self.handle(event)
            except Exception:
                logger.exception(
                    "handling the %s webhook of request %s failed; a redelivery or poll() "
                    "retries it",
                    event.status.value,
                    event.request_id,
                )

    def _request_lock(self, request_id: str) -> _RequestLock:
        """One request's events are handled one after another in this process."""
        return _RequestLock(self._locks, request_id)


class _RequestLock:
    """An ``asyncio.Lock`` per request id, dropped from the map once no one holds or awaits it."""

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], request_id: str) -> None:
        self._locks = locks
        self._id = request_id

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._id, (asyncio.Lock(), 0))
        self._locks[self._id] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave()  # cancelled while waiting: give the place back, then re-raise
            raise

    async def __aexit__(self, *_: object) -> None:
        self._locks[self._id][0].release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._id]
        if users == 1:
            del self._locks[self._id]
        else:
            self._locks[self._id] = (lock, users - 1)
