"""The transfer paths besides the default one: the read-and-write path uploads take where the
kernel cannot ``sendfile`` (TLS, or an event loop without it such as uvloop's), and the checks
on a caller's own TLS context."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import ssl
from pathlib import Path

import aiohttp
import pytest
import uvloop

from runcomfy_async import ConfigurationError, FailureReason, RunComfy, UploadError
from runcomfy_async._upload_body import CHUNK_SIZE
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.trainer_jobs import jobs_of
from runcomfy_async.types.uploads import BytesSent, FileStarted, UploadEvent


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


async def _grown(tmp: Path) -> UploadError:
    async with Emulator(rate_limit=None) as emu, emu.client(rate=1000.0, burst=100) as rc:
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
        assert "grows.mp4" not in emu.stored_files(ds.id)
        return caught.value


def test_file_growing_during_a_stepped_upload_is_not_stored_cut(tmp_path: Path) -> None:
    """The read path reads one byte past the planned end on its last step: growth is caught."""
    error = uvloop.run(_grown(tmp_path))
    (failed,) = error.report.failed
    assert failed.reason is FailureReason.FILE_CHANGED


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
