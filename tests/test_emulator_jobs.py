"""The emulator's AI Toolkit jobs API (docs/wire.md), spoken to over plain HTTP.

Time is driven with ``emu.advance`` at ``speed=1`` (queue 10 s, one step 3 s), so every state is
reached deterministically without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from runcomfy_async.testing import Emulator
from runcomfy_async.testing._storage import StoredObject
from runcomfy_async.testing.trainer_jobs import PREFIX

QUEUE = 10.0
STEP = 3.0


def make_config(
    *,
    dataset: str = "dogs",
    steps: int = 20,
    save_every: int = 5,
    sample_every: int = 10,
    training_folder: str = "/app/ai-toolkit/output",
) -> str:
    """An AI Toolkit YAML config."""
    return yaml.safe_dump(
        {
            "job": "extension",
            "config": {
                "name": "my_lora",
                "process": [
                    {
                        "type": "sd_trainer",
                        "training_folder": training_folder,
                        "datasets": [{"folder_path": f"/app/ai-toolkit/datasets/{dataset}"}],
                        "train": {"steps": steps},
                        "save": {"save_every": save_every},
                        "sample": {"sample_every": sample_every},
                    }
                ],
            },
        }
    )


def add_dataset(emu: Emulator, name: str, *, ready: bool = True) -> None:
    """Put a dataset into the emulator's store (READY, or an empty DRAFT)."""
    store = emu.state.datasets
    store.create(f"id-{name}", name)
    if ready:
        for filename in ("a.jpg", "a.txt"):
            obj = StoredObject(path=Path("/dev/null"), size=1, sha256="0")
            store.add_file(f"id-{name}", filename, obj)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator at speed 1 with a READY dataset 'dogs'."""
    async with Emulator(rate_limit=None, speed=1.0, dataset_processing_seconds=0) as emulator:
        add_dataset(emulator, "dogs")
        yield emulator


@pytest_asyncio.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session that sends the emulator's bearer token."""
    async with aiohttp.ClientSession(
        base_url=emu.url, headers={"Authorization": f"Bearer {emu.token}"}
    ) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body)."""
    async with http.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


async def submit(http: aiohttp.ClientSession, config: str) -> str:
    """Submit a job and return its id."""
    status, body = await call(
        http,
        "POST",
        PREFIX,
        {"config_file_format": "yaml", "config_file": config, "gpu_type": "ADA_80_PLUS"},
    )
    assert status == 200, body
    assert body["status"] == "IN_QUEUE"
    return str(body["id"])


async def job_status(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    """GET .../status."""
    status, body = await call(http, "GET", f"{PREFIX}/{job_id}/status")
    assert status == 200, body
    return dict(body)


async def job_result(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    """GET .../result."""
    status, body = await call(http, "GET", f"{PREFIX}/{job_id}/result")
    assert status == 200, body
    return dict(body)


@pytest.mark.asyncio
async def test_lifecycle_queue_running_stopped_with_progress(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A job waits IN_QUEUE, RUNS with growing progress, and ends STOPPED at its last step."""
    job_id = await submit(http, make_config(steps=20))
    first = await job_status(http, job_id)
    assert first["status"] == "IN_QUEUE"
    assert first["name"] == "my_lora"
    emu.advance(QUEUE + 5 * STEP + 1)
    running = await job_status(http, job_id)
    assert running["status"] == "RUNNING"
    assert running["progress"] == {"percent": 25, "current_step": 5, "total_steps": 20}
    assert running["started_at"] is not None and running["finished_at"] is None
    emu.advance(20 * STEP)
    done = await job_status(http, job_id)
    assert done["status"] == "STOPPED"
    assert done["progress"]["current_step"] == 20
    assert done["error"] is None and done["finished_at"] is not None


@pytest.mark.asyncio
async def test_artifacts_appear_over_time(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Checkpoints every save_every steps, samples every sample_every, config once running."""
    job_id = await submit(http, make_config(steps=20, save_every=5, sample_every=10))
    assert (await job_result(http, job_id))["artifacts"] == {"checkpoints": [], "samples": []}
    emu.advance(QUEUE + 11 * STEP + 1)
    mid = await job_result(http, job_id)
    assert [c["step"] for c in mid["artifacts"]["checkpoints"]] == [5, 10]
    assert [s["step"] for s in mid["artifacts"]["samples"]] == [10]
    assert mid["artifacts"]["config"]["path"].startswith(emu.url)
    emu.advance(20 * STEP)
    end = await job_result(http, job_id)
    assert [c["step"] for c in end["artifacts"]["checkpoints"]] == [5, 10, 15, 20]
    assert end["status"] == "STOPPED"


@pytest.mark.asyncio
async def test_artifacts_are_served_signed_with_ranges(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Artifact URLs serve the stored bytes without a token, honour Range, refuse bad signatures."""
    job_id = await submit(http, make_config(steps=5, save_every=5))
    emu.advance(QUEUE + 6 * STEP)
    url = (await job_result(http, job_id))["artifacts"]["checkpoints"][0]["path"]
    stored = emu.state.jobs.artifacts(job_id)[0]
    expected = emu.state.storage.blob_path(stored.key)
    assert expected is not None
    data = expected.read_bytes()
    async with aiohttp.ClientSession() as plain:
        async with plain.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == data
        async with plain.get(url, headers={"Range": "bytes=1000-"}) as resp:
            assert resp.status == 206
            assert await resp.read() == data[1000:]
        async with plain.get(url.replace("sig=", "sig=0")) as resp:
            assert resp.status == 403


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("config", "code"),
    [
        ("job: [unclosed", "CONFIG_ERROR"),
        (make_config(training_folder="/tmp/out"), "CONFIG_ERROR"),
        (make_config().replace("/app/ai-toolkit/datasets/", "/data/"), "CONFIG_ERROR"),
        (make_config(dataset="cats"), "DATASET_NOT_READY"),
        (make_config(dataset="drafty"), "DATASET_NOT_READY"),
    ],
    ids=["yaml", "training_folder", "folder_path", "missing-dataset", "draft-dataset"],
)
async def test_bad_config_fails_after_the_queue(
    emu: Emulator, http: aiohttp.ClientSession, config: str, code: str
) -> None:
    """A bad config or a dataset that is not READY is accepted, then goes FAILED with an error."""
    add_dataset(emu, "drafty", ready=False)
    job_id = await submit(http, config)
    assert (await job_status(http, job_id))["status"] == "IN_QUEUE"
    emu.advance(QUEUE + 1)
    failed = await job_status(http, job_id)
    assert failed["status"] == "FAILED"
    assert failed["error"]["code"] == code
    assert failed["error"]["message"]
    assert (await job_result(http, job_id))["error"]["code"] == code


@pytest.mark.asyncio
async def test_submit_validates_the_body(http: aiohttp.ClientSession) -> None:
    """A wrong format, a missing config_file or an unknown gpu_type is a 422 naming the field."""
    status, body = await call(
        http, "POST", PREFIX, {"config_file_format": "json", "gpu_type": "A100"}
    )
    assert status == 422
    fields = {tuple(item["loc"]) for item in body["detail"]}
    assert fields == {
        ("body", "config_file_format"),
        ("body", "config_file"),
        ("body", "gpu_type"),
    }


@pytest.mark.asyncio
async def test_cancel_keeps_artifacts(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Cancel stops progress; artifacts made so far stay listed; cancelling twice is harmless."""
    job_id = await submit(http, make_config(steps=20))
    emu.advance(QUEUE + 7 * STEP + 1)
    status, body = await call(http, "POST", f"{PREFIX}/{job_id}/cancel")
    assert (status, body["status"]) == (200, "CANCELED")
    emu.advance(30 * STEP)
    after = await job_status(http, job_id)
    assert after["status"] == "CANCELED"
    assert after["progress"]["current_step"] == 7
    assert [c["step"] for c in (await job_result(http, job_id))["artifacts"]["checkpoints"]] == [5]
    assert (await call(http, "POST", f"{PREFIX}/{job_id}/cancel"))[0] == 200


@pytest.mark.asyncio
async def test_cancel_of_a_finished_job_is_a_conflict(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A STOPPED job cannot be canceled: 409."""
    job_id = await submit(http, make_config(steps=2))
    emu.advance(QUEUE + 3 * STEP)
    status, body = await call(http, "POST", f"{PREFIX}/{job_id}/cancel")
    assert status == 409
    assert "STOPPED" in body["error_message"]


@pytest.mark.asyncio
async def test_preempt_then_resume_from_highest_checkpoint(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A preempted job is STOPPED short with an error; resume continues from its checkpoint."""
    job_id = await submit(http, make_config(steps=20, save_every=5))
    emu.state.jobs.preempt(job_id, at_step=8)
    emu.advance(QUEUE + 12 * STEP)
    stopped = await job_status(http, job_id)
    assert stopped["status"] == "STOPPED"
    assert stopped["progress"]["current_step"] == 8
    assert stopped["error"]["message"] == "Job failed: server was reclaimed."
    status, body = await call(http, "POST", f"{PREFIX}/{job_id}/resume", {})
    assert (status, body) == (200, {"id": job_id, "status": "IN_QUEUE"})
    requeued = await job_status(http, job_id)
    assert requeued["progress"]["current_step"] == 5
    assert requeued["error"] is None
    emu.advance(QUEUE + 15 * STEP + 1)
    done = await job_status(http, job_id)
    assert (done["status"], done["progress"]["current_step"]) == ("STOPPED", 20)
    steps = [c["step"] for c in (await job_result(http, job_id))["artifacts"]["checkpoints"]]
    assert steps == [5, 10, 15, 20]


@pytest.mark.asyncio
async def test_preempt_now_and_resume_of_running_or_finished_job(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Resume is refused while running and after completion; preempt() with no step stops now."""
    job_id = await submit(http, make_config(steps=4, save_every=100))
    emu.advance(QUEUE + 2 * STEP + 1)
    assert (await call(http, "POST", f"{PREFIX}/{job_id}/resume", {}))[0] == 409
    emu.state.jobs.preempt(job_id)
    stopped = await job_status(http, job_id)
    assert (stopped["status"], stopped["progress"]["current_step"]) == ("STOPPED", 2)
    assert (await call(http, "POST", f"{PREFIX}/{job_id}/resume", {}))[0] == 200
    assert (await job_status(http, job_id))["progress"]["current_step"] == 0
    emu.advance(QUEUE + 5 * STEP)
    assert (await job_status(http, job_id))["status"] == "STOPPED"
    status, body = await call(http, "POST", f"{PREFIX}/{job_id}/resume", {})
    assert status == 409
    assert "completed" in body["error_message"]


@pytest.mark.asyncio
async def test_edit_only_when_not_running(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Edit is refused while queued; after a FAILED run, an edited config resumes and completes."""
    job_id = await submit(http, make_config(training_folder="/wrong", steps=4))
    good = {"config_file_format": "yaml", "config_file": make_config(steps=6)}
    assert (await call(http, "POST", f"{PREFIX}/{job_id}/edit", good))[0] == 409
    emu.advance(QUEUE + 1)
    assert (await job_status(http, job_id))["status"] == "FAILED"
    status, body = await call(http, "POST", f"{PREFIX}/{job_id}/edit", good)
    assert (status, body["status"]) == (200, "FAILED")
    assert (await call(http, "POST", f"{PREFIX}/{job_id}/resume", {}))[0] == 200
    emu.advance(QUEUE + 7 * STEP)
    done = await job_status(http, job_id)
    assert (done["status"], done["progress"]["total_steps"], done["error"]) == ("STOPPED", 6, None)


@pytest.mark.asyncio
async def test_unknown_job_is_404(http: aiohttp.ClientSession) -> None:
    """Every per-job endpoint answers 404 with code 404001 for an unknown id."""
    for method, suffix in (("GET", "status"), ("GET", "result"), ("POST", "cancel")):
        status, body = await call(http, method, f"{PREFIX}/nope/{suffix}")
        assert (status, body["error_code"]) == (404, 404001)


@pytest.mark.asyncio
async def test_add_artifact_hook_lists_the_given_name(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """The test hook publishes a blob and lists it with the (untrusted) name it was given."""
    job_id = await submit(http, make_config())
    url = emu.state.jobs.add_artifact(job_id, "samples", "../../etc/passwd", b"x" * 10)
    items = (await job_result(http, job_id))["artifacts"]["samples"]
    assert [item["name"] for item in items] == ["../../etc/passwd"]
    async with aiohttp.ClientSession() as plain, plain.get(url) as resp:
        assert await resp.read() == b"x" * 10
