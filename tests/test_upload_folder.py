"""``Dataset.upload_folder``: validation first, batched signed URLs, resume, verify, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from runcomfy_async import errors
from runcomfy_async._client import RunComfy
from runcomfy_async._retry import RetryPolicy
from runcomfy_async.testing import Emulator
from runcomfy_async.types.datasets import DatasetStatus
from runcomfy_async.types.uploads import FailureReason, FileDone, UploadEvent

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


def captioned_folder(root: Path, pairs: int, *, size: int = 64) -> Path:
    """``pairs`` images with their captions, each file a few random bytes."""
    root.mkdir(exist_ok=True)
    for i in range(pairs):
        (root / f"img_{i:04}.jpg").write_bytes(os.urandom(size + i % 7))
        (root / f"img_{i:04}.txt").write_text(f"a photo of sks dog, number {i}")
    return root


def local_files(folder: Path) -> dict[str, tuple[int, str]]:
    """``{name: (size, sha256)}`` of a folder, the shape ``emu.stored_files`` returns."""
    return {
        p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in folder.iterdir()
    }


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit and with a fast clock."""
    async with Emulator(rate_limit=None, speed=1000.0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client with a generous rate (the rate is not the subject of these tests)."""
    async with emu.client(rate=200.0, burst=50, retry=FAST_RETRY) as client:
        yield client


@pytest.mark.asyncio
async def test_a_thousand_files_at_one_request_per_second_cost_five_api_calls(
    tmp_path: Path,
) -> None:
    """1,000 files upload under the real 1 req/s limit with <= 5 API calls, stored intact."""
    folder = captioned_folder(tmp_path / "dogs", 500)
    async with Emulator(rate_limit=1.0, speed=50.0) as emu, emu.client() as rc:
        ds = await rc.datasets.create("dogs")
        emu.clear_log()
        report = await ds.upload_folder(folder)
        api_calls = [r for r in emu.log if r.api == "trainer"]
        assert len(api_calls) <= 5, [(r.method, r.path, r.status) for r in api_calls]
        assert not any(r.status == 429 for r in api_calls)
        assert report.api_calls == len(api_calls)
        assert len(report.uploaded) == 1000
        assert report.ok
        assert report.bytes_sent == sum(p.stat().st_size for p in folder.iterdir())
        assert emu.stored_files(ds.id) == local_files(folder)
        assert (await ds.status()).status is DatasetStatus.READY


@pytest.mark.asyncio
async def test_problems_are_all_reported_before_any_request(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """Missing captions (both ways), bad types, empty files, subfolders: one error, no request."""
    folder = captioned_folder(tmp_path / "set", 3)
    (folder / "img_0001.txt").unlink()
    (folder / "orphan.txt").write_text("no image")
    (folder / "notes.json").write_text("{}")
    (folder / "blank.png").write_bytes(b"")
    (folder / "blank.txt").write_text("caption of nothing")
    (folder / "nested").mkdir()
    (folder / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored, not problems
    ds = await rc.datasets.create("bad")
    emu.clear_log()
    with pytest.raises(errors.DatasetValidationError) as info:
        await ds.upload_folder(folder)
    problems = "\n".join(info.value.problems)
    assert "img_0001.jpg: no caption img_0001.txt" in problems
    assert "orphan.txt: caption without an image or video" in problems
    assert "notes.json: unsupported file type" in problems
    assert "blank.png: the file is empty" in problems
    assert "nested/ is a subfolder" in problems
    assert ".DS_Store" not in problems
    assert len(info.value.problems) == 5
    assert emu.log == []


@pytest.mark.asyncio
async def test_a_missing_or_empty_folder_is_refused(rc: RunComfy, tmp_path: Path) -> None:
    """A path that is not a folder, or a folder with nothing in it, is a validation error."""
    ds = await rc.datasets.create("none")
    with pytest.raises(errors.DatasetValidationError, match="is not a folder"):
        await ds.upload_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.DatasetValidationError, match="holds no files"):
        await ds.upload_folder(tmp_path / "empty")


@pytest.mark.asyncio
async def test_a_rerun_skips_files_already_there_and_resends_changed_ones(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """Resume compares names and sizes: only a new or resized file is sent again."""
    folder = captioned_folder(tmp_path / "set", 10)
    ds = await rc.datasets.create("rerun")
    await ds.upload_folder(folder)
    (folder / "img_0003.txt").write_text("a longer, better caption for number three")
    emu.clear_log()
    report = await ds.upload_folder(folder)
    assert [r.filename for r in report.uploaded] == ["img_0003.txt"]
    assert len(report.skipped) == 19
    assert [r.path for r in emu.log if r.method == "PUT"] == [
        f"/storage/datasets/{ds.id}/img_0003.txt"
    ]
    assert emu.stored_files(ds.id) == local_files(folder)


@pytest.mark.asyncio
async def test_resume_false_sends_everything_again(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """With ``resume=False`` no status is asked first and every file is sent (overwriting)."""
    folder = captioned_folder(tmp_path / "set", 4)
    ds = await rc.datasets.create("again")
    await ds.upload_folder(folder, verify=False)
    emu.clear_log()
    report = await ds.upload_folder(folder, resume=False, verify=False)
    assert len(report.uploaded) == 8
    assert not any(r.path.endswith("/status") for r in emu.log)


@pytest.mark.asyncio
async def test_a_cancelled_upload_resumed_sends_only_the_missing_files(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """Cancel mid-way, run again: the second run PUTs exactly the files not yet stored."""
    folder = captioned_folder(tmp_path / "set", 100)
    ds = await rc.datasets.create("resumable")
    emu.inject("slow", api="storage", delay=0.01)
    done = 0
    halfway = asyncio.Event()

    def count(event: UploadEvent) -> None:
        nonlocal done
        if isinstance(event, FileDone):
            done += 1
            if done == 60:
                halfway.set()

    task = asyncio.create_task(ds.upload_folder(folder, concurrency=4, progress=count))
    await asyncio.wait_for(halfway.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # let any body that was complete when we cancelled land
    stored_after_cancel = set(emu.stored_files(ds.id))
    assert 60 <= len(stored_after_cancel) < 200
    emu.clear_faults()
    emu.clear_log()
    # URLs handed out before the cancel but never used keep the dataset UPLOADING until they
    # expire (docs/wire.md: short-lived); jump past that instead of waiting.
    emu.advance(emu.config.url_ttl + 1)
    report = await ds.upload_folder(folder, concurrency=4)
    resent = {r.path.rsplit("/", 1)[1] for r in emu.log if r.method == "PUT"}
    assert resent == set(local_files(folder)) - stored_after_cancel
    assert len(report.skipped) == len(stored_after_cancel)
    assert emu.stored_files(ds.id) == local_files(folder)


@pytest.mark.asyncio
async def test_verify_raises_naming_the_files_that_failed(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """A file storage always refuses makes verify raise UploadError naming it, with the report."""
    folder = captioned_folder(tmp_path / "set", 5)
    ds = await rc.datasets.create("verify")
    emu.inject("500", api="storage", path="img_0002.jpg")
    with pytest.raises(errors.UploadError, match=r"img_0002\.jpg") as info:
        await ds.upload_folder(folder)
    report = info.value.report
    assert [r.filename for r in report.failed] == ["img_0002.jpg"]
    assert report.failed[0].reason is FailureReason.SERVER_ERROR
    assert len(report.uploaded) == 9


@pytest.mark.asyncio
async def test_check_false_returns_failures_in_the_report(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """With check=False and no verify the failed file is reported, not raised; the rest stored."""
    folder = captioned_folder(tmp_path / "set", 3)
    ds = await rc.datasets.create("noverify")
    emu.inject("500", api="storage", path="img_0001.txt")
    report = await ds.upload_folder(folder, verify=False, check=False)
    assert not report.ok
    assert [r.filename for r in report.failed] == ["img_0001.txt"]
    assert len(emu.stored_files(ds.id)) == 5


@pytest.mark.asyncio
async def test_verify_catches_a_file_missing_from_the_listing(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """If READY lists a file with another size than the local one, verify names it."""
    folder = captioned_folder(tmp_path / "set", 2)
    ds = await rc.datasets.create("listing")

    async def shrink_remote_copy(event: UploadEvent) -> None:
        # After the last file lands, overwrite one caption in the dataset with other bytes,
        # as a concurrent uploader would.
        if isinstance(event, FileDone) and len(emu.stored_files(ds.id)) == 4:
            other = tmp_path / "img_0000.txt"
            other.write_text("x")
            await ds.upload(other)

    with pytest.raises(errors.UploadError, match=r"img_0000\.txt \(local \d+ bytes, listed 1\)"):
        await ds.upload_folder(folder, progress=shrink_remote_copy, concurrency=1)


@pytest.mark.asyncio
async def test_batch_size_sets_the_number_of_url_calls(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """60 files with ``batch_size=25`` take three signed-URL calls."""
    folder = captioned_folder(tmp_path / "set", 30)
    ds = await rc.datasets.create("batches")
    emu.clear_log()
    await ds.upload_folder(folder, batch_size=25, verify=False)
    assert len([r for r in emu.log if r.path.endswith("/get-upload-endpoint")]) == 3
