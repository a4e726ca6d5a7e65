"""The emulator's Serverless API: deployments, queue lifecycle, overrides, gating, webhooks."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from runcomfy_async.testing import Emulator, WebhookPolicy
from tests._raw_api import call

V2 = "/prod/v2/deployments"


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit, at speed 1000 (a run takes 8 ms, a cold start 20)."""
    async with Emulator(rate_limit=None, speed=1000.0) as emulator:
        yield emulator


async def create(api: aiohttp.ClientSession, emu: Emulator, **fields: Any) -> dict[str, Any]:
    """Create a deployment of the account's first workflow."""
    body = {
        "name": "txt2img",
        "workflow_id": emu.state.machines.workflows[0]["workflow_id"],
        "workflow_version": "v1",
        "hardware": ["AMPERE_48"],
        **fields,
    }
    return dict(await call(api, "POST", V2, json=body))


async def infer(
    api: aiohttp.ClientSession, dep_id: str, body: Any = None, *, version: str = "v1",
    expect: int = 200, query: str = "",
) -> Any:
    """Submit an inference request."""
    path = f"/prod/{version}/deployments/{dep_id}/inference{query}"
    return await call(api, "POST", path, expect=expect, json=body or {"overrides": {}})


async def finished(api: aiohttp.ClientSession, links: dict[str, str]) -> dict[str, Any]:
    """Poll the result URL until the request is final."""
    for _ in range(500):
        async with api.get(links["result_url"]) as resp:
            body = dict(await resp.json())
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        await asyncio.sleep(0.01)
    raise AssertionError("request never finished")


@pytest.mark.asyncio
async def test_deployment_crud_with_defaults_includes_and_ids(
    api: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Create fills the documented defaults; get/list honour includes and ids; patch; delete."""
    dep = await create(api, emu)
    assert dep["min_instances"] == 0 and dep["max_instances"] == 1
    assert dep["queue_size"] == 1 and dep["keep_warm_duration_in_seconds"] == 60
    assert dep["is_enabled"] is True and dep["status"] == "standby"
    other = await create(api, emu, name="second")
    full = await call(api, "GET", f"{V2}/{dep['id']}?includes=payload&includes=readme")
    assert "6" in full["payload"]["workflow_api_json"] and full["readme"].startswith("#")
    listed = await call(api, "GET", f"{V2}?ids={other['id']}")
    assert [d["id"] for d in listed] == [other["id"]]
    patched = await call(api, "PATCH", f"{V2}/{dep['id']}", json={"max_instances": 3})
    assert patched["max_instances"] == 3
    await call(api, "DELETE", f"{V2}/{dep['id']}")
    await call(api, "GET", f"{V2}/{dep['id']}", expect=404)
    assert [d["id"] for d in await call(api, "GET", V2)] == [other["id"]]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"hardware": ["AMPERE_48", "AMPERE_24"]}, ["body", "hardware"]),
        ({"hardware": ["TPU_9000"]}, ["body", "hardware", 0]),
        ({"min_instances": 4}, ["body", "min_instances"]),
        ({"max_instances": 11}, ["body", "max_instances"]),
        ({"keep_warm_duration_in_seconds": -1}, ["body", "keep_warm_duration_in_seconds"]),
        ({"workflow_id": "not-a-workflow"}, ["body", "workflow_id"]),
    ],
)
async def test_create_refuses_what_the_service_refuses(
    api: aiohttp.ClientSession, emu: Emulator, fields: dict[str, Any], loc: list[Any]
) -> None:
    """One SKU, instance bounds 0-3 / 1-10, keep-warm >= 0, a known workflow: else 422001."""
    body = {
        "name": "x",
        "workflow_id": emu.state.machines.workflows[0]["workflow_id"],
        "workflow_version": "v1",
        "hardware": ["AMPERE_48"],
        **fields,
    }
    error = await call(api, "POST", V2, expect=422, json=body)
    assert error["error_code"] == 422001
    assert loc in [d["loc"] for d in error["detail"]]


@pytest.mark.asyncio
async def test_lifecycle_cold_start_queue_positions_and_outputs(
    api: aiohttp.ClientSession, emu: Emulator
) -> None:
    """One instance: a cold start, queue positions 1..n, instance ids, outputs downloadable."""
    emu.state.deployments.cold_start_seconds = 100_000.0  # 100 s, skipped with advance()
    dep = await create(api, emu, queue_size=10)
    subs = [await infer(api, dep["id"], {"overrides": {"6": {"inputs": {"text": f"p{i}"}}}})
            for i in range(3)]
    positions = []
    for sub in subs:
        body = await call(api, "GET", sub["status_url"])
        assert body["status"] == "in_queue"
        positions.append(body["queue_position"])
    assert positions == [1, 2, 3]
    emu.advance(100.0)  # the instance is up
    results = [await finished(api, sub) for sub in subs]
    assert all(r["status"] == "succeeded" for r in results)
    assert set(results[0]) == {"status", "created_at", "finished_at", "outputs", "error"}
    assert results[1]["outputs"]["12"] == {"text": [["p1"]]}
    image = results[0]["outputs"]["9"]["images"][0]
    async with aiohttp.ClientSession() as plain, plain.get(image["url"]) as resp:
        data = await resp.read()
    assert data == emu.serverless_files(subs[0]["request_id"])[image["filename"]]
    status = await call(api, "GET", subs[2]["status_url"])
    assert status["status"] == "completed" and status["instance_id"]
    assert (await call(api, "GET", f"{V2}/{dep['id']}"))["status"] == "running"


@pytest.mark.asyncio
async def test_v2_prefix_and_urls_follow_the_caller(
    api: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Inference under /prod/v2 answers with /prod/v2 tracking URLs that work."""
    dep = await create(api, emu)
    sub = await infer(api, dep["id"], version="v2")
    assert "/prod/v2/deployments/" in sub["status_url"]
    assert (await finished(api, sub))["status"] == "succeeded"


@pytest.mark.asyncio
async def test_overrides_are_checked_against_the_workflow(
    api: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Unknown node or input, or a malformed data URI: 422001 naming what exists."""
    dep = await create(api, emu)
    bad = {"overrides": {"99": {"inputs": {"x": 1}}, "6": {"inputs": {"txt": "a"}}}}
    error = await infer(api, dep["id"], bad, expect=422)
    messages = {tuple(d["loc"]): d["msg"] for d in error["detail"]}
    assert "nodes: 3, 4, 5" in messages[("body", "overrides", "99")]
    assert "text" in messages[("body", "overrides", "6", "inputs", "txt")]
    bad_media = {"overrides": {"6": {"inputs": {"text": "data:image/png;base64,@@@"}}}}
    assert (await infer(api, dep["id"], bad_media, expect=422))["error_code"] == 422001
    good_media = base64.b64encode(b"png").decode()
    ok = {"overrides": {"6": {"inputs": {"text": f"data:image/png;base64,{good_media}"}}}}
    await infer(api, dep["id"], ok)


@pytest.mark.asyncio
async def test_inline_workflow_runs_instead_of_the_saved_one(
    api: aiohttp.ClientSession, emu: Emulator
) -> None:
    """workflow_api_json replaces the deployed workflow; other output kinds are produced."""
    dep = await create(api, emu)
    workflow = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "hi"}},
        "2": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["1", 0]}},
    }
    result = await finished(api, await infer(api, dep["id"], {"workflow_api_json": workflow}))
    assert result["outputs"]["2"]["gifs"][0]["filename"].endswith(".mp4")


@pytest.mark.asyncio
async def test_disabled_and_deleted_deployments_are_refused(
    api: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A disabled deployment answers 10002, a deleted one 10003."""
    dep = await create(api, emu)
    await call(api, "PATCH", f"{V2}/{dep['id']}", json={"is_enabled": False})
    assert (await infer(api, dep["id"], expect=403))["error_code"] == 10002
    await call(api, "DELETE", f"{V2}/{dep['id']}")
    assert (await infer(api, dep["id"], expect=404))["error_code"] == 10003


@pytest.mark.asyncio
async def test_cancel_queued_and_finished(api: aiohttp.ClientSession, emu: Emulator) -> None:
    """A queued request is cancelled (both fields say so); a finished one is not_cancellable."""
    emu.state.deployments.cold_start_seconds = 10_000.0
    dep = await create(api, emu)
    sub = await infer(api, dep["id"])
    answer = await call(api, "POST", sub["cancel_url"], expect=202)
    assert answer["status"] == answer["outcome"] == "cancellation_requested"
    assert (await finished(api, sub))["status"] == "cancelled"
    emu.state.deployments.cold_start_seconds = 0.0
    done = await infer(api, dep["id"])
    await finished(api, done)
    answer = await call(api, "POST", done["cancel_url"], expect=202)
    assert answer["outcome"] == "not_cancellable"


class Receiver:
    """A webhook endpoint on a real socket that records each event and can fail on purpose."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.events.append(await request.json())
        return web.Response(status=204)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A running :class:`Receiver`."""
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield hook
    await runner.cleanup()


@pytest.mark.asyncio
async def test_webhooks_deliver_every_status_in_order_by_default(
    api: aiohttp.ClientSession, emu: Emulator, receiver: Receiver
) -> None:
    """Query webhook + intermediate: in_queue, in_progress, succeeded with the result's outputs."""
    dep = await create(api, emu)
    sub = await infer(
        api, dep["id"], query=f"?webhook={receiver.url}&webhook_intermediate_status=true"
    )
    result = await finished(api, sub)
    await emu.webhooks_idle()
    assert [e["status"] for e in receiver.events] == ["in_queue", "in_progress", "succeeded"]
    final = receiver.events[-1]
    assert final["request_id"] == sub["request_id"] and final["deployment_id"] == dep["id"]
    assert final["outputs"] == result["outputs"] and final["finished_at"]


@pytest.mark.asyncio
async def test_webhook_body_fields_final_only_and_retries(
    api: aiohttp.ClientSession, emu: Emulator, receiver: Receiver
) -> None:
    """Legacy body fields work; without intermediate only the final event; 5xx is retried."""
    emu.set_webhook_policy(WebhookPolicy(backoff=10.0))  # 10 ms at speed 1000
    receiver.fail_first = 2
    dep = await create(api, emu)
    body = {"overrides": {"6": {"inputs": {"text": "EMULATOR_FAIL"}}}, "webhook": receiver.url}
    sub = await infer(api, dep["id"], body)
    assert (await finished(api, sub))["status"] == "failed"
    await emu.webhooks_idle()
    assert [e["status"] for e in receiver.events] == ["failed"]
    assert receiver.events[0]["error"]["message"]
    assert [d.status for d in emu.webhook_deliveries] == [503, 503, 204]


@pytest.mark.asyncio
async def test_webhook_policy_duplicates_reorders_and_drops_per_deployment(
    api: aiohttp.ClientSession, emu: Emulator, receiver: Receiver
) -> None:
    """A per-deployment policy duplicates, reorders or drops events; others stay clean."""
    noisy = await create(api, emu, name="noisy")
    quiet = await create(api, emu, name="quiet")
    emu.set_webhook_policy(
        WebhookPolicy(duplicate_rate=1.0, reorder_rate=1.0), deployment_id=noisy["id"]
    )
    query = f"?webhook={receiver.url}&webhook_intermediate_status=true"
    await finished(api, await infer(api, noisy["id"], query=query))
    await emu.webhooks_idle()
    statuses = [e["status"] for e in receiver.events]
    assert sorted(statuses) == sorted(["in_queue", "in_progress", "succeeded"] * 2)
    assert statuses.index("succeeded") < statuses.index("in_progress")
    receiver.events.clear()
    emu.set_webhook_policy(WebhookPolicy(drop_rate=1.0), deployment_id=noisy["id"])
    await finished(api, await infer(api, noisy["id"], query=query))
    await finished(api, await infer(api, quiet["id"], query=query))
    await emu.webhooks_idle()
    assert {e["deployment_id"] for e in receiver.events} == {quiet["id"]}
    assert [e["status"] for e in receiver.events] == ["in_queue", "in_progress", "succeeded"]


@pytest.mark.asyncio
async def test_inference_is_authenticated_and_rate_limited() -> None:
    """The queue endpoints need the bearer token and count against the account limit."""
    async with Emulator(rate_limit=1.0, burst=1, speed=1000.0) as emu:
        async with (
            aiohttp.ClientSession(emu.url) as anon,
            anon.post("/prod/v1/deployments/x/inference", json={}) as resp,
        ):
            assert resp.status == 401
        headers = {"Authorization": f"Bearer {emu.token}"}
        async with aiohttp.ClientSession(emu.url, headers=headers) as api:
            statuses = []
            for _ in range(2):
                async with api.get(V2) as resp:
                    statuses.append(resp.status)
            assert statuses == [200, 429]


async def instance_of(api: aiohttp.ClientSession, sub: dict[str, str]) -> str:
    """The instance a finished request ran on."""
    await finished(api, sub)
    return str((await call(api, "GET", sub["status_url"]))["instance_id"])


@pytest.mark.asyncio
@pytest.mark.parametrize(("max_instances", "distinct"), [(3, 3), (1, 1)])
async def test_queue_size_scales_out_up_to_max_instances(
    api: aiohttp.ClientSession, emu: Emulator, max_instances: int, distinct: int
) -> None:
    """With queue_size 1, requests waiting for a cold instance start more, up to the ceiling."""
    # All three arrive while the first instance is cold; a run outlasts the gap between them,
    # so a new instance is always free before a busy one. advance() skips the waiting.
    emu.state.deployments.cold_start_seconds = 100_000.0
    emu.state.deployments.run_seconds = 50_000.0
    dep = await create(api, emu, max_instances=max_instances, queue_size=1)
    subs = [await infer(api, dep["id"]) for _ in range(3)]
    emu.advance(300.0)
    assert len({await instance_of(api, sub) for sub in subs}) == distinct


@pytest.mark.asyncio
@pytest.mark.parametrize(("keep_warm", "same"), [(3600, True), (0, False)])
async def test_keep_warm_decides_whether_the_next_request_reuses_the_instance(
    api: aiohttp.ClientSession, emu: Emulator, keep_warm: int, same: bool
) -> None:
    """An idle instance serves the next request within keep-warm; after it, a new one starts."""
    dep = await create(api, emu, keep_warm_duration_in_seconds=keep_warm)
    first = await instance_of(api, await infer(api, dep["id"]))
    emu.advance(2.0)  # 2000 simulated seconds idle
    second = await instance_of(api, await infer(api, dep["id"]))
    assert (first == second) is same
    emu.advance(0.01)  # past the run: up while warm, scaled to zero without keep-warm
    status = (await call(api, "GET", f"{V2}/{dep['id']}"))["status"]
    assert status == ("running" if same else "standby")
