"""AI Toolkit training jobs (docs/wire.md): statuses, GPU types, status and result snapshots.

A job's status is ``IN_QUEUE -> RUNNING -> STOPPED`` (or ``FAILED`` / ``CANCELED``). The service
reports STOPPED both for a run that reached its last step and for one the platform stopped early
(preemption, a reclaimed server), so :attr:`JobStatus.preempted` tells them apart from the progress
and the error (docs/wire.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

from .._protocol import redact_url
from ._base import OpenStrEnum

__all__ = [
    "ARTIFACT_KINDS",
    "Artifact",
    "GPUType",
    "JobResult",
    "JobState",
    "JobStatus",
    "Progress",
    "artifacts_from_wire",
]

#: The artifact groups the result endpoint documents (docs/wire.md).
ARTIFACT_KINDS = ("checkpoints", "samples", "config")


class JobState(OpenStrEnum):
    """IN_QUEUE -> RUNNING -> STOPPED, or FAILED / CANCELED (``cancelled`` is understood too)."""

    IN_QUEUE = "IN_QUEUE"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"cancelled": "canceled"}

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (STOPPED, FAILED or CANCELED); unknown values are not."""
        return self in (JobState.STOPPED, JobState.FAILED, JobState.CANCELED)


class GPUType(OpenStrEnum):
    """The GPU a job trains on; the UI labels ``h100`` / ``h200`` are understood too."""

    H100 = "ADA_80_PLUS"
    H200 = "HOPPER_141"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"h100": "ada_80_plus", "h200": "hopper_141"}


@attrs.frozen(kw_only=True)
class Progress:
    """How far a run got.

    Attributes:
        percent: the share done, 0 to 100, as the server says.
        current_step: the last training step finished.
        total_steps: the steps the config asks for.
    """

    percent: float | None = None
    current_step: int | None = None
    total_steps: int | None = None


@attrs.frozen(kw_only=True)
class JobStatus:
    """A snapshot of a training job's status (docs/wire.md); ``TrainingJob.wait``
    hands each one to its ``on_status`` callback.

    Attributes:
        id: the job's id.
        name: the job's name (from its config), when sent.
        status: IN_QUEUE, RUNNING, STOPPED, FAILED or CANCELED (unknown values are kept).
        progress: the step counts, once the run reports them.
        error: the server's reason when the job failed or was stopped by the platform.
        created_at, started_at, finished_at: when it was submitted, began and ended.
        result_url: the server's own URL for the job's result, when sent.
    """

    id: str
    name: str | None = None
    status: JobState = JobState.IN_QUEUE
    progress: Progress | None = None
    error: Any = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_url: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (STOPPED, FAILED or CANCELED)."""
        return self.status.terminal

    @property
    def preempted(self) -> bool:
        """STOPPED short of the last step, or STOPPED with an error: ``job.resume()`` continues it.

        The service reports STOPPED for success and for platform-initiated stops alike; a run
        that completed has ``current_step == total_steps`` and no error (docs/wire.md).
        """
        if self.status is not JobState.STOPPED:
            return False
        if self.error:
            return True
        progress = self.progress
        if progress is None or progress.current_step is None or progress.total_steps is None:
            return False
        return progress.current_step < progress.total_steps

    @property
    def completed(self) -> bool:
        """STOPPED after the last step without an error: the training run succeeded."""
        return self.status is JobState.STOPPED and not self.preempted


@attrs.frozen(kw_only=True)
class Artifact:
    """One file a job produced, as a hosted URL (docs/wire.md).

    Attributes:
        kind: the group it was listed in: ``"checkpoints"``, ``"samples"``, ``"config"`` (or a
            group this library does not know yet).
        url: where to download it; signed URLs may expire, so fetch a fresh result when needed.
        step: the training step it belongs to, when the server says.
        name: the file name as the server gave it (untrusted: downloads sanitise it).
    """

    kind: str
    url: str = attrs.field(repr=lambda url: repr(redact_url(url)))
    step: int | None = None
    name: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """Identity across result calls: kind and URL without its (re-signed) query."""
        parts = urlsplit(self.url)
        return (self.kind, f"{parts.scheme}://{parts.netloc}{parts.path}")


@attrs.frozen(kw_only=True)
class JobResult:
    """What ``/result`` said: the artifacts so far (flattened, in server order), status, error."""

    id: str | None = None
    status: JobState | None = None
    artifacts: tuple[Artifact, ...] = ()
    error: Any = None

    def of_kind(self, *kinds: str) -> tuple[Artifact, ...]:
        """The artifacts of the given kinds, in server order."""
        return tuple(a for a in self.artifacts if a.kind in kinds)

    @property
    def checkpoints(self) -> tuple[Artifact, ...]:
        """The checkpoint artifacts (``.safetensors``), in server order."""
        return self.of_kind("checkpoints")

    @property
    def samples(self) -> tuple[Artifact, ...]:
        """The sample image artifacts, in server order."""
        return self.of_kind("samples")


def _is_url(value: Any) -> bool:
    """Only http(s) URLs are artifacts; anything else in the listing is metadata."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _step(value: Any) -> int | None:
    """A step number, tolerating strings; anything else is unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _name_from_url(url: str) -> str:
    """The last path segment, percent-decoded (it may decode to anything: never trust it)."""
    return unquote(PurePosixPath(urlsplit(url).path).name)


def _one(kind: str, item: Any) -> Artifact | None:
    """An artifact from a URL string or an object with ``url``/``path``; None for other shapes."""
    if _is_url(item):
        return Artifact(kind=kind, url=item, name=_name_from_url(item))
    if not isinstance(item, Mapping):
        return None
    url = next((item[k] for k in ("url", "path") if _is_url(item.get(k))), None)
    if url is None:
        return None
    raw_name = item.get("name") or item.get("filename")
    name = raw_name if isinstance(raw_name, str) and raw_name else _name_from_url(url)
    return Artifact(kind=kind, url=url, step=_step(item.get("step")), name=name)


def artifacts_from_wire(artifacts: Any) -> tuple[Artifact, ...]:
    """Flatten ``{"checkpoints": [...], "samples": [...], "config": {...}}`` into artifacts.

    Each group may be one item or a list; items are URL strings or objects with ``url``/``path``
    (both forms are seen in RunComfy's own clients, docs/wire.md). A bare list is taken as
    artifacts of unknown kind ``"other"``. Unreadable items are skipped, not fatal.
    """
    groups: Iterable[tuple[str, Any]]
    if isinstance(artifacts, Mapping):
        groups = ((str(k), v) for k, v in artifacts.items())
    elif isinstance(artifacts, list):
        groups = [("other", artifacts)]
    else:
        return ()
    found: list[Artifact] = []
    for kind, value in groups:
        items = value if isinstance(value, list) else [value]
        for item in items:
            artifact = _one(kind, item)
            if artifact is not None:
                found.append(artifact)
    return tuple(found)
