"""The FastAPI webhook router under a real uvicorn, fed real HTTP deliveries."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import uvicorn
from fastapi import FastAPI

from runcomfy_async.webhooks import MAX_BODY, WebhookEvent, WebhookReceiver
from runcomfy_async.webhooks.fastapi import webhook_router
from tests._services import free_port
from tests._webhooks import Recorder, Truth, delivery

SECRET = "a-long-random-secret"


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on an in-process uvicorn on a free port; its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn stopped while starting"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    """POST one delivery as the service does; the answer's status."""
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=io.BytesIO(body), headers=headers) as response:
        await response.read()
        return response.status


@pytest.mark.asyncio
async def test_duplicated_reordered_deliveries_reach_the_handler_once() -> None:
    """30 requests, each status POSTed 2-3 times in shuffled order: one verified final each."""
    truth, handler = Truth(), Recorder()
    receiver = WebhookReceiver(handler, lookup=truth, secret=SECRET)
    app = FastAPI()
    app.include_router(webhook_router(receiver))
    bodies = []
    rng = random.Random(5)
    for n in range(30):
        rid = f"r{n}"
        truth.set(rid, "succeeded", outputs={"9": {"images": [{"url": f"https://x/{n}.png"}]}})
        for status in ("in_queue", "in_progress", "succeeded"):
            bodies += [delivery(rid, status, deployment_id="d")] * rng.choice((2, 3))
    rng.shuffle(bodies)
    async with serve(app) as base, aiohttp.ClientSession() as session:
        url = f"{base}/runcomfy/webhook?secret={SECRET}"
        statuses = await asyncio.gather(*(post(session, url, b) for b in bodies))
        await receiver.aclose()
    assert set(statuses) == {202}
    finals = [e for e in handler.events if e.final]
    assert sorted(e.request_id for e in finals) == sorted(f"r{n}" for n in range(30))
    assert all(e.verified for e in finals)
    assert len({(e.request_id, e.status) for e in handler.events}) == len(handler.events)


@pytest.mark.asyncio
async def test_the_delivery_is_answered_before_the_handler_runs() -> None:
    """A handler still busy (blocked) does not hold the answer: 202 first, handling after."""
    truth, release, started = Truth(), asyncio.Event(), asyncio.Event()
    truth.set("slow", "succeeded")
    handled: list[WebhookEvent] = []

    async def slow(event: WebhookEvent) -> None:
        started.set()
        await release.wait()
        handled.append(event)

    receiver = WebhookReceiver(slow, lookup=truth)
    app = FastAPI()
    app.include_router(webhook_router(receiver, path="/hooks/runcomfy"))
    async with serve(app) as base, aiohttp.ClientSession() as session:
        status = await post(session, f"{base}/hooks/runcomfy", delivery("slow", "succeeded"))
        assert status == 202
        await asyncio.wait_for(started.wait(), 5)
        assert handled == []
        assert receiver.pending == 1
        release.set()
        await receiver.aclose()
    assert [e.request_id for e in handled] == ["slow"]


@pytest.mark.asyncio
async def test_refused_deliveries() -> None:
    """No or a wrong secret: 403; not a delivery: 400; too large: 413; nothing is handled."""
    truth, handler = Truth(), Recorder()
    receiver = WebhookReceiver(handler, lookup=truth, secret=SECRET)
    app = FastAPI()
    app.state.receiver = receiver
    app.include_router(webhook_router(lambda request: request.app.state.receiver))
    body = delivery("r", "in_queue")
    async with serve(app) as base, aiohttp.ClientSession() as session:
        hook = f"{base}/runcomfy/webhook"
        assert await post(session, hook, body) == 403
        assert await post(session, f"{hook}?secret=wrong", body) == 403
        assert await post(session, f"{hook}?secret={SECRET}", b"{}") == 400
        assert await post(session, f"{hook}?secret={SECRET}", b"<html>") == 400
        huge = json.dumps({"request_id": "r", "status": "x", "pad": "x" * MAX_BODY}).encode()
        assert await post(session, f"{hook}?secret={SECRET}", huge) == 413
        assert await post(session, f"{hook}?secret={SECRET}", body) == 202
        await receiver.aclose()
    assert [(e.request_id, e.status.value) for e in handler.events] == [("r", "in_queue")]


@pytest.mark.asyncio
async def test_a_dropped_final_delivery_is_recovered_by_polling() -> None:
    """Only intermediate deliveries came: poll() hands the final over, later copies add nothing."""
    truth, handler = Truth(), Recorder()
    receiver = WebhookReceiver(handler, lookup=truth)
    app = FastAPI()
    app.include_router(webhook_router(receiver))
    truth.set("lost", "in_progress")
    async with serve(app) as base, aiohttp.ClientSession() as session:
        hook = f"{base}/runcomfy/webhook"
        assert await post(session, hook, delivery("lost", "in_progress")) == 202
        truth.set("lost", "failed", error={"type": "oom", "message": "out of VRAM"})
        while receiver.pending:  # noqa: ASYNC110 (waits for the background task)
            await asyncio.sleep(0.01)
        recovered = await receiver.poll("lost", "d")
        assert recovered is not None
        assert recovered.error == {"type": "oom", "message": "out of VRAM"}
        assert await post(session, hook, delivery("lost", "failed")) == 202
        await receiver.aclose()
    assert [e.status.value for e in handler.events] == ["in_progress", "failed"]
