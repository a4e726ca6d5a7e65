"""No upload or download fails in silence: a failed file raises unless ``check=False`` asks for
the report; over real sockets against the emulator with storage failing for good."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from click.testing import CliRunner

from runcomfy_async import (
    DownloadError,
    DownloadReport,
    FailedDownload,
    FailureReason,
    RetryPolicy,
    RunComfy,
    ServerError,
    UploadError,
    UploadReport,
)
from runcomfy_async.cli import cli
from runcomfy_async.cli.demo import make_dataset
from runcomfy_async.resources.datasets import Dataset
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.trainer_jobs import JobStore, jobs_of
from tests.test_cli import ThreadedEmulator
from tests.test_downloads import CONFIG_TEXT

QUICK = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """A fast emulator without the rate limit whose jobs stay queued (artifacts come from tests)."""
    async with Emulator(rate_limit=None, speed=1000.0) as emulator:
        jobs_of(emulator.state).queue_seconds = 1e9
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client that gives up on a failing call after two tries."""
    async with emu.client(rate=1000.0, burst=100, retry=QUICK) as client:
        yield client


@pytest_asyncio.fixture
async def ds(rc: RunComfy) -> Dataset:
    """A fresh dataset."""
    return await rc.datasets.create("loud")


def folder_of(root: Path, pairs: int = 2) -> Path:
    """A captioned training folder of ``pairs`` images."""
    root.mkdir()
    for i in range(pairs):
        (root / f"img_{i}.jpg").write_bytes(os.urandom(64 + i))
        (root / f"img_{i}.txt").write_text(f"a photo of sks dog {i}")
    return root


def job_with_artifacts(emu: Emulator, *names: str) -> str:
    """A queued job holding one sample artifact per name; its id."""
    store: JobStore = jobs_of(emu.state)
    job_id = store.submit(CONFIG_TEXT, "ADA_80_PLUS").id
    for name in names:
        store.add_artifact(job_id, "samples", name, name.encode())
    return job_id


# -- uploads -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_upload_raises_when_storage_refuses_every_put(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """ds.upload raises UploadError carrying the report when a file could not be stored."""
    emu.inject("503", api="storage", method="PUT")
    pic = tmp_path / "pic.jpg"
    pic.write_bytes(b"\xff\xd8" + os.urandom(100))
    with pytest.raises(UploadError, match=r"pic\.jpg") as caught:
        await ds.upload(pic, direct_limit=0)
    report = caught.value.report
    assert isinstance(report, UploadReport)
    assert [(f.filename, f.reason) for f in report.failed] == [
        ("pic.jpg", FailureReason.SERVER_ERROR)
    ]
    assert "check=False" in str(caught.value)
    assert emu.stored_files(ds.id) == {}


@pytest.mark.asyncio
async def test_upload_check_false_returns_the_failed_report(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """ds.upload(check=False) returns the report with the failed file instead of raising."""
    emu.inject("503", api="storage", method="PUT")
    pic = tmp_path / "pic.jpg"
    pic.write_bytes(b"\xff\xd8" + os.urandom(100))
    report = await ds.upload(pic, direct_limit=0, check=False)
    assert not report.ok
    assert [f.filename for f in report.failed] == ["pic.jpg"]
    assert report.uploaded == ()


@pytest.mark.asyncio
async def test_upload_folder_without_verify_still_raises(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """upload_folder(verify=False) raises UploadError with the report for failed files."""
    emu.inject("503", api="storage", method="PUT")
    folder = folder_of(tmp_path / "set")
    with pytest.raises(UploadError) as caught:
        await ds.upload_folder(folder, verify=False)
    report = caught.value.report
    assert isinstance(report, UploadReport)
    assert len(report.failed) == 4
    assert report.uploaded == ()


@pytest.mark.asyncio
async def test_upload_folder_raises_by_default(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """upload_folder with its defaults raises UploadError (before waiting for READY)."""
    emu.inject("503", api="storage", method="PUT")
    folder = folder_of(tmp_path / "set")
    with pytest.raises(UploadError, match="could not be uploaded") as caught:
        await ds.upload_folder(folder)
    assert len(caught.value.report.failed) == 4


@pytest.mark.asyncio
async def test_upload_folder_check_false_returns_the_failed_report(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """upload_folder(check=False) returns the report; with every file failed verify has nothing
    to wait for."""
    emu.inject("503", api="storage", method="PUT")
    folder = folder_of(tmp_path / "set")
    for verify in (False, True):
        report = await ds.upload_folder(folder, verify=verify, check=False, timeout=5)
        assert sorted(f.filename for f in report.failed) == sorted(
            p.name for p in folder.iterdir()
        )
        assert not report.ok


@pytest.mark.asyncio
async def test_upload_folder_check_false_verifies_the_files_that_arrived(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """With check=False and verify, the pair that arrived is verified READY; the failed pair
    is only reported."""
    emu.inject("503", api="storage", method="PUT", path=r"img_1\.")
    folder = folder_of(tmp_path / "set")
    report = await ds.upload_folder(folder, check=False, timeout=30)
    assert sorted(f.filename for f in report.failed) == ["img_1.jpg", "img_1.txt"]
    assert sorted(emu.stored_files(ds.id)) == ["img_0.jpg", "img_0.txt"]


# -- downloads ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_job_download_raises_download_error_with_its_report(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """TrainingJob.download raises DownloadError naming the failed file, the first file's error
    as cause, after writing the others."""
    job_id = job_with_artifacts(emu, "a.jpg", "b.jpg")
    emu.inject("503", api="storage", method="GET", skip=1)  # a.jpg arrives, b.jpg never
    with pytest.raises(DownloadError, match=r"b\.jpg") as caught:
        await rc.jobs.get(job_id).download(tmp_path, concurrency=1)
    error = caught.value
    assert isinstance(error.__cause__, ServerError)
    assert ".part" in str(error)
    report = error.report
    assert isinstance(report, DownloadReport)
    assert [p.name for p in report.paths] == ["a.jpg"]
    assert [f.path.name for f in report.failed] == ["b.jpg"]
    assert "503" in report.failed[0].message
    assert (tmp_path / "samples" / "a.jpg").read_bytes() == b"a.jpg"


@pytest.mark.asyncio
async def test_job_download_check_false_returns_the_report(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """TrainingJob.download(check=False) returns a DownloadReport instead of raising."""
    job_id = job_with_artifacts(emu, "a.jpg", "b.jpg")
    emu.inject("503", api="storage", method="GET")
    report = await rc.jobs.get(job_id).download(tmp_path, check=False)
    assert isinstance(report, DownloadReport)
    assert report.paths == ()
    assert [f.path.name for f in report.failed] == ["a.jpg", "b.jpg"]
    assert all(isinstance(f, FailedDownload) for f in report.failed)
    assert not report.ok
    assert report.summary() == "0 downloaded, 2 failed"


@pytest.mark.asyncio
async def test_job_download_default_still_returns_paths(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """Without failures download returns the list of paths as before; check=False a clean
    report."""
    job_id = job_with_artifacts(emu, "a.jpg")
    paths = await rc.jobs.get(job_id).download(tmp_path / "one")
    assert [p.name for p in paths] == ["a.jpg"]
    report = await rc.jobs.get(job_id).download(tmp_path / "two", check=False)
    assert report.ok
    assert [p.name for p in report.paths] == ["a.jpg"]


@pytest.mark.asyncio
async def test_download_outputs_raises_and_check_false_reports(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """Models.download_outputs raises DownloadError by default and returns the report with
    check=False."""
    output = await rc.models.run(
        "blackforestlabs/flux-1-kontext/pro/edit",
        {"prompt": "x"},
    )
    emu.inject("503", api="storage", method="GET")
    with pytest.raises(DownloadError, match="could not be downloaded") as caught:
        await rc.models.download_outputs(output, tmp_path)
    assert isinstance(caught.value.__cause__, ServerError)
    assert len(caught.value.report.failed) == 1
    report = await rc.models.download_outputs(output, tmp_path, check=False)
    assert isinstance(report, DownloadReport)
    assert (report.paths, len(report.failed)) == ((), 1)


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ThreadedEmulator]:
    """A fast emulator in its own thread, for the CLI."""
    threaded = ThreadedEmulator(rate_limit=None, speed=1000.0)
    try:
        yield threaded
    finally:
        threaded.close()


def test_cli_upload_and_download_exit_non_zero(server: ThreadedEmulator, tmp_path: Path) -> None:
    """`datasets upload` exits 1 and `jobs download` exits 3 (the storage 503) on failed files."""
    emu = server.emu
    folder = tmp_path / "set"
    make_dataset(folder, count=1)
    job_id = server.run(lambda: job_with_artifacts(emu, "a.jpg"))
    server.run(lambda: emu.inject("503", api="storage", retry_after=0))
    runner = CliRunner()
    env = {"COLUMNS": "200", **server.env()}
    upload = runner.invoke(cli, ["--json", "datasets", "upload", "cli-loud", str(folder)], env=env)
    assert upload.exit_code == 1, upload.output
    answer = json.loads(upload.stdout)  # with --json the failure is in the one JSON answer
    assert len(answer["upload"]["failed"]) == 2
    assert "failed to upload" in answer["error"]["message"]
    assert answer["error"]["exit_code"] == 1
    download = runner.invoke(
        cli, ["jobs", "download", job_id, "--dest", str(tmp_path / "out")], env=env
    )
    assert download.exit_code == 3, download.output
    assert "could not be downloaded" in download.stderr
