"""Local files from async code without leaking handles when a task is cancelled.

``aiofiles.open`` opens in a worker thread; a cancellation that lands while the thread is opening
leaves a handle nobody closes. These helpers open through a shielded thread call and close what
a cancelled caller will never see, and read or write small files whole inside one thread call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import BinaryIO, cast

__all__ = ["open_file", "read_small", "write_small"]


async def open_file(path: Path, mode: str) -> BinaryIO:
    """Open ``path`` in binary ``mode`` in a worker thread; a cancelled caller's file is closed."""
    opening: asyncio.Future[BinaryIO] = asyncio.ensure_future(
        asyncio.to_thread(_open, path, mode)
    )
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_if_opened)
        raise


async def read_small(path: Path) -> str | None:
    """The text of a small file, or None if it does not exist."""
    return await asyncio.to_thread(_read, path)


async def write_small(path: Path, text: str) -> None:
    """Write a small text file in one thread call (finished even if the caller is cancelled)."""
    await asyncio.to_thread(path.write_text, text)


def _open(path: Path, mode: str) -> BinaryIO:
    return cast(BinaryIO, path.open(mode))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _close_if_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
