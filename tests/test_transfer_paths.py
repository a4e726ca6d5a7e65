"""The transfer paths besides plain HTTP's: uploads over HTTPS (large files from a worker thread
on a blocking TLS socket), the read-and-write path where the kernel cannot ``sendfile`` (uvloop),
and the checks on a caller's own TLS context. HTTPS runs against the emulator behind TLS with a
certificate from a throwaway CA (trustme) that the client verifies."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import ssl
import threading
import time
from pathlib import Path

import aiohttp
import pytest
import uvloop

from runcomfy_async import (
    ConfigurationError,
    FailureReason,
    RunComfy,
    TransportError,
    UnsentTransportError,
    UploadError,
    UploadReport,
)
from runcomfy_async._transport import (
    THREADED_MIN,
    Credentials,
    Exchange,
    ThreadedBody,
    Timeouts,
    Transport,
)
from runcomfy_async._upload_body import CHUNK_SIZE
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.trainer_jobs import jobs_of
from runcomfy_async.types.uploads import BytesSent, FileStarted, UploadEvent
from tests._tls import tls_contexts


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _round_trip(tmp: Path) -> None:
    """Signed and direct uploads and a download, each checked byte for byte."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=1000.0, burst=100) as rc:
        ds = await rc.datasets.create("uv")
        big = tmp / "big.mp4"
        big.write_bytes(os.urandom(2 * CHUNK_SIZE + 123))
        small = tmp / "small.jpg"
        small.write_bytes(os.urandom(5000))
        events: list[UploadEvent] = []
        report = await ds.upload(big, direct_limit=0, progress=events.append)
        assert report.bytes_sent == big.stat().st_size
        assert [e.delta for e in events if isinstance(e, BytesSent)] == [
            CHUNK_SIZE, CHUNK_SIZE, 123
        ]
        await ds.upload(small)  # direct multipart
        stored = emu.stored_files(ds.id)
        for path in (big, small):
            assert stored[path.name] == (path.stat().st_size, _sha(path.read_bytes()))

        store = jobs_of(emu.state)
        jobs_of(emu.state).queue_seconds = 1e9
        job_id = store.submit("job: extension\nconfig:\n  name: x\n", "ADA_80_PLUS").id
        data = random.Random(3).randbytes(CHUNK_SIZE + 999)
        store.add_artifact(job_id, "checkpoints", "w.safetensors", data)
        (path,) = await rc.jobs.get(job_id).download(tmp / "out")
        assert path.read_bytes() == data


def test_uploads_and_downloads_on_uvloop(tmp_path: Path) -> None:
    """On uvloop (no ``loop.sendfile``) files are read and written in steps, intact."""
    uvloop.run(_round_trip(tmp_path))


async def _fails_as_changed(emu: Emulator, rc: RunComfy, tmp: Path) -> None:
    """A file that grows once its body has started fails as FILE_CHANGED and is not stored:
    the last read asks for one byte past the planned end."""
    ds = await rc.datasets.create("grow")
    path = tmp / "grows.mp4"
    path.write_bytes(os.urandom(3 * CHUNK_SIZE))

    def grow(event: UploadEvent) -> None:
        # At the body's start: its size check before the send has passed, 12 MiB to go.
        if isinstance(event, FileStarted):
            with path.open("ab") as fh:
                fh.write(b"more")

    with pytest.raises(UploadError) as caught:
        await ds.upload(path, direct_limit=0, progress=grow)
    assert caught.value.report.failed[0].reason is FailureReason.FILE_CHANGED
    assert "grows.mp4" not in emu.stored_files(ds.id)


async def _grown(tmp: Path) -> None:
    async with Emulator(rate_limit=None) as emu, emu.client(rate=1000.0, burst=100) as rc:
        await _fails_as_changed(emu, rc, tmp)


def test_file_growing_during_a_stepped_upload_is_not_stored_cut(tmp_path: Path) -> None:
    """On uvloop the file is read in steps; growth is caught all the same."""
    uvloop.run(_grown(tmp_path))


def test_ssl_context_that_does_not_verify_is_refused() -> None:
    """A context with verification off would send the token to anyone: refused up front."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigurationError, match="CERT_REQUIRED"):
        RunComfy("tok", ssl=context)
    with pytest.raises(ConfigurationError, match=r"ssl\.SSLContext"):
        RunComfy("tok", ssl=True)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_ssl_and_a_borrowed_session_are_not_mixed() -> None:
    """A borrowed session verifies with its own connector: passing both is a mistake."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigurationError, match="not both"):
            RunComfy("tok", session=session, ssl=ssl.create_default_context())


@pytest.mark.asyncio
async def test_own_ssl_context_is_used_for_connections() -> None:
    """The owned session's connector carries the caller's context."""
    context = ssl.create_default_context()
    async with RunComfy("tok", ssl=context) as rc:
        connector = rc.session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector._ssl is context
    await asyncio.sleep(0)


# -- HTTPS: the emulator behind TLS ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_https_uploads_and_download_arrive_intact(tmp_path: Path) -> None:
    """Large uploads from the worker thread (a signed PUT, a direct multipart POST), small ones
    through aiohttp, all over verified HTTPS, byte for byte, with progress per 4 MiB step."""
    server, client = tls_contexts()
    async with Emulator(rate_limit=None, ssl_context=server) as emu, emu.client(
        rate=1000.0, burst=100, ssl=client
    ) as rc:
        assert emu.url.startswith("https://")
        ds = await rc.datasets.create("tls")
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(2 * CHUNK_SIZE + 777))
        small = tmp_path / "small.jpg"
        small.write_bytes(os.urandom(3000))
        events: list[UploadEvent] = []
        await ds.upload(big, small, direct_limit=0, progress=events.append)
        await ds.upload(small)
        mid = tmp_path / "mid.mp4"  # direct multipart, large enough for the worker thread
        mid.write_bytes(os.urandom(THREADED_MIN + 1))
        await ds.upload(mid)
        posts = [r for r in emu.log if r.method == "POST" and r.path.endswith("/upload")]
        assert "Connection" not in posts[0].headers  # the small one: aiohttp, kept alive
        assert posts[-1].headers["Connection"] == "close"
        assert "Authorization" in posts[-1].headers  # (the log masks its value)
        assert [e.delta for e in events if isinstance(e, BytesSent) and e.filename == "big.mp4"] \
            == [CHUNK_SIZE, CHUNK_SIZE, 777]
        stored = emu.stored_files(ds.id)
        for path in (big, small, mid):
            assert stored[path.name] == (path.stat().st_size, _sha(path.read_bytes()))
        put = next(r for r in emu.log if r.method == "PUT" and "big.mp4" in r.path)
        assert put.headers["Connection"] == "close"  # the worker thread's own connection
        assert "Authorization" not in put.headers
        assert put.headers["Content-Length"] == str(big.stat().st_size)


@pytest.mark.asyncio
async def test_https_thread_upload_retries_refreshes_and_reports_changes(tmp_path: Path) -> None:
    """The worker-thread PUT goes through the one retry loop: 503s and resets are retried, an
    expired URL is re-signed, a file that grew fails as changed and is not stored."""
    server, client = tls_contexts()
    async with Emulator(rate_limit=None, ssl_context=server) as emu, emu.client(
        rate=1000.0, burst=100, ssl=client
    ) as rc:
        ds = await rc.datasets.create("tls-faults")
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(2 * CHUNK_SIZE + 5))
        emu.inject("503", api="storage", count=1)
        emu.inject("reset", api="storage", count=1)
        emu.inject("expire_url", api="storage", count=1)
        report = await ds.upload(big, direct_limit=0)
        assert report.uploaded[0].attempts >= 4
        assert emu.stored_files(ds.id)["big.mp4"][0] == big.stat().st_size
        await _fails_as_changed(emu, rc, tmp_path)


@pytest.mark.asyncio
async def test_cancelling_an_https_thread_upload_stops_it_promptly(tmp_path: Path) -> None:
    """Cancelling mid-file returns within a second; storage keeps no partial file."""
    server, client = tls_contexts()
    async with Emulator(rate_limit=None, ssl_context=server) as emu, emu.client(
        rate=1000.0, burst=100, ssl=client
    ) as rc:
        ds = await rc.datasets.create("tls-cancel")
        big = tmp_path / "big.mp4"
        with big.open("wb") as fh:
            fh.truncate(1 << 30)
        emu.inject("slow", api="storage", delay=0.02)
        started = asyncio.Event()

        def on_event(event: UploadEvent) -> None:
            if isinstance(event, BytesSent) and event.sent >= 2 * CHUNK_SIZE:
                started.set()

        task: asyncio.Task[UploadReport] = asyncio.create_task(
            ds.upload(big, direct_limit=0, progress=on_event)
        )
        await asyncio.wait_for(started.wait(), 30)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(0.2)
        assert "big.mp4" not in emu.stored_files(ds.id)


class _MustNotSend(ThreadedBody):
    """A body large enough for the worker thread that fails the test if any byte is sent."""

    @property
    def size(self) -> int:
        return THREADED_MIN

    @property
    def content_type(self) -> str:
        return "application/octet-stream"

    def started(self) -> None:
        pass

    def send_blocking(self, sock: socket.socket, stop: threading.Event) -> None:
        raise AssertionError("the body was sent to a server that failed verification")


@pytest.mark.asyncio
async def test_untrusted_certificate_is_refused_on_both_paths() -> None:
    """Verification is never off: a certificate the client's CA did not sign fails an API call
    (aiohttp) and a worker-thread PUT before any byte of the body is sent."""
    server, _ = tls_contexts()
    _, other_ca = tls_contexts()
    async with Emulator(rate_limit=None, ssl_context=server) as emu:
        async with emu.client(rate=1000.0, burst=100, ssl=other_ca) as rc:
            with pytest.raises(TransportError, match="certificate"):
                await rc.datasets.list()
        async with aiohttp.ClientSession() as session:
            transport = Transport(session, Timeouts(), threaded=True, ssl=other_ca)
            put = Exchange(
                method="PUT",
                url=f"{emu.url}/storage/anything?sig=x",
                data=_MustNotSend,
                credentials=Credentials.NONE,
            )
            with pytest.raises(UnsentTransportError, match="certificate"):
                await transport.exchange(put)
