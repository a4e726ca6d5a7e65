"""Transfers from worker threads on blocking sockets, over HTTP and HTTPS: downloads received by
a thread on pooled keep-alive connections (resume, redirects, a stale pooled connection,
cancellation, error answers) and large uploads sent by one, against the emulator over real
sockets; HTTPS with a throwaway CA (trustme)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from runcomfy_async import (
    DownloadError,
    FailureReason,
    PermissionDeniedError,
    RetryPolicy,
    RunComfy,
    Timeouts,
    TransportError,
    UnsentTransportError,
    UploadError,
    _upload_body,
)
from runcomfy_async._downloads import CHUNK, DownloadProgress, download_artifacts
from runcomfy_async.testing import Emulator, RequestRecord
from runcomfy_async.testing.trainer_jobs import jobs_of
from runcomfy_async.types.jobs import Artifact
from runcomfy_async.types.uploads import BytesSent, FileStarted, UploadEvent
from tests._servers import serving
from tests._tls import tls_contexts

CONFIG_TEXT = "job: extension\nconfig:\n  name: x\n"


@pytest_asyncio.fixture(params=["http", "https"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Emulator, RunComfy]]:
    """The emulator (plain or behind TLS) and a client of it that verifies its certificate."""
    server, client = tls_contexts() if request.param == "https" else (None, None)
    async with Emulator(rate_limit=None, ssl_context=server) as emu, emu.client(
        rate=1000.0, burst=100, ssl=client, retry=RetryPolicy(base_delay=0.01, max_delay=0.02)
    ) as rc:
        jobs_of(emu.state).queue_seconds = 1e9
        yield emu, rc


def _storage(emu: Emulator) -> list[RequestRecord]:
    return [r for r in emu.log if r.api == "storage"]


async def _threads() -> list[str]:
    """Our worker threads still alive a moment after their outcome was delivered."""
    for _ in range(50):
        alive = [t.name for t in threading.enumerate() if t.name.startswith("runcomfy-")]
        if not alive:
            break
        await asyncio.sleep(0.01)
    return alive


def _artifact(emu: Emulator, data: bytes, name: str = "w.safetensors") -> str:
    """A queued job holding one artifact; its id."""
    store = jobs_of(emu.state)
    job_id = store.submit(CONFIG_TEXT, "ADA_80_PLUS").id
    store.add_artifact(job_id, "checkpoints", name, data)
    return job_id


@pytest.mark.asyncio
async def test_download_on_the_thread_path_is_exact_and_reuses_its_connection(
    env: tuple[Emulator, RunComfy], tmp_path: Path
) -> None:
    """A download is received by the worker thread byte for byte, progress once per 4 MiB,
    no token sent; the next one goes on the same kept-alive connection."""
    emu, rc = env
    data = random.Random(1).randbytes(2 * CHUNK + 777)
    job_id = _artifact(emu, data)
    events: list[DownloadProgress] = []
    (path,) = await rc.jobs.get(job_id).download(tmp_path / "a", progress=events.append)
    assert path.read_bytes() == data
    assert [e.done for e in events] == [CHUNK, 2 * CHUNK, len(data)]
    (request,) = _storage(emu)
    assert request.headers["Accept-Encoding"] == "identity"  # the thread's http.client
    assert "Authorization" not in request.headers
    pool = rc.pipeline.transport._pool
    (idle,) = pool._idle.values()
    (conn,) = idle
    (again,) = await rc.jobs.get(job_id).download(tmp_path / "b")
    assert again.read_bytes() == data
    assert pool._idle[next(iter(pool._idle))] == [conn]  # taken, used, given back
    assert await _threads() == []


@pytest.mark.asyncio
async def test_cancelled_thread_download_leaves_an_exact_part_and_resumes(
    env: tuple[Emulator, RunComfy], tmp_path: Path
) -> None:
    """Cancelling mid-body stops the thread before the task returns; the .part holds exactly the
    bytes written, and the next download continues it with Range on the thread path."""
    emu, rc = env
    # Large enough that the cancellation lands mid-body but on a very busy machine (the whole
    # body on disk before the thread saw it is allowed: the resume then finds it complete).
    data = bytes(8 * CHUNK) + random.Random(2).randbytes(5)
    job = rc.jobs.get(_artifact(emu, data))

    def cut(event: DownloadProgress) -> None:
        if event.done < len(data):
            task.cancel()

    task = asyncio.create_task(job.download(tmp_path, progress=cut))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _threads() == []
    part = tmp_path / "checkpoints" / "w.safetensors.part"
    partial = part.read_bytes()
    assert 0 < len(partial) <= len(data)
    assert partial == data[: len(partial)]
    (path,) = await job.download(tmp_path)
    assert path.read_bytes() == data
    last = _storage(emu)[-1]
    assert last.headers["Range"] == f"bytes={len(partial)}-"
    assert last.headers["Accept-Encoding"] == "identity"


@pytest.mark.asyncio
async def test_error_answers_map_as_on_the_aiohttp_path(
    env: tuple[Emulator, RunComfy], tmp_path: Path
) -> None:
    """A 503 is retried, a reset connection too, an unsigned URL's 403 is PermissionDeniedError
    (a missing file's 404 as NotFoundError: tests/test_downloads.py, on this path too)."""
    emu, rc = env
    data = random.Random(3).randbytes(CHUNK + 3)
    job_id = _artifact(emu, data)
    emu.inject("503", api="storage", count=1, retry_after=0)
    emu.inject("reset", api="storage", count=1)
    (path,) = await rc.jobs.get(job_id).download(tmp_path)
    assert path.read_bytes() == data
    missing = Artifact(kind="x", url=f"{emu.url}/storage/artifacts/nope.bin", name="nope.bin")
    with pytest.raises(DownloadError) as caught:
        await download_artifacts(
            rc.pipeline, [missing], tmp_path, timeout=rc.timeouts.for_transfer(), concurrency=1
        )
    assert isinstance(caught.value.__cause__, PermissionDeniedError)
    assert "signed URL" in str(caught.value.__cause__)


@pytest_asyncio.fixture
async def redirector() -> AsyncIterator[tuple[str, list[str]]]:
    """A server whose ``/hop/{n}/{target}`` redirects n times, then to ``target``; and the
    Authorization headers it saw."""
    seen: list[str] = []

    async def hop(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        n = int(request.match_info["n"])
        target = request.match_info["target"]
        if n:
            raise web.HTTPFound(f"/hop/{n - 1}/{target}")
        raise web.HTTPTemporaryRedirect(bytes.fromhex(target).decode())

    app = web.Application()
    app.router.add_get("/hop/{n}/{target}", hop)
    async with serving(app) as base:
        yield base, seen


@pytest.mark.asyncio
async def test_redirects_are_followed_without_a_token(
    env: tuple[Emulator, RunComfy], redirector: tuple[str, list[str]], tmp_path: Path
) -> None:
    """Up to 10 redirects (to another host and scheme too) are followed, never with a token;
    more fail the download."""
    emu, rc = env
    base, seen = redirector
    data = random.Random(4).randbytes(CHUNK + 11)
    job_id = _artifact(emu, data)
    artifacts = (await rc.jobs.get(job_id).result()).artifacts
    (real,) = [a for a in artifacts if a.name == "w.safetensors"]
    timeout = rc.timeouts.for_transfer()
    target = real.url.encode().hex()
    hops = Artifact(kind="x", url=f"{base}/hop/9/{target}", name="w.bin")
    (path,) = (await download_artifacts(
        rc.pipeline, [hops], tmp_path, timeout=timeout, concurrency=1
    )).paths
    assert path.read_bytes() == data
    assert len(seen) == 10
    assert not any(seen)
    assert "Authorization" not in _storage(emu)[-1].headers
    too_many = Artifact(kind="x", url=f"{base}/hop/10/{target}", name="far.bin")
    with pytest.raises(DownloadError) as caught:
        await download_artifacts(
            rc.pipeline, [too_many], tmp_path, timeout=timeout, concurrency=1, check=True
        )
    assert isinstance(caught.value.__cause__, TransportError)
    assert "redirects" in str(caught.value.__cause__)


class _ClosingServer:
    """An HTTP server that answers each connection's first request with keep-alive framing,
    then closes it: what a server whose idle timeout ended does to a pooled connection."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/file.bin"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                self.connections += 1
                with conn:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += conn.recv(4096)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                        b"Last-Modified: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\n%s"
                        % (len(self.body), self.body)
                    )

    @contextlib.contextmanager
    def running(self) -> Iterator[_ClosingServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._sock.close()


@pytest.mark.asyncio
async def test_pooled_connection_closed_by_the_server_is_retried_once(tmp_path: Path) -> None:
    """The second download finds its pooled connection closed: it is sent again on a fresh
    one by the transport (the retry loop, allowed one attempt, never sees a failure)."""
    data = b"0123456789" * 1000
    async with RunComfy("tok", retry=RetryPolicy(max_attempts=1)) as rc:
        with _ClosingServer(data).running() as server:
            timeout = rc.timeouts.for_transfer()
            for name in ("a.bin", "b.bin", "c.bin"):
                artifact = Artifact(kind="x", url=server.url, name=name)
                await download_artifacts(
                    rc.pipeline, [artifact], tmp_path, timeout=timeout, concurrency=1
                )
                assert (tmp_path / "x" / name).read_bytes() == data
            assert server.connections == 3


@pytest.mark.asyncio
async def test_nothing_listening_is_an_unsent_error(tmp_path: Path) -> None:
    """A refused connection maps to UnsentTransportError, as on aiohttp's path."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    async with RunComfy("tok", retry=RetryPolicy(max_attempts=1)) as rc:
        artifact = Artifact(kind="x", url=f"http://127.0.0.1:{port}/f.bin", name="f.bin")
        with pytest.raises(DownloadError) as caught:
            await download_artifacts(
                rc.pipeline, [artifact], tmp_path, timeout=rc.timeouts.for_transfer(),
                concurrency=1,
            )
    assert isinstance(caught.value.__cause__, UnsentTransportError)


@pytest.mark.asyncio
@pytest.mark.parametrize("change", ["grow", "shrink"])
@pytest.mark.parametrize("road", ["sendfile", "reads"])
async def test_plain_http_thread_upload_refuses_a_changed_file(
    change: str, road: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over plain HTTP a large PUT goes from the worker thread on a blocking socket, by
    ``sendfile`` or, above a size (here lowered to force it), by reads and sends; on either
    road a file that grows or shrinks while it is sent fails as changed, nothing cut stored."""
    if road == "reads":
        monkeypatch.setattr(_upload_body, "_SENDFILE_MAX", 0)
    async with Emulator(rate_limit=None) as emu, emu.client(rate=1000.0, burst=100) as rc:
        ds = await rc.datasets.create("changes")
        path = tmp_path / "f.mp4"
        path.write_bytes(os.urandom(3 * CHUNK))
        await ds.upload(path, direct_limit=0)
        (put,) = [r for r in emu.log if r.method == "PUT"]
        assert put.headers["Connection"] == "close"  # the worker thread's own connection
        assert "Authorization" not in put.headers
        ds = await rc.datasets.create("changes-2")
        emu.inject("slow", api="storage", delay=0.01)

        def on_event(event: UploadEvent) -> None:
            if change == "grow" and isinstance(event, FileStarted):
                with path.open("ab") as fh:
                    fh.write(b"more")
            if change == "shrink" and isinstance(event, BytesSent):
                os.truncate(path, CHUNK + 10)

        with pytest.raises(UploadError) as caught:
            await ds.upload(path, direct_limit=0, progress=on_event)
        assert caught.value.report.failed[0].reason is FailureReason.FILE_CHANGED
        assert "f.mp4" not in emu.stored_files(ds.id)
        assert await _threads() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_thread_upload_to_storage_that_stops_reading_times_out(
    scheme: str, tmp_path: Path
) -> None:
    """Storage that takes the head and then stops reading for a long time: the worker thread's
    send gives up once no byte went out for the transfer read timeout (the blocking socket's
    send timeout), and the file fails as a timed-out network failure instead of hanging."""
    server, client = tls_contexts() if scheme == "https" else (None, None)
    path = tmp_path / "big.mp4"
    path.write_bytes(os.urandom(16 << 20))  # far beyond what the socket buffers take
    async with Emulator(rate_limit=None, ssl_context=server) as emu, emu.client(
        rate=1000.0, burst=100, ssl=client, timeout=Timeouts(transfer_read=0.3),
        retry=RetryPolicy(max_attempts=1),
    ) as rc:
        ds = await rc.datasets.create("stalled")
        emu.inject("slow", api="storage", method="PUT", delay=10.0)
        started = time.monotonic()
        with pytest.raises(UploadError) as caught:
            await ds.upload(path, direct_limit=0)
        assert time.monotonic() - started < 8.0  # gave up long before storage would read on
        (failed,) = caught.value.report.failed
        assert failed.reason is FailureReason.NETWORK
        assert "timed out talking to" in failed.message
        assert await _threads() == []
        assert "big.mp4" not in emu.stored_files(ds.id)
