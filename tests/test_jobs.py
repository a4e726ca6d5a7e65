"""``rc.jobs`` and ``TrainingJob`` against the emulator: checked submits, waits, artifacts."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from runcomfy_async import (
    ConfigError,
    JobFailed,
    PollPolicy,
    Priority,
    RunComfy,
    ValidationError,
)
from runcomfy_async._converter import make_converter, structure
from runcomfy_async._job_config import check_config, parse_config
from runcomfy_async.testing import Emulator
from runcomfy_async.testing._storage import StoredObject
from runcomfy_async.testing.trainer_jobs import PREFIX, jobs_of
from runcomfy_async.types.jobs import GPUType, JobState, JobStatus, Progress

FAST = PollPolicy(initial=0.02, factor=1.5, max_interval=0.1, jitter=0.0)

CONFIG: dict[str, Any] = {
    "job": "extension",
    "config": {
        "name": "my_lora",
        "process": [
            {
                "type": "sd_trainer",
                "training_folder": "/app/ai-toolkit/output",
                "datasets": [
                    {"folder_path": "/app/ai-toolkit/datasets/dogs", "caption_ext": "txt"}
                ],
                "train": {"steps": 20},
                "save": {"save_every": 5},
                "sample": {"sample_every": 10},
            }
        ],
    },
}


def config(**train: Any) -> dict[str, Any]:
    """A copy of CONFIG with the first process's ``train`` section updated."""
    doc = copy.deepcopy(CONFIG)
    doc["config"]["process"][0]["train"].update(train)
    return doc


def process(doc: dict[str, Any]) -> dict[str, Any]:
    """The first process of a config."""
    first: dict[str, Any] = doc["config"]["process"][0]
    return first


def add_dataset(emu: Emulator, name: str, *, ready: bool = True) -> str:
    """Put a dataset into the emulator's store (READY, or an empty DRAFT); return its id."""
    store = emu.state.datasets
    dataset_id = f"id-{name}"
    store.create(dataset_id, name)
    if ready:
        for filename in ("a.jpg", "a.txt"):
            obj = StoredObject(path=Path("/dev/null"), size=1, sha256="0")
            store.add_file(dataset_id, filename, obj)
    return dataset_id


def job_posts(emu: Emulator) -> list[Any]:
    """Requests that reached a jobs endpoint with POST."""
    return [r for r in emu.log if r.method == "POST" and r.path.startswith(PREFIX)]


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """A fast emulator (a 20-step run takes about a second) with READY dataset 'dogs'."""
    async with Emulator(rate_limit=None, speed=60.0, dataset_processing_seconds=0) as emulator:
        add_dataset(emulator, "dogs")
        add_dataset(emulator, "drafty", ready=False)
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client of the emulator without client-side pacing, whose jobs poll quickly."""
    async with emu.client(rate=1000.0, burst=100) as client:
        client.jobs.poll = FAST
        yield client


# -- submit and config checks ------------------------------------------------------------


@pytest.mark.asyncio
async def test_submit_yaml_string_is_sent_as_written(emu: Emulator, rc: RunComfy) -> None:
    """A YAML string is sent verbatim (comments kept) with format yaml and the GPU type."""
    text = "# my run\n" + yaml.safe_dump(CONFIG)
    job = await rc.jobs.submit(text, gpu_type=GPUType.H200)
    record = jobs_of(emu.state).get(job.id)
    assert record.config_text == text
    assert record.gpu_type == "HOPPER_141"
    assert job.name == "my_lora"
    assert (await job.status()).status in (JobState.IN_QUEUE, JobState.RUNNING)


@pytest.mark.asyncio
async def test_submit_path_and_dict(emu: Emulator, rc: RunComfy, tmp_path: Path) -> None:
    """A Path is read from disk; a dict is dumped as YAML; both reach the service intact."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    from_path = await rc.jobs.submit(path)
    from_dict = await rc.jobs.submit(CONFIG, gpu_type="ADA_80_PLUS", gpu_count=2)
    store = jobs_of(emu.state)
    assert store.get(from_path.id).config_text == path.read_text(encoding="utf-8")
    assert yaml.safe_load(store.get(from_dict.id).config_text) == CONFIG
    assert store.get(from_dict.id).gpu_type == "ADA_80_PLUS"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: process(d).update(training_folder="/tmp/out"), "training_folder"),
        (lambda d: process(d).pop("training_folder"), "training_folder"),
        (
            lambda d: process(d)["datasets"][0].update(folder_path="/data/dogs"),
            "datasets[0].folder_path",
        ),
        (
            lambda d: process(d)["datasets"][0].update(folder_path="/app/ai-toolkit/datasets/"),
            "datasets[0].folder_path",
        ),
        (lambda d: d["config"].update(process=[]), "config.process"),
        (lambda d: d.pop("config"), "'config' mapping"),
        (
            lambda d: process(d)["datasets"][0].update(
                folder_path="/app/ai-toolkit/datasets/cats"
            ),
            "no dataset named 'cats'",
        ),
        (
            lambda d: process(d)["datasets"][0].update(
                folder_path="/app/ai-toolkit/datasets/drafty"
            ),
            "'drafty' is DRAFT, not READY",
        ),
    ],
    ids=[
        "training_folder",
        "no-training_folder",
        "folder_path",
        "empty-dataset-name",
        "no-process",
        "no-config",
        "missing-dataset",
        "draft-dataset",
    ],
)
async def test_config_mistakes_are_caught_before_any_job_request(
    emu: Emulator, rc: RunComfy, mutate: Any, needle: str
) -> None:
    """Each config mistake raises ConfigError naming what to change; no job POST is sent."""
    doc = copy.deepcopy(CONFIG)
    mutate(doc)
    with pytest.raises(ConfigError, match=r"(?s)" + needle.replace("[", r"\[").replace("]", r"\]")):
        await rc.jobs.submit(doc)
    assert job_posts(emu) == []


@pytest.mark.asyncio
async def test_invalid_yaml_names_the_line(emu: Emulator, rc: RunComfy) -> None:
    """Invalid YAML is refused with the line of the error; nothing is sent."""
    text = "job: extension\nconfig:\n  name: x\n  process: [unclosed\n"
    with pytest.raises(ConfigError, match="line 5"):
        await rc.jobs.submit(text)
    with pytest.raises(ConfigError, match=r"pass a pathlib\.Path"):
        await rc.jobs.submit("config.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        await rc.jobs.submit(Path("/nonexistent/config.yaml"))
    assert emu.log == []


@pytest.mark.asyncio
async def test_all_problems_reported_at_once(emu: Emulator, rc: RunComfy) -> None:
    """Several mistakes in one config are listed together."""
    doc = copy.deepcopy(CONFIG)
    process(doc)["training_folder"] = "/out"
    process(doc)["datasets"].append({"folder_path": "dogs"})
    with pytest.raises(ConfigError) as caught:
        await rc.jobs.submit(doc, check_datasets=False)
    assert "training_folder" in str(caught.value)
    assert "datasets[1].folder_path" in str(caught.value)
    assert emu.log == []


@pytest.mark.asyncio
async def test_bad_gpu_arguments_are_refused_before_sending(emu: Emulator, rc: RunComfy) -> None:
    """An unknown lower-case GPU name or a bad gpu_count raises ValidationError, sends nothing."""
    with pytest.raises(ValidationError, match="gpu_type"):
        await rc.jobs.submit(CONFIG, gpu_type="a100-ish")
    with pytest.raises(ValidationError, match="gpu_count"):
        await rc.jobs.submit(CONFIG, gpu_count=0)
    assert emu.log == []


def test_gpu_type_accepts_raw_strings_and_labels() -> None:
    """Raw vendor strings and UI labels map to the members; new upper-case names are kept."""
    assert GPUType("ADA_80_PLUS") is GPUType.H100
    assert GPUType("h200") is GPUType.H200
    assert not GPUType("B200_192").known


def test_check_config_returns_mounted_dataset_names() -> None:
    """check_config accepts the sample config and lists the dataset names it mounts."""
    assert check_config(parse_config(yaml.safe_dump(CONFIG))) == ["dogs"]


@pytest.mark.asyncio
async def test_config_for_fills_fixed_paths(emu: Emulator, rc: RunComfy) -> None:
    """config_for fills training_folder and folder_path from the dataset's fetched name."""
    template = copy.deepcopy(CONFIG)
    process(template)["training_folder"] = "anything"
    process(template)["datasets"][0]["folder_path"] = "<fill me>"
    dataset = rc.datasets.get("id-dogs")  # a handle that does not know its name yet
    filled = await rc.jobs.config_for(dataset, template)
    assert process(filled)["training_folder"] == "/app/ai-toolkit/output"
    assert process(filled)["datasets"][0] == {
        "folder_path": "/app/ai-toolkit/datasets/dogs",
        "caption_ext": "txt",
    }
    assert process(template)["datasets"][0]["folder_path"] == "<fill me>"
    bare = await rc.jobs.config_for("dogs", "job: extension\nconfig:\n  process:\n  - {}\n")
    assert process(bare)["datasets"] == [{"folder_path": "/app/ai-toolkit/datasets/dogs"}]
    job = await rc.jobs.submit(filled)
    assert job.id


# -- running, waiting, artifacts ---------------------------------------------------------


@pytest.mark.asyncio
async def test_full_run_downloads_every_artifact_byte_for_byte(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """A run ends STOPPED (completed); every artifact downloads identical to the stored one."""
    job = await rc.jobs.submit(CONFIG)
    final = await job
    assert final.status is JobState.STOPPED
    assert final.completed and not final.preempted
    paths = await job.download(tmp_path / "out")
    stored = jobs_of(emu.state).artifacts(job.id)
    assert len(paths) == len(stored) == 4 + 2 + 1
    for path, artifact in zip(paths, stored, strict=True):
        blob = emu.state.storage.blob_path(artifact.key)
        assert blob is not None
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(
            blob.read_bytes()
        ).digest()
        assert path.is_relative_to(tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*.part"))
    storage = [r for r in emu.log if r.api == "storage"]
    assert len(storage) == 7
    assert not any(r.authorized for r in storage)
    only = await job.download(tmp_path / "ckpt", kinds=("checkpoints",))
    assert [p.parent.name for p in only] == ["checkpoints"] * 4


@pytest.mark.asyncio
async def test_watch_artifacts_yields_each_once_while_running(
    emu: Emulator, rc: RunComfy
) -> None:
    """watch_artifacts yields every artifact exactly once, the first ones before the job ends."""
    job = await rc.jobs.submit(config(steps=30))
    store = jobs_of(emu.state)
    seen = []
    ended_when_yielded = []
    async for artifact in job.watch_artifacts():
        seen.append(artifact)
        ended_when_yielded.append(store.get(job.id).end is not None)
    keys = [a.key for a in seen]
    assert len(keys) == len(set(keys))
    assert len(seen) == len(store.artifacts(job.id)) == 6 + 3 + 1
    assert not ended_when_yielded[0]
    assert (await job.status()).status is JobState.STOPPED


@pytest.mark.asyncio
async def test_preempted_job_is_reported_and_resumes(emu: Emulator, rc: RunComfy) -> None:
    """A preempted STOPPED comes back with preempted=True (not raised); resume completes it."""
    job = await rc.jobs.submit(CONFIG)
    emu.preempt_job(job.id, at_step=12)
    stopped = await job
    assert stopped.status is JobState.STOPPED
    assert stopped.preempted and not stopped.completed
    assert stopped.progress == Progress(percent=60, current_step=12, total_steps=20)
    resumed = await job.resume()
    assert resumed.status is JobState.IN_QUEUE
    assert jobs_of(emu.state).get(job.id).start_step == 10
    final = await rc.jobs.get(job.id)
    assert final.completed
    steps = [a.step for a in (await job.result()).checkpoints]
    assert steps == [5, 10, 15, 20]


@pytest.mark.asyncio
async def test_cancel_mid_run_keeps_artifacts(emu: Emulator, rc: RunComfy) -> None:
    """Cancelling a running job ends it CANCELED (returned, not raised), artifacts kept."""
    job = await rc.jobs.submit(config(steps=200))
    async for artifact in job.watch_artifacts():
        if artifact.kind == "checkpoints":
            break
    canceled = await job.cancel()
    assert canceled.status is JobState.CANCELED
    final = await job
    assert final.status is JobState.CANCELED
    assert final.progress is not None and final.progress.current_step is not None
    assert final.progress.current_step < 200
    result = await job.result()
    assert result.status is JobState.CANCELED
    assert len(result.checkpoints) >= 1


@pytest.mark.asyncio
async def test_failed_job_raises_job_failed(emu: Emulator, rc: RunComfy) -> None:
    """A job that goes FAILED (dataset not READY, checks skipped) raises JobFailed."""
    doc = copy.deepcopy(CONFIG)
    process(doc)["datasets"][0]["folder_path"] = "/app/ai-toolkit/datasets/drafty"
    job = await rc.jobs.submit(doc, check_datasets=False)
    with pytest.raises(JobFailed, match="not READY") as caught:
        await job
    assert caught.value.error["code"] == "DATASET_NOT_READY"
    assert isinstance(caught.value.snapshot, JobStatus)


@pytest.mark.asyncio
async def test_wait_reports_every_status_snapshot(emu: Emulator, rc: RunComfy) -> None:
    """wait(on_status=...) sees each poll's snapshot, steps rising, the final one last."""
    job = await rc.jobs.submit(CONFIG)
    seen: list[JobStatus] = []

    async def note(info: JobStatus) -> None:
        seen.append(info)

    final = await job.wait(on_status=note)
    assert seen[-1] == final and final.completed
    assert len(seen) >= 2 and all(s.id == job.id for s in seen)
    steps = [s.progress.current_step or 0 for s in seen if s.progress is not None]
    assert steps == sorted(steps)


@pytest.mark.asyncio
async def test_wait_reports_the_failed_snapshot_before_raising(
    emu: Emulator, rc: RunComfy
) -> None:
    """A plain on_status callback receives the FAILED snapshot, then JobFailed is raised."""
    doc = copy.deepcopy(CONFIG)
    process(doc)["datasets"][0]["folder_path"] = "/app/ai-toolkit/datasets/drafty"
    job = await rc.jobs.submit(doc, check_datasets=False)
    seen: list[JobStatus] = []
    with pytest.raises(JobFailed):
        await job.wait(on_status=seen.append)
    assert seen[-1].status is JobState.FAILED


@pytest.mark.asyncio
async def test_edit_then_resume_fixes_a_failed_job(emu: Emulator, rc: RunComfy) -> None:
    """After FAILED, edit() with a good config and resume() run the same job to completion."""
    doc = copy.deepcopy(CONFIG)
    process(doc)["datasets"][0]["folder_path"] = "/app/ai-toolkit/datasets/drafty"
    job = await rc.jobs.submit(doc, check_datasets=False)
    with pytest.raises(JobFailed):
        await job
    with pytest.raises(ConfigError, match="drafty"):
        await job.edit(doc)
    edited = await job.edit(config(steps=6))
    assert edited.status is JobState.FAILED
    await job.resume()
    final = await job
    assert final.completed
    assert final.progress is not None and final.progress.total_steps == 6


@pytest.mark.asyncio
async def test_wait_timeout_leaves_the_job_running(emu: Emulator, rc: RunComfy) -> None:
    """wait(timeout=) raises WaitTimeoutError; the job itself goes on."""
    job = await rc.jobs.submit(config(steps=10_000))
    with pytest.raises(TimeoutError):
        await job.wait(timeout=0.2)
    assert (await job.status()).status in (JobState.IN_QUEUE, JobState.RUNNING)


@pytest.mark.asyncio
async def test_waiting_polls_back_off(emu: Emulator, rc: RunComfy) -> None:
    """Waiting on a long run polls at growing intervals up to the cap, not at a fixed rate."""
    job = await rc.jobs.submit(config(steps=10_000))
    policy = PollPolicy(initial=0.05, factor=2.0, max_interval=0.2, jitter=0.0)
    with pytest.raises(TimeoutError):
        await job.wait(timeout=1.2, poll=policy)
    polls = [r.at for r in emu.log if r.path.endswith("/status")]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert 5 <= len(polls) <= 10
    assert gaps[0] < 0.1
    # At the cap by the end (a median: one wake-up made late by a loaded machine is not the
    # schedule).
    assert statistics.median(gaps[-3:]) == pytest.approx(0.2, abs=0.08)


@pytest.mark.asyncio
async def test_get_rebuilds_a_handle(emu: Emulator, rc: RunComfy) -> None:
    """rc.jobs.get(id) makes a working handle without a request; an empty id is refused."""
    job = await rc.jobs.submit(CONFIG)
    before = len(emu.log)
    again = rc.jobs.get(job.id)
    assert len(emu.log) == before
    assert (await again.status()).id == job.id
    with pytest.raises(ValidationError):
        rc.jobs.get("")


@pytest.mark.asyncio
async def test_download_rejects_bad_arguments(emu: Emulator, rc: RunComfy, tmp_path: Path) -> None:
    """kinds as a bare string and concurrency < 1 are refused before any request."""
    job = rc.jobs.get("some-id")
    with pytest.raises(ValidationError, match="kinds"):
        await job.download(tmp_path, kinds="checkpoints")
    with pytest.raises(ValidationError, match="concurrency"):
        await job.download(tmp_path, concurrency=0)
    assert emu.log == []


# -- data ---------------------------------------------------------------------------------


STATUS_SAMPLE = {
    "id": "8f1d",
    "name": "trainingjobname1",
    "status": "RUNNING",
    "progress": {"percent": 16, "current_step": 320, "total_steps": 2000},
    "error": None,
    "created_at": "2025-07-01T12:10:00.000000+00:00",
    "started_at": "2025-07-01T12:12:31.000000+00:00",
    "finished_at": None,
    "result_url": "https://trainer-api.runcomfy.net/prod/v1/trainers/ai-toolkit/jobs/8f1d/result",
}


def test_status_sample_structures_strictly() -> None:
    """The documented status sample structures with extra keys forbidden."""
    info = make_converter(strict=True).structure(STATUS_SAMPLE, JobStatus)
    assert info.status is JobState.RUNNING
    assert info.progress == Progress(percent=16, current_step=320, total_steps=2000)


@pytest.mark.parametrize(
    ("status", "progress", "error", "preempted"),
    [
        ("STOPPED", (2000, 2000), None, False),
        ("STOPPED", (1500, 2000), None, True),
        ("STOPPED", (2000, 2000), {"message": "Job failed: server was reclaimed."}, True),
        ("STOPPED", None, None, False),
        ("RUNNING", (10, 2000), None, False),
        ("CANCELED", (10, 2000), None, False),
    ],
)
def test_preempted_is_inferred_from_progress_and_error(
    status: str, progress: tuple[int, int] | None, error: Any, preempted: bool
) -> None:
    """STOPPED short of the last step, or with an error, is preempted; anything else is not."""
    payload: dict[str, Any] = {"id": "j", "status": status, "error": error}
    if progress is not None:
        payload["progress"] = {"current_step": progress[0], "total_steps": progress[1]}
    info = structure(payload, JobStatus, what="status")
    assert info.preempted is preempted


def test_cancelled_and_unknown_statuses() -> None:
    """'cancelled' means CANCELED; an unknown status is kept and not terminal."""
    assert structure({"id": "j", "status": "cancelled"}, JobStatus, what="s").status is (
        JobState.CANCELED
    )
    odd = structure({"id": "j", "status": "PAUSED"}, JobStatus, what="s")
    assert odd.status == "PAUSED" and not odd.status.known and not odd.terminal


@pytest.mark.asyncio
async def test_status_always_asks_the_server(emu: Emulator, rc: RunComfy) -> None:
    """status() asks the server every time (two calls, two requests)."""
    job = await rc.jobs.submit(CONFIG)
    await asyncio.gather(job.status(), job.status())
    assert len([r for r in emu.log if r.path.endswith("/status")]) == 2


class RecordingLimiter:
    """A limiter that lets everything through and remembers each priority asked for."""

    def __init__(self) -> None:
        self.priorities: list[Priority] = []

    async def acquire(self, priority: Priority = Priority.USER) -> None:
        """Record the priority; no waiting."""
        self.priorities.append(priority)

    async def pause(self, seconds: float) -> None:
        """Nothing to pause."""

    async def aclose(self) -> None:
        """Nothing to close."""


@pytest.mark.asyncio
async def test_waits_poll_at_background_priority(emu: Emulator) -> None:
    """Submit is a USER call; the polls of await job and watch_artifacts are BACKGROUND."""
    limiter = RecordingLimiter()
    async with emu.client(limiter=limiter) as client:
        client.jobs.poll = FAST
        job = await client.jobs.submit(config(steps=5), check_datasets=False)
        await job
        assert [a async for a in job.watch_artifacts()]
    assert limiter.priorities[0] is Priority.USER
    assert len(limiter.priorities) > 3
    assert set(limiter.priorities[1:]) == {Priority.BACKGROUND}
