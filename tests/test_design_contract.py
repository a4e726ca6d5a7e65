"""The design's public-surface snippet, run nearly verbatim against the emulator."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runcomfy_async import (
    DatasetInfo,
    GPUType,
    JobFailed,
    JobStatus,
    MachineInfo,
    RequestFailed,
    RequestStatus,
    RunComfy,
)
from runcomfy_async.cli.demo import TEMPLATE
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import example_workflow

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5d1e3e90000000049454e44ae426082"
)


def _dataset_folder(root: Path, n: int = 6) -> Path:
    folder = root / "dogs"
    folder.mkdir()
    for i in range(n):
        (folder / f"dog_{i:02d}.png").write_bytes(PNG)
        (folder / f"dog_{i:02d}.txt").write_text(f"a photo of sks dog number {i}")
    return folder


@pytest.mark.asyncio
async def test_design_public_surface(tmp_path: Path) -> None:
    """Every call of the design's public-surface snippet works as written, end to end."""
    folder = _dataset_folder(tmp_path)
    events: list[Any] = []
    # The account limit at 10/s on both sides instead of 1/s: the same calls and order, and the
    # client still paces itself under the server's limit, in a tenth of the time.
    async with Emulator(
        rate_limit=10.0, burst=6, speed=200.0, max_direct_upload=150_000_000
    ) as emu:
        assert emu.url.startswith("http://127.0.0.1:")
        assert emu.token and emu.user_id
        async with emu.client(rate=10.0) as rc:
            assert isinstance(rc, RunComfy)
            ds = await rc.datasets.create("dogs")
            report = await ds.upload_folder(str(folder), concurrency=16, progress=events.append)
            assert len(report.uploaded) == 12
            info = await ds.wait_ready()
            assert isinstance(info, DatasetInfo)
            assert {f.filename for f in info.files} == {p.name for p in folder.iterdir()}
            all_ds = await rc.datasets.list()
            assert [d.id for d in all_ds] == [ds.id]

            config = await rc.jobs.config_for(ds, TEMPLATE)
            job = await rc.jobs.submit(config, gpu_type=GPUType.H100)
            status = await job.status()
            assert isinstance(status, JobStatus)
            assert status.id == job.id
            seen = [artifact async for artifact in job.watch_artifacts()]
            final = await job
            assert isinstance(final, JobStatus)
            assert final.completed
            result = await job.result()
            assert result.artifacts
            names = {(a.kind, a.name) for a in result.artifacts}
            assert {(a.kind, a.name) for a in seen} == names
            assert len(seen) == len(names)  # each artifact exactly once
            paths = await job.download(tmp_path / "out")
            assert paths
            assert all(p.is_file() and p.resolve().is_relative_to(tmp_path / "out") for p in paths)

            emu.add_model("owner/model/variant")  # the catalog refuses ids it does not know
            req = await rc.models.submit("owner/model/variant", {"prompt": "a dog"})
            assert isinstance(await req.status(), RequestStatus)
            output = await req
            assert output
            output = await rc.models.run("owner/model/variant", {"prompt": "a cat"})
            assert output
            emu.set_model_behavior("owner/model/broken", fail="no GPU today")
            with pytest.raises(RequestFailed, match="no GPU today"):
                await rc.models.run("owner/model/broken", {"prompt": "x"})

            wfs = await rc.machines.workflows()
            version_id = wfs[0].version_id
            assert version_id is not None
            async with await rc.machines.launch(
                version_id, server_type="large", estimated_duration=3600
            ) as m:
                ready = await m
                assert isinstance(ready, MachineInfo)
                assert m.main_service_url
                comfy = m.comfyui()
                prompt_id = await comfy.queue_prompt(example_workflow())
                await comfy.wait(prompt_id)
                assert await comfy.outputs(prompt_id)
                await m.extend(7200)
            await rc.datasets.delete(ds.id)
    assert all(r.status != 429 for r in emu.log), "the client paces itself: no 429"
    deletes = [r for r in emu.log if r.api == "server" and r.method == "DELETE"]
    assert [r.status for r in deletes] == [200]
    assert any(type(e).__name__ == "FileDone" for e in events)
    assert {"method", "path", "status", "headers", "at", "api"} <= set(dir(emu.log[0]))


@pytest.mark.asyncio
async def test_design_serverless_lines() -> None:
    """The snippet's serverless lines: create, submit on get(id) without await, await, disable,
    delete."""
    async with Emulator(rate_limit=None, speed=1000.0) as emu, emu.client(rate=100.0) as rc:
        workflow_id = (await rc.machines.workflows())[0].workflow_id
        dep = await rc.deployments.create(
            name="txt2img", workflow_id=workflow_id, workflow_version="v1", hardware="AMPERE_48"
        )
        req = await rc.deployments.get(dep.id).submit(overrides={"6": {"inputs": {"text": "a"}}})
        outputs = await req
        assert outputs["12"] == {"text": [["a"]]}
        await rc.deployments.update(dep.id, is_enabled=False)
        await rc.deployments.delete(dep.id)
        assert await rc.deployments.list() == []


@pytest.mark.asyncio
async def test_failed_job_raises_job_failed(tmp_path: Path) -> None:
    """`await job` raises JobFailed when the job goes FAILED (a dataset that is not READY)."""
    async with Emulator(rate_limit=None, speed=2000.0) as emu, emu.client(rate=100.0) as rc:
        ds = await rc.datasets.create("never-ready")
        config = await rc.jobs.config_for(ds, TEMPLATE)
        job = await rc.jobs.submit(config, check_datasets=False)
        with pytest.raises(JobFailed):
            await asyncio.wait_for(job, 30)
