"""Local files from async code without leaking handles when a task is cancelled.

``aiofiles.open`` opens in a worker thread; a cancellation that lands while the thread is opening
leaves a handle nobody closes. These helpers open in a thread that closes the file itself when
its caller was cancelled meanwhile, and read or write small files whole in one thread call.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import BinaryIO, cast

__all__ = ["open_file", "read_small", "write_small"]


async def open_file(path: Path, mode: str) -> BinaryIO:
    """Open ``path`` in binary ``mode`` in a worker thread; a cancelled caller's file is closed,
    by the thread itself if it opens after the cancellation (even once the loop is gone)."""
    opening = _Opening()
    try:
        return await asyncio.to_thread(opening.open, path, mode)
    except asyncio.CancelledError:
        opening.abandon()
        raise


class _Opening:
    """One open in a thread, and who closes it if its caller is cancelled meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._handle: BinaryIO | None = None

    def open(self, path: Path, mode: str) -> BinaryIO:
        handle = cast(BinaryIO, path.open(mode))
        with self._lock:
            if self._abandoned:
                handle.close()
            else:
                self._handle = handle
        return handle

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self._handle is not None:
                self._handle.close()


async def read_small(path: Path) -> str | None:
    """The text of a small file, or None if it does not exist."""
    return await asyncio.to_thread(_read, path)


async def write_small(path: Path, text: str) -> None:
    """Write a small text file in one thread call (finished even if the caller is cancelled)."""
    await asyncio.to_thread(path.write_text, text)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
