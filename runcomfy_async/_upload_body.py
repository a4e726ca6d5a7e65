"""Streamed upload bodies: a file re-opened for every attempt and sent in MiB chunks.

The body is an aiohttp payload with an exact ``Content-Length`` that opens the file, streams it
(reads in a worker thread) and closes it, all inside ``write()``, so memory stays flat whatever
the size and a retry replays from disk, never from a consumed iterator. A file whose size changes
is caught before and during each send and stops that file for good. Progress is only queued
here (:class:`~runcomfy_async._progress.ProgressRelay`): no user code runs inside the body writer.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
import attrs
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from ._files import open_file
from ._progress import ProgressRelay
from ._transport import BodyAbort
from ._upload_plan import UploadSource, changed_message
from .types.uploads import BytesSent, FileStarted, UploadEvent, UploadMethod

__all__ = ["CHUNK_SIZE", "FileChanged", "FilePayload", "FileState", "UploadProgress", "multipart"]

#: Bytes read from disk and written to the socket per step.
CHUNK_SIZE: Final = 1 << 20


class FileChanged(Exception):
    """The file differs from its plan; stops every further attempt for it."""


class UploadProgress:
    """One upload run's event relay and the bytes it put on the wire."""

    def __init__(self, relay: ProgressRelay[UploadEvent]) -> None:
        self.relay = relay
        self.bytes_sent = 0


@attrs.define(kw_only=True)
class FileState:
    """One file's attempts, and the change a send noticed (shared by all its attempts)."""

    source: UploadSource
    method: UploadMethod
    attempts: int = 0
    changed: str | None = None


class FilePayload(Payload):
    """A file's bytes for one attempt: opened, streamed in MiB chunks, closed, all in write().

    The declared size is the planned one, so the request carries an exact Content-Length. A file
    that shrinks stops the send; one that grew is caught before its last chunk goes out, so
    storage never keeps a cut version.
    """

    _autoclose = True  # nothing stays open outside write()

    def __init__(
        self, state: FileState, progress: UploadProgress, *, content_type: str, attempt: int
    ) -> None:
        super().__init__(state.source.path, content_type=content_type)
        self._size = state.source.size
        self._state = state
        self._progress = progress
        self._attempt = attempt

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file body cannot be decoded in memory")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        source = self._state.source
        progress = self._progress
        emit = progress.relay.emit
        emit(
            FileStarted(
                filename=source.filename,
                size=source.size,
                method=self._state.method,
                attempt=self._attempt,
            )
        )
        total = source.size if content_length is None else min(content_length, source.size)
        sent = 0
        fh = await open_file(source.path, "rb")
        try:
            while sent < total:
                want = min(CHUNK_SIZE, total - sent)
                last = want == total - sent
                # On the last chunk read one byte more: a file that grew must not be stored cut.
                chunk = await asyncio.to_thread(fh.read, want + 1 if last else want)
                if len(chunk) > want:
                    self._changed(f"more than {source.size} bytes")
                if not chunk:
                    self._changed(f"{sent} bytes")
                await writer.write(chunk)
                sent += len(chunk)
                progress.bytes_sent += len(chunk)
                emit(BytesSent(filename=source.filename, size=source.size, sent=sent,
                               delta=len(chunk)))
        finally:
            fh.close()  # closing a read-only file does not block; it must happen even if cancelled

    def _changed(self, now: str) -> None:
        self._state.changed = changed_message(self._state.source, now)
        raise BodyAbort(FileChanged(self._state.changed))


def multipart(state: FileState, progress: UploadProgress) -> aiohttp.MultipartWriter:
    """A fresh ``multipart/form-data`` body with the single field ``file`` (docs/wire.md)."""
    if state.changed is not None:
        raise FileChanged(state.changed)
    state.attempts += 1
    source = state.source
    payload = FilePayload(
        state, progress, content_type=source.content_type, attempt=state.attempts
    )
    payload.set_content_disposition("form-data", name="file", filename=source.filename)
    writer = aiohttp.MultipartWriter("form-data")
    writer.append_payload(payload)
    return writer
