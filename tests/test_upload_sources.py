"""Dataset uploads from code and from URLs: bytes, text captions, remote files streamed through.

A small aiohttp server in the test plays the remote host; the emulator is the dataset service.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import trustme
from aiohttp import web

from runcomfy_async import (
    BytesSource,
    DatasetValidationError,
    FailureReason,
    RunComfy,
    TextSource,
    UploadError,
    UploadReport,
    URLSource,
)
from runcomfy_async._retry import RetryPolicy
from runcomfy_async._transport import THREADED_MIN
from runcomfy_async.resources.datasets import Dataset
from runcomfy_async.testing import Emulator
from runcomfy_async.types.uploads import FileFailed, FileRetrying, UploadEvent

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Remote:
    """A file host on 127.0.0.1: plain files, a redirect, a 404, a liar about sizes, a host that
    refuses HEAD, one that fails once, and a large generated file; it records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.big_size = 0
        self.requests: list[web.Request] = []
        self.flaky_left = 0
        self.url = ""
        self.streaming: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Remote:
        self.streaming = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/files/{name}", self.serve)
        app.router.add_route("*", "/moved/{name}", self.moved)
        app.router.add_route("*", "/liar/{name}", self.liar)
        app.router.add_route("*", "/nohead/{name}", self.nohead)
        app.router.add_route("*", "/flaky/{name}", self.flaky)
        app.router.add_route("*", "/cut/{name}", self.cut)
        app.router.add_route("*", "/big.mp4", self.big)
        app.router.add_route("*", "/unsized.mp4", self.big)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def _body(self, request: web.Request) -> bytes:
        self.requests.append(request)
        name = request.match_info["name"]
        if name not in self.files:
            raise web.HTTPNotFound(text="no such file")
        return self.files[name]

    async def serve(self, request: web.Request) -> web.Response:
        body = self._body(request)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(body))})
        return web.Response(body=body)

    async def moved(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        raise web.HTTPFound(f"/files/{request.match_info['name']}")

    async def liar(self, request: web.Request) -> web.Response:
        body = self._body(request)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(body) + 10)})
        return web.Response(body=body)

    async def nohead(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        if request.method == "HEAD":
            raise web.HTTPMethodNotAllowed("HEAD", ["GET"])
        resp = web.StreamResponse()  # chunked: no Content-Length announced
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    async def flaky(self, request: web.Request) -> web.Response:
        body = self._body(request)
        if request.method == "GET" and self.flaky_left > 0:
            self.flaky_left -= 1
            raise web.HTTPServiceUnavailable()
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(body))})
        return web.Response(body=body)

    async def cut(self, request: web.Request) -> web.StreamResponse:
        """Announces the whole file, sends half of it, then drops the connection."""
        body = self._body(request)
        headers = {"Content-Length": str(len(body))}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp

    async def big(self, request: web.Request) -> web.StreamResponse:
        """``big_size`` generated bytes; at /unsized.mp4 without a size (chunked, no HEAD)."""
        self.requests.append(request)
        unsized = request.path == "/unsized.mp4"
        headers = {} if unsized else {"Content-Length": str(self.big_size)}
        if request.method == "HEAD":
            if unsized:
                raise web.HTTPMethodNotAllowed("HEAD", ["GET"])
            return web.Response(headers=headers)
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        block = bytes(range(256)) * 4096  # 1 MiB, generated once
        left = self.big_size
        while left:
            await resp.write(block[: min(left, len(block))])
            left -= min(left, len(block))
            assert self.streaming is not None
            self.streaming.set()
        await resp.write_eof()
        return resp


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(rate_limit=None, speed=1000.0, max_direct_upload=1000) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    async with emu.client(rate=200.0, burst=50, retry=FAST_RETRY) as client:
        yield client


@pytest_asyncio.fixture
async def ds(rc: RunComfy, emu: Emulator) -> Dataset:
    dataset = await rc.datasets.create("sources")
    emu.clear_log()
    return dataset


@pytest_asyncio.fixture
async def remote() -> AsyncIterator[Remote]:
    async with Remote() as host:
        yield host


@pytest.mark.asyncio
async def test_text_captions_with_images_on_disk_pair_across_the_set(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """Captions written by code pair with images on disk; bytes go direct or by signed URL."""
    (tmp_path / "dog1.png").write_bytes(PNG)
    small = b"GIF89a" + os.urandom(100)
    report = await ds.upload(
        tmp_path / "dog1.png",
        TextSource(name="dog1.txt", text="a photo of sks dog, café"),
        {"dog2.gif": small, "dog2.txt": "a photo of sks dog running"},
        captions=True,
        direct_limit=1000,
    )
    assert report.ok and len(report.uploaded) == 4
    stored = emu.stored_files(ds.id)
    assert stored["dog1.png"] == (len(PNG), sha(PNG))
    caption = "a photo of sks dog, café".encode()
    assert stored["dog1.txt"] == (len(caption), sha(caption))
    assert stored["dog2.gif"] == (len(small), sha(small))
    by_name = {r.filename: r for r in report.uploaded}
    assert by_name["dog1.png"].path == tmp_path / "dog1.png"
    assert by_name["dog1.txt"].path is None


@pytest.mark.asyncio
async def test_large_bytes_go_by_signed_url(ds: Dataset, emu: Emulator) -> None:
    """Bytes above the direct limit are PUT to storage like a large file."""
    data = os.urandom(5000)
    report = await ds.upload(BytesSource(name="big.jpg", data=data), direct_limit=1000)
    assert report.ok
    assert [r.method for r in report.uploaded] == ["signed_url"]
    assert emu.stored_files(ds.id)["big.jpg"] == (5000, sha(data))


@pytest.mark.asyncio
async def test_bad_input_is_refused_before_any_request(ds: Dataset, emu: Emulator) -> None:
    """Every problem with names, types, contents, URLs and caption pairs, listed at once."""
    with pytest.raises(DatasetValidationError) as caught:
        await ds.upload(
            TextSource(name="lonely.txt", text="a caption with no image"),
            BytesSource(name="notes.json", data=b"{}"),
            BytesSource(name="empty.png", data=b""),
            BytesSource(name="sub/dir.png", data=b"x"),
            URLSource(url="ftp://example.com/a.png"),
            URLSource(url="http://127.0.0.1:9/"),
            {"c.jpg": 42},  # type: ignore[dict-item]
            b"raw",  # type: ignore[arg-type]
            captions=True,
        )
    text = str(caught.value)
    assert "lonely.txt: caption without an image" in text
    assert "notes.json: unsupported file type" in text
    assert "empty.png: the file is empty" in text
    assert "'sub/dir.png': not a file name" in text
    assert "not an http(s) URL" in text
    assert "its path names no file; pass a name" in text
    assert "must be str (text) or bytes" in text
    assert "bytes is not something to upload" in text
    assert emu.log == []


@pytest.mark.asyncio
async def test_url_sources_stream_through_redirects_without_the_token(
    ds: Dataset, emu: Emulator, remote: Remote
) -> None:
    """A URL (redirected, or without HEAD support) lands with its exact bytes; the remote never
    sees the API token, and one bad URL fails only itself."""
    a, b, c = os.urandom(4000), os.urandom(2000), b"caption for c"
    remote.files.update({"a.png": a, "b.mp4": b, "c.txt": c})
    events: list[UploadEvent] = []
    report = await ds.upload(
        URLSource(url=f"{remote.url}/moved/a.png"),
        URLSource(url=f"{remote.url}/nohead/b.mp4", name="clip.mp4"),
        URLSource(url=f"{remote.url}/files/c.txt?sig=secret"),
        URLSource(url=f"{remote.url}/files/gone.png"),
        progress=events.append,
        check=False,
        direct_limit=1000,
    )
    stored = emu.stored_files(ds.id)
    assert stored["a.png"] == (len(a), sha(a))
    assert stored["clip.mp4"] == (len(b), sha(b))
    assert stored["c.txt"] == (len(c), sha(c))
    methods = {r.filename: r.method for r in report.uploaded}
    # Streamed URLs always go by signed URL, even small ones; a temporary copy goes by size.
    assert methods == {"a.png": "signed_url", "c.txt": "signed_url", "clip.mp4": "signed_url"}
    (failed,) = report.failed
    assert failed.filename == "gone.png" and failed.reason is FailureReason.SOURCE_FAILED
    assert "404" in (failed.message or "") and "secret" not in str(report)
    assert "secret" not in repr(URLSource(url=f"{remote.url}/files/c.txt?sig=secret"))
    assert any(isinstance(e, FileFailed) and e.filename == "gone.png" for e in events)
    assert remote.requests and all("Authorization" not in r.headers for r in remote.requests)
    assert emu.token not in str([dict(r.headers) for r in remote.requests])


@pytest.mark.asyncio
async def test_url_announcing_another_size_fails_that_file(
    ds: Dataset, emu: Emulator, remote: Remote
) -> None:
    """HEAD says one size, the GET another: the file fails, nothing cut is stored."""
    remote.files["x.png"] = os.urandom(500)
    with pytest.raises(UploadError) as caught:
        await ds.upload(URLSource(url=f"{remote.url}/liar/x.png"))
    (failed,) = caught.value.report.failed
    assert failed.reason is FailureReason.SOURCE_FAILED
    assert "announced 510 bytes" in failed.message
    assert "x.png" not in emu.stored_files(ds.id)


@pytest.mark.asyncio
async def test_url_failing_once_is_fetched_again_and_resume_skips_it(
    ds: Dataset, emu: Emulator, remote: Remote
) -> None:
    """A 503 from the remote retries the file from the start; a second run skips it."""
    data = os.urandom(3000)
    remote.files["f.jpg"] = data
    remote.flaky_left = 1
    events: list[UploadEvent] = []
    source = URLSource(url=f"{remote.url}/flaky/f.jpg")
    report = await ds.upload(source, progress=events.append)
    assert report.ok and report.uploaded[0].attempts == 2
    assert any(isinstance(e, FileRetrying) for e in events)
    assert emu.stored_files(ds.id)["f.jpg"] == (len(data), sha(data))
    again = await ds.upload(
        source, BytesSource(name="g.jpg", data=data), resume=True, direct_limit=1000
    )
    assert [r.filename for r in again.skipped] == ["f.jpg"]
    assert [r.filename for r in again.uploaded] == ["g.jpg"]


@pytest.mark.xdist_group("heavy")
@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["big.mp4", "unsized.mp4"])
async def test_large_url_streams_with_flat_memory(
    ds: Dataset, emu: Emulator, remote: Remote, path: str
) -> None:
    """64 MiB from the remote to storage, streamed (size from HEAD) or copied to a temporary
    file first (no size announced): Python's allocations stay far below the file's size."""
    remote.big_size = 64 << 20
    tracemalloc.start()
    try:
        report = await ds.upload(URLSource(url=f"{remote.url}/{path}"), direct_limit=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.bytes_sent == 64 << 20
    assert emu.stored_files(ds.id)[path][0] == 64 << 20
    assert peak < 16 << 20, f"peak {peak / (1 << 20):.1f} MiB"


@pytest.mark.asyncio
async def test_cancelled_url_upload_stores_nothing(
    ds: Dataset, emu: Emulator, remote: Remote
) -> None:
    """Cancelling mid-stream drops both connections; storage keeps no cut file."""
    remote.big_size = 32 << 20
    task: asyncio.Task[UploadReport] = asyncio.create_task(
        ds.upload(URLSource(url=f"{remote.url}/big.mp4"))
    )
    assert remote.streaming is not None
    await remote.streaming.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "big.mp4" not in emu.stored_files(ds.id)


@pytest.mark.asyncio
async def test_url_that_keeps_failing_fails_only_itself(
    ds: Dataset, emu: Emulator, remote: Remote
) -> None:
    """5xx past the retries: that file fails as SOURCE_FAILED, the others land."""
    remote.files["f.jpg"] = os.urandom(2000)
    remote.flaky_left = 100
    report = await ds.upload(
        URLSource(url=f"{remote.url}/flaky/f.jpg"),
        {"ok.txt": "fine"},
        check=False,
    )
    (failed,) = report.failed
    assert failed.reason is FailureReason.SOURCE_FAILED and "503" in (failed.message or "")
    assert failed.attempts == FAST_RETRY.max_attempts
    assert [r.filename for r in report.uploaded] == ["ok.txt"]
    assert "f.jpg" not in emu.stored_files(ds.id)


@pytest.mark.asyncio
async def test_url_cut_short_is_retried_then_fails_without_storing(
    ds: Dataset, emu: Emulator, remote: Remote
) -> None:
    """A remote that drops the connection mid-file: each attempt fetches again; in the end the
    file fails and storage holds no cut copy."""
    remote.files["c.png"] = os.urandom(300_000)
    report = await ds.upload(URLSource(url=f"{remote.url}/cut/c.png"), check=False)
    (failed,) = report.failed
    assert failed.reason is FailureReason.SOURCE_FAILED
    assert failed.attempts == FAST_RETRY.max_attempts
    gets = [r for r in remote.requests if r.method == "GET"]
    assert len(gets) == FAST_RETRY.max_attempts
    assert "c.png" not in emu.stored_files(ds.id)


@pytest.mark.xdist_group("heavy")
@pytest.mark.asyncio
async def test_bytes_and_urls_over_https(remote: Remote) -> None:
    """Over verified HTTPS, large bytes go from the worker thread (signed PUT and direct
    multipart) and a URL streams through aiohttp's TLS, byte for byte."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    big = os.urandom(THREADED_MIN + 1)
    remote.files["u.mp4"] = big[:5000]
    async with (
        Emulator(rate_limit=None, ssl_context=server) as emu,
        emu.client(rate=1000.0, burst=100, ssl=client) as rc,
    ):
        ds = await rc.datasets.create("tls-sources")
        await ds.upload(BytesSource(name="signed.mp4", data=big), direct_limit=0)
        await ds.upload(
            BytesSource(name="direct.mp4", data=big), URLSource(url=f"{remote.url}/files/u.mp4")
        )
        stored = emu.stored_files(ds.id)
        assert stored["signed.mp4"] == (len(big), sha(big))
        assert stored["direct.mp4"] == (len(big), sha(big))
        assert stored["u.mp4"] == (5000, sha(big[:5000]))
        threaded = [r for r in emu.log if r.headers.get("Connection") == "close"]
        assert len(threaded) == 2
