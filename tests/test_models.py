"""Model API requests through the client (docs/wire.md): submit, await, result, cancel, LoRA."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from runcomfy_async import (
    DownloadProgress,
    PollPolicy,
    RequestCancelled,
    RequestFailed,
    RetryPolicy,
    RunComfy,
    ServerError,
    UnexpectedResponseError,
    ValidationError,
    WaitTimeoutError,
)
from runcomfy_async._converter import make_converter
from runcomfy_async.resources.model_requests import cancel_outcome
from runcomfy_async.testing import Emulator
from runcomfy_async.types.models import (
    CancelOutcome,
    Lora,
    RequestResult,
    RequestState,
    RequestStatus,
    ResultStatus,
)
from tests._servers import serving

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
FAST = PollPolicy(initial=0.02, factor=1.5, max_interval=0.1)
#: Models these tests run besides the built-in catalog (the id decides the output's shape).
TEST_MODELS = ("acme/video-gen/v2", "acme/batch-images", "acme/video-x", "acme/flux-dev/lora")


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit where a default 10 s run takes 10 ms."""
    models = [{"model_id": m} for m in TEST_MODELS]
    async with Emulator(rate_limit=None, speed=1000.0, models=models) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client for the emulator with a generous rate."""
    async with emu.client(rate=200.0, burst=20) as client:
        yield client


def _model_calls(emu: Emulator) -> list[Any]:
    return [r for r in emu.log if r.api == "model"]


@pytest.mark.asyncio
async def test_submit_and_await_returns_the_output(emu: Emulator, rc: RunComfy) -> None:
    """``await rc.models.submit(...)`` gives the output; the id's slashes are path segments."""
    req = await rc.models.submit(FLUX, {"prompt": "orange umbrella", "seed": 81030369})
    assert req.model_id == FLUX
    output = await req
    assert set(output) == {"image"}
    assert output["image"].startswith(emu.url + "/storage/")
    first = _model_calls(emu)[0]
    assert (first.method, first.path) == ("POST", f"/v1/models/{FLUX}")
    paths = [r.path for r in _model_calls(emu)]
    assert paths[-1] == f"/v1/requests/{req.id}/result"
    assert all(r.headers["Authorization"] == "<redacted>" for r in _model_calls(emu))


@pytest.mark.asyncio
async def test_run_returns_the_model_shaped_output(rc: RunComfy) -> None:
    """``run`` submits and waits; the output keeps whatever shape the model defines."""
    video = await rc.models.run("acme/video-gen/v2", {"prompt": "x"}, poll=FAST)
    images = await rc.models.run("acme/batch-images", {"num_images": 3}, poll=FAST)
    assert set(video) == {"video"}
    assert len(images["images"]) == 3


@pytest.mark.asyncio
async def test_result_has_cost_times_and_model_when_asked(rc: RunComfy) -> None:
    """``include_cost=True`` makes result() carry the cost; times are aware datetimes."""
    req = await rc.models.submit(FLUX, {"prompt": "x"}, include_cost=True)
    final = await req.wait(poll=FAST)
    assert final.status is ResultStatus.SUCCEEDED
    assert final.cost == pytest.approx(0.04)
    assert final.model_id == FLUX
    assert final.created_at is not None
    assert final.finished_at is not None
    assert final.created_at.tzinfo is not None
    assert final.finished_at >= final.created_at
    plain = await rc.models.get(req.id).result()
    assert plain.cost is None
    assert plain.output == final.output


@pytest.mark.asyncio
async def test_failed_run_raises_request_failed_with_server_error(
    emu: Emulator, rc: RunComfy
) -> None:
    """A failed run: status says completed, the result says failed, await raises RequestFailed."""
    emu.set_model_behavior("acme/flaky", fail="Upstream provider rejected the input")
    req = await rc.models.submit("acme/flaky", {"prompt": "x"})
    with pytest.raises(RequestFailed, match="rejected the input") as caught:
        await req.wait(poll=FAST)
    assert caught.value.error == {
        "code": "MODEL_ERROR",
        "message": "Upstream provider rejected the input",
    }
    assert isinstance(caught.value.snapshot, RequestResult)
    assert (await req.status()).status is RequestState.COMPLETED
    with pytest.raises(RequestFailed):
        await rc.models.run("acme/flaky", {"prompt": "x"}, poll=FAST)


@pytest.mark.asyncio
async def test_cancel_while_queued_then_await_raises_cancelled(emu: Emulator, rc: RunComfy) -> None:
    """Cancelling a queued request answers CANCELLED and awaiting it raises RequestCancelled."""
    emu.state.model_requests.set_workers(1)
    emu.set_model_behavior("acme/slow", duration=60_000.0)  # 60 s real: stays in progress
    running = await rc.models.submit("acme/slow", {})
    queued = await rc.models.submit("acme/slow", {})
    state = await queued.status()
    assert state.status is RequestState.IN_QUEUE
    assert state.queue_position == 1
    assert await queued.cancel() is CancelOutcome.CANCELLED
    with pytest.raises(RequestCancelled):
        await queued
    assert (await queued.result()).status is ResultStatus.CANCELLED
    assert await running.cancel() is CancelOutcome.NOT_CANCELLABLE


@pytest.mark.asyncio
async def test_cancel_in_progress_returns_not_cancellable_and_run_finishes(
    emu: Emulator, rc: RunComfy
) -> None:
    """Cancel of a running request does not raise: NOT_CANCELLABLE, and the output still comes."""
    emu.set_model_behavior("acme/medium", duration=300.0)  # 0.3 s real
    req = await rc.models.submit("acme/medium", {})
    assert (await req.status()).status is RequestState.IN_PROGRESS
    assert await req.cancel() is CancelOutcome.NOT_CANCELLABLE
    output = await req.wait(poll=FAST)
    assert output.status is ResultStatus.SUCCEEDED


@pytest.mark.asyncio
async def test_wait_reports_moving_queue_positions(emu: Emulator, rc: RunComfy) -> None:
    """``on_status`` sees the queue position count down, then in_progress, then completed."""
    emu.state.model_requests.set_workers(1)
    emu.set_model_behavior("acme/step", duration=150.0)  # 0.15 s real each
    ahead = [await rc.models.submit("acme/step", {}) for _ in range(3)]
    req = await rc.models.submit("acme/step", {})
    seen: list[RequestStatus] = []
    await req.wait(
        poll=PollPolicy(initial=0.03, factor=1.0, max_interval=0.03), on_status=seen.append
    )
    positions = [
        s.queue_position
        for s in seen
        if s.status is RequestState.IN_QUEUE and s.queue_position is not None
    ]
    assert positions[0] == 3
    assert positions == sorted(positions, reverse=True)
    assert len(set(positions)) >= 2
    assert seen[-1].status is RequestState.COMPLETED
    assert RequestState.IN_PROGRESS in {s.status for s in seen}
    assert all(await asyncio.gather(*(a.wait(poll=FAST) for a in ahead)))


@pytest.mark.asyncio
async def test_get_rebuilds_a_handle_from_its_id(emu: Emulator, rc: RunComfy) -> None:
    """``rc.models.get(id)`` awaits a request submitted elsewhere and learns its model."""
    req = await rc.models.submit("acme/video-x", {})
    again = rc.models.get(req.id)
    assert again.model_id is None
    output = (await again.wait(poll=FAST)).output
    assert set(output) == {"video"}
    assert again.model_id == "acme/video-x"
    assert "acme/video-x" in repr(again)


@pytest.mark.asyncio
async def test_wait_timeout_raises_and_keeps_the_request(emu: Emulator, rc: RunComfy) -> None:
    """``wait(timeout=)`` raises WaitTimeoutError; the request is left running."""
    emu.set_model_behavior("acme/slow", duration=60_000.0)
    req = await rc.models.submit("acme/slow", {})
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError, match=req.id):
        await req.wait(timeout=0.2, poll=FAST)
    assert time.monotonic() - start < 1.0
    assert not [r for r in emu.log if r.path.endswith("/cancel")]


@pytest.mark.asyncio
async def test_run_timeout_cancels_the_abandoned_request(
    emu: Emulator, rc: RunComfy, caplog: pytest.LogCaptureFixture
) -> None:
    """When ``run`` gives up, it cancels the queued request nobody can await any more."""
    emu.state.model_requests.set_workers(1)
    emu.set_model_behavior("acme/slow", duration=60_000.0)
    await rc.models.submit("acme/slow", {})  # occupies the only worker
    caplog.set_level(logging.INFO, logger="runcomfy_async")
    with pytest.raises(WaitTimeoutError):
        await rc.models.run("acme/slow", {"n": 2}, timeout=0.2, poll=FAST)
    cancels = [r for r in emu.log if r.path.endswith("/cancel")]
    assert len(cancels) == 1
    request_id = cancels[0].path.split("/")[3]
    assert emu.state.model_requests.status(emu.state.model_requests.get(request_id)) == (
        "cancelled"
    )
    assert "cancelled" in caplog.text


@pytest.mark.asyncio
async def test_run_cancelled_by_caller_cancels_the_request(emu: Emulator, rc: RunComfy) -> None:
    """Cancelling the task awaiting ``run`` cancels the queued request on the server too."""
    emu.state.model_requests.set_workers(1)
    emu.set_model_behavior("acme/slow", duration=60_000.0)
    await rc.models.submit("acme/slow", {})
    task = asyncio.ensure_future(rc.models.run("acme/slow", {}, poll=FAST))
    for _ in range(500):  # until the wait has started polling
        if [r for r in emu.log if r.path.endswith("/status")]:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancels = [r for r in emu.log if r.path.endswith("/cancel")]
    assert [r.status for r in cancels] == [202]


@pytest.mark.asyncio
async def test_run_cancels_the_request_when_polling_fails(emu: Emulator) -> None:
    """A run whose polls keep failing raises the server error and cancels the request."""
    emu.state.model_requests.set_workers(1)
    emu.set_model_behavior("acme/slow", duration=60_000.0)
    emu.inject("503", api="model", method="GET", path=r"/status$")
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
    async with emu.client(rate=200.0, burst=20, retry=retry) as client:
        await client.models.submit("acme/slow", {})
        with pytest.raises(ServerError):
            await client.models.run("acme/slow", {}, poll=FAST)
    cancels = [r for r in emu.log if r.path.endswith("/cancel")]
    assert [r.status for r in cancels] == [202]
    request_id = cancels[0].path.split("/")[3]
    store = emu.state.model_requests
    assert store.status(store.get(request_id)) == "cancelled"


@pytest.mark.parametrize(
    "model_id",
    [
        "",
        "/owner/model",
        "owner/model/",
        "owner//model",
        "owner/../model",
        "owner/./m",
        "owner/mo del",
        "owner/model?x=1",
        "owner/mödel",
        "owner\\model",
        42,
    ],
)
@pytest.mark.asyncio
async def test_malformed_model_id_is_refused_before_sending(
    emu: Emulator, rc: RunComfy, model_id: Any
) -> None:
    """An empty or malformed model id raises ValidationError and nothing is sent."""
    with pytest.raises(ValidationError, match="model_id"):
        await rc.models.submit(model_id, {})
    assert emu.log == []


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (["prompt", "x"], "mapping"),
        ({1: "x"}, "names must be strings"),
        ({"seed": math.nan}, "'seed'"),
        ({"tags": {"a", "b"}}, "'tags'"),
        ({"image": b"bytes"}, "'image'"),
        ({"big": "x" * (64 * 1024 * 1024)}, "64"),
    ],
)
@pytest.mark.asyncio
async def test_inputs_json_cannot_carry_are_refused_before_sending(
    emu: Emulator, rc: RunComfy, inputs: Any, match: str
) -> None:
    """Inputs that are not a JSON-serialisable mapping raise ValidationError; nothing is sent."""
    with pytest.raises(ValidationError, match=match):
        await rc.models.submit(FLUX, inputs)
    assert emu.log == []


@pytest.mark.parametrize("request_id", ["", " id", None])
def test_get_refuses_an_empty_request_id(request_id: Any) -> None:
    """``rc.models.get`` needs a real request id."""
    client = RunComfy(token="t")
    with pytest.raises(ValidationError, match="request id"):
        client.models.get(request_id)


# -- LoRA inputs ---------------------------------------------------------------------------------


def test_lora_produces_the_documented_fragment() -> None:
    """``Lora(name).to_input()`` is ``{"lora": {"path": name}}``; scale only when given."""
    assert Lora("my_first_lora_3000.safetensors").to_input() == {
        "lora": {"path": "my_first_lora_3000.safetensors"}
    }
    url = "https://example.com/my_first_lora_3000.safetensors"
    assert Lora(url, scale=0.8).to_input() == {"lora": {"path": url, "scale": 0.8}}


@pytest.mark.parametrize(
    ("path", "scale", "match"),
    [
        ("", None, "non-empty"),
        ("   ", None, "non-empty"),
        (" lora.safetensors", None, "whitespace"),
        ("http://example.com/l.safetensors", None, "https"),
        ("ftp://example.com/l.safetensors", None, "https"),
        ("https:///l.safetensors", None, "no host"),
        ("lora.safetensors", math.inf, "finite"),
        ("lora.safetensors", True, "finite"),
        ("lora.safetensors", "0.8", "finite"),
    ],
)
def test_lora_rejects_bad_paths_and_scales(path: str, scale: Any, match: str) -> None:
    """An empty path, a non-https URL or a non-numeric scale is a ValidationError."""
    with pytest.raises(ValidationError, match=match):
        Lora(path, scale=scale)


@pytest.mark.asyncio
async def test_lora_is_sent_as_documented(emu: Emulator, rc: RunComfy) -> None:
    """A Lora as an input value or merged fragment reaches the server as {"path": ...}."""
    base = "acme/flux-dev/lora"
    first = await rc.models.submit(base, {"prompt": "x", "lora": Lora("dog.safetensors", 0.7)})
    second = await rc.models.submit(
        base, {"prompt": "x", **Lora("https://h/d.safetensors").to_input()}
    )
    store = emu.state.model_requests
    assert store.get(first.id).inputs["lora"] == {"path": "dog.safetensors", "scale": 0.7}
    assert store.get(second.id).inputs["lora"] == {"path": "https://h/d.safetensors"}


# -- tolerance: unknown values and extra fields --------------------------------------------------


def test_unknown_values_are_kept_and_spellings_understood() -> None:
    """Unknown statuses stay (known False); canceled/cancelled and case variants match."""
    assert RequestState("warming_up").known is False
    assert RequestState("warming_up").value == "warming_up"
    assert RequestState("warming_up").finished is False
    assert RequestState("CANCELED") is RequestState.CANCELLED
    assert RequestState("failed").finished
    assert ResultStatus("canceled") is ResultStatus.CANCELLED
    assert CancelOutcome("not_cancelable") is CancelOutcome.NOT_CANCELLABLE


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"outcome": "cancelled", "status": "completed"}, CancelOutcome.CANCELLED),
        ({"outcome": "not_cancellable", "status": "in_progress"}, CancelOutcome.NOT_CANCELLABLE),
        ({"status": "cancelled"}, CancelOutcome.CANCELLED),
        ({"status": "in_progress"}, CancelOutcome.NOT_CANCELLABLE),
        ({"outcome": "not_cancellable", "status": "canceled"}, CancelOutcome.CANCELLED),
        ({"outcome": "deferred"}, CancelOutcome("deferred")),
    ],
)
def test_cancel_outcome_reads_outcome_then_status(payload: Any, expected: CancelOutcome) -> None:
    """The cancel answer's ``outcome`` is read, falling back to ``status``."""
    assert cancel_outcome(payload) == expected


@pytest.mark.parametrize("payload", [None, {}, {"request_id": "r"}, []])
def test_cancel_outcome_without_either_field_is_unexpected(payload: Any) -> None:
    """A cancel answer with neither field is an UnexpectedResponseError, not a KeyError."""
    with pytest.raises(UnexpectedResponseError):
        cancel_outcome(payload)


def test_documented_samples_structure_strictly() -> None:
    """The documented samples of status and result structure with extra keys forbidden."""
    strict = make_converter(strict=True)
    state = strict.structure(
        {
            "request_id": "r",
            "status": "in_queue",
            "queue_position": 3,
            "status_url": "https://m/v1/requests/r/status",
            "result_url": "https://m/v1/requests/r/result",
        },
        RequestStatus,
    )
    assert state.queue_position == 3
    result = strict.structure(
        {
            "request_id": "r",
            "model_id": FLUX,
            "status": "succeeded",
            "output": {"image": "https://p/o.png"},
            "error": None,
            "created_at": "2025-07-01T12:00:00.000000+00:00",
            "finished_at": "2025-07-01T12:00:09.000000+00:00",
            "cost": 0.04,
        },
        RequestResult,
    )
    assert result.finished_at is not None
    assert (result.finished_at - result.created_at).total_seconds() == 9  # type: ignore[operator]


@pytest_asyncio.fixture
async def odd_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A local Model API that answers with unknown statuses and extra fields."""
    statuses = iter(["warming_up", "in_queue", "Processing", "completed"])
    seen: list[str] = []

    async def status(request: web.Request) -> web.Response:
        value = next(statuses, "completed")
        seen.append(value)
        return web.json_response(
            {"status": value, "eta_seconds": 4, "worker": {"gpu": "H100"}, "queue_position": None}
        )

    async def result(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "request_id": request.match_info["rid"],
                "status": "completed",
                "error": None,
                "output": ["https://p/a.png", "https://p/b.png"],
                "metrics": {"steps": 28},
                "created_at": 1751371200,
                "finished_at": "2025-07-01T12:00:09Z",
            }
        )

    async def cancel(request: web.Request) -> web.Response:
        return web.json_response({"status": "completed", "note": "too late"}, status=202)

    async def submit(request: web.Request) -> web.Response:
        return web.json_response({"request_id": "req_1", "priority": "high"})

    app = web.Application()
    app.router.add_get("/v1/requests/{rid}/status", status)
    app.router.add_get("/v1/requests/{rid}/result", result)
    app.router.add_post("/v1/requests/{rid}/cancel", cancel)
    app.router.add_post("/v1/models/{model_id:.+}", submit)
    async with serving(app) as base:
        yield base, seen


@pytest.mark.asyncio
async def test_unknown_statuses_and_extra_fields_do_not_break_waiting(
    odd_server: tuple[str, list[str]],
) -> None:
    """Unknown status values keep the wait going; extra fields and shapes are tolerated."""
    url, seen = odd_server
    async with RunComfy(token="t", model_url=url, rate=200.0, burst=20) as client:
        req = await client.models.submit("acme/odd", {})
        first = await req.status()
        assert first.status.known is False
        assert first.request_id == "req_1"
        result = await req.wait(poll=FAST)
        assert result.output == ["https://p/a.png", "https://p/b.png"]
        assert result.created_at is not None
        assert result.created_at.year == 2025
        assert await req.cancel() is CancelOutcome.NOT_CANCELLABLE
    assert seen[-1] == "completed"
    assert "Processing" in seen


@pytest.mark.asyncio
async def test_output_urls_download_without_the_token(emu: Emulator, rc: RunComfy) -> None:
    """The output URL downloads through the storage session without Authorization."""
    output = await rc.models.run(FLUX, {"prompt": "x"}, poll=FAST)
    async with rc.session.get(output["image"]) as resp:
        assert resp.status == 200
        assert (await resp.read()).startswith(b"\x89PNG")
    download = [r for r in emu.log if r.api == "storage"]
    assert len(download) == 1
    assert not download[0].authorized
    assert isinstance(rc.session, aiohttp.ClientSession)


@pytest.mark.asyncio
async def test_download_outputs_fetches_every_url_without_the_token(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """download_outputs writes each URL of an output to dest/outputs, in order, token-free."""
    output = await rc.models.run("acme/batch-images", {"num_images": 3}, poll=FAST)
    seen: list[DownloadProgress] = []
    paths = await rc.models.download_outputs(
        {"nested": output, "note": "not a URL"}, tmp_path, progress=seen.append, concurrency=2
    )
    assert [p.name for p in paths] == ["output_0.png", "output_1.png", "output_2.png"]
    assert all(p.parent == (tmp_path / "outputs").resolve() for p in paths)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    assert seen and {s.path for s in seen} == set(paths)
    storage = [r for r in emu.log if r.api == "storage"]
    assert len(storage) == 3
    assert not any(r.authorized for r in storage)
    assert await rc.models.download_outputs({"text": "no files"}, tmp_path / "none") == []


@pytest.mark.asyncio
async def test_download_outputs_refuses_a_bad_concurrency(rc: RunComfy, tmp_path: Path) -> None:
    """A concurrency below 1 is refused before anything is fetched."""
    with pytest.raises(ValidationError, match="concurrency"):
        await rc.models.download_outputs({"image": "https://x/a.png"}, tmp_path, concurrency=0)
