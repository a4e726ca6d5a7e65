"""Serverless webhook deliveries: the status values and the typed event a delivery becomes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from ._base import OpenStrEnum
from .deployments import ServerlessResult

__all__ = ["WebhookEvent", "WebhookStatus"]


class WebhookStatus(OpenStrEnum):
    """Where a serverless request is, as a webhook delivery (or the API) says.

    Deliveries go ``in_queue`` -> ``in_progress`` (only when intermediate statuses were asked
    for) -> one final status: ``succeeded``, ``failed`` or ``cancelled``. ``completed`` (what
    a request's status endpoint says once it finished) counts as final too. Unknown values are
    kept (``known`` is False); they have no :attr:`rank`.
    """

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPLETED = "completed"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"canceled": "cancelled"}

    @property
    def rank(self) -> int | None:
        """How far along the lifecycle this is (0 queued, 1 running, 2 final); None if unknown.

        A delivery whose rank is not above the furthest one already handled for its request
        arrived late (out of order) and changes nothing.
        """
        return _RANKS.get(self)

    @property
    def final(self) -> bool:
        """True for the statuses after which the request does not change any more."""
        return self.rank == FINAL_RANK


FINAL_RANK = 2

_RANKS: dict[WebhookStatus, int] = {
    WebhookStatus.IN_QUEUE: 0,
    WebhookStatus.IN_PROGRESS: 1,
    WebhookStatus.SUCCEEDED: FINAL_RANK,
    WebhookStatus.FAILED: FINAL_RANK,
    WebhookStatus.CANCELLED: FINAL_RANK,
    WebhookStatus.COMPLETED: FINAL_RANK,
}


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """One status change of a serverless request, from a webhook delivery or from the API.

    Deliveries are not signed, so an event parsed from one is only a hint (``verified`` False);
    :class:`~runcomfy_async.webhooks.WebhookReceiver` hands your handler final events that it
    looked up through the API (``verified`` True).

    Attributes:
        request_id: the serverless request the event is about.
        status: where the request is; an unknown value is kept.
        deployment_id: the deployment that ran it, when the delivery says.
        outputs: the outputs keyed by ComfyUI node id (``{"9": {"images": [{"url": ...}]}}``)
            on success, else None. Serverless-LoRA deliveries name this ``output``; both land here.
        error: why the request failed (the service sends an object), else None.
        created_at, finished_at: when the request was submitted and when it finished, if sent.
        verified: True when the fields come from the API, False when from a delivery.
        result: the API's result the event was built from, when looked up through a client
            (:func:`~runcomfy_async.webhooks.api_lookup`): ``result.files()`` lists the
            outputs to download with ``rc.deployments.download_outputs(result, dest)``.
    """

    request_id: str
    status: WebhookStatus
    deployment_id: str | None = None
    outputs: Any = None
    error: Any = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    verified: bool = False
    result: ServerlessResult | None = None

    @property
    def final(self) -> bool:
        """True once the request has finished (succeeded, failed, cancelled, completed)."""
        return self.status.final
