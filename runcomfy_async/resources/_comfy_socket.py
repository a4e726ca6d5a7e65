"""One ComfyUI WebSocket per client id, shared by every wait on it.

ComfyUI keeps only the newest socket of a client id and sends that client's events there alone,
so two sockets under one id leave one of them silent. :class:`EventSocket` opens the socket on
the first subscription, reconnects with backoff while anyone still listens, closes it when the
last one leaves, and hands each event to the subscriptions of its prompt. Subscriptions also
hear :data:`CONNECTED` (events may have been missed: check the history) and :data:`LOST` (no
events until further notice: poll the history now).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from .. import errors
from .._retry import RetryPolicy
from ..types.comfyui import ComfyEvent

__all__ = ["CONNECTED", "LOST", "EventSocket", "Subscription"]

logger = logging.getLogger("runcomfy_async")


class Signal(enum.Enum):
    """A change of the socket's state, as told to subscriptions."""

    CONNECTED = "connected"
    LOST = "lost"


CONNECTED = Signal.CONNECTED
LOST = Signal.LOST

#: The events after which the prompt that ran is over (so is an ``executing`` of no node).
_FINAL = frozenset({"execution_success", "execution_error", "execution_interrupted"})

#: Opens the socket (through the transport, which maps failures to TransportError).
Opener = Callable[[], Awaitable[aiohttp.ClientWebSocketResponse]]


class Subscription:
    """One wait's view of the socket: its prompt's events, ``status`` broadcasts and signals."""

    def __init__(self, prompt_id: str, socket: EventSocket) -> None:
        self.prompt_id = prompt_id
        self._socket = socket
        self._items: asyncio.Queue[ComfyEvent | Signal] = asyncio.Queue()

    @property
    def connected(self) -> bool:
        """Whether the socket is open now (events are flowing)."""
        return self._socket.connected

    def put(self, item: ComfyEvent | Signal) -> None:
        """Queue an event or signal (called by the socket)."""
        self._items.put_nowait(item)

    async def next(self, timeout: float) -> ComfyEvent | Signal | None:
        """The next event or signal; None if ``timeout`` seconds pass first."""
        try:
            async with asyncio.timeout(timeout):
                return await self._items.get()
        except TimeoutError:
            return None


class EventSocket:
    """The WebSocket of one ComfyUI client id.

    Args:
        opener: opens the socket.
        backoff: reconnection delays (its ``backoff`` with full jitter).
    """

    def __init__(self, opener: Opener, *, backoff: RetryPolicy) -> None:
        self._opener = opener
        self._backoff = backoff
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._running: str | None = None
        self.connected = False

    def subscribe(self, prompt_id: str) -> Subscription:
        """Listen for a prompt's events; opens the socket if it is not open."""
        subscription = Subscription(prompt_id, self)
        self._subscriptions.setdefault(prompt_id, set()).add(subscription)
        if self.connected:
            subscription.put(CONNECTED)
        if self._task is None or self._task.done() or self._task.cancelling():
            # The previous socket must be closed before the next opens: the server drops the
            # id's entry when an old socket of that id closes, whichever socket it points at.
            self._task = asyncio.create_task(self._run(self._task))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop listening; the socket closes when nobody listens any more."""
        group = self._subscriptions.get(subscription.prompt_id, set())
        group.discard(subscription)
        if not group:
            self._subscriptions.pop(subscription.prompt_id, None)
        if not self._subscriptions and self._task is not None:
            self._task.cancel()

    def _signal(self, signal: Signal) -> None:
        for group in self._subscriptions.values():
            for subscription in group:
                subscription.put(signal)

    async def _run(self, previous: asyncio.Task[None] | None) -> None:
        """Keep a socket open while anyone listens; whatever ends it, listeners poll."""
        if previous is not None:
            await asyncio.wait({previous})  # its end, without taking on its cancellation
        try:
            await self._keep_open()
        finally:
            self.connected = False
            if self._subscriptions:
                self._signal(LOST)

    async def _keep_open(self) -> None:
        """Open, read until closed, reconnect with backoff; stop when nobody listens."""
        attempt = 0
        while self._subscriptions:
            try:
                ws = await self._opener()
            except errors.ClientClosedError:
                return
            except errors.RunComfyError as exc:
                logger.debug("ComfyUI WebSocket unavailable (%s); polling /history meanwhile", exc)
                self._signal(LOST)
                attempt += 1
                await asyncio.sleep(self._backoff.backoff(attempt, random.random()))
                continue
            attempt = 0
            try:
                self.connected = True
                self._signal(CONNECTED)
                await self._read(ws)
            finally:
                self.connected = False
                await ws.close()
            logger.debug("ComfyUI WebSocket closed; polling /history until it is back")
            self._signal(LOST)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Dispatch text frames until the socket closes (binary frames are previews)."""
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                continue
            if message.type is not aiohttp.WSMsgType.TEXT:
                return
            event = parse_event(message.data)
            if event is not None:
                self._dispatch(event)

    def _dispatch(self, event: ComfyEvent) -> None:
        """Hand an event to its prompt's subscriptions; ``status`` goes to everyone."""
        if event.type == "status":
            for group in self._subscriptions.values():
                for subscription in group:
                    subscription.put(event)
            return
        prompt_id = event.data.get("prompt_id")
        if prompt_id is None and event.type == "executing" and self._running is not None:
            # Sent on reconnection to the client whose prompt runs, without its id.
            prompt_id = self._running
            event = ComfyEvent(type=event.type, data={**event.data, "prompt_id": prompt_id})
        # This client's events come from the prompt that runs: any of them names it.
        if isinstance(prompt_id, str):
            over = event.type in _FINAL or (event.type == "executing" and event.node is None)
            self._running = None if over else prompt_id
        for subscription in self._subscriptions.get(str(prompt_id), ()):
            subscription.put(event)


def parse_event(text: str) -> ComfyEvent | None:
    """A text frame as an event; None for anything that is not ``{"type", "data"}`` JSON."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, Mapping) or not isinstance(message.get("type"), str):
        return None
    data = message.get("data")
    return ComfyEvent(type=message["type"], data=data if isinstance(data, Mapping) else {})
