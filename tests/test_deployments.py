"""rc.deployments against the emulator: deployments, serverless requests, overrides, outputs."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from runcomfy_async import (
    BadRequestError,
    Deployment,
    DeploymentDeletedError,
    DeploymentDisabledError,
    DeploymentInfo,
    Hardware,
    RequestFailed,
    RunComfy,
    ServerlessCancelOutcome,
    ServerlessRequest,
    ServerlessResult,
    ServerlessStatus,
    ValidationError,
    WaitTimeoutError,
)
from runcomfy_async._converter import make_converter
from runcomfy_async._polling import PollPolicy
from runcomfy_async.testing import Emulator

FAST = PollPolicy(initial=0.01, factor=1.5, max_interval=0.05)
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5d1e3e90000000049454e44ae426082"
)


pytestmark = pytest.mark.runcomfy_emulator(rate_limit=None, speed=1000.0)


@pytest.fixture
def emu(runcomfy_emulator: Emulator) -> Emulator:
    """The plugin's emulator: no rate limit, speed 1000 (runs take milliseconds)."""
    return runcomfy_emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client with a high rate: these tests are not about the rate limit."""
    async with emu.client(rate=1000.0, burst=100) as client:
        yield client


async def deploy(rc: RunComfy, emu: Emulator, **settings: Any) -> Deployment:
    """A deployment of the account's first workflow."""
    workflow_id = (await rc.machines.workflows())[0].workflow_id
    return await rc.deployments.create(
        name="txt2img", workflow_id=workflow_id, workflow_version="v1", hardware="AMPERE_48",
        **settings,
    )


@pytest.mark.asyncio
async def test_create_list_get_update_delete(rc: RunComfy, emu: Emulator) -> None:
    """The deployment lifecycle through the collection, with typed snapshots."""
    dep = await deploy(rc, emu, max_instances=2, keep_warm_duration_in_seconds=0)
    assert isinstance(dep.info, DeploymentInfo)
    assert dep.info.hardware == (Hardware.AMPERE_48,) and dep.info.max_instances == 2
    assert dep.info.enabled and dep.info.status == "standby"
    other = await deploy(rc, emu)
    assert {d.id for d in await rc.deployments.list()} == {dep.id, other.id}
    only = await rc.deployments.list(ids=[other.id], includes=["payload", "readme"])
    assert [d.id for d in only] == [other.id]
    assert only[0].payload is not None and "6" in only[0].payload.workflow_api_json
    assert only[0].readme
    info = await rc.deployments.info(dep.id)
    assert info.payload is None and info.created_at is not None
    changed = await rc.deployments.update(dep.id, queue_size=3, is_enabled=False)
    assert changed.queue_size == 3 and not changed.enabled
    await rc.deployments.delete(dep.id)
    assert [d.id for d in await rc.deployments.list()] == [other.id]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"hardware": ["AMPERE_48", "AMPERE_24"]}, "exactly one SKU"),
        ({"hardware": "a100"}, "AMPERE_48"),
        ({"min_instances": 31}, "0 to 30"),
        ({"max_instances": 0}, "1 to 60"),
        ({"min_instances": 3, "max_instances": 2}, "raise max_instances"),
        ({"keep_warm_duration_in_seconds": -5}, "keep_warm"),
        ({"queue_size": 0}, "queue_size"),
        ({"name": " "}, "name"),
    ],
)
async def test_create_checks_arguments_before_sending(
    rc: RunComfy, emu: Emulator, settings: dict[str, Any], words: str
) -> None:
    """Bad settings fail with the fix named, and nothing reaches the service."""
    args: dict[str, Any] = {
        "name": "x", "workflow_id": "wf", "workflow_version": "v1", "hardware": "AMPERE_48",
        **settings,
    }
    emu.clear_log()
    with pytest.raises(ValidationError, match=words):
        await rc.deployments.create(**args)
    with pytest.raises(ValidationError):
        await rc.deployments.update("some-id", **{k: v for k, v in settings.items()
                                                  if k != "name"} or {"name": " "})
    assert emu.log == []


@pytest.mark.asyncio
async def test_looser_bounds_pass_and_the_service_decides(rc: RunComfy, emu: Emulator) -> None:
    """max_instances 20 is within the widest documented bounds: the service refuses it here."""
    with pytest.raises(BadRequestError, match="max_instances"):
        await deploy(rc, emu, max_instances=20)


@pytest.mark.asyncio
async def test_submit_await_status_result_and_texts(rc: RunComfy, emu: Emulator) -> None:
    """get(id) sends nothing; submit returns a handle; await gives outputs keyed by node id."""
    emu.state.deployments.cold_start_seconds = 100_000.0  # 100 s, skipped with advance()
    dep = await deploy(rc, emu, queue_size=10)
    emu.clear_log()
    handle = rc.deployments.get(dep.id)
    assert emu.log == []
    first = await handle.submit({"6": {"inputs": {"text": "a red fox"}}})
    second = await handle.submit({"6": {"inputs": {"text": "a blue fox"}}})
    assert isinstance(first, ServerlessRequest)
    queued = await second.status()
    assert queued.status.value == "in_queue" and queued.queue_position == 2
    emu.advance(100.0)  # the instance is up
    result = await second.wait(poll=FAST)
    assert result.texts() == {"12": ["a blue fox"]}
    assert [f.node_id for f in result.files()] == ["9"]
    status = await second.status()
    assert status.instance_id and status.queue_position is None
    outputs = await asyncio.wait_for(first, 10)
    assert set(outputs) == {"9", "12"}
    rebuilt = handle.request(first.id)
    assert (await rebuilt.result()).outputs == outputs


@pytest.mark.asyncio
async def test_a_finished_run_teaches_the_limiter_the_deployment_run_time(
    rc: RunComfy, emu: Emulator
) -> None:
    """A run's submit-to-finish time (server clock) is learned per deployment, as per model for
    model requests, so later waits poll when their run should be over."""
    dep = await deploy(rc, emu)
    key = ("deployment", dep.id)
    assert rc._run_times.expected(key) is None
    took = []
    for text in ("a fox", "a cat"):
        result = await (await dep.submit({"6": {"inputs": {"text": text}}})).wait(poll=FAST)
        assert result.created_at is not None and result.finished_at is not None
        took.append((result.finished_at - result.created_at).total_seconds())
    assert rc._run_times.expected(key) == min(took)  # the shortest recent run
    assert rc._run_times.expected(("deployment", "another")) is None


@pytest.mark.asyncio
async def test_outputs_download_byte_for_byte(rc: RunComfy, emu: Emulator, tmp_path: Path) -> None:
    """Outputs download through the artifact path into dest/outputs, exactly as stored."""
    dep = await deploy(rc, emu)
    outputs = await dep.run({"3": {"inputs": {"seed": 7}}}, poll=FAST)
    paths = await rc.deployments.download_outputs(outputs, tmp_path)
    request_id = next(iter(emu.state.deployments.requests))
    stored = emu.serverless_files(request_id)
    assert {p.name: p.read_bytes() for p in paths} == stored
    assert all(p.parent == tmp_path / "outputs" for p in paths)
    again = await dep.request(request_id).download_outputs(tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


@pytest.mark.asyncio
async def test_typed_overrides_refused_before_sending(rc: RunComfy, emu: Emulator) -> None:
    """With the deployed workflow known, a wrong node or input lists the valid ones."""
    dep = await deploy(rc, emu)
    await dep.fetch(includes="payload")
    emu.clear_log()
    with pytest.raises(ValidationError, match=r"node 99 .*6 \(CLIPTextEncode\)"):
        await dep.submit({"99": {"inputs": {"text": "x"}}})
    with pytest.raises(ValidationError, match="no input 'txt'; its inputs are clip, text"):
        await dep.submit({"6": {"inputs": {"txt": "x"}}})
    assert emu.log == []
    fresh = rc.deployments.get(dep.id)
    with pytest.raises(ValidationError, match="no input 'sead'"):
        await fresh.submit({"3": {"inputs": {"sead": 1}}}, validate=True)
    assert [r.method for r in emu.log] == ["GET"]  # the one fetch of the workflow
    unchecked = rc.deployments.get(dep.id)
    with pytest.raises(BadRequestError, match="overrides"):
        await unchecked.submit({"99": {"inputs": {"x": 1}}})


@pytest.mark.asyncio
async def test_media_inputs_path_bytes_and_bounds(
    rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """A Path or bytes goes inline as a data URI; a file past the bound is refused by name."""
    dep = await deploy(rc, emu)
    image = tmp_path / "in.png"
    image.write_bytes(PNG)
    req = await dep.submit({"6": {"inputs": {"text": image}}, "7": {"inputs": {"text": PNG}}})
    await req.wait(poll=FAST)
    sent = emu.state.deployments.requests[req.id].workflow
    assert sent["6"]["inputs"]["text"].startswith("data:image/png;base64,")
    assert sent["7"]["inputs"]["text"] == sent["6"]["inputs"]["text"]
    big = tmp_path / "big.png"
    with big.open("wb") as handle:
        handle.truncate(21 * 1024 * 1024)
    with pytest.raises(ValidationError, match=r"big\.png.*too large.*https URL"):
        await dep.submit({"6": {"inputs": {"text": big}}})
    with pytest.raises(ValidationError, match="cannot read"):
        await dep.submit({"6": {"inputs": {"text": tmp_path / "missing.png"}}})


@pytest.mark.asyncio
async def test_inline_workflow_and_v2_queue(rc: RunComfy, emu: Emulator) -> None:
    """workflow_api_json runs instead; a v2 handle uses /prod/v2 and other kinds are kept."""
    dep = await deploy(rc, emu)
    workflow = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "hi"}},
        "2": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["1", 0]}},
    }
    v2 = rc.deployments.get(dep.id, queue_version="v2")
    req = await v2.submit(workflow_api_json=workflow, extra_data={"client": "test"})
    assert req.queue_version == "v2"
    outputs = await req
    assert outputs["2"]["gifs"][0]["filename"].endswith(".mp4")
    assert any(r.path.startswith("/prod/v2/deployments/") and r.path.endswith("/status")
               for r in emu.log)
    with pytest.raises(ValidationError, match="either overrides"):
        await dep.submit({"6": {"inputs": {"text": "x"}}}, workflow_api_json=workflow)


@pytest.mark.asyncio
async def test_failed_run_raises_and_cancel_reports_outcome(rc: RunComfy, emu: Emulator) -> None:
    """A failed run raises RequestFailed with the reason; cancel says what happened."""
    dep = await deploy(rc, emu)
    with pytest.raises(RequestFailed, match="EMULATOR_FAIL"):
        await dep.run({"6": {"inputs": {"text": "EMULATOR_FAIL"}}}, poll=FAST)
    emu.state.deployments.cold_start_seconds = 100_000.0
    slow = await deploy(rc, emu)
    req = await slow.submit()
    assert await req.cancel() is ServerlessCancelOutcome.CANCELLATION_REQUESTED
    emu.state.deployments.cold_start_seconds = 0.0
    done = await dep.submit()
    await done.wait(poll=FAST)
    assert await done.cancel() is ServerlessCancelOutcome.NOT_CANCELLABLE


@pytest.mark.asyncio
async def test_run_cancels_an_abandoned_request(rc: RunComfy, emu: Emulator) -> None:
    """A run whose wait times out cancels its request on the service."""
    emu.state.deployments.cold_start_seconds = 100_000.0
    dep = await deploy(rc, emu)
    with pytest.raises(WaitTimeoutError):
        await dep.run(timeout=0.2, poll=FAST)
    await asyncio.sleep(0)
    (record,) = emu.state.deployments.requests.values()
    for _ in range(100):
        if record.cancelled_at is not None:
            break
        await asyncio.sleep(0.01)
    assert record.cancelled_at is not None


@pytest.mark.asyncio
async def test_disabled_and_deleted_deployments_raise_their_errors(
    rc: RunComfy, emu: Emulator
) -> None:
    """10002 and 10003 become DeploymentDisabledError and DeploymentDeletedError with the fix."""
    dep = await deploy(rc, emu)
    await rc.deployments.update(dep.id, is_enabled=False)
    with pytest.raises(DeploymentDisabledError, match="disabled") as disabled:
        await dep.submit()
    assert disabled.value.code == 10002
    assert "is_enabled=True" in (type(disabled.value).__doc__ or "")
    await rc.deployments.delete(dep.id)
    with pytest.raises(DeploymentDeletedError) as deleted:
        await dep.run()
    assert deleted.value.code == 10003


@pytest.mark.asyncio
async def test_webhook_options_reach_the_service(rc: RunComfy, emu: Emulator) -> None:
    """webhook and webhook_intermediate_status go in the query; a bad URL is refused first."""
    dep = await deploy(rc, emu)
    emu.state.webhooks.set_policy(None)
    req = await dep.submit(webhook="http://127.0.0.1:9/hook", webhook_intermediate_status=True)
    record = emu.state.deployments.requests[req.id]
    assert record.webhook == "http://127.0.0.1:9/hook" and record.intermediate
    with pytest.raises(ValidationError, match="webhook"):
        await dep.submit(webhook="ftp://example.com/x")


@pytest.mark.asyncio
async def test_acceptance_fifty_concurrent_runs(tmp_path: Path) -> None:
    """Create; 50 concurrent runs with overrides, no 429, outputs byte-checked; update;
    disable (runs refused); delete. Client and emulator both at 50 req/s."""
    async with (
        Emulator(rate_limit=50.0, burst=10, speed=1000.0) as emu,
        emu.client(rate=40.0, burst=5) as rc,
    ):
        dep = await deploy(rc, emu, max_instances=10, queue_size=5)
        await dep.fetch(includes="payload")

        async def one(i: int) -> list[Path]:
            outputs = await dep.run(
                {"6": {"inputs": {"text": f"prompt {i}"}}, "3": {"inputs": {"seed": i}}},
                poll=PollPolicy(initial=0.05, factor=1.5, max_interval=0.2),
            )
            assert outputs["12"] == {"text": [[f"prompt {i}"]]}
            return await rc.deployments.download_outputs(outputs, tmp_path / str(i))

        results = await asyncio.gather(*(one(i) for i in range(50)))
        stored: dict[str, bytes] = {}
        for request_id in emu.state.deployments.requests:
            for data in emu.serverless_files(request_id).values():
                stored[hashlib.sha256(data).hexdigest()] = data
        downloaded = [p for paths in results for p in paths]
        assert len(downloaded) == 50
        digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in downloaded}
        assert len(digests) == 50 and digests <= set(stored)
        assert all(r.status != 429 for r in emu.log)
        updated = await rc.deployments.update(dep.id, max_instances=3)
        assert updated.max_instances == 3
        await rc.deployments.update(dep.id, is_enabled=False)
        with pytest.raises(DeploymentDisabledError):
            await dep.run({"6": {"inputs": {"text": "refused"}}})
        await rc.deployments.delete(dep.id)
        assert await rc.deployments.list() == []


def test_documented_shapes_structure_strictly() -> None:
    """The service's documented status, result and deployment bodies map onto the data classes
    with no key left over; outputs keep every kind."""
    strict = make_converter(strict=True)
    status = strict.structure(
        {"request_id": "r", "status": "in_progress", "queue_position": 0,
         "instance_id": "1697cb1a", "status_url": "https://x/s", "result_url": "https://x/r"},
        ServerlessStatus,
    )
    assert status.instance_id == "1697cb1a"
    result = strict.structure(
        {"request_id": "r", "status": "succeeded",
         "created_at": "2025-07-01T12:00:00.123456+00:00",
         "finished_at": "2025-07-01T12:00:21.654321+00:00",
         "outputs": {"58": {"images": [{"filename": "ComfyUI_00010_.png", "subfolder": "",
                                        "type": "output", "url": "https://s/o.png"}]},
                     "38:42": {"text": [["Transform to an elephant"]]}},
         "error": None},
        ServerlessResult,
    )
    assert [f.url for f in result.files()] == ["https://s/o.png"]
    assert result.texts() == {"38:42": ["Transform to an elephant"]}
    failed = strict.structure(
        {"request_id": "r", "status": "failed", "created_at": None, "finished_at": None,
         "outputs": None, "error": [{"errorCode": 1, "error": "OOM", "debugInfo": "node 3"}]},
        ServerlessResult,
    )
    assert failed.failed
    info = strict.structure(
        {"id": "d", "name": "n", "workflow_id": "w", "workflow_version": "v1",
         "hardware": ["AMPERE_48", "NEW_GPU_99"], "min_instances": 0, "max_instances": 1,
         "queue_size": 1, "keep_warm_duration_in_seconds": 60, "status": "standby",
         "is_enabled": True, "created_at": "2025-07-01T12:00:00+00:00",
         "updated_at": "2025-07-01T12:00:00+00:00",
         "payload": {"workflow_api_json": {"6": {"class_type": "CLIPTextEncode", "inputs": {}}},
                     "overrides": {}, "object_info_url": "https://x/oi.json"},
         "readme": "# n"},
        DeploymentInfo,
    )
    assert info.hardware[0] is Hardware.AMPERE_48 and not info.hardware[1].known


@pytest.mark.asyncio
async def test_webhook_secret_stays_out_of_logs_and_errors(
    rc: RunComfy, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A shared secret in the webhook URL is masked in logs and in error messages."""
    dep = await deploy(rc, emu)
    hook = "http://127.0.0.1:9/hook?key=s3cr3t-value"
    caplog.set_level("DEBUG", logger="runcomfy_async")
    await dep.submit(webhook=hook)
    await rc.deployments.update(dep.id, is_enabled=False)
    with pytest.raises(DeploymentDisabledError) as caught:
        await dep.submit(webhook=hook)
    assert "s3cr3t" not in caplog.text
    assert "s3cr3t" not in str(caught.value) and "s3cr3t" not in repr(caught.value)
