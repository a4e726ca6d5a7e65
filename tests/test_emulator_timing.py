"""Every simulated duration runs through the emulator's one clock, divided by ``speed``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async.testing import Emulator
from runcomfy_async.testing.trainer_jobs import PREFIX as JOBS

DATASETS = "/prod/v1/trainers/datasets"
JOB_CONFIG = """\
config:
  name: timing
  process:
    - training_folder: /app/ai-toolkit/output
      datasets: []
      train: {steps: 4}
"""


@pytest_asyncio.fixture
async def bare() -> AsyncIterator[aiohttp.ClientSession]:
    """A session without credentials, as a client talks to object storage."""
    async with aiohttp.ClientSession() as session:
        yield session


def api_session(emu: Emulator) -> aiohttp.ClientSession:
    """A session that sends the emulator's bearer token."""
    return aiohttp.ClientSession(emu.url, headers={"Authorization": f"Bearer {emu.token}"})


async def call(api: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> Any:
    """One API request that must succeed; its JSON body."""
    async with api.request(method, path, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def upload_urls(api: aiohttp.ClientSession, sizes: dict[str, int]) -> tuple[str, Any]:
    """A new dataset and the get-upload-endpoint answer for ``sizes``."""
    dataset_id = (await call(api, "POST", DATASETS, json={}))["id"]
    body = await call(
        api,
        "POST",
        f"{DATASETS}/{dataset_id}/get-upload-endpoint",
        json={"filenameToByteSize": sizes},
    )
    return dataset_id, body


async def wait_for(check: Any, timeout: float) -> float:
    """Poll the async ``check`` until it is true; the real seconds it took (fails on timeout)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.asyncio
async def test_signed_put_url_expires_after_lifetime_over_speed(
    bare: aiohttp.ClientSession,
) -> None:
    """A signed PUT URL of lifetime 1000 at speed 1000 works at 0.4 s and is expired at 1.3 s."""
    async with Emulator(rate_limit=None, speed=1000.0, url_ttl=1000.0) as emu, api_session(
        emu
    ) as api:
        issued = time.time()
        dataset_id, body = await upload_urls(api, {"a.jpg": 3, "b.jpg": 3})
        expires_at = datetime.fromisoformat(body["expires_at"]).timestamp()
        assert 0.9 < expires_at - issued < 1.2  # 1000 simulated s are 1 real s
        await asyncio.sleep(0.4)
        async with bare.put(body["uploads"]["a.jpg"]["upload_url"], data=b"aaa") as resp:
            assert resp.status == 200
        await asyncio.sleep(max(0.0, issued + 1.3 - time.time()))
        async with bare.put(body["uploads"]["b.jpg"]["upload_url"], data=b"bbb") as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == "ExpiredToken"
        assert set(emu.stored_files(dataset_id)) == {"a.jpg"}


@pytest.mark.asyncio
async def test_signed_get_url_expires_after_lifetime_over_speed(
    bare: aiohttp.ClientSession,
) -> None:
    """An artifact's signed GET URL lives url_ttl / speed real seconds too."""
    async with Emulator(rate_limit=None, speed=500.0, url_ttl=250.0) as emu:
        url = emu.state.storage.put_blob("probe/blob.bin", b"payload")
        async with bare.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == b"payload"
        await asyncio.sleep(0.7)  # past 250 / 500 = 0.5 s
        async with bare.get(url) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == "ExpiredToken"


@pytest.mark.asyncio
async def test_dataset_with_an_unused_url_is_ready_promptly_at_high_speed(
    bare: aiohttp.ClientSession,
) -> None:
    """At speed 1000 an unused signed URL holds a dataset UPLOADING for 0.9 s, not 15 minutes."""
    async with Emulator(rate_limit=None, speed=1000.0) as emu, api_session(emu) as api:
        dataset_id, body = await upload_urls(api, {"a.jpg": 3, "a.txt": 4, "spare.txt": 1})
        for name, data in (("a.jpg", b"jpg"), ("a.txt", b"text")):
            async with bare.put(body["uploads"][name]["upload_url"], data=data) as resp:
                assert resp.status == 200

        async def ready() -> bool:
            status = await call(api, "GET", f"{DATASETS}/{dataset_id}/status")
            assert status["status"] in ("UPLOADING", "READY"), status
            return bool(status["status"] == "READY")

        assert not await ready()  # spare.txt's URL is still outstanding
        took = await wait_for(ready, timeout=5.0)
        assert took < 2.0  # url_ttl 900 / speed 1000 = 0.9 s, plus polling


@pytest.mark.asyncio
async def test_every_lifecycle_finishes_in_scaled_time() -> None:
    """At speed 1000 a job, a Model API run and a machine boot each end within a second."""
    async with Emulator(rate_limit=None, speed=1000.0) as emu, api_session(emu) as api:
        job_body = {
            "config_file": JOB_CONFIG,
            "config_file_format": "yaml",
            "gpu_type": "ADA_80_PLUS",
        }
        job = await call(api, "POST", JOBS, json=job_body)
        emu.add_model("owner/model/v1")
        run = await call(api, "POST", "/v1/models/owner/model/v1", json={"prompt": "x"})
        servers = f"/prod/api/users/{emu.user_id}/servers"
        version = emu.state.machines.workflows[0]["version_id"]
        machine = await call(
            api,
            "POST",
            servers,
            json={
                "workflow_version_id": version,
                "server_type": "medium",
                "estimated_duration": 3600,
            },
        )
        started = time.monotonic()

        async def all_done() -> bool:
            job_state = await call(api, "GET", f"{JOBS}/{job['id']}/status")
            run_state = await call(api, "GET", f"/v1/requests/{run['request_id']}/status")
            async with api.get(f"{servers}/{machine['server_id']}") as resp:
                machine_state = (await resp.json()) if resp.status == 200 else {}
            return (
                job_state["status"] == "STOPPED"
                and run_state["status"] == "completed"
                and machine_state.get("current_status") == "Ready"
            )

        await wait_for(all_done, timeout=3.0)
        # queue 10 s + 4 steps x 3 s, a 10 s run and a 60 s boot: 60 ms of real time at most
        assert time.monotonic() - started < 1.0
