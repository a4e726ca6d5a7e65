"""Streamed upload bodies: a file re-opened for every attempt and sent in MiB chunks (or
in-memory bytes sent the same way).

The body is an aiohttp payload with an exact ``Content-Length`` that opens the file, streams it
and closes it, all inside ``write()``, so memory stays flat whatever the size and a retry replays
from disk, never from a consumed iterator. Sent through aiohttp (files under the transport's
worker-thread threshold, or a borrowed session): on a plain TCP connection the kernel copies the
file to the socket itself (``loop.sendfile``: no read into Python, no copy); on TLS the file is
read in 4 MiB steps in a worker thread, the next step read while the current one is written.
Sent from the transport's worker thread (:meth:`FilePayload.send_blocking`): read into one
page-aligned buffer and sent, 1 MiB at a time over TLS (encrypted straight into the socket),
4 MiB at a time on a plain socket, or there by the kernel's ``sendfile`` up to 64 MiB.
A file whose size changes is caught before and during each send and stops that file for good.
Progress is only queued here (:class:`~runcomfy_async._progress.ProgressRelay`), once per 4 MiB:
no user code runs inside the body writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final, TypeGuard

import attrs
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import content_disposition_header
from aiohttp.payload import Payload

from ._buffers import aligned_buffer
from ._files import open_file
from ._progress import ProgressRelay
from ._transport import BodyAbort, ThreadedBody
from ._upload_plan import UploadSource, changed_message, unreadable_message
from .types.uploads import BytesSent, FileStarted, UploadEvent, UploadMethod

__all__ = [
    "CHUNK_SIZE",
    "FileChanged",
    "FilePayload",
    "FileState",
    "FormPayload",
    "MemoryPayload",
    "SourcePayload",
    "UploadProgress",
    "checked_by_body",
    "multipart",
]

#: Bytes per step on the event loop (a read and a write, or one ``sendfile``), and per progress
#: event.
CHUNK_SIZE: Final = 4 << 20
#: Files up to this size are read whole in one thread call and written at once.
_WHOLE_MAX: Final = 1 << 20
#: Bytes per read and send in a worker thread, into a page-aligned buffer (see ``_buffers``).
#: Measured on loopback against a memory-speed receiver, 1 GiB, bare loops: over TLS 1 MiB
#: took 1.49-1.58 CPU s/GiB against 1.75-1.76 for 64 KiB (curl: 1.58-1.78); on a plain socket
#: 4 MiB took 0.54 against 0.64-0.65 for 64 KiB and 1 MiB (curl: 0.80).
_TLS_READ: Final = 1 << 20
_PLAIN_READ: Final = 4 << 20
#: Plain-socket files up to this size go by ``sendfile`` instead: no copy on our side, and
#: the receiver's socket buffers take such a file nearly whole (16 MiB: 1.3-1.6x curl's speed in
#: the throughput benchmark, against 0.96-1.08x for reads). Larger ones meet back-pressure,
#: where ``sendfile``'s page references cost more than a copy (1 GiB: 0.77-0.81 CPU s/GiB
#: against 0.53-0.56 for reads).
_SENDFILE_MAX: Final = 64 << 20


class FileChanged(Exception):
    """The file differs from its plan; stops every further attempt for it."""


class UploadProgress:
    """One upload run's event relay and the bytes it put on the wire."""

    def __init__(self, relay: ProgressRelay[UploadEvent]) -> None:
        self.relay = relay
        self.bytes_sent = 0


@attrs.define(kw_only=True)
class FileState:
    """One file's attempts, and the change a send noticed (shared by all its attempts): a local
    file that changed, or a URL source whose remote failed it for good."""

    source: UploadSource
    method: UploadMethod
    attempts: int = 0
    changed: str | None = None
    source_failed: str | None = None


class SourcePayload(Payload):
    """One attempt's body for one upload source: its size, its start and its progress events.

    The declared size is the planned one, so the request carries an exact Content-Length;
    subclasses say where the bytes come from.
    """

    _autoclose = True  # nothing stays open outside write()

    def __init__(
        self, state: FileState, progress: UploadProgress, *, content_type: str, attempt: int
    ) -> None:
        source = state.source
        super().__init__(source.path or source.filename, content_type=content_type)
        self._size = source.size
        self._state = state
        self._progress = progress
        self._attempt = attempt
        self._loop: asyncio.AbstractEventLoop | None = None

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed upload body cannot be decoded in memory")

    @property
    def size(self) -> int:
        """The planned size: the Content-Length sent."""
        return self._state.source.size

    @property
    def source(self) -> UploadSource:
        """The file sent."""
        return self._state.source

    def _started(self) -> None:
        source = self._state.source
        self._progress.relay.emit(
            FileStarted(
                filename=source.filename,
                size=source.size,
                method=self._state.method,
                attempt=self._attempt,
            )
        )

    def _sent(self, sent: int, delta: int) -> None:
        """Count a step's bytes and queue its progress event."""
        source = self._state.source
        self._progress.bytes_sent += delta
        self._progress.relay.emit(
            BytesSent(filename=source.filename, size=source.size, sent=sent, delta=delta)
        )

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)


class FilePayload(SourcePayload, ThreadedBody):
    """A file's bytes for one attempt: opened, streamed in steps, closed, all in write().

    A file that shrinks stops the send; one that grew is caught before its last step goes out,
    so storage never keeps a cut version.
    """

    def started(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started()

    def send_blocking(self, sock: socket.socket, stop: threading.Event) -> None:
        """From a worker thread: read into one buffer and sent, 1 MiB at a time over TLS
        (OpenSSL encrypts from the buffer straight into the socket), 4 MiB at a time on a plain
        socket made blocking, or there by the kernel's ``sendfile`` up to 64 MiB. Progress goes
        to the event loop once per 4 MiB, which also learns of a changed file by the
        exception."""
        loop = self._loop
        assert loop is not None, "started() runs first, on the event loop"
        source = self._state.source
        assert source.path is not None, "a file body is built for a source with a path"
        with source.path.open("rb", buffering=0) as fh:
            if isinstance(sock, ssl.SSLSocket):
                self._read_send_blocking(loop, sock, fh, stop, _TLS_READ)
                return
            with _blocking(sock):
                if hasattr(os, "sendfile") and source.size <= _SENDFILE_MAX:
                    self._sendfile_blocking(loop, sock, fh, stop)
                else:
                    self._read_send_blocking(loop, sock, fh, stop, _PLAIN_READ)

    def _read_send_blocking(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        fh: BinaryIO,
        stop: threading.Event,
        step: int,
    ) -> None:
        """Reads of ``step`` bytes into one buffer, each sent at once; progress and the stop
        flag once per 4 MiB.

        The last read asks one byte more, so a file that grew is caught before its last byte
        goes out; a read that comes back empty early means it shrank.
        """
        total = self._state.source.size
        buf = aligned_buffer(step + 1)
        full = buf[:step]
        readinto, sendall = fh.readinto, sock.sendall  # type: ignore[attr-defined]
        sent = 0
        while sent < total and not stop.is_set():
            start, end = sent, min(sent + CHUNK_SIZE, total)
            while sent < end:
                left = total - sent
                if left > step:
                    n = readinto(full)
                    if n == step:
                        sendall(full)
                        sent += n
                        continue
                else:
                    n = _read_into(fh, buf[: left + 1])
                    if n > left:
                        self._changed(f"more than {total} bytes")
                if not n:
                    self._changed(f"{sent} bytes")
                sendall(buf[:n])
                sent += n
            loop.call_soon_threadsafe(self._sent, sent, sent - start)

    def _sendfile_blocking(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        fh: BinaryIO,
        stop: threading.Event,
    ) -> None:
        """The kernel copies the file to the socket, 4 MiB per step (one progress event each);
        the size is checked before the last step, and a step cut short means it shrank."""
        size = self._state.source.size
        out, src = sock.fileno(), fh.fileno()
        sent = 0
        while sent < size and not stop.is_set():
            want = min(CHUNK_SIZE, size - sent)
            if want == size - sent:  # a file that grew must not be stored cut
                now = os.fstat(src).st_size
                if now != size:
                    self._changed(f"{now} bytes")
            done = _sendfile(out, src, sent, want)
            sent += done
            loop.call_soon_threadsafe(self._sent, sent, done)
            if done < want:
                self._changed(f"{sent} bytes")

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        source = self._state.source
        assert source.path is not None, "a file body is built for a source with a path"
        self._started()
        total = source.size if content_length is None else min(content_length, source.size)
        if total <= _WHOLE_MAX:
            await self._send_whole(writer, total)
            return
        fh = await open_file(source.path, "rb")
        try:
            sent = 0
            transport = getattr(writer, "transport", None)
            if _plain_tcp(transport):
                sent = await self._send_file(writer, transport, fh, total)
            if sent < total:
                await self._send_chunks(writer, fh, sent, total)
        finally:
            # Closing waits for a read still running in its thread (the buffered file's lock):
            # it must happen even if cancelled, and no read outlives the file.
            fh.close()

    async def _send_whole(self, writer: AbstractStreamWriter, total: int) -> None:
        """A small file: opened, read (one byte more, to catch growth) and closed in one thread
        call, then written at once; cheaper than a sendfile for the typical caption or image."""
        path = self._state.source.path
        assert path is not None, "a file body is built for a source with a path"
        try:
            data = await asyncio.to_thread(_read_head, path, total + 1)
            # The size now also shows growth that raced with the read (a progress callback
            # appending, say), as it would before a large file's last step.
            now = path.stat().st_size
        except OSError as exc:
            self._state.changed = unreadable_message(self._state.source, exc)
            raise BodyAbort(FileChanged(self._state.changed)) from exc
        if now != self._state.source.size:
            self._changed(f"{now} bytes")
        if len(data) != total:  # changed and changed back meanwhile
            self._changed(f"{len(data)} bytes when read")
        await writer.write(data)
        self._sent(total, total)

    async def _send_file(
        self, writer: AbstractStreamWriter, transport: asyncio.Transport, fh: BinaryIO, total: int
    ) -> int:
        """Let the kernel copy the file to the socket; the bytes sent (0: sendfile unavailable,
        e.g. on an event loop without it, and the caller streams instead)."""
        loop = asyncio.get_running_loop()
        send_headers = getattr(writer, "send_headers", None)
        if send_headers is not None:
            send_headers()  # aiohttp holds the head back to join it with the first body write
        sent = 0
        while sent < total:
            want = min(CHUNK_SIZE, total - sent)
            if want == total - sent:  # a file that grew must not be stored cut
                now = os.fstat(fh.fileno()).st_size
                if now != self._state.source.size:
                    self._changed(f"{now} bytes")
            try:
                done = await loop.sendfile(transport, fh, sent, want, fallback=False)
            except (asyncio.SendfileNotAvailableError, NotImplementedError):
                if sent:
                    raise
                return 0
            sent += done
            self._sent(sent, done)
            if done < want:
                self._changed(f"{sent} bytes")
        return sent

    async def _send_chunks(
        self, writer: AbstractStreamWriter, fh: BinaryIO, sent: int, total: int
    ) -> None:
        """Read in a worker thread and write, the next step read while this one is written."""
        loop = asyncio.get_running_loop()
        fh.seek(sent)

        def read_next() -> asyncio.Future[bytes]:
            want = min(CHUNK_SIZE, total - sent)
            # On the last step read one byte more: a file that grew must not be stored cut.
            return loop.run_in_executor(None, fh.read, want + 1 if want == total - sent else want)

        reading = read_next()
        try:
            while True:
                want = min(CHUNK_SIZE, total - sent)
                chunk = await reading
                if len(chunk) > want:
                    self._changed(f"more than {self._state.source.size} bytes")
                if len(chunk) < want:
                    self._changed(f"{sent + len(chunk)} bytes")
                sent += len(chunk)
                if sent < total:
                    reading = read_next()
                await writer.write(chunk)
                self._sent(sent, len(chunk))
                if sent >= total:
                    return
        finally:
            if not reading.done():
                # Abandoned (cancelled or failed): its result is not wanted, nor its error.
                reading.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _changed(self, now: str) -> None:
        self._state.changed = changed_message(self._state.source, now)
        raise BodyAbort(FileChanged(self._state.changed))


@contextlib.contextmanager
def _blocking(sock: socket.socket) -> Iterator[None]:
    """Make a plain socket blocking while a body goes out, its timeout becoming the send
    timeout: each send then waits for room in the kernel instead of a ``poll`` and a partial
    send per wake-up (measured: ~20 % more MB/s at equal CPU).

    Raises:
        TimeoutError: the send timeout passed with no room in the socket.
    """
    timeout = sock.gettimeout()
    sock.settimeout(None)
    if timeout:
        seconds = int(timeout)
        limit = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    try:
        yield
    except BlockingIOError:  # SO_SNDTIMEO ran out
        raise TimeoutError("timed out sending") from None
    finally:
        sock.settimeout(timeout)


def _sendfile(out: int, src: int, offset: int, count: int) -> int:
    """Send ``count`` bytes of ``src`` from ``offset`` on the blocking socket ``out``; fewer
    only if the file ends first."""
    done = 0
    while done < count:
        n = os.sendfile(out, src, offset + done, count - done)
        if not n:
            break
        done += n
    return done


def checked_by_body(source: UploadSource) -> bool:
    """Whether a signed PUT's body itself finds a changed or vanished file before its first
    byte goes out (a small file is read whole first), so no stat is needed beforehand."""
    return source.path is not None and source.url is None and source.size <= _WHOLE_MAX


def _read_head(path: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of a file (fewer only at its end), closed before
    returning."""
    with path.open("rb") as fh:  # a buffered read goes on to ``limit`` or the end
        return fh.read(limit)


def _read_into(fh: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``fh`` unless the file ends first; the bytes read."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _plain_tcp(transport: object) -> TypeGuard[asyncio.Transport]:
    """Whether the connection is a plain TCP socket the kernel can ``sendfile`` into."""
    return (
        isinstance(transport, asyncio.Transport)
        and transport.get_extra_info("sslcontext") is None
        and transport.get_extra_info("socket") is not None
    )


class MemoryPayload(FilePayload):
    """In-memory bytes for one attempt (a :class:`~runcomfy_async.BytesSource` or
    ``TextSource``): sent in steps with progress, whole again on a retry. Nothing can change."""

    def send_blocking(self, sock: socket.socket, stop: threading.Event) -> None:
        """From a worker thread: the bytes in slices as a file's reads would be (1 MiB over
        TLS, 4 MiB on a plain socket), progress once per 4 MiB."""
        loop = self._loop
        assert loop is not None, "started() runs first, on the event loop"
        view = memoryview(self._data())
        step = _TLS_READ if isinstance(sock, ssl.SSLSocket) else _PLAIN_READ
        sent = reported = 0
        while sent < len(view) and not stop.is_set():
            sock.sendall(view[sent : sent + step])
            sent = min(sent + step, len(view))
            if sent - reported >= CHUNK_SIZE or sent == len(view):
                loop.call_soon_threadsafe(self._sent, sent, sent - reported)
                reported = sent

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        self._started()
        view = memoryview(self._data())
        for start in range(0, len(view), CHUNK_SIZE):
            step = view[start : start + CHUNK_SIZE]
            await writer.write(step)
            self._sent(start + len(step), len(step))

    def _data(self) -> bytes:
        data = self._state.source.data
        assert data is not None, "a memory body is built for a source with data"
        return data


class FormPayload(Payload, ThreadedBody):
    """A ``multipart/form-data`` body with the single field ``file``: a head, the file, a tail.

    Its exact size is known, so it goes with a Content-Length; the file inside is sent like a
    signed PUT's (``sendfile``, steps read ahead, or from a worker thread).
    """

    _autoclose = True

    def __init__(self, file: FilePayload) -> None:
        boundary = secrets.token_hex(16)
        source = file.source
        disposition = content_disposition_header(
            "form-data", name="file", filename=source.filename
        )
        self._head = (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: {file.content_type}\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._file = file
        super().__init__(
            source.filename, content_type=f"multipart/form-data; boundary={boundary}"
        )
        self._size = len(self._head) + file.size + len(self._tail)

    @property
    def size(self) -> int:
        """Head, file and tail: the Content-Length sent."""
        return len(self._head) + self._file.size + len(self._tail)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file body cannot be decoded in memory")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await writer.write(self._head)
        await self._file.write_with_length(writer, None)
        await writer.write(self._tail)

    def started(self) -> None:
        self._file.started()

    def send_blocking(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(self._head)
        self._file.send_blocking(sock, stop)
        sock.sendall(self._tail)


def multipart(state: FileState, progress: UploadProgress) -> FormPayload:
    """A fresh ``multipart/form-data`` body with the single field ``file`` (the direct upload)."""
    if state.changed is not None:
        raise FileChanged(state.changed)
    state.attempts += 1
    source = state.source
    kind = MemoryPayload if source.data is not None else FilePayload
    return FormPayload(
        kind(state, progress, content_type=source.content_type, attempt=state.attempts)
    )
