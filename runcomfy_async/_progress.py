"""Delivering progress events outside the wire.

A request body or a download loop only queues events (:meth:`ProgressRelay.emit`, no await, no
user code); a task of its own hands them to the user's callback. So a callback that raises never
surfaces inside aiohttp's body writer as a "connection error" that gets retried: it cancels the
operation, and the caller gets the callback's exception as it is.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, NoReturn, TypeVar

from .types.progress import ProgressCallback

__all__ = ["ProgressRelay", "reraise_first", "with_progress"]

E = TypeVar("E")
T = TypeVar("T")


class ProgressRelay(Generic[E]):
    """A queue of events between an operation and its progress callback."""

    def __init__(self, callback: ProgressCallback[E] | None) -> None:
        self._callback = callback
        self._queue: deque[E] = deque()
        self._wake = asyncio.Event()
        self._closed = False

    def emit(self, event: E) -> None:
        """Queue one event for the callback (a no-op without one); never blocks."""
        if self._callback is not None:
            self._queue.append(event)
            self._wake.set()

    def close(self) -> None:
        """No more events: delivery ends once the queue is drained."""
        self._closed = True
        self._wake.set()

    async def deliver(self) -> None:
        """Hand queued events to the callback, in order, until closed and drained."""
        callback = self._callback
        assert callback is not None
        while True:
            while self._queue:
                result = callback(self._queue.popleft())
                if inspect.isawaitable(result):
                    await result
            if self._closed:
                return
            self._wake.clear()
            await self._wake.wait()


async def with_progress(
    callback: ProgressCallback[E] | None,
    operation: Callable[[ProgressRelay[E]], Awaitable[T]],
) -> T:
    """Run ``operation`` with a relay whose events reach ``callback`` from a task of its own.

    Events queued before the operation returned are still delivered before this returns; a
    callback raising then (the operation already done) still raises, and the operation's result
    is lost with it: a callback should not raise for events it does not care about.

    Raises:
        Exception: whatever the operation raised, or what the callback raised (the operation is
            then cancelled), each as itself, never wrapped in a group.
    """
    relay: ProgressRelay[E] = ProgressRelay(callback)
    if callback is None:
        return await operation(relay)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(relay.deliver())
            try:
                return await operation(relay)
            finally:
                relay.close()
    except BaseExceptionGroup as group_error:
        reraise_first(group_error)


def reraise_first(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the first real failure of a (possibly nested) task-group error as itself, with
    its own cause kept and the group left out of its context."""
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    raise first from first.__cause__
