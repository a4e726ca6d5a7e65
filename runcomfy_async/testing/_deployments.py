"""Serverless deployments and their requests, simulated: instances, cold starts, queues, outputs.

A deployment runs a ComfyUI workflow on instances it scales between ``min_instances`` (always
up, no cold start) and ``max_instances``. A request arriving at time ``t`` goes to an instance
that is free then; otherwise it waits, and when ``queue_size`` requests already wait (or no
instance is up at all) another instance is started, which takes ``cold_start_seconds`` before it
runs anything. An idle instance stays warm ``keep_warm_duration_in_seconds`` after its last run,
then scales down (the next request pays a cold start again). Requests start in arrival order, so
``queue_position`` is the place among those not started yet.

Like the Model API's queue, the schedule is computed when a request arrives or is cancelled and
every read derives the state from the clock. A run takes ``run_seconds`` (simulated); a
``CLIPTextEncode`` whose text contains ``EMULATOR_FAIL`` makes it fail. Outputs mirror
ComfyUI's history: ``SaveImage``/``PreviewImage`` nodes give ``images`` (tiny PNGs in object
storage, different per request), ``VHS_VideoCombine`` nodes ``gifs`` (an MP4), ``ShowText``
nodes ``text`` (the text they are linked to).
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import uuid
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from .comfyui import FAIL_MARKER, example_workflow, tiny_png

if TYPE_CHECKING:
    from ._clock import Clock
    from ._storage import ObjectStorage

__all__ = [
    "DeploymentRecord",
    "DeploymentStore",
    "ServerlessRequestRecord",
    "serverless_workflow",
]

_INSTANCES: Final = uuid.UUID("6f1c7d2e-8a55-4b8e-9a43-51a1d1c0ffee")
_MP4: Final = bytes.fromhex("0000001866747970") + b"mp42" + bytes(4) + b"mp42isom"
_IMAGE_NODES: Final = frozenset({"SaveImage", "PreviewImage"})


def serverless_workflow() -> dict[str, Any]:
    """The workflow every emulated deployment runs: txt2img plus a ``ShowText`` echo (node 12)."""
    workflow = example_workflow()
    workflow["12"] = {"class_type": "ShowText", "inputs": {"text": ["6", 0]}}
    return workflow


@attrs.frozen(kw_only=True)
class Settings:
    """A deployment's scaling settings as they were when a request arrived."""

    min_instances: int
    max_instances: int
    queue_size: int
    keep_warm: float


@attrs.define(kw_only=True)
class DeploymentRecord:
    """One deployment as the service keeps it (times in emulator UNIX seconds)."""

    id: str
    name: str
    workflow_id: str
    workflow_version: str
    hardware: list[str]
    min_instances: int
    max_instances: int
    queue_size: int
    keep_warm: int
    is_enabled: bool
    created: float
    updated: float
    workflow: dict[str, Any]
    deleted: bool = False

    def settings(self) -> Settings:
        """The scaling settings now."""
        return Settings(
            min_instances=self.min_instances,
            max_instances=self.max_instances,
            queue_size=self.queue_size,
            keep_warm=float(self.keep_warm),
        )


@attrs.define(kw_only=True)
class ServerlessRequestRecord:
    """One inference request and its place in its deployment's schedule."""

    id: str
    deployment_id: str
    workflow: dict[str, Any]
    extra_data: Any
    created: float
    run_seconds: float
    settings: Settings
    webhook: str | None = None
    intermediate: bool = False
    fail: str | None = None
    start: float = 0.0
    end: float = 0.0
    instance_id: str = ""
    cancelled_at: float | None = None
    outputs: dict[str, Any] | None = None
    files: dict[str, bytes] = attrs.field(factory=dict)

    def finished_at(self) -> float:
        """When it ended (or will end): the cancel if there was one, else the run's end."""
        return self.end if self.cancelled_at is None else min(self.cancelled_at, self.end)


@attrs.define
class _Instance:
    """One instance during a schedule replay."""

    id: str
    ready: float
    free: float
    pinned: bool

    def alive(self, at: float, keep_warm: float) -> bool:
        """Up at ``at``: pinned, still busy or starting, or within its keep-warm window."""
        return self.pinned or at <= max(self.ready, self.free) + keep_warm


class DeploymentStore:
    """Every deployment of the account and every request sent to them.

    Attributes:
        run_seconds: simulated duration of one run.
        cold_start_seconds: simulated time a new instance takes before its first run.
        instance_limits: the service's bounds of (``min_instances``, ``max_instances``): the
            vendor page's 0-3 and 1-10.
    """

    def __init__(self, *, clock: Clock, storage: ObjectStorage) -> None:
        self.clock = clock
        self.storage = storage
        self.run_seconds = 8.0
        self.cold_start_seconds = 20.0
        self.instance_limits = (range(4), range(1, 11))
        self.deployments: dict[str, DeploymentRecord] = {}
        self.requests: dict[str, ServerlessRequestRecord] = {}
        self._queues: dict[str, list[ServerlessRequestRecord]] = {}
        self._instances: dict[str, list[_Instance]] = {}
        #: set (and replaced) whenever a schedule changes, so waiters re-read their times
        self.changed = asyncio.Event()

    # -- deployments -------------------------------------------------------------------------

    def create(self, deployment_id: str, fields: Mapping[str, Any]) -> DeploymentRecord:
        """A new deployment from checked fields; its ``min_instances`` are up at once."""
        now = self.clock.time()
        record = DeploymentRecord(
            id=deployment_id,
            name=fields["name"],
            workflow_id=fields["workflow_id"],
            workflow_version=fields["workflow_version"],
            hardware=list(fields["hardware"]),
            min_instances=fields["min_instances"],
            max_instances=fields["max_instances"],
            queue_size=fields["queue_size"],
            keep_warm=fields["keep_warm_duration_in_seconds"],
            is_enabled=True,
            created=now,
            updated=now,
            workflow=serverless_workflow(),
        )
        self.deployments[deployment_id] = record
        self._queues[deployment_id] = []
        return record

    def update(self, record: DeploymentRecord, fields: Mapping[str, Any]) -> None:
        """Apply checked changes; requests already queued keep the settings they arrived with."""
        for key, value in fields.items():
            setattr(record, "keep_warm" if key == "keep_warm_duration_in_seconds" else key, value)
        record.updated = self.clock.time()

    def delete(self, record: DeploymentRecord) -> None:
        """Mark deleted: inference is refused with 10003 from now on."""
        record.deleted = True
        record.is_enabled = False
        record.updated = self.clock.time()

    def status(self, record: DeploymentRecord) -> str:
        """``disabled``, ``running`` while an instance is up, else ``standby``."""
        if not record.is_enabled:
            return "disabled"
        now = self.clock.time()
        settings = record.settings()
        instances = self._instances.get(record.id, [])
        if record.min_instances or any(i.alive(now, settings.keep_warm) for i in instances):
            return "running"
        return "standby"

    # -- requests ----------------------------------------------------------------------------

    def submit(
        self,
        record: DeploymentRecord,
        request_id: str,
        workflow: dict[str, Any],
        *,
        extra_data: Any = None,
        webhook: str | None = None,
        intermediate: bool = False,
    ) -> ServerlessRequestRecord:
        """Queue a request on ``record`` behind every earlier one."""
        request = ServerlessRequestRecord(
            id=request_id,
            deployment_id=record.id,
            workflow=workflow,
            extra_data=extra_data,
            created=self.clock.time(),
            run_seconds=self.clock.real(self.run_seconds),
            settings=record.settings(),
            webhook=webhook,
            intermediate=intermediate,
            fail=_failure(workflow),
        )
        self.requests[request_id] = request
        self._queues[record.id].append(request)
        self._replay(record.id)
        return request

    def _replay(self, deployment_id: str) -> None:
        """Place every request of a deployment on an instance, in arrival order."""
        deployment = self.deployments[deployment_id]
        instances: list[_Instance] = []
        floor = float("-inf")
        placed: list[ServerlessRequestRecord] = []
        cold = self.clock.real(self.cold_start_seconds)
        for request in self._queues[deployment_id]:
            if request.cancelled_at is not None and request.cancelled_at <= request.start:
                continue  # cancelled while queued: it never took an instance
            t, settings = request.created, request.settings
            keep_warm = self.clock.real(settings.keep_warm)
            while sum(i.pinned for i in instances) < settings.min_instances:
                instances.append(self._instance(deployment, len(instances), deployment.created))
                instances[-1].pinned = True
            alive = [i for i in instances if i.alive(t, keep_warm)]
            waiting = sum(1 for r in placed if r.start > t)
            free_now = [i for i in alive if max(i.ready, i.free) <= t]
            if (
                not free_now
                and len(alive) < settings.max_instances
                and (not alive or waiting >= settings.queue_size)
            ):
                fresh = self._instance(deployment, len(instances), t + cold)
                instances.append(fresh)
                alive.append(fresh)
            chosen = min(alive, key=lambda i: max(i.ready, i.free))
            request.start = max(t, chosen.ready, chosen.free, floor)
            request.end = request.start + request.run_seconds
            request.instance_id = chosen.id
            chosen.free = request.finished_at()
            floor = request.start
            placed.append(request)
        self._instances[deployment_id] = instances
        self.changed.set()
        self.changed = asyncio.Event()

    def _instance(self, deployment: DeploymentRecord, index: int, ready: float) -> _Instance:
        """The ``index``-th instance a deployment ever started (stable ids across replays)."""
        instance_id = str(uuid.uuid5(_INSTANCES, f"{deployment.id}/{index}"))
        return _Instance(id=instance_id, ready=ready, free=ready, pinned=False)

    def state(self, request: ServerlessRequestRecord) -> str:
        """``in_queue``, ``in_progress``, ``completed`` or ``cancelled`` as of now."""
        now = self.clock.time()
        if request.cancelled_at is not None and request.cancelled_at <= now:
            return "cancelled"
        if now < request.start:
            return "in_queue"
        if now < request.end:
            return "in_progress"
        return "completed"

    def queue_position(self, request: ServerlessRequestRecord) -> int:
        """1 for the next request of its deployment to start, and so on; 0 unless queued."""
        if self.state(request) != "in_queue":
            return 0
        now = self.clock.time()
        ahead = sum(
            1
            for other in self._queues[request.deployment_id]
            if other.cancelled_at is None and now < other.start < request.start
        )
        earlier_same = sum(
            1
            for other in self._queues[request.deployment_id]
            if other.cancelled_at is None
            and other.start == request.start
            and other.created < request.created
        )
        return ahead + earlier_same + 1

    def cancel(self, request: ServerlessRequestRecord) -> bool:
        """Stop a queued or running request; False once it has finished."""
        state = self.state(request)
        if state == "cancelled":
            return True
        if state == "completed":
            return False
        request.cancelled_at = self.clock.time()
        self._replay(request.deployment_id)
        return True

    def final_status(self, request: ServerlessRequestRecord) -> str | None:
        """``succeeded`` / ``failed`` / ``cancelled`` once finished, else None."""
        state = self.state(request)
        if state == "cancelled":
            return "cancelled"
        if state != "completed":
            return None
        return "failed" if request.fail is not None else "succeeded"

    def outputs(self, request: ServerlessRequestRecord) -> dict[str, Any]:
        """The finished run's outputs, keyed by node id; files are published once."""
        if request.outputs is None:
            outputs: dict[str, Any] = {}
            for node_id, node in request.workflow.items():
                kind = node.get("class_type")
                if kind in _IMAGE_NODES:
                    name = f"ComfyUI_{node_id}_00001_.png"
                    folder = "output" if kind == "SaveImage" else "temp"
                    outputs[node_id] = {
                        "images": [self._file(request, name, _png_for(request.id, node_id), folder)]
                    }
                elif kind == "VHS_VideoCombine":
                    name = f"ComfyUI_{node_id}_00001.mp4"
                    item = self._file(request, name, _MP4, "output")
                    outputs[node_id] = {"gifs": [{**item, "format": "video/h264-mp4"}]}
                elif kind == "ShowText":
                    outputs[node_id] = {"text": [[_text_of(request.workflow, node)]]}
            request.outputs = outputs
        return request.outputs

    def _file(
        self, request: ServerlessRequestRecord, name: str, data: bytes, folder: str
    ) -> dict[str, Any]:
        """Publish one output file; ComfyUI's file entry with the download ``url`` added."""
        url = self.storage.put_blob(f"serverless-outputs/{request.id}/{name}", data)
        request.files[name] = data
        return {"filename": name, "subfolder": "", "type": folder, "url": url}


def _failure(workflow: Mapping[str, Any]) -> str | None:
    """Why a run of ``workflow`` fails: a prompt containing the failure marker, else None."""
    for node_id, node in workflow.items():
        text = node.get("inputs", {}).get("text") if isinstance(node, Mapping) else None
        if isinstance(text, str) and FAIL_MARKER in text:
            return f"node {node_id}: prompt contains {FAIL_MARKER}"
    return None


def _png_for(request_id: str, node_id: str) -> bytes:
    """A tiny PNG unique to its request and node (a ``tEXt`` chunk names them), so downloads
    can be told apart byte for byte."""
    seed = int.from_bytes(hashlib.sha256(f"{request_id}/{node_id}".encode()).digest()[:4], "big")
    png = tiny_png(seed)
    text = b"Comment\x00" + f"{request_id}/{node_id}".encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + text))
    return png[:-12] + chunk + png[-12:]  # before the closing IEND chunk


def _text_of(workflow: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    """The text a ``ShowText`` node shows: its own, or the ``text`` of the node it links to."""
    value = node.get("inputs", {}).get("text")
    if isinstance(value, list) and value and isinstance(workflow.get(str(value[0])), Mapping):
        value = workflow[str(value[0])].get("inputs", {}).get("text")
    return value if isinstance(value, str) else ""
