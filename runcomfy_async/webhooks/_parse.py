"""Reading a webhook delivery: its body as a typed event, its shared secret in constant time."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from .. import errors
from .._converter import converter
from ..types.webhooks import WebhookEvent, WebhookStatus

__all__ = ["MAX_BODY", "check_secret", "parse_event"]

MAX_BODY: Final = 16 << 20
"""Bytes a delivery may have: outputs are URLs, so a real one is a few KiB at most."""


def parse_event(body: bytes | str | Mapping[str, Any]) -> WebhookEvent:
    """The typed event of one webhook delivery (unverified: deliveries are not signed).

    Unknown fields are ignored and an unknown status is kept. The status is read from
    ``status``, else ``outcome``; the outputs from ``outputs``, else ``output``.

    Args:
        body: the raw request body, or its JSON already decoded.

    Raises:
        InvalidWebhookError: the body is not a JSON object, is larger than ``MAX_BODY``, or has
            no ``request_id`` or no status.
    """
    data = _decode(body) if isinstance(body, bytes | str) else body
    if not isinstance(data, Mapping):
        raise errors.InvalidWebhookError(
            f"a webhook delivery is a JSON object, got {type(data).__name__}; point the "
            "webhook URL only at RunComfy's serverless requests"
        )
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        raise errors.InvalidWebhookError(
            "the webhook delivery has no 'request_id' string; RunComfy sends one in every "
            "delivery, so this body came from somewhere else"
        )
    status = data.get("status", data.get("outcome"))
    if not isinstance(status, str) or not status.strip():
        raise errors.InvalidWebhookError(
            f"the webhook delivery for request {request_id!r} has no 'status' (or 'outcome') "
            "string; RunComfy sends one in every delivery"
        )
    deployment_id = data.get("deployment_id")
    return WebhookEvent(
        request_id=request_id,
        status=WebhookStatus(status),
        deployment_id=deployment_id if isinstance(deployment_id, str) else None,
        outputs=data.get("outputs", data.get("output")),
        error=data.get("error"),
        created_at=_timestamp(data.get("created_at")),
        finished_at=_timestamp(data.get("finished_at")),
    )


def check_secret(given: str | None, expected: str) -> None:
    """Refuse a delivery whose shared secret is not ``expected``, comparing in constant time.

    Deliveries carry no signature; the documented way to know one came from a request you
    submitted is a long random secret in the webhook URL you pass on submit (for example
    ``https://app.example/runcomfy/webhook?secret=...``). The comparison takes the same time
    wherever the strings differ, so the secret cannot be guessed byte by byte from timings.

    Raises:
        WebhookSecretError: ``given`` is missing or differs from ``expected``.
    """
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise errors.WebhookSecretError(
            "the webhook delivery did not carry the configured secret; submit requests with "
            "the webhook URL that includes it"
        )


def _decode(body: bytes | str) -> Any:
    """JSON from a raw body; anything unreadable becomes InvalidWebhookError."""
    if len(body) > MAX_BODY:
        raise errors.InvalidWebhookError(
            f"the webhook delivery has {len(body)} bytes, over the {MAX_BODY} a delivery may have"
        )
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidWebhookError(
            f"the webhook delivery is not JSON ({exc}); RunComfy sends application/json"
        ) from exc


def _timestamp(value: Any) -> datetime | None:
    """An aware datetime, or None for a missing or unreadable timestamp (it is informative)."""
    if value is None:
        return None
    try:
        parsed: datetime = converter.structure(value, datetime)
    except (TypeError, ValueError):
        return None
    return parsed
