"""Serverless deployments and their requests: hardware, deployment snapshots, status, results."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import attrs

from ._base import OpenStrEnum
from .models import RequestState, ResultStatus

__all__ = [
    "DeploymentInfo",
    "DeploymentPayload",
    "Hardware",
    "OutputFile",
    "ServerlessCancelOutcome",
    "ServerlessResult",
    "ServerlessStatus",
]


class Hardware(OpenStrEnum):
    """The GPU a deployment's instances run on (a SKU); unknown SKUs are kept, not refused.

    The number is the card's memory in GB; ``_PLUS`` tiers are the faster cards of a size.
    """

    TURING_16 = "TURING_16"
    AMPERE_24 = "AMPERE_24"
    AMPERE_48 = "AMPERE_48"
    ADA_48_PLUS = "ADA_48_PLUS"
    AMPERE_80 = "AMPERE_80"
    ADA_80_PLUS = "ADA_80_PLUS"
    HOPPER_141 = "HOPPER_141"


@attrs.frozen(kw_only=True)
class DeploymentPayload:
    """What ``includes=payload`` adds to a deployment: the workflow it runs.

    Attributes:
        workflow_api_json: the deployed workflow in ComfyUI's API format, ``{node_id:
            {"class_type": ..., "inputs": {...}}}``; overrides must name its nodes and inputs.
        overrides: overrides the deployment applies by default, when any.
        object_info_url: where the node definitions (types, ranges, defaults) can be read.
    """

    workflow_api_json: Mapping[str, Any] = attrs.field(factory=dict)
    overrides: Mapping[str, Any] | None = None
    object_info_url: str | None = None


@attrs.frozen(kw_only=True)
class DeploymentInfo:
    """A snapshot of one serverless deployment.

    Attributes:
        id: the deployment id (a UUID), used in every inference call.
        name: its human-readable name.
        workflow_id, workflow_version: the cloud-saved workflow version it is pinned to.
        hardware: the SKUs it runs on (one, in practice).
        min_instances: instances kept running even with no traffic (billed while idle).
        max_instances: the autoscaling ceiling.
        queue_size: requests allowed to wait before another instance is started.
        keep_warm_duration_in_seconds: how long an idle instance stays up for the next request.
        status: what the service says of it (e.g. ``"standby"``), kept as sent.
        is_enabled: False while disabled (inference is refused).
        created_at, updated_at: when it was created and last changed.
        payload: the deployed workflow, when asked for with ``includes=payload``.
        readme: its README (markdown), when asked for with ``includes=readme``.
    """

    id: str
    name: str | None = None
    workflow_id: str | None = None
    workflow_version: str | None = None
    hardware: tuple[Hardware, ...] = ()
    min_instances: int | None = None
    max_instances: int | None = None
    queue_size: int | None = None
    keep_warm_duration_in_seconds: int | None = None
    status: str | None = None
    is_enabled: bool | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    payload: DeploymentPayload | None = None
    readme: str | None = None

    @property
    def enabled(self) -> bool:
        """True unless the service says the deployment is disabled."""
        return self.is_enabled is not False


class ServerlessCancelOutcome(OpenStrEnum):
    """The answer to cancelling a serverless request.

    ``cancellation_requested``: the service will stop it (``cancelled`` is understood as the
    same); ``not_cancellable``: it already finished.
    """

    CANCELLATION_REQUESTED = "cancellation_requested"
    NOT_CANCELLABLE = "not_cancellable"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {
            "cancelled": "cancellation_requested",
            "canceled": "cancellation_requested",
            "not_cancelable": "not_cancellable",
        }


@attrs.frozen(kw_only=True)
class ServerlessStatus:
    """A snapshot of a serverless request's ``/status``.

    Attributes:
        request_id: the request's id.
        status: in_queue -> in_progress -> completed | cancelled (``completed`` does not say
            whether it succeeded: the result does).
        queue_position: the place in the deployment's queue while queued (1 is next).
        instance_id: the instance running it, once it runs.
        status_url, result_url: the service's own URLs for this request, when sent.
    """

    request_id: str
    status: RequestState
    queue_position: int | None = None
    instance_id: str | None = None
    status_url: str | None = None
    result_url: str | None = None


@attrs.frozen(kw_only=True)
class OutputFile:
    """One file a workflow node produced (an image, a video...), as listed in the result.

    Attributes:
        node_id: the node that produced it.
        kind: the list it came in (``"images"``, ``"gifs"``, ``"videos"``...).
        filename, subfolder, type: ComfyUI's names for it.
        url: where to download it.
    """

    node_id: str
    kind: str
    filename: str
    url: str
    subfolder: str = ""
    type: str = "output"


@attrs.frozen(kw_only=True)
class ServerlessResult:
    """A snapshot of a serverless request's ``/result``.

    Attributes:
        request_id: the request's id.
        status: succeeded, failed, cancelled, or the current state while unfinished.
        outputs: ComfyUI's outputs keyed by node id, e.g. ``{"9": {"images": [{"filename":
            ..., "url": ...}]}, "12": {"text": [["..."]]}}``; every kind is kept as sent.
        error: why the run failed (a list of ``{"errorCode", "error", "debugInfo"}`` or an
            object), when it did.
        created_at, finished_at: when it was submitted and when it ended.
    """

    request_id: str
    status: ResultStatus
    outputs: Mapping[str, Any] | None = None
    error: Any = None
    created_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """True once the result is final."""
        return self.status.finished

    @property
    def failed(self) -> bool:
        """True for a failed run: status ``failed``, or ``completed`` with an error."""
        return self.status is ResultStatus.FAILED or (
            self.status is ResultStatus.COMPLETED and bool(self.error)
        )

    def files(self) -> Iterator[OutputFile]:
        """Every downloadable file in :attr:`outputs` (entries with a ``url``), node by node."""
        for node_id, kinds in (self.outputs or {}).items():
            if not isinstance(kinds, Mapping):
                continue
            for kind, items in kinds.items():
                for item in items if isinstance(items, list) else ():
                    if isinstance(item, Mapping) and isinstance(item.get("url"), str):
                        yield OutputFile(
                            node_id=str(node_id),
                            kind=str(kind),
                            filename=str(item.get("filename") or ""),
                            url=item["url"],
                            subfolder=str(item.get("subfolder") or ""),
                            type=str(item.get("type") or "output"),
                        )

    def texts(self) -> dict[str, list[str]]:
        """The text outputs by node id (ComfyUI nests them as ``[["..."]]``), flattened."""
        found: dict[str, list[str]] = {}
        for node_id, kinds in (self.outputs or {}).items():
            text = kinds.get("text") if isinstance(kinds, Mapping) else None
            if isinstance(text, list):
                found[str(node_id)] = list(_strings(text))
        return found


def _strings(value: Any) -> Iterator[str]:
    """Every string in a nested list, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
