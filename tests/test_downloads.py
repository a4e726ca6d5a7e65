"""Artifact downloads: safe names, streaming to disk, resume with Range, no token to storage."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async import (
    DownloadError,
    NotFoundError,
    RetryPolicy,
    RunComfy,
    TransportError,
    ValidationError,
)
from runcomfy_async._downloads import CHUNK, DownloadProgress, plan_paths, safe_name
from runcomfy_async.testing import Emulator, RequestRecord
from runcomfy_async.testing.trainer_jobs import JobStore, jobs_of
from runcomfy_async.types.jobs import Artifact, artifacts_from_wire

CONFIG_TEXT = """\
job: extension
config:
  name: my_lora
  process:
  - type: sd_trainer
    training_folder: /app/ai-toolkit/output
    datasets: []
"""


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator whose jobs never leave the queue: only artifacts a test adds exist."""
    async with Emulator(rate_limit=None) as emulator:
        jobs_of(emulator.state).queue_seconds = 1e9
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client of the emulator without client-side pacing."""
    async with emu.client(rate=1000.0, burst=100) as client:
        yield client


def new_job(emu: Emulator) -> tuple[JobStore, str]:
    """A queued job in the emulator's store."""
    store = jobs_of(emu.state)
    return store, store.submit(CONFIG_TEXT, "ADA_80_PLUS").id


def files_under(root: Path) -> list[Path]:
    """Every file below ``root``, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def storage_requests(emu: Emulator) -> list[RequestRecord]:
    """Log records of requests to object storage."""
    return [r for r in emu.log if r.api == "storage"]


# -- names (pure) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("model.safetensors", "model.safetensors"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("..", "artifact"),
        ("", "artifact"),
        ("dir/", "artifact"),
        (".bashrc", "bashrc"),
        ("-rf", "rf"),
        ("a b$c\x00d.jpg", "a_b_c_d.jpg"),
        ("con.txt", "_con.txt"),
        ("trailing...", "trailing"),
        ("x" * 300 + ".safetensors", "x" * 138 + ".safetensors"),
    ],
)
def test_safe_name(raw: str, expected: str) -> None:
    """Untrusted names lose directories, odd characters and device names, and are capped."""
    assert safe_name(raw) == expected


def test_plan_paths_dedupes_and_stays_inside(tmp_path: Path) -> None:
    """Clashing names (also case-only and after sanitising) get suffixes; all stay in dest."""
    names = ["m.bin", "M.BIN", "../m.bin", "/abs/m.bin", "m_2.bin", "", ""]
    artifacts = [
        Artifact(kind="checkpoints", url=f"https://h/{i}", name=n) for i, n in enumerate(names)
    ]
    artifacts.append(Artifact(kind="../../evil", url="https://h/x", name="m.bin"))
    paths = plan_paths(tmp_path, artifacts)
    relative = [p.relative_to(tmp_path.resolve()).as_posix() for p in paths]
    assert relative == [
        "checkpoints/m.bin",
        "checkpoints/M_2.BIN",
        "checkpoints/m_3.bin",
        "checkpoints/m_4.bin",
        "checkpoints/m_2_2.bin",
        "checkpoints/checkpoints_6",
        "checkpoints/checkpoints_7",
        "evil/m.bin",
    ]
    assert len({r.casefold() for r in relative}) == len(relative)


def test_plan_paths_suffix_never_reuses_a_taken_name(tmp_path: Path) -> None:
    """A suffixed name skips over names already taken by other artifacts."""
    artifacts = [
        Artifact(kind="samples", url="https://h/1", name="a.jpg"),
        Artifact(kind="samples", url="https://h/2", name="a_2.jpg"),
        Artifact(kind="samples", url="https://h/3", name="a.jpg"),
    ]
    assert [p.name for p in plan_paths(tmp_path, artifacts)] == ["a.jpg", "a_2.jpg", "a_3.jpg"]


def test_plan_paths_refuses_a_symlink_out_of_dest(tmp_path: Path) -> None:
    """A kind folder that is a symlink leading outside dest is refused, nothing written."""
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "samples").symlink_to(outside)
    with pytest.raises(ValidationError, match="outside"):
        plan_paths(dest, [Artifact(kind="samples", url="https://h/1", name="a.jpg")])


def test_artifacts_from_wire_reads_every_documented_shape() -> None:
    """URL strings, objects with url/path, a single config object; non-URLs are skipped."""
    artifacts = artifacts_from_wire(
        {
            "checkpoints": [
                {"path": "https://s/x/m_000001500.safetensors", "step": 1500},
                "https://s/x/m_000002000.safetensors?sig=abc",
                {"path": "not a url"},
                42,
            ],
            "config": {"url": "https://s/x/config.yaml"},
            "samples": [{"url": "https://s/x/a.jpg", "step": "1500", "name": "../../a.jpg"}],
            "notes": "text",
        }
    )
    assert [(a.kind, a.name, a.step) for a in artifacts] == [
        ("checkpoints", "m_000001500.safetensors", 1500),
        ("checkpoints", "m_000002000.safetensors", None),
        ("config", "config.yaml", None),
        ("samples", "../../a.jpg", 1500),
    ]
    assert artifacts[1].key == ("checkpoints", "https://s/x/m_000002000.safetensors")
    bare = artifacts_from_wire(["https://s/y/..%2F..%2Fetc%2Fpasswd"])
    assert [(a.kind, a.name) for a in bare] == [("other", "../../etc/passwd")]
    assert artifacts_from_wire(None) == ()


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hostile_names_land_inside_dest(emu: Emulator, rc: RunComfy, tmp_path: Path) -> None:
    """Traversal, absolute and duplicate names from the server become distinct files in dest."""
    store, job_id = new_job(emu)
    hostile = ["../../etc/passwd", "/etc/passwd", "dup.bin", "dup.bin", "..", "C:\\x\\y.bin"]
    payloads = {}
    for i, name in enumerate(hostile):
        data = f"artifact {i}".encode()
        payloads[i] = data
        store.add_artifact(job_id, "samples", name, data)
    dest = tmp_path / "a" / "dest"
    paths = await rc.jobs.get(job_id).download(dest)
    assert [p.name for p in paths] == [
        "passwd", "passwd_2", "dup.bin", "dup_2.bin", "samples_5", "y.bin"
    ]
    for i, path in enumerate(paths):
        assert path.resolve().is_relative_to(dest.resolve())
        assert path.read_bytes() == payloads[i]
    assert files_under(tmp_path) == sorted(paths)


@pytest.mark.asyncio
async def test_interrupted_download_resumes_with_range(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """A download cut off mid-file leaves a .part; the next one sends Range and gets 206."""
    store, job_id = new_job(emu)
    data = random.Random(1).randbytes(3 * CHUNK + 12345)
    store.add_artifact(job_id, "checkpoints", "big.safetensors", data)
    job = rc.jobs.get(job_id)
    dest = tmp_path / "out"

    def cut(event: DownloadProgress) -> None:
        """Cancel the whole download after the first MiB reached the disk."""
        if event.done < len(data):
            task.cancel()

    task = asyncio.create_task(job.download(dest, progress=cut))
    with pytest.raises(asyncio.CancelledError):
        await task
    part = dest / "checkpoints" / "big.safetensors.part"
    partial = part.stat().st_size
    assert 0 < partial < len(data)
    assert not (dest / "checkpoints" / "big.safetensors").exists()

    events: list[DownloadProgress] = []
    (path,) = await job.download(dest, progress=events.append)
    assert path.read_bytes() == data
    assert not part.exists()
    last = storage_requests(emu)[-1]
    assert last.headers.get("Range") == f"bytes={partial}-"
    # Only the rest was transferred (a 200 would have restarted the count from 0).
    assert events[0].done > partial
    assert events[-1].done == events[-1].total == len(data)


@pytest.mark.asyncio
async def test_complete_part_file_is_just_renamed(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """A .part holding every byte (416 to its Range request) is renamed, not fetched again."""
    store, job_id = new_job(emu)
    store.add_artifact(job_id, "config", "config.yaml", b"job: extension\n")
    part = tmp_path / "config" / "config.yaml.part"
    part.parent.mkdir()
    part.write_bytes(b"job: extension\n")
    part.with_name("config.yaml.part.validator").write_text(await _last_modified(rc, job_id))
    events: list[DownloadProgress] = []
    (path,) = await rc.jobs.get(job_id).download(tmp_path, progress=events.append)
    assert path.read_bytes() == b"job: extension\n"
    assert storage_requests(emu)[-1].headers.get("Range") == "bytes=15-"
    assert events == []
    assert list(part.parent.iterdir()) == [path]  # no .part, no validator left behind


async def _last_modified(rc: RunComfy, job_id: str) -> str:
    """The Last-Modified the artifact host sends for the job's config."""
    (config,) = [a for a in (await rc.jobs.get(job_id).result()).artifacts if a.kind == "config"]
    async with aiohttp.ClientSession() as session, session.head(config.url) as resp:
        return resp.headers["Last-Modified"]


@pytest.mark.asyncio
async def test_part_of_another_file_version_is_never_appended_to(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """A .part begun on an older version (If-Range fails) or of unknown origin is replaced whole."""
    store, job_id = new_job(emu)
    store.add_artifact(job_id, "config", "config.yaml", b"job: extension\nversion: 2\n")
    part = tmp_path / "config" / "config.yaml.part"
    part.parent.mkdir()
    part.write_bytes(b"OLD-VERSION")
    part.with_name("config.yaml.part.validator").write_text("Wed, 01 Jan 2020 00:00:00 GMT")
    (path,) = await rc.jobs.get(job_id).download(tmp_path)
    assert path.read_bytes() == b"job: extension\nversion: 2\n"
    sent = storage_requests(emu)[-1].headers
    assert sent.get("If-Range") == "Wed, 01 Jan 2020 00:00:00 GMT"
    part.write_bytes(b"NO-VALIDATOR")  # a stray .part nobody can vouch for
    path.unlink()
    (path,) = await rc.jobs.get(job_id).download(tmp_path)
    assert path.read_bytes() == b"job: extension\nversion: 2\n"
    assert "Range" not in storage_requests(emu)[-1].headers


@pytest.mark.asyncio
async def test_stale_part_longer_than_the_file_starts_over(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """A .part that cannot belong to this file is discarded and the file fetched whole."""
    store, job_id = new_job(emu)
    store.add_artifact(job_id, "samples", "a.jpg", b"fresh")
    part = tmp_path / "samples" / "a.jpg.part"
    part.parent.mkdir()
    part.write_bytes(b"something much longer than the real file")
    (path,) = await rc.jobs.get(job_id).download(tmp_path)
    assert path.read_bytes() == b"fresh"


@pytest.mark.asyncio
async def test_reset_connection_is_retried(emu: Emulator, rc: RunComfy, tmp_path: Path) -> None:
    """A connection reset by storage is retried; the file still arrives whole."""
    store, job_id = new_job(emu)
    store.add_artifact(job_id, "samples", "a.jpg", b"abc" * 1000)
    rule = emu.inject("reset", api="storage", count=1)
    (path,) = await rc.jobs.get(job_id).download(tmp_path)
    assert rule.fired == 1
    assert path.read_bytes() == b"abc" * 1000


@pytest.mark.asyncio
async def test_expired_url_is_signed_again(emu: Emulator, rc: RunComfy, tmp_path: Path) -> None:
    """A 403 from storage (expired URL) fetches a fresh result once and downloads with it."""
    store, job_id = new_job(emu)
    store.add_artifact(job_id, "samples", "a.jpg", b"xyz")
    emu.inject("expire_url", api="storage", count=1)
    (path,) = await rc.jobs.get(job_id).download(tmp_path)
    assert path.read_bytes() == b"xyz"
    results = [r for r in emu.log if r.path.endswith("/result")]
    assert len(results) == 2


@pytest.mark.asyncio
async def test_missing_artifact_fails_with_the_storage_error(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """A file storage no longer has raises DownloadError from NotFoundError; the others land."""
    store, job_id = new_job(emu)
    store.add_artifact(job_id, "samples", "gone.jpg", b"1")
    store.add_artifact(job_id, "samples", "kept.jpg", b"2")
    blob = emu.state.storage.blob_path(store.artifacts(job_id)[0].key)
    assert blob is not None
    blob.unlink()
    with pytest.raises(DownloadError, match="No object") as caught:
        await rc.jobs.get(job_id).download(tmp_path, concurrency=1)
    assert isinstance(caught.value.__cause__, NotFoundError)
    assert (tmp_path / "samples" / "kept.jpg").read_bytes() == b"2"
    signature = storage_requests(emu)[0].query.split("sig=")[1]
    assert signature not in str(caught.value)


@pytest.mark.asyncio
async def test_no_token_goes_to_storage(emu: Emulator, rc: RunComfy, tmp_path: Path) -> None:
    """Artifact GETs carry no Authorization header; the API calls do."""
    store, job_id = new_job(emu)
    for i in range(5):
        store.add_artifact(job_id, "samples", f"{i}.jpg", os.urandom(100))
    await rc.jobs.get(job_id).download(tmp_path, concurrency=3)
    storage = storage_requests(emu)
    assert len(storage) == 5
    assert not any(r.authorized for r in storage)
    assert all(r.authorized for r in emu.log if r.api == "trainer")


@pytest.mark.asyncio
async def test_storage_5xx_is_retried_then_gives_up_keeping_part(
    emu: Emulator, tmp_path: Path
) -> None:
    """A 503 is retried; storage that keeps failing ends in DownloadError naming the resume."""
    store, job_id = new_job(emu)
    store.add_artifact(job_id, "samples", "a.jpg", b"abc")
    retry = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)
    async with emu.client(rate=1000.0, burst=100, retry=retry) as client:
        emu.inject("503", api="storage", count=1)
        (path,) = await client.jobs.get(job_id).download(tmp_path / "one")
        assert path.read_bytes() == b"abc"
        emu.clear_faults()
        emu.inject("reset", api="storage")
        with pytest.raises(DownloadError, match="resumes") as caught:
            await client.jobs.get(job_id).download(tmp_path / "two")
    cause = caught.value.__cause__
    assert isinstance(cause, TransportError)
    assert "gave up after 3 attempts" in "\n".join(cause.__notes__)
    assert not (tmp_path / "two" / "samples" / "a.jpg").exists()
