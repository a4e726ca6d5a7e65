"""Helpers of the webhook tests: the API's truth as a lookup, a recording handler, deliveries."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from runcomfy_async.webhooks import WebhookEvent, WebhookStatus

__all__ = ["Recorder", "Truth", "delivery"]


class Truth:
    """What the API says about each request: the receiver's lookup, counting its calls."""

    def __init__(self) -> None:
        self.states: dict[str, WebhookEvent] = {}
        self.calls: list[str] = []

    def set(self, request_id: str, status: str, **fields: Any) -> None:
        """The API now reports ``status`` for the request."""
        self.states[request_id] = WebhookEvent(
            request_id=request_id, status=WebhookStatus(status), verified=True, **fields
        )

    async def __call__(self, request_id: str, deployment_id: str | None) -> WebhookEvent:
        self.calls.append(request_id)
        await asyncio.sleep(0)
        return self.states[request_id]


def delivery(request_id: str, status: str, **fields: object) -> bytes:
    """A delivery body as the service sends it."""
    return json.dumps({"request_id": request_id, "status": status, **fields}).encode()


class Recorder:
    """A handler that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)
