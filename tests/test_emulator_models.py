"""The emulator's Model API (docs/wire.md): queue, lifecycle, results, cancel, behaviours."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async.testing import Emulator
from tests._raw_api import call

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit, at speed 50 (a default 10 s run takes 0.2 s)."""
    models = [{"model_id": m} for m in ("a/image-model", "a/video/pro", "a/multi")]
    async with Emulator(rate_limit=None, speed=50.0, models=models) as emulator:
        yield emulator


async def submit(api: aiohttp.ClientSession, model_id: str = FLUX, **inputs: Any) -> str:
    """Submit a request and return its id."""
    body = await call(api, "POST", f"/v1/models/{model_id}", json=inputs or {"prompt": "x"})
    return str(body["request_id"])


async def status(api: aiohttp.ClientSession, request_id: str) -> Any:
    """The request's status body."""
    return await call(api, "GET", f"/v1/requests/{request_id}/status")


async def result(api: aiohttp.ClientSession, request_id: str, query: str = "") -> Any:
    """The request's result body."""
    return await call(api, "GET", f"/v1/requests/{request_id}/result{query}")


@pytest.mark.asyncio
async def test_vendor_submit_example_answers_the_documented_keys(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """The vendor's curl example (model id with slashes, flat inputs) gets id + three URLs."""
    body = await call(
        api,
        "POST",
        f"/v1/models/{FLUX}",
        json={"prompt": "orange umbrella", "image_url": "https://x/y.webp", "seed": 81030369},
    )
    request_id = body["request_id"]
    base = f"{emu.url}/v1/requests/{request_id}"
    assert body == {
        "request_id": request_id,
        "status_url": f"{base}/status",
        "result_url": f"{base}/result",
        "cancel_url": f"{base}/cancel",
    }
    assert emu.log[-1].api == "model"
    assert emu.state.model_requests.get(request_id).model_id == FLUX


@pytest.mark.asyncio
async def test_lifecycle_in_queue_in_progress_completed(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """A run goes in_queue -> in_progress -> completed, and /status never says failed."""
    emu.state.model_requests.set_workers(1)
    emu.set_model_behavior("a/slow", duration=1000.0, fail="boom")
    first = await submit(api, "a/slow")
    second = await submit(api, "a/slow")
    assert (await status(api, first))["status"] == "in_progress"
    queued = await status(api, second)
    assert queued["status"] == "in_queue"
    assert queued["queue_position"] == 1
    assert "queue_position" not in await status(api, first)
    emu.advance(21.0)  # first ends at 20 s, second runs until 40 s
    assert (await status(api, first))["status"] == "completed"
    assert (await status(api, second))["status"] == "in_progress"
    emu.advance(20.0)
    assert (await status(api, second))["status"] == "completed"
    assert (await result(api, second))["status"] == "failed"


@pytest.mark.asyncio
async def test_queue_positions_move_as_runs_finish(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """With two workers, positions count down as earlier runs end."""
    emu.state.model_requests.set_workers(2)
    emu.set_model_behavior("a/b", duration=500.0)  # 10 s real each
    ids = [await submit(api, "a/b") for _ in range(6)]
    positions = [(await status(api, i)).get("queue_position") for i in ids]
    assert positions == [None, None, 1, 2, 3, 4]
    emu.advance(10.5)
    positions = [(await status(api, i)).get("queue_position") for i in ids]
    assert positions == [None, None, None, None, 1, 2]


@pytest.mark.asyncio
async def test_result_while_unfinished_is_200_with_current_status(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """/result of a running request answers 200 with in_progress and no output."""
    emu.set_model_behavior("a/b", duration=5000.0)
    request_id = await submit(api, "a/b")
    body = await result(api, request_id)
    assert body["status"] == "in_progress"
    assert body["output"] is None
    assert body["finished_at"] is None
    assert ISO.fullmatch(body["created_at"])


@pytest.mark.asyncio
async def test_success_result_has_output_timestamps_and_cost_on_request(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """A finished run's result: succeeded, model_id, output URL, ISO times; cost only if asked."""
    request_id = await submit(api)
    emu.advance(1.0)
    body = await result(api, request_id)
    assert body["status"] == "succeeded"
    assert body["model_id"] == FLUX
    assert set(body["output"]) == {"image"}
    assert ISO.fullmatch(body["created_at"])
    assert ISO.fullmatch(body["finished_at"])
    assert "cost" not in body
    assert (await result(api, request_id, "?include_cost=true"))["cost"] == pytest.approx(0.04)
    again = await result(api, request_id)
    assert again["output"] == body["output"]


@pytest.mark.parametrize(
    ("model_id", "key", "count"),
    [("a/image-model", "image", None), ("a/video/pro", "video", None), ("a/multi", "images", 3)],
)
@pytest.mark.asyncio
async def test_output_shape_depends_on_model_and_files_download(
    emu: Emulator, api: aiohttp.ClientSession, model_id: str, key: str, count: int | None
) -> None:
    """Output is {"image"}, {"video"} or {"images": [...]}; every URL downloads without auth."""
    request_id = await submit(api, model_id, prompt="x", num_images=3)
    emu.advance(1.0)
    output = (await result(api, request_id))["output"]
    assert set(output) == {key}
    urls = output[key] if count is not None else [output[key]]
    assert len(urls) == (count or 1)
    async with aiohttp.ClientSession() as bare:
        for url in urls:
            async with bare.get(url) as resp:
                assert resp.status == 200
                assert len(await resp.read()) > 8
    downloads = [r for r in emu.log if r.api == "storage"]
    assert len(downloads) == len(urls)
    assert not any(r.authorized for r in downloads)


@pytest.mark.asyncio
async def test_failing_model_reports_error_in_result(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """set_model_behavior(fail=...) ends runs as failed with the message; /status says completed."""
    emu.set_model_behavior("a/b", fail="NSFW content detected")
    request_id = await submit(api, "a/b")
    emu.advance(1.0)
    assert (await status(api, request_id))["status"] == "completed"
    body = await result(api, request_id, "?include_cost=true")
    assert body["status"] == "failed"
    assert body["output"] is None
    assert body["error"] == {"code": "MODEL_ERROR", "message": "NSFW content detected"}
    assert body["cost"] == 0.0


@pytest.mark.asyncio
async def test_cancel_only_while_queued(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """Cancel answers 202: cancelled while queued (idempotent), not_cancellable once running."""
    emu.state.model_requests.set_workers(1)
    emu.set_model_behavior("a/b", duration=1000.0)
    running = await submit(api, "a/b")
    queued = await submit(api, "a/b")
    behind = await submit(api, "a/b")
    assert (await status(api, behind))["queue_position"] == 2
    body = await call(api, "POST", f"/v1/requests/{running}/cancel", expect=202)
    assert body == {"request_id": running, "status": "in_progress", "outcome": "not_cancellable"}
    body = await call(api, "POST", f"/v1/requests/{queued}/cancel", expect=202)
    assert body == {"request_id": queued, "status": "cancelled", "outcome": "cancelled"}
    again = await call(api, "POST", f"/v1/requests/{queued}/cancel", expect=202)
    assert again["outcome"] == "cancelled"
    assert (await status(api, behind))["queue_position"] == 1
    cancelled = await result(api, queued)
    assert cancelled["status"] == "cancelled"
    assert ISO.fullmatch(cancelled["finished_at"])
    emu.advance(41.0)  # the cancelled run no longer holds up the one behind it
    assert (await status(api, behind))["status"] == "completed"
    assert (await status(api, queued))["status"] == "cancelled"
    done = await call(api, "POST", f"/v1/requests/{behind}/cancel", expect=202)
    assert done["outcome"] == "not_cancellable"


@pytest.mark.parametrize("model_id", ["a//b", "a/b%20c", "a/b/", "bad%24id", "a/b:c"])
@pytest.mark.asyncio
async def test_malformed_model_id_is_400001(api: aiohttp.ClientSession, model_id: str) -> None:
    """A model id that is not slash-separated plain segments is refused with 400001."""
    body = await call(api, "POST", f"/v1/models/{model_id}", expect=400, json={})
    assert body["error_code"] == 400001


@pytest.mark.asyncio
async def test_unknown_request_is_404001(api: aiohttp.ClientSession) -> None:
    """Status, result and cancel of an unknown id answer 404 with 404001."""
    for method, suffix in (("GET", "status"), ("GET", "result"), ("POST", "cancel")):
        body = await call(api, method, f"/v1/requests/nope/{suffix}", expect=404)
        assert body["error_code"] == 404001


@pytest.mark.parametrize(
    "body",
    [["not", "an", "object"], {"lora": {"path": ""}}, {"lora": {"path": "http://x/l.safetensors"}}],
)
@pytest.mark.asyncio
async def test_bad_inputs_are_422(api: aiohttp.ClientSession, body: Any) -> None:
    """A body that is not an object, or a LoRA without an https URL or name, is a 422001."""
    answer = await call(api, "POST", f"/v1/models/{FLUX}", expect=422, json=body)
    assert answer["error_code"] == 422001


@pytest.mark.asyncio
async def test_requires_bearer_token(emu: Emulator) -> None:
    """The Model API answers 401 without the token."""
    async with aiohttp.ClientSession(emu.url) as anonymous:
        body = await call(anonymous, "POST", f"/v1/models/{FLUX}", expect=401, json={})
    assert body["error_code"] == 401001


@pytest.mark.asyncio
async def test_behavior_and_workers_reject_nonsense(emu: Emulator) -> None:
    """A negative run duration or zero workers is a ValueError naming the problem."""
    with pytest.raises(ValueError, match="duration"):
        emu.set_model_behavior("a/b", duration=-1)
    with pytest.raises(ValueError, match="workers"):
        emu.state.model_requests.set_workers(0)
