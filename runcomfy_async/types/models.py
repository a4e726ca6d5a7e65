"""Model API requests (docs/wire.md): status values, snapshots, results and LoRA inputs."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import attrs

from ..errors import ValidationError
from ._base import OpenStrEnum

__all__ = [
    "CancelOutcome",
    "Lora",
    "RequestResult",
    "RequestState",
    "RequestStatus",
    "ResultStatus",
]


class RequestState(OpenStrEnum):
    """What ``/status`` says: in_queue -> in_progress -> completed | cancelled (docs/wire.md).

    ``completed`` does not mean success: only the result tells (:class:`ResultStatus`).
    ``failed``/``succeeded`` are not documented for ``/status`` but other clients accept them, so
    they are understood too; unknown values are kept (``known`` is False).
    """

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    SUCCEEDED = "succeeded"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"canceled": "cancelled"}

    @property
    def finished(self) -> bool:
        """True once the request will not change any more (its result is final)."""
        return self in _FINISHED_STATUSES


_FINISHED_STATUSES = frozenset(
    {
        RequestState.COMPLETED,
        RequestState.CANCELLED,
        RequestState.FAILED,
        RequestState.SUCCEEDED,
    }
)


class ResultStatus(OpenStrEnum):
    """What ``/result`` says: succeeded | failed | cancelled, or the current state while running.

    ``/result`` of an unfinished request answers with ``in_queue``/``in_progress`` (docs/wire.md).
    ``completed`` is accepted as a finished state as well (the vendor CLI does); whether such a
    run succeeded is then decided by its ``error``.
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"canceled": "cancelled"}

    @property
    def finished(self) -> bool:
        """True for the final states (succeeded, failed, cancelled, completed)."""
        return self in _FINISHED_RESULTS


_FINISHED_RESULTS = frozenset(
    {
        ResultStatus.SUCCEEDED,
        ResultStatus.FAILED,
        ResultStatus.CANCELLED,
        ResultStatus.COMPLETED,
    }
)


class CancelOutcome(OpenStrEnum):
    """The answer to a cancel: ``cancelled``, or ``not_cancellable`` once a run has started."""

    CANCELLED = "cancelled"
    NOT_CANCELLABLE = "not_cancellable"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"canceled": "cancelled", "not_cancelable": "not_cancellable"}


@attrs.frozen(kw_only=True)
class RequestStatus:
    """A snapshot of a model request's ``/status`` (docs/wire.md).

    Attributes:
        request_id: the request's id.
        status: where the request is; unknown values are kept.
        queue_position: the place in the queue while ``in_queue`` (1 is next), else None.
        status_url, result_url: the server's own URLs for this request, when sent.
    """

    request_id: str
    status: RequestState
    queue_position: int | None = None
    status_url: str | None = None
    result_url: str | None = None


@attrs.frozen(kw_only=True)
class RequestResult:
    """A snapshot of a model request's ``/result`` (docs/wire.md).

    Attributes:
        request_id: the request's id.
        status: succeeded, failed, cancelled, or the current state while the run is unfinished.
        output: the model's output, shaped by that model's Output schema (often URLs:
            ``{"image": url}``, ``{"images": [...]}``, ``{"video": url}``...).
        error: the server's reason when the run failed (a string or an object).
        created_at, finished_at: when the request was submitted and when it finished.
        model_id: the model that ran, when the server says.
        cost: the run's cost, when asked for with ``include_cost``.
    """

    request_id: str
    status: ResultStatus
    output: Any = None
    error: Any = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    model_id: str | None = None
    cost: float | None = None

    @property
    def finished(self) -> bool:
        """True once the result is final."""
        return self.status.finished

    @property
    def failed(self) -> bool:
        """True for a failed run: status ``failed``, or ``completed`` with an error."""
        return self.status is ResultStatus.FAILED or (
            self.status is ResultStatus.COMPLETED and self.error is not None
        )


def _check_lora_path(_: Any, __: attrs.Attribute[str], path: object) -> None:
    """A LoRA path is an asset name or an https URL the service can fetch without auth."""
    if not isinstance(path, str) or not path.strip():
        raise ValidationError(
            "a LoRA path must be a non-empty string: the name of one of your LoRA assets "
            "(e.g. 'my_first_lora_3000.safetensors') or an https URL"
        )
    if path != path.strip() or any(ord(c) < 32 for c in path):
        raise ValidationError(
            f"LoRA path {path!r} has surrounding whitespace or control characters; pass the "
            "plain asset name or URL"
        )
    if "://" not in path:
        return
    parts = urlsplit(path)
    if parts.scheme.lower() != "https":
        raise ValidationError(
            f"LoRA URL {path!r} must use https (the Model API fetches LoRA files from a public "
            "https URL); host it over https or pass the name of a LoRA asset instead"
        )
    if not parts.hostname:
        raise ValidationError(f"LoRA URL {path!r} has no host; pass a full https URL")


def _check_lora_scale(_: Any, __: attrs.Attribute[float | None], scale: object) -> None:
    """A scale, when given, must be a finite number (a bool is not one)."""
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValidationError(f"LoRA scale must be a finite number such as 0.8, got {scale!r}")


@attrs.frozen
class Lora:
    """A trainer LoRA as a Model API input (docs/wire.md).

    ``{**inputs, **Lora("my_lora.safetensors").to_input()}`` gives the documented
    ``{"lora": {"path": ...}}`` fragment; a ``Lora`` may also be passed directly as an input
    value (``{"prompt": ..., "lora": Lora(...)}``) and is sent as ``{"path": ...}``.

    Args:
        path: the name of one of your LoRA assets (``"my_first_lora_3000.safetensors"``) or a
            public https URL of the ``.safetensors`` file.
        scale: the LoRA strength, sent only when given (the pipeline's input schema must
            accept it).

    Raises:
        ValidationError: an empty path, a non-https URL, or a scale that is not a finite number.
    """

    path: str = attrs.field(validator=_check_lora_path)
    scale: float | None = attrs.field(default=None, validator=_check_lora_scale)

    def as_value(self) -> dict[str, Any]:
        """The JSON object of this LoRA: ``{"path": ...}`` (plus ``"scale"`` when given)."""
        value: dict[str, Any] = {"path": self.path}
        if self.scale is not None:
            value["scale"] = self.scale
        return value

    def to_input(self) -> dict[str, Any]:
        """The documented input fragment ``{"lora": {"path": ...}}`` to merge into inputs."""
        return {"lora": self.as_value()}
