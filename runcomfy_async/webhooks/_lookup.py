"""``api_lookup``: the receiver's source of truth, a request's result read with a client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from .._limiter import Priority
from ..types.deployments import ServerlessResult
from ..types.models import ResultStatus
from ..types.webhooks import WebhookEvent, WebhookStatus
from ._receiver import RequestLookup

if TYPE_CHECKING:
    from .._client import RunComfy
    from ..resources.serverless_requests import QueueVersion

__all__ = ["api_lookup", "event_from_result"]


def api_lookup(
    client: RunComfy,
    *,
    deployment_id: str | None = None,
    queue_version: QueueVersion = "v1",
    priority: Priority = Priority.USER,
) -> RequestLookup:
    """A :class:`RequestLookup` that reads the request's result with ``client`` (one API call).

    Args:
        client: an open :class:`~runcomfy_async.RunComfy`, used for as long as the receiver is.
        deployment_id: the deployment to look requests up in when a delivery (or a ``poll``)
            names none; deliveries normally carry their own.
        queue_version: the queue prefix of the calls (``"v1"`` or ``"v2"``, the same queue).
        priority: the lookups' place in the client's rate limit (``Priority.USER``: ahead of
            background polls, since a final event waits on it).

    Raises:
        ValidationError: (when called) no deployment id, from the delivery or ``deployment_id``.
    """

    async def lookup(request_id: str, delivered_deployment: str | None) -> WebhookEvent:
        deployment = delivered_deployment or deployment_id
        if deployment is None:
            raise errors.ValidationError(
                f"cannot look request {request_id!r} up: neither the delivery nor the call "
                "names its deployment; pass deployment_id= to api_lookup() or to poll()"
            )
        handle = client.deployments.get(deployment, queue_version=queue_version).request(request_id)
        return event_from_result(await handle.result(priority=priority), deployment)

    return lookup


def event_from_result(result: ServerlessResult, deployment_id: str | None) -> WebhookEvent:
    """The verified event a serverless result amounts to.

    ``completed`` (which some answers use for a finished run) becomes ``failed`` when the result
    carries an error, else ``succeeded``, so handlers see the three final statuses deliveries use.
    """
    if result.status is ResultStatus.COMPLETED:
        status = WebhookStatus.FAILED if result.failed else WebhookStatus.SUCCEEDED
    else:
        status = WebhookStatus(result.status.value)
    return WebhookEvent(
        request_id=result.request_id,
        status=status,
        deployment_id=deployment_id,
        outputs=result.outputs,
        error=result.error,
        created_at=result.created_at,
        finished_at=result.finished_at,
        verified=True,
        result=result,
    )
