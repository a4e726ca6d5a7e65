"""Serverless runs answered by webhook, with polling as the safety net.

``POST /runs`` submits a run of a deployment with this app's webhook URL; RunComfy POSTs each
status change to ``POST /runcomfy/webhook`` (the library's router: it answers at once and hands
the delivery to a background task). The receiver deduplicates deliveries (in Redis when
``RUNCOMFY_REDIS_URL`` is set, so all workers share it), ignores late ones, reads final outputs
back from the API (deliveries are unsigned) and calls :func:`Runs.on_event` once per new status.
Webhooks can be lost, so each worker also polls the runs it submitted whose final event is
overdue: whichever comes first, the delivery or the poll, is handled, and only once.

``on_event`` keeps the events in this worker's memory (``GET /runs``, ``GET /runs/{id}``) to
keep the example short; a real app writes them to its database there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from runcomfy_async import RunComfy, WebhookEvent, to_jsonable
from runcomfy_async.webhooks import (
    DeliveryStore,
    MemoryDeliveryStore,
    RedisDeliveryStore,
    WebhookReceiver,
    api_lookup,
)

__all__ = ["Runs", "router"]

logger = logging.getLogger("examples.fastapi_app")


class Runs:
    """This worker's webhook receiver, the runs it submitted, and the events it handled.

    Environment:
        RUNCOMFY_WEBHOOK_URL: the public URL of this app's ``POST /runcomfy/webhook`` (https in
            production). Unset: runs are submitted without a webhook and polling alone answers.
        RUNCOMFY_WEBHOOK_SECRET: a long random value; added to the webhook URL as ``?secret=``
            and required of every delivery (compared in constant time).
        RUNCOMFY_WEBHOOK_POLL_AFTER: seconds after which a run with no final event is polled,
            and how often (default 60).
    """

    def __init__(self, client: RunComfy) -> None:
        self.client = client
        secret = os.environ.get("RUNCOMFY_WEBHOOK_SECRET") or None
        url = os.environ.get("RUNCOMFY_WEBHOOK_URL") or None
        if url and secret:
            url += ("&" if "?" in url else "?") + urlencode({"secret": secret})
        self.webhook_url = url
        self.poll_after = float(os.environ.get("RUNCOMFY_WEBHOOK_POLL_AFTER", "60"))
        redis_url = os.environ.get("RUNCOMFY_REDIS_URL")
        store: DeliveryStore = (
            RedisDeliveryStore(redis_url, prefix="runcomfy:webhooks:")
            if redis_url
            else MemoryDeliveryStore()
        )
        self.receiver = WebhookReceiver(
            self.on_event, lookup=api_lookup(client), store=store, secret=secret
        )
        self.events: collections.deque[WebhookEvent] = collections.deque(maxlen=10_000)
        self._overdue: dict[str, tuple[str, float]] = {}  # request id -> (deployment, due at)

    async def on_event(self, event: WebhookEvent) -> None:
        """Your code: called once per new status of a run; final events come from the API."""
        self.events.append(event)
        if event.final:
            self._overdue.pop(event.request_id, None)
            logger.info("run %s %s", event.request_id, event.status.value)

    def track(self, request_id: str, deployment_id: str) -> None:
        """Poll this run if its final event has not come ``poll_after`` seconds from now."""
        self._overdue[request_id] = (deployment_id, time.monotonic() + self.poll_after)

    async def recover(self) -> None:
        """Forever: poll the runs whose final event is overdue (the deliveries that got lost)."""
        while True:
            await asyncio.sleep(min(self.poll_after, 5.0))
            now = time.monotonic()
            for request_id, (deployment_id, due) in list(self._overdue.items()):
                if due > now:
                    continue
                try:
                    await self.receiver.poll(request_id, deployment_id)
                except Exception:
                    logger.exception("polling run %s failed; trying again later", request_id)
                if await self.receiver.finished(request_id):
                    self._overdue.pop(request_id, None)  # handled here, or by another worker
                else:
                    self.track(request_id, deployment_id)


@contextlib.asynccontextmanager
async def open_runs(client: RunComfy) -> AsyncIterator[Runs]:
    """The worker's :class:`Runs`, its recovery poll running; both stopped on exit."""
    runs = Runs(client)
    async with runs.receiver:
        recovery = asyncio.create_task(runs.recover())
        try:
            yield runs
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery


router = APIRouter(tags=["serverless runs"])


def _runs(request: Request) -> Runs:
    """The worker's Runs, opened in the lifespan."""
    runs: Runs = request.app.state.runs
    return runs


class RunSubmission(BaseModel):
    """``POST /runs``: one run of a deployment, with node input overrides."""

    deployment_id: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    intermediate: bool = Field(default=False, description="also deliver in_queue/in_progress")


@router.post("/runs", status_code=202)
async def submit_run(body: RunSubmission, request: Request) -> dict[str, Any]:
    """Submit a run; its events arrive by webhook (``GET /runs/{id}`` shows them)."""
    runs = _runs(request)
    submitted = await runs.client.deployments.get(body.deployment_id).submit(
        body.overrides,
        webhook=runs.webhook_url,
        webhook_intermediate_status=body.intermediate and runs.webhook_url is not None,
    )
    runs.track(submitted.id, body.deployment_id)
    return {"request_id": submitted.id, "deployment_id": body.deployment_id}


@router.get("/runs")
async def handled_events(request: Request) -> list[Any]:
    """Every event this worker handled, oldest first."""
    return [to_jsonable(event) for event in _runs(request).events]


@router.get("/runs/{request_id}")
async def run_events(request_id: str, request: Request) -> list[Any]:
    """The events this worker handled for one run; 404 when it handled none."""
    events = [e for e in _runs(request).events if e.request_id == request_id]
    if not events:
        raise HTTPException(404, f"no event of run {request_id!r} was handled by this worker")
    return [to_jsonable(event) for event in events]
