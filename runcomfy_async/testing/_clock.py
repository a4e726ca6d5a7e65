"""The emulator's clock: wall time plus a manual offset, and the speed factor for durations.

Timestamps the emulator reports are this clock's wall time; every simulated duration (a dataset's
processing, a signed URL's lifetime, a job's queue wait and steps, a Model API run, a machine's
boot and stop, a ComfyUI node) is divided by ``speed`` through :meth:`Clock.real`, so
``speed=50`` turns a 50 s server-side step into 1 s of real time. ``advance`` lets a test jump
forward (to expire signed URLs, finish a job) without sleeping.

Deliberately *not* scaled: the account rate limit and any ``Retry-After`` or fault ``delay``.
Those are pauses the client waits out in real time, so they stay real seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ._wire import iso_timestamp

__all__ = ["Clock"]


class Clock:
    """Emulator time: ``time()`` in UNIX seconds, ``real()`` to scale a simulated duration."""

    def __init__(self, speed: float, *, wall: Callable[[], float] = time.time) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a finite number > 0, got {speed}")
        self.speed = speed
        self._wall = wall
        self._offset = 0.0

    def time(self) -> float:
        """Current emulator time in UNIX seconds (wall clock plus any ``advance``)."""
        return self._wall() + self._offset

    def real(self, simulated_seconds: float) -> float:
        """Real seconds a simulated duration takes at this speed."""
        return simulated_seconds / self.speed

    def advance(self, seconds: float) -> None:
        """Jump the emulator's time forward by ``seconds`` (real seconds, not simulated)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds

    def iso(self, unix_seconds: float | None = None) -> str:
        """``unix_seconds`` (default: now) as the API's ISO 8601 timestamp."""
        return iso_timestamp(self.time() if unix_seconds is None else unix_seconds)
