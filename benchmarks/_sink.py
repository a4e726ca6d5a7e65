"""A receiver that is never the pacing party: HTTP/1.1 just enough for uploads and downloads.

A raw asyncio ``BufferedProtocol`` (1 MiB page-aligned receive buffer, bodies counted and
dropped, never copied or parsed) standing in for both the Trainer API and object storage in the
throughput benchmark. It answers:

- ``POST /prod/v1/trainers/datasets``: a dataset id.
- ``POST .../datasets/{id}/get-upload-endpoint``: signed-URL targets pointing back at this sink.
- ``POST .../datasets/{id}/upload`` (the direct multipart upload) and ``PUT /storage/...`` (a
  signed-URL upload): the body, framed by ``Content-Length`` or chunked, is read and dropped.
- ``GET .../datasets/{id}/status``: the files received so far with their body sizes (the
  benchmark checks every transfer arrived whole; a multipart body's size includes its framing).
- ``GET /blob/{n}``: ``n`` bytes from memory, with ``Range: bytes=a-`` (206) and a fixed
  ``Last-Modified``, as object storage serves a download.

With ``--tls CERT KEY`` it serves the same over TLS (asyncio's TLS transport). With
``--workers N`` it forks N processes sharing the port (``SO_REUSEPORT``). It prints its port on
stdout and runs until terminated; ``GET /_cpu`` gives its CPU seconds so far (the benchmark
reports what the receiver spent beside what the client spent).

Run: ``python -m benchmarks._sink [--port P] [--tls CERT KEY] [--workers N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import socket
import ssl
import sys
import threading
from typing import Final

from runcomfy_async._buffers import aligned_buffer

BUFFER: Final = 1 << 20
#: One block of download bytes, written over and over (never a whole file in memory).
_BLOCK: Final = aligned_buffer(4 << 20)
_BLOCK[:] = os.urandom(len(_BLOCK))
_LAST_MODIFIED: Final = "Mon, 30 Nov 2026 00:00:00 GMT"
_DATASETS: Final = "/prod/v1/trainers/datasets"
_ROUTE: Final = re.compile(rf"{_DATASETS}/([^/]+)/(get-upload-endpoint|upload|status)")
_REASONS: Final = {200: "OK", 206: "Partial Content", 404: "Not Found"}
#: Bodies up to this size are kept (the API calls' JSON); larger ones are only counted.
_SMALL: Final = 1 << 16

#: Body sizes received, by dataset id then file name (a multipart body is kept under "upload").
RECEIVED: dict[str, dict[str, int]] = {}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sink:
    """One connection's requests: parse a head, drop its body (kept only if small JSON), answer.

    Transport-agnostic: :class:`AsyncSink` feeds it from asyncio, :func:`serve_threads` from a
    blocking socket; each supplies :meth:`send` and :meth:`send_body`.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.view = aligned_buffer(BUFFER)
        self.head = bytearray()
        self.request: tuple[str, str, dict[str, str]] | None = None
        self.state = "head"  # head | length | size | data | crlf | trailer
        self.left = 0  # bytes still to drop in the current state
        self.line = bytearray()  # a chunk-size line, possibly split across reads
        self.body = 0
        self.small = bytearray()  # a short body (an API call's JSON)

    def send(self, data: bytes) -> None:
        """Write an answer's bytes."""
        raise NotImplementedError

    def send_body(self, size: int) -> None:
        """Write ``size`` download bytes after a head."""
        raise NotImplementedError

    def buffer_updated(self, nbytes: int) -> None:
        data = self.view[:nbytes]
        while data:
            state = self.state
            if state == "head":
                data = self._read_head(data)
            elif state in ("length", "data"):
                take = min(self.left, len(data))
                if len(self.small) + take <= _SMALL:
                    self.small += data[:take]
                self.left -= take
                self.body += take
                data = data[take:]
                if self.left == 0:
                    if state == "length":
                        self._answer()
                    else:
                        self.state, self.left = "crlf", 2
            elif state == "crlf":
                take = min(self.left, len(data))
                self.left -= take
                data = data[take:]
                if self.left == 0:
                    self.state = "size"
            else:  # a chunk-size line, or the empty line after the last chunk
                end = bytes(data[:64]).find(b"\n")
                if end < 0:
                    self.line += data
                    return
                self.line += data[:end + 1]
                data = data[end + 1:]
                line = bytes(self.line).strip()
                self.line.clear()
                if state == "trailer":
                    if not line:
                        self._answer()
                    continue
                size = int(line.split(b";")[0], 16)
                self.state, self.left = ("data", size) if size else ("trailer", 0)

    def _read_head(self, data: memoryview) -> memoryview:
        start = max(0, len(self.head) - 3)
        self.head += data
        end = self.head.find(b"\r\n\r\n", start)
        if end < 0:
            return data[len(data):]
        rest = len(self.head) - (end + 4)
        lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
        self.head.clear()
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.request = (method, target, headers)
        self.body = 0
        self.small.clear()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = "size"
        else:
            self.state, self.left = "length", int(headers.get("content-length", "0"))
        if headers.get("expect", "").lower() == "100-continue":
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.state == "length" and self.left == 0:
            self._answer()
        return data[len(data) - rest:]

    def _answer(self) -> None:
        assert self.request is not None
        method, target, headers = self.request
        self.request, self.state = None, "head"
        path = target.split("?", 1)[0]
        if method == "GET" and path.startswith("/blob/"):
            self._download(int(path.rsplit("/", 1)[1]), headers.get("range"))
            return
        status, payload = self._route(method, path)
        body = json.dumps(payload).encode()
        self.send(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )

    def _route(self, method: str, path: str) -> tuple[int, object]:
        if method == "PUT" and path.startswith("/storage/"):
            _, _, dataset, name = path.split("/", 3)
            RECEIVED.setdefault(dataset, {})[name] = self.body
            return 200, {}
        if path == "/_cpu":
            return 200, {"cpu": _cpu()}
        if method == "POST" and path == _DATASETS:
            dataset = f"ds-{len(RECEIVED) + 1}-{os.getpid()}"
            RECEIVED[dataset] = {}
            return 200, {"id": dataset, "name": dataset, "status": "CREATED"}
        match = _ROUTE.fullmatch(path)
        if match is None:
            return 404, {"error": f"no route for {method} {path}"}
        dataset, action = match.groups()
        files = RECEIVED.setdefault(dataset, {})
        if action == "upload":
            files["upload"] = self.body
            return 200, {"message": "uploaded"}
        if action == "status":
            listed = [{"filename": n, "size_bytes": s} for n, s in files.items()]
            return 200, {"id": dataset, "name": dataset, "status": "READY", "files": listed}
        names = json.loads(bytes(self.small))["filenameToByteSize"]
        return 200, {"uploads": {
            name: {
                "upload_url": f"{self.base}/storage/{dataset}/{name}?X-Signature=bench",
                "method": "PUT",
                "headers": {"Content-Type": "application/octet-stream"},
            }
            for name in names
        }}

    def _download(self, size: int, ranged: str | None) -> None:
        """Answer a download: the head, then ``size`` bytes (from ``Range``'s start) streamed."""
        start = int(ranged[6:-1]) if ranged and re.fullmatch(r"bytes=\d+-", ranged) else 0
        status = 206 if start else 200
        head = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Content-Length: {size - start}",
            "Content-Type: application/octet-stream",
            f"Last-Modified: {_LAST_MODIFIED}",
            "Accept-Ranges: bytes",
        ]
        if start:
            head.append(f"Content-Range: bytes {start}-{size - 1}/{size}")
        self.send(("\r\n".join(head) + "\r\n\r\n").encode())
        self.send_body(size - start)


class AsyncSink(Sink, asyncio.BufferedProtocol):
    """The sink as an asyncio protocol: reads land in its 1 MiB buffer, never copied."""

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.transport: asyncio.Transport | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.sending: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=4 << 20)

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()
        if self.sending is not None:
            self.sending.cancel()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def send_body(self, size: int) -> None:
        self.sending = asyncio.get_running_loop().create_task(self._stream(size))

    async def _stream(self, left: int) -> None:
        """Write ``left`` bytes in 4 MiB blocks, waiting whenever the transport is full."""
        transport = self.transport
        assert transport is not None
        while left > 0 and not transport.is_closing():
            await self.can_write.wait()
            n = min(len(_BLOCK), left)
            transport.write(_BLOCK[:n])
            left -= n


class _ThreadSink(Sink):
    """The sink on a blocking socket (plain or TLS), one thread per connection."""

    def __init__(self, base: str, sock: socket.socket) -> None:
        super().__init__(base)
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_body(self, size: int) -> None:
        while size > 0:
            n = min(len(_BLOCK), size)
            self.sock.sendall(_BLOCK[:n])
            size -= n

    def run(self) -> None:
        """Read into the 1 MiB buffer until the peer closes."""
        with contextlib.suppress(OSError), self.sock:
            while n := self.sock.recv_into(self.view):
                self.buffer_updated(n)


async def serve(sock: socket.socket, base: str, context: ssl.SSLContext | None) -> None:
    """Serve on ``sock`` with asyncio until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: AsyncSink(base), sock=sock, ssl=context)
    async with server:
        await server.serve_forever()


def serve_threads(sock: socket.socket, base: str, context: ssl.SSLContext | None) -> None:
    """Serve on ``sock`` with a blocking thread per connection (TLS decrypted by OpenSSL
    straight into the 1 MiB buffer, no event loop in between)."""
    while True:
        conn, _ = sock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def handle(conn: socket.socket = conn) -> None:
            with contextlib.suppress(OSError):
                wrapped = context.wrap_socket(conn, server_side=True) if context else conn
                _ThreadSink(base, wrapped).run()

        threading.Thread(target=handle, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Bind, print the port, serve (in ``--workers`` processes)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--threads", action="store_true", help="blocking sockets, a thread per connection"
    )
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    context = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.tls)
    base = f"{'https' if context else 'http'}://127.0.0.1:{port}"
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            _run(sock, base, context, threads=args.threads)
            return 0
        children.append(pid)
    print(port, flush=True)

    def stop(*_: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    _run(sock, base, context, threads=args.threads)
    return 0


def _run(sock: socket.socket, base: str, context: ssl.SSLContext | None, *, threads: bool) -> None:
    if threads:
        serve_threads(sock, base, context)
    else:
        asyncio.run(serve(sock, base, context))


if __name__ == "__main__":
    sys.exit(main())
