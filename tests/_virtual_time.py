"""An event loop whose clock jumps ahead whenever it would sleep: schedules tested without waiting.

``run_virtual(main())`` runs a coroutine on a loop whose ``time()`` is virtual: when nothing is
ready and the loop would block until its next timer, the clock moves to that timer at once. Code
that reads the loop's clock (the token buckets, ``asyncio.sleep``, ``asyncio.timeout``) then sees
hours pass in milliseconds, in exactly the order real time would give. Only for code without
sockets or threads: the clock would jump past an answer still on its way.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualClockLoop", "run_virtual"]

T = TypeVar("T")


class _WarpSelector(selectors.DefaultSelector):
    """Never blocks on a timeout: reports the wait to the loop's clock instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        events: list[Any] = super().select(0)
        if events or timeout is None or timeout <= 0:
            return events if events or timeout is not None else super().select(None)
        self._loop.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (starts at 1000.0)."""

    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_WarpSelector(self))

    def time(self) -> float:
        """The virtual clock."""
        return self.now


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualClockLoop`."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
