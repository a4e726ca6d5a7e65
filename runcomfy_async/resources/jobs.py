"""AI Toolkit training jobs (docs/wire.md): the ``rc.jobs`` collection, ``TrainingJob`` handles.

Configs are checked on the client before anything is sent: the service accepts a job with a
wrong fixed path or a dataset that is not READY and only fails it later, after the queue wait
(docs/wire.md, training jobs), so catching those here saves a queue slot and an hour.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, overload
from urllib.parse import quote

import attrs

from .. import errors
from .._awaitable import awaitable
from .._converter import structure
from .._downloads import DownloadProgress, download_artifacts
from .._job_config import (
    DATASETS_ROOT,
    TRAINING_FOLDER,
    JobConfig,
    check_config,
    load_config,
    parse_config,
    with_fixed_paths,
)
from .._limiter import Priority
from .._polling import PollPolicy, poll_until
from .._protocol import API, RequestSpec, Retry
from ..types.datasets import DatasetInfo, DatasetStatus
from ..types.downloads import DownloadReport
from ..types.jobs import (
    ARTIFACT_KINDS,
    Artifact,
    GPUType,
    JobResult,
    JobState,
    JobStatus,
    artifacts_from_wire,
)
from ..types.progress import ProgressCallback
from ._common import check_concurrency, describe_error
from .datasets import Dataset

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = [
    "DATASETS_ROOT",
    "TRAINING_FOLDER",
    "JobConfig",
    "Jobs",
    "TrainingJob",
    "check_config",
    "parse_config",
]

_BASE: Final = "/prod/v1/trainers/ai-toolkit/jobs"
#: Polls of a training run: quick at first, then at most once a minute (runs take hours).
DEFAULT_JOB_POLL: Final = PollPolicy(initial=2.0, factor=1.5, max_interval=60.0)

def _path(job_id: str, suffix: str = "") -> str:
    """The URL path of one job's endpoint, refusing ids that would change the path."""
    if not job_id or not isinstance(job_id, str):
        raise errors.ValidationError("job id must be a non-empty string")
    return f"{_BASE}/{quote(job_id, safe='')}{suffix}"


def _gpu_type(gpu_type: GPUType | str) -> str:
    """The wire value of a GPU type; unknown upper-case names pass for GPUs added later."""
    if not isinstance(gpu_type, str) or not gpu_type:
        raise errors.ValidationError(
            f"gpu_type must be GPUType.H100, GPUType.H200 or a string such as 'ADA_80_PLUS'; "
            f"got {gpu_type!r}"
        )
    parsed = GPUType(gpu_type)
    if not parsed.known and not (gpu_type.isupper() and gpu_type.replace("_", "").isalnum()):
        raise errors.ValidationError(
            f"unknown gpu_type {gpu_type!r}; use GPUType.H100 ('ADA_80_PLUS') or "
            "GPUType.H200 ('HOPPER_141')"
        )
    return parsed.value


# -- the handle ----------------------------------------------------------------------------


class TrainingJob:
    """An awaitable handle on one training job: ``final = await job`` waits until it ends.

    ``await job`` returns the final :class:`JobStatus`: ``STOPPED`` (check ``.preempted``: a run
    the platform stopped short of its last step comes back with ``preempted`` True, and
    ``await job.resume()`` continues it from its latest checkpoint) or ``CANCELED``. ``FAILED``
    raises :class:`~runcomfy_async.errors.JobFailed` with the server's error.
    """

    def __init__(
        self, client: RunComfy, job_id: str, name: str | None = None, *, poll: PollPolicy
    ) -> None:
        self._client = client
        self.id = job_id
        self.name = name
        #: The polling schedule ``await job`` and ``watch_artifacts()`` use.
        self.poll = poll

    def __repr__(self) -> str:
        return f"TrainingJob(id={self.id!r}, name={self.name!r})"

    @awaitable("job.status()")
    async def status(self, *, priority: Priority = Priority.USER) -> JobStatus:
        """Ask the server for the job's current status and progress (never a cached one)."""
        payload = await self._client.request(
            RequestSpec(api=API.TRAINER, method="GET", path=_path(self.id, "/status")),
            priority=priority,
        )
        info = structure(payload, JobStatus, what="training job status")
        if info.name:
            self.name = info.name
        return info

    @awaitable("job.result()")
    async def result(self, *, priority: Priority = Priority.USER) -> JobResult:
        """The artifacts produced so far (checkpoints, samples, config) as hosted URLs.

        Works while the job runs (the list grows) and after it ends, FAILED and CANCELED
        included (docs/wire.md).
        """
        payload = await self._client.request(
            RequestSpec(api=API.TRAINER, method="GET", path=_path(self.id, "/result")),
            priority=priority,
        )
        wire = structure(payload, _ResultWire, what="training job result")
        return JobResult(
            id=wire.id or self.id,
            status=wire.status,
            artifacts=artifacts_from_wire(wire.artifacts),
            error=wire.error,
        )

    @awaitable("job.cancel()")
    async def cancel(self) -> JobStatus:
        """Cancel a queued or running job; its artifacts so far stay available via ``result()``.

        Raises:
            ConflictError: the job has already ended.
        """
        # Retried like a GET: cancelling twice leaves the job just as cancelled.
        payload = await self._client.request(
            RequestSpec(
                api=API.TRAINER, method="POST", path=_path(self.id, "/cancel"), retry=Retry.SAFE
            )
        )
        return self._info(payload, "cancel answer")

    @awaitable("job.resume()")
    async def resume(self) -> JobStatus:
        """Queue a stopped job again; it continues from its highest checkpoint, same job id.

        Raises:
            ConflictError: the job is queued or running, or already finished every step.
        """
        # Not repeated after a lost answer: the first resume may have queued the job, and a
        # second would then be refused as a conflict. 429 / refused connections are safe.
        payload = await self._client.request(
            RequestSpec(
                api=API.TRAINER,
                method="POST",
                path=_path(self.id, "/resume"),
                json={},
                retry=Retry.UNSENT,
            )
        )
        return self._info(payload, "resume answer")

    async def edit(self, config: JobConfig, *, check_datasets: bool = True) -> JobStatus:
        """Replace the config of a job that is not running (then ``resume()`` it).

        Args:
            config: YAML text, a ``Path`` to a YAML file, or a dict; checked as in ``submit``.
            check_datasets: also check that every mounted dataset exists and is READY.

        Raises:
            ConfigError: the config would be rejected (nothing is sent).
            ConflictError: the job is queued or running.
        """
        text = await self._client.jobs.checked_yaml(config, check_datasets=check_datasets)
        # Retried like a GET: setting the same config twice has the same effect as once.
        payload = await self._client.request(
            RequestSpec(
                api=API.TRAINER,
                method="POST",
                path=_path(self.id, "/edit"),
                json={"config_file_format": "yaml", "config_file": text},
                retry=Retry.SAFE,
            )
        )
        return self._info(payload, "edit answer")

    def _info(self, payload: Any, what: str) -> JobStatus:
        """A snapshot from an action's answer, which may omit the id."""
        if isinstance(payload, dict) and "id" not in payload:
            payload = {**payload, "id": self.id}
        return structure(payload, JobStatus, what=what)

    @awaitable("job.wait()")
    async def wait(
        self,
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        on_status: Callable[[JobStatus], Awaitable[None] | None] | None = None,
    ) -> JobStatus:
        """Poll until the job ends and return the final status (what ``await job`` does).

        Polls take tokens at ``Priority.BACKGROUND``, so the client's own calls go first.

        Args:
            timeout: client-side deadline in seconds; the job keeps running when it passes.
            poll: polling schedule; default ``self.poll``.
            on_status: called with every status snapshot, the final one included (step
                progress); a plain or async function.

        Returns:
            The final snapshot: STOPPED (``.completed`` or ``.preempted``) or CANCELED.

        Raises:
            JobFailed: the job went FAILED (``error`` holds the server's reason).
            WaitTimeoutError: ``timeout`` passed first.
        """
        info = await poll_until(
            lambda: self.status(priority=Priority.BACKGROUND),
            lambda i: i.terminal,
            policy=poll or self.poll,
            timeout=timeout,
            key=lambda i: i.status,
            on_snapshot=on_status,
            what=f"training job {self.id} to end",
        )
        if info.status is JobState.FAILED:
            raise errors.JobFailed(
                f"training job {self.id} ({info.name}) FAILED: {describe_error(info.error)}",
                fix="fix the cause, then job.edit(config) and job.resume(), or submit again",
                error=info.error,
                snapshot=info,
            )
        return info

    def __await__(self) -> Generator[Any, None, JobStatus]:
        return self.wait().__await__()

    async def _snapshot(self) -> JobResult:
        """A result with a status, asking ``/status`` too if ``/result`` omitted it."""
        result = await self.result(priority=Priority.BACKGROUND)
        if result.status is None:
            info = await self.status(priority=Priority.BACKGROUND)
            result = attrs.evolve(result, status=info.status)
        return result

    async def watch_artifacts(self, *, poll: PollPolicy | None = None) -> AsyncIterator[Artifact]:
        """Yield each artifact once, as it appears, until the job ends.

        Polls ``/result`` at background priority (fast again after each new artifact). Ends,
        without raising, once the job is STOPPED, FAILED or CANCELED and its final artifacts
        have been yielded; ``await job`` tells how it ended. To stop watching early, break out
        of an ``async with contextlib.aclosing(job.watch_artifacts()) as it:`` loop.

        Args:
            poll: polling schedule; default ``self.poll``.
        """
        seen: set[tuple[str, str]] = set()

        def news(result: JobResult) -> list[Artifact]:
            """Artifacts not yielded before, in server order."""
            return [a for a in result.artifacts if a.key not in seen]

        while True:
            snapshot = await poll_until(
                self._snapshot,
                lambda r: bool(news(r)) or (r.status is not None and r.status.terminal),
                policy=poll or self.poll,
                key=lambda r: (r.status, len(r.artifacts)),
                what=f"artifacts of training job {self.id}",
            )
            for artifact in news(snapshot):
                seen.add(artifact.key)
                yield artifact
            if snapshot.status is not None and snapshot.status.terminal:
                return

    @overload
    async def download(
        self,
        dest: str | os.PathLike[str],
        *,
        kinds: Iterable[str] = ...,
        concurrency: int = ...,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        check: Literal[True] = ...,
    ) -> list[Path]: ...

    @overload
    async def download(
        self,
        dest: str | os.PathLike[str],
        *,
        kinds: Iterable[str] = ...,
        concurrency: int = ...,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        check: Literal[False],
    ) -> DownloadReport: ...

    @overload
    async def download(
        self,
        dest: str | os.PathLike[str],
        *,
        kinds: Iterable[str] = ...,
        concurrency: int = ...,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        check: bool = ...,
    ) -> list[Path] | DownloadReport: ...

    async def download(
        self,
        dest: str | os.PathLike[str],
        *,
        kinds: Iterable[str] = ARTIFACT_KINDS,
        concurrency: int = 4,
        progress: ProgressCallback[DownloadProgress] | None = None,
        check: bool = True,
    ) -> list[Path] | DownloadReport:
        """Download the job's artifacts into ``dest`` as ``dest/<kind>/<name>``.

        Streams each file to ``<name>.part`` and renames it when complete; a ``.part`` left by
        an interrupted run is continued with a Range request. File names from the server are
        sanitised (no traversal, no absolute paths) and made unique. No API token is sent to
        the artifact host, and downloads take no rate-limit token.

        Args:
            dest: folder to write into (created if missing).
            kinds: artifact groups to fetch (``"checkpoints"``, ``"samples"``, ``"config"``).
            concurrency: files downloaded at once.
            progress: called with a :class:`DownloadProgress` as bytes land on disk.
            check: raise :class:`~runcomfy_async.errors.DownloadError` when any file could not
                be downloaded (like ``subprocess.run(check=True)``); False returns a
                :class:`~runcomfy_async.types.downloads.DownloadReport` instead, its failures
                in ``failed``.

        Returns:
            The paths written, in the server's artifact order (a ``DownloadReport`` with
            ``check=False``).

        Raises:
            ValidationError: bad ``kinds`` or ``concurrency``, or a name would leave ``dest``.
            DownloadError: ``check`` and a file could not be downloaded: storage refused it
                (also after one fresh URL on 403) or it could not be fetched after retries.
                Every file is attempted; ``.report`` lists each outcome, the first file's
                error is the ``__cause__``, and each failed file's ``.part`` is kept.
        """
        if isinstance(kinds, str) or not all(isinstance(k, str) for k in kinds):
            raise errors.ValidationError(
                f"kinds must be a collection of names such as ('checkpoints',), got {kinds!r}"
            )
        wanted = tuple(kinds)
        check_concurrency(concurrency, "downloads")
        result = await self.result()
        client = self._client

        async def refresh(artifact: Artifact) -> Artifact:
            """The same artifact with a freshly signed URL (the old one expired)."""
            fresh = await self.result()
            return next((a for a in fresh.artifacts if a.key == artifact.key), artifact)

        report = await download_artifacts(
            client.pipeline,
            result.of_kind(*wanted),
            Path(dest),
            timeout=client.timeouts.for_transfer(),
            concurrency=concurrency,
            progress=progress,
            refresh=refresh,
            check=check,
        )
        return list(report.paths) if check else report


@attrs.frozen(kw_only=True)
class _ResultWire:
    """``/result`` as sent; ``artifacts`` is flattened by ``artifacts_from_wire``."""

    id: str | None = None
    status: JobState | None = None
    artifacts: Any = None
    error: Any = None


# -- the collection ------------------------------------------------------------------------


DatasetRef: TypeAlias = "Dataset | DatasetInfo | str"


class Jobs:
    """``rc.jobs``: submit AI Toolkit training jobs, rebuild handles, build configs.

    Attributes:
        poll: the default polling schedule of the handles it returns (fast first, then at most
            one poll a minute; lower it in tests, raise it for many concurrent jobs).
    """

    def __init__(self, client: RunComfy, *, poll: PollPolicy = DEFAULT_JOB_POLL) -> None:
        self._client = client
        self.poll = poll

    async def checked_yaml(self, config: JobConfig, *, check_datasets: bool = True) -> str:
        """The YAML text to send for ``config``, after every client-side check passed.

        Raises:
            ConfigError: invalid YAML, a wrong fixed path, or (with ``check_datasets``) a
                mounted dataset that does not exist or is not READY.
        """
        doc, text = await load_config(config)
        names = check_config(doc)
        if check_datasets and names:
            await self._check_datasets(names)
        return text

    async def _check_datasets(self, names: list[str]) -> None:
        """Every mounted dataset exists and is READY, or one ConfigError naming each problem."""
        by_name = {d.name: d for d in await self._client.datasets.list() if d.name}
        problems = []
        for name in dict.fromkeys(names):
            info = by_name.get(name)
            if info is None:
                known = ", ".join(sorted(by_name)) or "none"
                problems.append(
                    f"no dataset named {name!r} (datasets in this account: {known}); create and "
                    f"upload it, or change folder_path to '{DATASETS_ROOT}<existing name>'"
                )
            elif info.status is not DatasetStatus.READY:
                problems.append(
                    f"dataset {name!r} is {info.status.value}, not READY"
                    + (f" ({info.error})" if info.error else "")
                    + "; wait for it or fix its files"
                )
        if problems:
            raise errors.ConfigError(
                "the training config mounts datasets the job could not use:\n  - "
                + "\n  - ".join(problems),
                fix="await rc.datasets.get(id) waits until a dataset is READY",
            )

    @awaitable("rc.jobs.submit(...)")
    async def submit(
        self,
        config: JobConfig,
        *,
        gpu_type: GPUType | str = GPUType.H100,
        gpu_count: int | None = None,
        gpu_id: str | None = None,
        check_datasets: bool = True,
    ) -> TrainingJob:
        """Check a config and submit it as a training job (it starts IN_QUEUE).

        Args:
            config: YAML text (str), a ``pathlib.Path`` to a YAML file, or a dict.
            gpu_type: ``GPUType.H100`` (``ADA_80_PLUS``), ``GPUType.H200`` (``HOPPER_141``) or
                the raw string.
            gpu_count: number of GPUs, when not the service's default.
            gpu_id: a specific GPU offering's id, sent as given (RunComfy's own client sends
                this optional field; the service documents no values for it).
            check_datasets: check that every mounted dataset exists and is READY (one list
                call) before submitting.

        Raises:
            ConfigError: the config would be rejected or fail (nothing is sent).
            ValidationError: a bad ``gpu_type``, ``gpu_count`` or ``gpu_id`` (nothing is sent).
        """
        gpu = _gpu_type(gpu_type)
        if gpu_count is not None and (
            isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1
        ):
            raise errors.ValidationError(f"gpu_count must be an int >= 1, got {gpu_count!r}")
        if gpu_id is not None and (
            not isinstance(gpu_id, str) or not gpu_id.strip() or gpu_id != gpu_id.strip()
        ):
            raise errors.ValidationError(
                f"gpu_id must be a non-blank string without surrounding spaces, or None (the "
                f"service picks), got {gpu_id!r}"
            )
        text = await self.checked_yaml(config, check_datasets=check_datasets)
        body: dict[str, Any] = {"config_file_format": "yaml", "config_file": text, "gpu_type": gpu}
        if gpu_count is not None:
            body["gpu_count"] = gpu_count
        if gpu_id is not None:
            body["gpu_id"] = gpu_id
        # Not retried after the request may have arrived: a lost answer could mean a job is
        # already queued (and billing), and the API has no idempotency key to make a repeat
        # harmless. 429 and refused connections prove it never ran, so those are repeated.
        try:
            payload = await self._client.request(
                RequestSpec(
                    api=API.TRAINER, method="POST", path=_BASE, json=body, retry=Retry.UNSENT
                )
            )
        except errors.OutcomeUnknownError as exc:
            exc.check = (
                "your training jobs on runcomfy.com for one submitted just now before submitting "
                "again: it may have been queued and billed"
            )
            exc.add_note(f"check {exc.check}")
            raise
        info = structure(payload, JobStatus, what="submitted training job")
        return TrainingJob(self._client, info.id, info.name, poll=self.poll)

    def get(self, job_id: str) -> TrainingJob:
        """A handle on an existing job by id (no request is sent).

        Raises:
            ValidationError: an empty id.
        """
        _path(job_id)
        return TrainingJob(self._client, job_id, poll=self.poll)

    @awaitable("rc.jobs.config_for(...)")
    async def config_for(self, dataset: DatasetRef, template: JobConfig) -> dict[str, Any]:
        """A copy of ``template`` with the fixed paths filled in for ``dataset``.

        Sets every process's ``training_folder`` to ``/app/ai-toolkit/output`` and every
        ``datasets[*].folder_path`` to ``/app/ai-toolkit/datasets/<dataset name>`` (a process
        without ``datasets`` gets one entry). The template is not modified.

        Args:
            dataset: a ``Dataset`` handle (its name is fetched if unknown), a ``DatasetInfo``,
                or the dataset's name.
            template: YAML text, a ``Path`` to a YAML file, or a dict.

        Raises:
            ConfigError: the template is not an AI Toolkit config.
            ValidationError: the dataset has no name.
        """
        name = await self._dataset_name(dataset)
        doc, _ = await load_config(template)
        return with_fixed_paths(doc, name)

    async def _dataset_name(self, dataset: DatasetRef) -> str:
        """The dataset's name, asking the server when a handle does not know it yet."""
        if isinstance(dataset, Dataset):
            name = dataset.name or (await dataset.status()).name
        elif isinstance(dataset, DatasetInfo):
            name = dataset.name
        elif isinstance(dataset, str):
            name = dataset
        else:
            raise errors.ValidationError(
                f"dataset must be a Dataset, a DatasetInfo or a name, got {type(dataset).__name__}"
            )
        if not name or "/" in name or name != name.strip():
            raise errors.ValidationError(
                f"dataset name {name!r} cannot be mounted; use the dataset's plain name"
            )
        return name

