"""Trainer API AI Toolkit jobs (docs/wire.md): submit, status, result, cancel, resume, edit.

Lifecycles are computed lazily from the scaled clock whenever a job is read (no background
tasks): a job waits ``queue_seconds`` IN_QUEUE, then runs one step per ``step_seconds``
(both simulated, divided by the emulator's speed) up to ``train.steps`` and ends STOPPED.
Checkpoints appear every ``save.save_every`` steps and at the last step, samples every
``sample.sample_every`` steps, and the resolved config when the run starts; all are blobs in
the emulator's object storage behind signed GET URLs.

Like the real service, a submit with a config that breaks the fixed-path rules, is not valid
YAML, or mounts a dataset that is not READY is accepted and then goes FAILED with an ``error``
when it would start. Cancel keeps the artifacts made so far; resume continues the same job id
from its highest checkpoint. Tests stop a job early with :meth:`JobStore.preempt` (the STOPPED
"server was reclaimed" case in docs/wire.md) and publish arbitrary artifacts with
:meth:`JobStore.add_artifact`; the store is ``emu.state.jobs``.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import attrs
import yaml
from aiohttp import web

from .._rules import DATASETS_ROOT, TRAINING_FOLDER
from ..types.jobs import GPUType
from ._datasets import DatasetStatus
from ._wire import ApiError, field_error, not_found, read_json, validation_error

if TYPE_CHECKING:
    from ._clock import Clock
    from ._datasets import DatasetStore
    from ._state import EmulatorState
    from ._storage import ObjectStorage

__all__ = [
    "DATASETS_ROOT",
    "GPU_TYPES",
    "PREFIX",
    "TRAINING_FOLDER",
    "JobArtifact",
    "JobRecord",
    "JobStore",
    "add_routes",
    "jobs_of",
]

PREFIX: Final = "/prod/v1/trainers/ai-toolkit/jobs"
GPU_TYPES: Final = frozenset(gpu.value for gpu in GPUType)
DEFAULT_STEPS: Final = 100
DEFAULT_EVERY: Final = 250
RECLAIMED: Final[Mapping[str, str]] = MappingProxyType(
    {"message": "Job failed: server was reclaimed.", "code": "TRAINING_ERROR"}
)


@attrs.frozen(kw_only=True)
class JobArtifact:
    """One published artifact: its group, storage key, step and (optional) advertised name."""

    kind: str
    key: str
    step: int | None = None
    name: str | None = None


@attrs.frozen(kw_only=True)
class _End:
    """How and when a run segment ended."""

    status: str
    at: float
    step: int
    error: Any = None


@attrs.define(kw_only=True)
class JobRecord:
    """One job and the timestamps its status is derived from."""

    id: str
    name: str
    gpu_type: str
    created_at: float
    config_text: str
    #: the optional ``gpu_id`` the submit named (the service documents no values for it)
    gpu_id: str | None = None
    total_steps: int = DEFAULT_STEPS
    save_every: int = DEFAULT_EVERY
    sample_every: int = DEFAULT_EVERY
    #: why the current segment will fail when it starts (bad config, dataset not READY)
    failure: dict[str, str] | None = None
    queued_at: float = 0.0
    start_step: int = 0
    step: int = 0
    started_at: float | None = None
    preempt_at: int | None = None
    end: _End | None = None
    produced_upto: int = 0
    artifacts: list[JobArtifact] = attrs.Factory(list)
    extras: int = 0


def _int_setting(section: Any, key: str, default: int) -> int:
    """A positive int from a config section, else the default (the toolkit's own fallback)."""
    value = section.get(key) if isinstance(section, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


class JobStore:
    """Every training job of the account.

    Attributes:
        queue_seconds: simulated time a job waits IN_QUEUE.
        step_seconds: simulated time of one training step.
        checkpoint_bytes: size of each checkpoint blob (over 1 MiB by default, so downloads
            take several chunks).
        sample_bytes: size of each sample image blob.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        storage: ObjectStorage,
        datasets: DatasetStore,
        new_id: Callable[[], str],
    ) -> None:
        self.clock = clock
        self.storage = storage
        self.datasets = datasets
        self.queue_seconds = 10.0
        self.step_seconds = 3.0
        self.checkpoint_bytes = 1_500_000
        self.sample_bytes = 20_000
        self._jobs: dict[str, JobRecord] = {}
        self._new_id = new_id

    # -- records ---------------------------------------------------------------------------

    def submit(self, config_text: str, gpu_type: str, gpu_id: str | None = None) -> JobRecord:
        """Queue a new job; a config problem makes it FAIL when it would start."""
        now = self.clock.time()
        record = JobRecord(
            id=self._new_id(),
            name=f"job_{secrets.token_hex(4)}",
            gpu_type=gpu_type,
            gpu_id=gpu_id,
            created_at=now,
            config_text=config_text,
            queued_at=now,
        )
        self._configure(record, config_text)
        self._jobs[record.id] = record
        return record

    def get(self, job_id: str) -> JobRecord:
        """The job with this id, settled to now; ``KeyError`` if unknown."""
        record = self._jobs[job_id]
        self._settle(record)
        return record

    def artifacts(self, job_id: str) -> list[JobArtifact]:
        """The job's artifacts so far (settled to now), in the order ``/result`` lists them."""
        return _ordered(self.get(job_id).artifacts)

    def status(self, record: JobRecord) -> str:
        """The status of a settled record."""
        if record.end is not None:
            return record.end.status
        start_at = record.queued_at + self.clock.real(self.queue_seconds)
        return "IN_QUEUE" if self.clock.time() < start_at else "RUNNING"

    # -- control hooks for tests -----------------------------------------------------------

    def preempt(self, job_id: str, at_step: int | None = None) -> None:
        """Stop a job the way a reclaimed server does: STOPPED short of its last step.

        Args:
            job_id: the job.
            at_step: stop when the run reaches this step; None stops it now.

        Raises:
            KeyError: no such job.
            ValueError: the job has already ended.
        """
        record = self.get(job_id)
        if record.end is not None:
            raise ValueError(f"job {job_id} already ended ({record.end.status})")
        if at_step is None or at_step <= record.step:
            record.end = _End(
                status="STOPPED", at=self.clock.time(), step=record.step, error=dict(RECLAIMED)
            )
        else:
            record.preempt_at = at_step

    def add_artifact(
        self, job_id: str, kind: str, name: str | None, data: bytes, *, step: int | None = None
    ) -> str:
        """Publish an extra artifact (e.g. with a hostile ``name``) and list it in ``/result``.

        Returns:
            A signed GET URL of the blob.

        Raises:
            KeyError: no such job.
        """
        record = self._jobs[job_id]
        record.extras += 1
        key = f"jobs/{record.id}/extra/{record.extras}.bin"
        url = self.storage.put_blob(key, data)
        record.artifacts.append(JobArtifact(kind=kind, key=key, step=step, name=name))
        return url

    # -- lifecycle -------------------------------------------------------------------------

    def _configure(self, record: JobRecord, config_text: str) -> None:
        """Take a (new or edited) config: its settings, and whether the run will fail."""
        record.config_text = config_text
        record.failure = None
        try:
            doc = yaml.safe_load(config_text)
        except yaml.YAMLError as exc:
            record.failure = {"message": f"Invalid config YAML: {exc}", "code": "CONFIG_ERROR"}
            return
        config = doc.get("config") if isinstance(doc, dict) else None
        if not isinstance(config, dict):
            record.failure = {
                "message": "Invalid config: expected a mapping with a 'config' key",
                "code": "CONFIG_ERROR",
            }
            return
        if isinstance(config.get("name"), str) and config["name"]:
            record.name = config["name"]
        processes = config.get("process")
        if not isinstance(processes, list) or not processes:
            record.failure = {
                "message": "Invalid config: config.process must be a non-empty list",
                "code": "CONFIG_ERROR",
            }
            return
        first = processes[0] if isinstance(processes[0], dict) else {}
        record.total_steps = _int_setting(first.get("train"), "steps", DEFAULT_STEPS)
        record.save_every = _int_setting(first.get("save"), "save_every", DEFAULT_EVERY)
        record.sample_every = _int_setting(first.get("sample"), "sample_every", DEFAULT_EVERY)
        record.failure = self._problem(processes)

    def _problem(self, processes: list[Any]) -> dict[str, str] | None:
        """The first reason the service would fail these processes, or None."""
        ready = {d.name: self.datasets.status(d) for d in self.datasets.all()}
        for process in processes:
            if not isinstance(process, dict):
                return {
                    "message": "Invalid config: a process is not a mapping",
                    "code": "CONFIG_ERROR",
                }
            if process.get("training_folder") != TRAINING_FOLDER:
                return {
                    "message": f"Invalid config: training_folder must be {TRAINING_FOLDER}",
                    "code": "CONFIG_ERROR",
                }
            for entry in process.get("datasets") or []:
                path = entry.get("folder_path") if isinstance(entry, dict) else None
                if not isinstance(path, str) or not path.startswith(DATASETS_ROOT):
                    return {
                        "message": f"Invalid config: folder_path must be {DATASETS_ROOT}"
                        "{dataset_name}",
                        "code": "CONFIG_ERROR",
                    }
                name = path[len(DATASETS_ROOT) :].rstrip("/")
                status = ready.get(name)
                if status is not DatasetStatus.READY:
                    shown = status.value if status is not None else "not found"
                    return {
                        "message": f"Dataset {name!r} is not READY ({shown})",
                        "code": "DATASET_NOT_READY",
                    }
        return None

    def _settle(self, record: JobRecord) -> None:
        """Apply, as of now, the transitions the timestamps imply; publish new artifacts."""
        if record.end is not None:
            return
        now = self.clock.time()
        start_at = record.queued_at + self.clock.real(self.queue_seconds)
        if now < start_at:
            return
        if record.started_at is None:
            record.started_at = start_at
        if record.failure is not None:
            record.end = _End(
                status="FAILED", at=start_at, step=record.start_step, error=record.failure
            )
            return
        if not any(a.kind == "config" for a in record.artifacts):
            key = f"jobs/{record.id}/config.yaml"
            self.storage.put_blob(key, record.config_text.encode())
            record.artifacts.append(JobArtifact(kind="config", key=key))
        step_real = self.clock.real(self.step_seconds)
        reached = record.start_step + int((now - start_at) // step_real)
        limit = record.total_steps
        preempted = record.preempt_at is not None and record.preempt_at < limit
        if preempted and record.preempt_at is not None:
            limit = max(record.preempt_at, record.start_step)
        record.step = min(reached, limit)
        self._produce(record, record.step)
        if reached >= limit:
            record.end = _End(
                status="STOPPED",
                at=start_at + (limit - record.start_step) * step_real,
                step=limit,
                error=dict(RECLAIMED) if preempted else None,
            )
            record.preempt_at = None

    def _produce(self, record: JobRecord, step: int) -> None:
        """Publish the checkpoints and samples of every step up to ``step`` not yet published."""
        for s in range(record.produced_upto + 1, step + 1):
            if s % record.sample_every == 0 or s == record.total_steps:
                stamp = int(self.clock.time())
                key = f"jobs/{record.id}/samples/{stamp}__{s:09d}_0.jpg"
                self.storage.put_blob(key, _blob(f"{record.id}:sample:{s}", self.sample_bytes))
                record.artifacts.append(JobArtifact(kind="samples", key=key, step=s))
            if s % record.save_every == 0 or s == record.total_steps:
                key = f"jobs/{record.id}/checkpoints/{record.name}_{s:09d}.safetensors"
                data = _blob(f"{record.id}:checkpoint:{s}", self.checkpoint_bytes)
                self.storage.put_blob(key, data)
                record.artifacts.append(JobArtifact(kind="checkpoints", key=key, step=s))
        record.produced_upto = max(record.produced_upto, step)

    def cancel(self, record: JobRecord) -> None:
        """CANCELED now, keeping the artifacts made so far; 409 if it already ended otherwise."""
        if record.end is not None:
            if record.end.status == "CANCELED":
                return
            raise _conflict(record, "cancel", "only IN_QUEUE or RUNNING jobs can be canceled")
        record.end = _End(status="CANCELED", at=self.clock.time(), step=record.step)

    def resume(self, record: JobRecord) -> None:
        """Queue again from the highest checkpoint (step 0 without one), same job id."""
        if record.end is None:
            raise _conflict(record, "resume", "it is still queued or running")
        if (
            record.end.status == "STOPPED"
            and record.end.error is None
            and (record.end.step >= record.total_steps)
        ):
            raise _conflict(record, "resume", "it already completed every step")
        self._configure(record, record.config_text)
        steps = [a.step for a in record.artifacts if a.kind == "checkpoints" and a.step]
        record.start_step = min(max(steps, default=0), record.total_steps)
        record.step = record.start_step
        record.queued_at = self.clock.time()
        record.end = None

    def edit(self, record: JobRecord, config_text: str) -> None:
        """Replace the config of a job that is not queued or running."""
        if record.end is None:
            raise _conflict(record, "edit", "it is still queued or running; cancel it first")
        self._configure(record, config_text)

    # -- wire shapes -----------------------------------------------------------------------

    def to_json(self, record: JobRecord, base_url: str) -> dict[str, Any]:
        """The documented status object (docs/wire.md)."""
        total = record.total_steps
        step = record.end.step if record.end is not None else record.step
        return {
            "id": record.id,
            "name": record.name,
            "status": self.status(record),
            "progress": {
                "percent": int(100 * step / total) if total else 0,
                "current_step": step,
                "total_steps": total,
            },
            "error": record.end.error if record.end is not None else None,
            "created_at": self.clock.iso(record.created_at),
            "started_at": self.clock.iso(record.started_at) if record.started_at else None,
            "finished_at": self.clock.iso(record.end.at) if record.end is not None else None,
            "result_url": f"{base_url}{PREFIX}/{record.id}/result",
        }

    def result_json(self, record: JobRecord) -> dict[str, Any]:
        """The documented result object (docs/wire.md), with freshly signed URLs."""
        groups: dict[str, Any] = {"checkpoints": [], "samples": []}
        for artifact in _ordered(record.artifacts):
            item: dict[str, Any] = {"path": self.storage.sign_get(artifact.key)}
            if artifact.step is not None:
                item["step"] = artifact.step
            if artifact.name is not None:
                item["name"] = artifact.name
            if artifact.kind == "config":
                groups["config"] = item
            else:
                groups.setdefault(artifact.kind, []).append(item)
        return {
            "id": record.id,
            "status": self.status(record),
            "artifacts": groups,
            "error": record.end.error if record.end is not None else None,
        }


def _ordered(artifacts: list[JobArtifact]) -> list[JobArtifact]:
    """Checkpoints, then samples, then the rest, each in publication order."""
    rank = {"checkpoints": 0, "samples": 1}
    return sorted(artifacts, key=lambda a: rank.get(a.kind, 2))


def _blob(seed: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes standing in for a checkpoint or an image."""
    return random.Random(seed).randbytes(size)


def _conflict(record: JobRecord, action: str, why: str) -> ApiError:
    """A 409 naming the job's state."""
    status = record.end.status if record.end is not None else "IN_QUEUE or RUNNING"
    return ApiError(409, 409001, f"Cannot {action} job {record.id} ({status}): {why}.")


def jobs_of(state: EmulatorState) -> JobStore:
    """``state.jobs``, the job store of one emulator (kept for callers written before it)."""
    return state.jobs


def _config_text(body: Any, *, gpu: bool) -> tuple[str, str | None]:
    """Validate a submit/edit body (docs/wire.md); return (YAML text, gpu_type)."""
    if not isinstance(body, dict):
        raise validation_error([field_error(["body"], "body must be a JSON object")])
    problems = []
    if body.get("config_file_format") != "yaml":
        problems.append(field_error(["body", "config_file_format"], "must be 'yaml'"))
    text = body.get("config_file")
    if not isinstance(text, str) or not text.strip():
        problems.append(
            field_error(["body", "config_file"], "field required", "value_error.missing")
        )
    gpu_type = body.get("gpu_type")
    if gpu and gpu_type not in GPU_TYPES:
        problems.append(
            field_error(["body", "gpu_type"], f"must be one of {', '.join(sorted(GPU_TYPES))}")
        )
    count = body.get("gpu_count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        problems.append(field_error(["body", "gpu_count"], "must be a positive integer"))
    gpu_id = body.get("gpu_id")
    if gpu_id is not None and (not isinstance(gpu_id, str) or not gpu_id.strip()):
        problems.append(field_error(["body", "gpu_id"], "must be a non-empty string"))
    if problems or not isinstance(text, str):
        raise validation_error(problems)
    return text, gpu_type if isinstance(gpu_type, str) else None


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the six training job endpoints."""
    store = state.jobs

    def lookup(request: web.Request) -> JobRecord:
        """The job named in the path, settled to now, or 404."""
        job_id = request.match_info["job_id"]
        try:
            return store.get(job_id)
        except KeyError:
            raise not_found(f"Job {job_id} not found") from None

    def brief(record: JobRecord) -> web.Response:
        """The short ``{id, status}`` answer of cancel, resume and edit."""
        return web.json_response({"id": record.id, "status": store.status(record)})

    async def submit(request: web.Request) -> web.Response:
        """POST /jobs: accept a job (IN_QUEUE); a bad config fails it later, as the service does."""
        body = await read_json(request)
        text, gpu_type = _config_text(body, gpu=True)
        record = store.submit(text, gpu_type or "", body.get("gpu_id"))
        return web.json_response(
            {
                "id": record.id,
                "name": record.name,
                "status": store.status(record),
                "created_at": state.clock.iso(record.created_at),
            }
        )

    async def status(request: web.Request) -> web.Response:
        """GET /jobs/{id}/status."""
        return web.json_response(store.to_json(lookup(request), state.base_url))

    async def result(request: web.Request) -> web.Response:
        """GET /jobs/{id}/result: the artifacts so far, whatever the status."""
        return web.json_response(store.result_json(lookup(request)))

    async def cancel(request: web.Request) -> web.Response:
        """POST /jobs/{id}/cancel."""
        record = lookup(request)
        store.cancel(record)
        return brief(record)

    async def resume(request: web.Request) -> web.Response:
        """POST /jobs/{id}/resume (any JSON body is accepted and ignored)."""
        record = lookup(request)
        await read_json(request)
        store.resume(record)
        return brief(record)

    async def edit(request: web.Request) -> web.Response:
        """POST /jobs/{id}/edit: a new config for a job that is not running."""
        record = lookup(request)
        text, _ = _config_text(await read_json(request), gpu=False)
        store.edit(record, text)
        return brief(record)

    app.router.add_post(PREFIX, submit)
    app.router.add_get(PREFIX + "/{job_id}/status", status)
    app.router.add_get(PREFIX + "/{job_id}/result", result)
    app.router.add_post(PREFIX + "/{job_id}/cancel", cancel)
    app.router.add_post(PREFIX + "/{job_id}/resume", resume)
    app.router.add_post(PREFIX + "/{job_id}/edit", edit)
