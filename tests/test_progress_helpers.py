"""The public progress helpers: ProgressLog (plain lines, coalesced) and progress_bars (rich)."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from rich.console import Console

from runcomfy_async import (
    DATASETS_ROOT,
    TRAINING_FOLDER,
    Artifact,
    ComfyEvent,
    DownloadProgress,
    JobState,
    JobStatus,
    PollPolicy,
    Progress,
    ProgressLog,
    RequestState,
    RequestStatus,
    RunComfy,
    progress_bars,
)
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import example_workflow


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """A fast emulator without the rate limit."""
    async with Emulator(rate_limit=None, speed=1000.0, dataset_processing_seconds=0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client with a generous rate."""
    async with emu.client(rate=1000.0, burst=100) as client:
        yield client


def captioned(folder: Path, pairs: int) -> Path:
    """A folder of ``pairs`` tiny images, each with its caption."""
    folder.mkdir()
    for i in range(pairs):
        (folder / f"img{i:03}.jpg").write_bytes(b"j" * 100)
        (folder / f"img{i:03}.txt").write_text(f"caption {i}")
    return folder


class Clock:
    """A hand-moved clock for the ``every`` limit."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_a_big_upload_makes_a_few_lines(rc: RunComfy, tmp_path: Path) -> None:
    """120 files make two lines (the plan and the end), not one per event (about 360)."""
    folder = captioned(tmp_path / "set", 60)
    ds = await rc.datasets.create("logged")
    out = io.StringIO()
    with ProgressLog(every=3600, file=out) as progress:
        report = await ds.upload_folder(folder, progress=progress, verify=False, concurrency=16)
    assert len(report.uploaded) == 120
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("upload: 120 file(s), 0.0 MB to send")
    assert lines[-1].startswith("upload: 120/120 files") and lines[-1].endswith("(done)")
    assert len(lines) == 2


def test_lines_are_held_back_and_flushed_on_exit() -> None:
    """Steps within ``every`` are held, a status change or a finished prompt prints at once,
    and the last held line comes out when the block ends."""
    clock = Clock()
    out = io.StringIO()

    def job(status: JobState, step: int) -> JobStatus:
        return JobStatus(
            id="job-1", status=status, progress=Progress(current_step=step, total_steps=60)
        )

    with ProgressLog(every=5.0, file=out, clock=clock) as log:
        log(job(JobState.IN_QUEUE, 0))
        log(job(JobState.RUNNING, 1))
        for step in range(2, 30):
            clock.now += 0.1
            log(job(JobState.RUNNING, step))
        log(Artifact(kind="checkpoints", name="lora_000020.safetensors", url="u", step=20))
        log(RequestStatus(request_id="r-1", status=RequestState.IN_QUEUE, queue_position=3))
        log(RequestStatus(request_id="r-1", status=RequestState.IN_QUEUE, queue_position=2))
        log(ComfyEvent(type="progress", data={"node": "3", "value": 5, "max": 20}))
        log(ComfyEvent(type="execution_success", data={}))
        log(DownloadProgress(
            artifact=Artifact(kind="samples", name="a.png", url="u"),
            path=Path("a.png"),
            done=10,
            total=10,
        ))
    assert out.getvalue().splitlines() == [
        "job job-1: IN_QUEUE step 0/60",
        "job job-1: RUNNING step 1/60",
        "job: new checkpoint lora_000020.safetensors (step 20)",
        "request r-1: in_queue (queue position 3)",
        "comfyui: node 3 5/20",
        "comfyui: success",
        "download: 1/1 file(s) complete, 0.0 MB",
        "request r-1: in_queue (queue position 2)",
    ]


@pytest.mark.asyncio
async def test_progress_bars_draw_on_a_terminal(rc: RunComfy, tmp_path: Path) -> None:
    """On a terminal the bars are drawn (upload, then a job's steps in bars of their own)."""
    folder = captioned(tmp_path / "set", 5)
    ds = await rc.datasets.create("barred")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with progress_bars("barred", console=console) as progress:
        await ds.upload_folder(folder, progress=progress, verify=False)
        progress(JobStatus(id="j", status=JobState.RUNNING, progress=Progress(
            current_step=3, total_steps=10
        )))
    drawn = screen.getvalue()
    assert "10/10 files" in drawn
    assert "3/10" in drawn
    assert "\x1b[" in drawn


@pytest.mark.asyncio
async def test_progress_bars_fall_back_to_lines_off_a_terminal() -> None:
    """Off a terminal progress_bars yields a ProgressLog: lines, no escape codes."""
    console = Console(file=io.StringIO(), force_terminal=False, force_jupyter=False)
    with progress_bars(console=console) as progress:
        assert isinstance(progress, ProgressLog)


def test_missing_rich_names_the_extra() -> None:
    """Without rich, progress_bars says which extra to install; ProgressLog still works."""
    code = (
        "import sys; sys.modules['rich'] = None\n"
        "from runcomfy_async import ProgressLog, progress_bars\n"
        "ProgressLog()\n"
        "try:\n    progress_bars().__enter__()\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'runcomfy-async[progress]'" in out.stdout


@pytest.mark.asyncio
async def test_one_log_serves_a_job_its_download_and_a_prompt(
    rc: RunComfy, tmp_path: Path
) -> None:
    """The same ProgressLog takes a job's status snapshots, its artifact downloads and a
    ComfyUI prompt's events, each as a few lines."""
    ds = await rc.datasets.create("logged-job")
    await ds.upload_folder(captioned(tmp_path / "set", 2))
    config = {
        "job": "extension",
        "config": {
            "name": "logged",
            "process": [{
                "type": "sd_trainer",
                "training_folder": TRAINING_FOLDER,
                "datasets": [{"folder_path": DATASETS_ROOT + "logged-job"}],
                "train": {"steps": 20},
            }],
        },
    }
    out = io.StringIO()
    fast = PollPolicy(initial=0.02, max_interval=0.05)
    with ProgressLog(every=3600, file=out) as progress:
        job = await rc.jobs.submit(config)
        await job.wait(on_status=progress, poll=fast)
        paths = await job.download(tmp_path / "out", progress=progress)
        version = (await rc.machines.workflows())[0].version_id or ""
        async with await rc.machines.launch(version) as machine:
            await machine.wait_ready(poll=fast)
            comfy = machine.comfyui()
            prompt_id = await comfy.queue_prompt(example_workflow(steps=5))
            await comfy.wait(prompt_id, timeout=30, progress=progress, poll=fast)
    lines = out.getvalue().splitlines()
    job_lines = [line for line in lines if line.startswith(f"job {job.id}: ")]
    assert job_lines[-1] == f"job {job.id}: STOPPED step 20/20"
    assert len(job_lines) <= 4  # one per status (IN_QUEUE, RUNNING, STOPPED), steps held back
    downloads = [line for line in lines if line.startswith("download: ")]
    assert len(downloads) <= 2  # the first event, then the last one (held, printed on exit)
    assert downloads[-1].startswith(f"download: {len(paths)}/{len(paths)} file(s) complete")
    assert "comfyui: success" in lines
    assert len(lines) <= 12, lines
