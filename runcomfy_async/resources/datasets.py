"""Trainer datasets (docs/wire.md): the ``rc.datasets`` collection and ``Dataset`` handles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import _upload_plan as _plan
from .. import errors
from .._awaitable import awaitable
from .._converter import structure
from .._limiter import Priority
from .._pipeline import counting_calls
from .._polling import PollPolicy, poll_until
from .._protocol import API, RequestSpec, Retry
from .._upload_body import FormPayload
from .._upload_engine import run_uploads
from .._upload_sources import scan_items, size_urls
from ..types.datasets import DatasetInfo, DatasetStatus
from ..types.progress import ProgressCallback
from ..types.uploads import (
    FileResult,
    FolderCheck,
    UploadEndpoints,
    UploadEvent,
    UploadItem,
    UploadPlanned,
    UploadReport,
    UploadTarget,
)
from ._common import check_concurrency, unwrap_list

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["Dataset", "Datasets"]

_BASE = "/prod/v1/trainers/datasets"
#: Clock difference tolerated between this machine and the server when matching a new dataset.
_CLOCK_SKEW = 120.0
#: Seconds an empty DRAFT is awaited before ``wait_ready`` calls it "nothing is uploading".
DRAFT_GRACE = 10.0


def _path(dataset_id: str, suffix: str = "") -> str:
    if not dataset_id or not isinstance(dataset_id, str):
        raise errors.ValidationError("dataset id must be a non-empty string")
    return f"{_BASE}/{quote(dataset_id, safe='')}{suffix}"


class Dataset:
    """An awaitable handle on one dataset: ``await ds`` waits until READY."""

    def __init__(self, client: RunComfy, dataset_id: str, name: str | None = None) -> None:
        self._client = client
        self.id = dataset_id
        self.name = name

    def __repr__(self) -> str:
        return f"Dataset(id={self.id!r}, name={self.name!r})"

    @awaitable("ds.status()")
    async def status(self, *, priority: Priority = Priority.USER) -> DatasetInfo:
        """Ask the server for the dataset's current state (never a cached one)."""
        payload = await self._client.request(
            RequestSpec(api=API.TRAINER, method="GET", path=_path(self.id, "/status")),
            priority=priority,
        )
        info = structure(payload, DatasetInfo, what="dataset status")
        if info.name:
            self.name = info.name
        return info

    @awaitable("ds.wait_ready()")
    async def wait_ready(
        self,
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        draft_grace: float = DRAFT_GRACE,
    ) -> DatasetInfo:
        """Poll until READY and return that snapshot.

        Args:
            timeout: client-side deadline in seconds (None: as long as it takes).
            poll: the polling schedule.
            draft_grace: seconds an empty DRAFT is tolerated before it counts as "nothing is
                uploading" (files still in flight elsewhere keep a dataset DRAFT for a while).

        Raises:
            DatasetFailed: the dataset went FAILED (``error`` holds the server's reason).
            ValidationError: the dataset stayed an empty DRAFT for ``draft_grace`` seconds:
                nothing is uploading, it would never become READY.
            WaitTimeoutError: ``timeout`` passed first.
        """
        draft_since: list[float] = []

        def settled(info: DatasetInfo) -> bool:
            if info.status is DatasetStatus.DRAFT and not info.files:
                draft_since[:] = draft_since or [time.monotonic()]
                return time.monotonic() - draft_since[0] >= draft_grace
            draft_since.clear()
            return info.status in (DatasetStatus.READY, DatasetStatus.FAILED)

        info = await poll_until(
            lambda: self.status(priority=Priority.BACKGROUND),
            settled,
            policy=poll or PollPolicy(initial=0.5, max_interval=10.0),
            timeout=timeout,
            key=lambda i: (i.status, len(i.files)),
            what=f"dataset {self.id} to become READY",
        )
        if info.status is DatasetStatus.FAILED:
            raise errors.DatasetFailed(
                f"dataset {self.id} ({info.name}) FAILED: {info.error}; fix the files and "
                "upload again, or create a new dataset",
                error=info.error,
                snapshot=info,
            )
        if info.status is DatasetStatus.DRAFT:
            raise errors.ValidationError(
                f"dataset {self.id} ({info.name}) is still an empty DRAFT after "
                f"{draft_grace:g}s: nothing has been uploaded, so it will never become READY",
                fix="upload files first: await ds.upload_folder(path)",
            )
        return info

    def __await__(self) -> Generator[Any, None, DatasetInfo]:
        return self.wait_ready().__await__()

    @awaitable("ds.delete()")
    async def delete(self) -> None:
        """Delete this dataset."""
        await self._client.datasets.delete(self.id)

    # -- uploads -------------------------------------------------------------------------------

    @awaitable("ds.upload(...)")
    async def upload(
        self,
        *items: UploadItem,
        concurrency: int = 8,
        progress: ProgressCallback[UploadEvent] | None = None,
        direct_limit: int = _plan.DIRECT_UPLOAD_LIMIT,
        batch_size: int = _plan.DEFAULT_BATCH_SIZE,
        captions: bool = False,
        resume: bool = False,
        verify: bool = False,
        check: bool = True,
        timeout: float | None = None,
    ) -> UploadReport:
        """Upload files, in-memory contents and remote URLs, each by the route its size calls for.

        Each item is a local file's path, a :class:`~runcomfy_async.BytesSource` or
        :class:`~runcomfy_async.TextSource` made by code (e.g. captions from an auto-captioning
        pipeline), a :class:`~runcomfy_async.URLSource`, or a mapping ``{name: str | bytes}``
        (a str is text, stored UTF-8). Files up to ``direct_limit`` bytes go by direct multipart
        upload (one API call each); larger ones by signed URL, their URLs asked for together.
        Files stream from disk; a URL streams from its remote into the upload (its size asked
        first with HEAD; a remote that announces none is copied to a temporary file), always by
        signed URL, never held whole in memory, and fetched again for a retry. Every name is
        checked before anything is sent.

        Args:
            items: what to upload; a file is stored under its base name, a source under its
                name (the same name overwrites).
            concurrency: files in flight at once.
            progress: called with each :data:`~runcomfy_async.types.uploads.UploadEvent`
                (plain or async function).
            direct_limit: the largest file sent direct, in bytes (the service's limit is
                150,000,000).
            batch_size: files per signed-URL request (1..1000).
            captions: require caption pairs across all the items together, as
                :meth:`upload_folder` does for a training set (off: you may add a caption to
                media already uploaded).
            resume: first ask the dataset which files it holds (one API call) and skip those
                with the same name and size.
            verify: afterwards wait for READY and check every file that was not reported
                failed is listed with its size.
            check: raise :class:`~runcomfy_async.errors.UploadError` when any file could not be
                uploaded (like ``subprocess.run(check=True)``); False returns the report with
                those files in ``failed`` instead. Governs per-file failures only: what
                ``verify`` finds wrong raises either way.
            timeout: seconds to wait for READY when verifying (None: no limit).

        Returns:
            An :class:`UploadReport` (with ``check=False`` failed files are in ``failed`` with
            their reasons; a URL whose remote failed has reason ``SOURCE_FAILED``).

        Raises:
            DatasetValidationError: a file is missing, empty, unreadable, of an unsupported type,
                a name is not a plain file name, two names collide, a URL is not http(s), or
                (``captions``) a caption pair is incomplete (every problem is listed; nothing
                was sent).
            UploadError: ``check`` and a file could not be uploaded, or ``verify`` and a file
                is not listed with its size (``.report`` has details).
            DatasetFailed: ``verify`` and the dataset went FAILED.
            WaitTimeoutError: ``verify`` and READY did not come within ``timeout``.
        """
        if not items:
            raise errors.ValidationError("pass at least one file to upload: ds.upload('a.jpg')")
        if isinstance(direct_limit, bool) or not isinstance(direct_limit, int) or direct_limit < 0:
            raise errors.ValidationError(
                f"direct_limit must be a byte count >= 0, got {direct_limit!r}"
            )
        check_concurrency(concurrency, "files")
        _plan.check_batch_size(batch_size)
        scanned, problems = await asyncio.to_thread(scan_items, items)
        return await self._upload(
            scanned,
            problems,
            captions=captions,
            resume=resume,
            direct_limit=direct_limit,
            concurrency=concurrency,
            progress=progress,
            batch_size=batch_size,
            verify=verify,
            check=check,
            timeout=timeout,
        )

    @awaitable("ds.upload_folder(...)")
    async def upload_folder(
        self,
        path: str | os.PathLike[str],
        *,
        concurrency: int = 8,
        progress: ProgressCallback[UploadEvent] | None = None,
        resume: bool = True,
        verify: bool = True,
        check: bool = True,
        batch_size: int = _plan.DEFAULT_BATCH_SIZE,
        timeout: float | None = None,
    ) -> UploadReport:
        """Upload a folder of images/videos and their ``.txt`` captions as a training set.

        The whole set is validated first (caption pairs both ways, supported types, no empty
        files, no names that collide when case is ignored). Signed URLs are asked for
        ``batch_size`` files per API call, so 1,000 files cost two calls, and the files are sent
        ``concurrency`` at a time straight to storage, each retried on its own (a 403 fetches a
        fresh URL). Cancelling the task stops every transfer; the dataset keeps the files
        completed so far, and running this again with ``resume=True`` sends only the rest.

        Args:
            path: the folder (flat; hidden files are ignored).
            concurrency: files in flight at once.
            progress: called with each :data:`~runcomfy_async.types.uploads.UploadEvent`
                (plain or async function).
            resume: first ask the dataset which files it holds (one API call) and skip those
                with the same name and size. Files are compared by size, not content.
            verify: afterwards wait for READY and check every local file that was not reported
                failed is listed with its size.
            check: raise :class:`~runcomfy_async.errors.UploadError` when any file could not be
                uploaded (like ``subprocess.run(check=True)``), also with ``verify=False``;
                False returns the report with those files in ``failed`` instead. Governs
                per-file failures only: what ``verify`` finds wrong raises either way.
            batch_size: files per signed-URL request (1..1000).
            timeout: seconds to wait for READY when verifying (None: no limit).

        Returns:
            An :class:`UploadReport` (with ``check=False`` failed files are in ``failed`` with
            their reasons).

        Raises:
            DatasetValidationError: the folder breaks the dataset rules (every problem is
                listed; nothing was sent).
            UploadError: ``check`` and a file could not be uploaded, or ``verify`` and a file
                is not listed with its size (``.report`` has details).
            DatasetFailed: ``verify`` and the dataset went FAILED.
            WaitTimeoutError: ``verify`` and READY did not come within ``timeout``.
        """
        check_concurrency(concurrency, "files")
        _plan.check_batch_size(batch_size)
        try:
            scanned, _ = await asyncio.to_thread(_checked_folder, Path(path))
        except errors.DatasetValidationError as exc:
            exc.fix = (
                "fix the folder and run again: rc.datasets.create(name, exist_ok=True) reuses "
                "this dataset, and rc.datasets.check_folder(path) checks a folder before any "
                "dataset is created"
            )
            raise
        return await self._upload(
            scanned,
            [],
            captions=True,
            resume=resume,
            direct_limit=None,
            concurrency=concurrency,
            progress=progress,
            batch_size=batch_size,
            verify=verify,
            check=check,
            timeout=timeout,
        )

    async def _upload(
        self,
        scanned: Sequence[_plan.ScannedFile],
        problems: list[str],
        *,
        captions: bool,
        resume: bool,
        direct_limit: int | None,
        concurrency: int,
        progress: ProgressCallback[UploadEvent] | None,
        batch_size: int,
        verify: bool,
        check: bool,
        timeout: float | None,
    ) -> UploadReport:
        """Validate, plan, send, raise for failed files (``check``) and (optionally) verify:
        the shared body of both uploads."""
        problems = problems + _plan.set_problems(scanned, captions=captions)
        if problems:
            raise errors.DatasetValidationError(problems)
        client = self._client
        pipeline = client.pipeline  # raises now if the client is closed
        started = time.monotonic()
        with contextlib.ExitStack() as spool, counting_calls() as calls:
            failed_early: list[FileResult] = []
            if any(s.url is not None for s in scanned):
                folder = spool.enter_context(tempfile.TemporaryDirectory(prefix="runcomfy-"))
                scanned, failed_early = await size_urls(
                    scanned,
                    pipeline=pipeline,
                    spool=Path(folder),
                    timeout=client.timeouts.for_transfer(),
                    concurrency=concurrency,
                )
            sources = _plan.to_sources(scanned)
            existing = (await self.status()).sizes if resume else None
            plan = _plan.plan_uploads(sources, existing=existing, direct_limit=direct_limit)
            to_send = plan.direct + plan.signed
            results, bytes_sent = await run_uploads(
                direct=plan.direct,
                signed=plan.signed,
                pipeline=pipeline,
                fetch_targets=self._upload_targets,
                send_direct=self._send_direct,
                timeout=client.timeouts.for_transfer(),
                progress=progress,
                concurrency=concurrency,
                batch_size=batch_size,
                planned=UploadPlanned(
                    files=len(to_send),
                    total_bytes=sum(s.size for s in to_send),
                    skipped_files=len(plan.skipped),
                    skipped_bytes=sum(s.size for s in plan.skipped),
                ),
                failed_early=failed_early,
            )

            def report() -> UploadReport:
                return UploadReport(
                    dataset_id=self.id,
                    uploaded=tuple(r for r in results if r.reason is None),
                    skipped=tuple(
                        FileResult(filename=s.filename, path=s.local_path, size=s.size)
                        for s in plan.skipped
                    ),
                    failed=tuple(r for r in results if r.reason is not None),
                    bytes_sent=bytes_sent,
                    api_calls=calls.calls,
                    elapsed=time.monotonic() - started,
                )

            failed = report().failed
            if check and failed:
                lines = [f"{r.filename} ({r.reason}): {r.message}" for r in failed]
                raise errors.UploadError(
                    f"{len(failed)} file(s) could not be uploaded to dataset {self.id}:\n  - "
                    + _bullets(lines)
                    + "\nrun the upload again to retry only these (resume skips the others); "
                    "pass check=False to get the report instead",
                    report=report(),
                )
            if verify:
                # Files already reported failed (check=False) are not expected in the listing.
                lost = {r.filename for r in failed}
                kept = [s for s in sources if s.filename not in lost]
                if kept:
                    await self._verify(kept, report, timeout=timeout)
            return report()

    async def _verify(
        self,
        sources: Sequence[_plan.UploadSource],
        report: Callable[[], UploadReport],
        *,
        timeout: float | None,
    ) -> None:
        """Raise unless the dataset is READY with each of ``sources`` listed with its size."""
        info = await self.wait_ready(timeout=timeout)
        listed = info.sizes
        missing = [
            f"{s.filename} (local {s.size} bytes, listed {listed.get(s.filename)})"
            for s in sources
            if listed.get(s.filename) != s.size
        ]
        if missing:
            raise errors.UploadError(
                f"dataset {self.id} is READY but {len(missing)} file(s) are not listed with "
                "their local size:\n  - "
                + _bullets(missing)
                + "\nrun the upload again to send them",
                report=report(),
            )

    async def _upload_targets(self, sizes: dict[str, int]) -> Mapping[str, UploadTarget]:
        """Signed PUT URLs for ``{filename: exact size}`` (docs/wire.md)."""
        # A POST, yet retried like a GET: asking again only mints new short-lived URLs and
        # changes nothing in the dataset (docs/wire.md: ask again when one expired).
        payload = await self._client.request(
            RequestSpec(
                api=API.TRAINER,
                method="POST",
                path=_path(self.id, "/get-upload-endpoint"),
                json={"filenameToByteSize": sizes},
                retry=Retry.SAFE,
            )
        )
        return structure(payload, UploadEndpoints, what="signed upload URLs").uploads

    async def _send_direct(self, body: Callable[[], FormPayload]) -> Any:
        """One direct multipart upload (docs/wire.md); ``body`` builds a fresh body per attempt."""
        # Retried like a GET: the same filename overwrites the earlier upload (docs/wire.md), so
        # a repeat after a lost answer leaves one copy of the file.
        return await self._client.request(
            RequestSpec(
                api=API.TRAINER, method="POST", path=_path(self.id, "/upload"), retry=Retry.SAFE
            ),
            data=body,
            timeout=self._client.timeouts.for_transfer(),
        )


def _checked_folder(folder: Path) -> tuple[list[_plan.ScannedFile], FolderCheck]:
    """Scan a dataset folder and apply every upload rule; blocking (run it in a thread).

    Raises:
        DatasetValidationError: every problem found.
    """
    scanned, problems = _plan.scan_folder(folder)
    problems += _plan.set_problems(scanned, captions=True)
    if problems:
        raise errors.DatasetValidationError(problems)
    check = FolderCheck(
        path=folder,
        files=tuple(s.filename for s in scanned),
        total_bytes=sum(s.size or 0 for s in scanned),
    )
    return scanned, check


def _bullets(lines: Sequence[str], limit: int = 20) -> str:
    """At most ``limit`` lines as a bullet list, then how many more."""
    shown = "\n  - ".join(lines[:limit])
    return shown + (f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else "")


class Datasets:
    """``rc.datasets``: create, look up, list and delete datasets."""

    def __init__(self, client: RunComfy) -> None:
        self._client = client

    @awaitable("rc.datasets.create(...)")
    async def create(self, name: str | None = None, *, exist_ok: bool = False) -> Dataset:
        """Create an empty dataset (status DRAFT); ``name`` must be unique in the account.

        With a name, an answer lost to a 5xx, a reset or a cut body is resolved by looking the
        name up: an empty DRAFT of that name made since this call began is the one it created.

        Args:
            name: the dataset's name (a training config mounts it by that name); None lets
                the service pick one.
            exist_ok: when a dataset of that name exists, return it instead of raising
                (like ``os.makedirs(exist_ok=True)``), so a script can be run again as it is.

        Raises:
            ConflictError: the name is taken (and ``exist_ok`` is False).
            UnsentTransportError: the API could not be reached (nothing was sent).
            OutcomeUnknownError: without a name, the answer was lost after the request left:
                a dataset may have been created (see ``rc.datasets.list()``).
        """
        if name is not None and (not name.strip() or name != name.strip()):
            raise errors.ValidationError(
                f"dataset name {name!r} is empty or has surrounding whitespace; pass a plain "
                "name such as 'my-dog-dataset'"
            )
        try:
            return await self._create(name)
        except errors.ConflictError as exc:
            if name is None:
                raise
            if exist_ok:
                existing = await self._named(name)
                if existing is not None:
                    return existing
            exc.fix = (
                f"rc.datasets.create({name!r}, exist_ok=True) returns the existing dataset, "
                f"rc.datasets.find({name!r}) looks it up; or pick another name"
            )
            raise

    async def _create(self, name: str | None) -> Dataset:
        """One create, with a lost answer resolved by name (see :meth:`create`)."""
        body = {"name": name} if name else {}
        spec = RequestSpec(
            api=API.TRAINER, method="POST", path=_BASE, json=body, retry=Retry.UNSENT
        )
        # Not retried blindly: a lost answer could leave a second dataset. The pipeline repeats it
        # only when it never ran (a 429, a connection that never opened); that failure is final.
        # With a name, a 5xx or a lost answer is resolved by a look-up first: names are unique
        # in the account (docs/wire.md), so the dataset either exists under that name (it ran) or
        # a second try is safe.
        began = time.time() - _CLOCK_SKEW
        try:
            payload = await self._client.request(spec)
        except errors.UnsentTransportError:
            raise  # provably never left: nothing to look up
        except (errors.ServerError, errors.OutcomeUnknownError):
            if name is None:
                raise
            existing = await self._made_since(name, began)
            if existing is not None:
                return existing
            try:
                payload = await self._client.request(spec)
            except errors.ConflictError:
                # The first try was still running when we looked: it made the dataset.
                existing = await self._made_since(name, began)
                if existing is None:
                    raise
                return existing
        info = structure(payload, DatasetInfo, what="created dataset")
        return Dataset(self._client, info.id, info.name)

    async def _made_since(self, name: str, began: float) -> Dataset | None:
        """The empty dataset called ``name`` created since ``began``, if there is one.

        An older dataset, or one with files, already had the name: that is a conflict, never
        "the one we just made".
        """
        for info in await self.list():
            if info.name != name:
                continue
            fresh = info.created_at is None or info.created_at.timestamp() >= began
            if fresh and not info.files and info.status in (
                DatasetStatus.DRAFT, DatasetStatus.UPLOADING
            ):
                return Dataset(self._client, info.id, info.name)
            raise errors.ConflictError(
                f"a dataset named {name!r} already exists ({info.id})",
                status=409,
                method="POST",
                url=self._client.base_url(API.TRAINER) + _BASE,
            )
        return None

    async def _named(self, name: str) -> Dataset | None:
        """The dataset called ``name`` (names are unique in the account), or None."""
        found = next((i for i in await self.list() if i.name == name), None)
        return None if found is None else Dataset(self._client, found.id, found.name)

    @awaitable("rc.datasets.check_folder(...)")
    async def check_folder(self, path: str | os.PathLike[str]) -> FolderCheck:
        """Check a folder against every rule :meth:`Dataset.upload_folder` applies, sending
        nothing (no open client needed): run it before ``create`` so that a mistake leaves no
        empty dataset behind.

        Raises:
            DatasetValidationError: the same error ``upload_folder`` would raise, listing every
                problem.
        """
        return (await asyncio.to_thread(_checked_folder, Path(path)))[1]

    def get(self, dataset_id: str) -> Dataset:
        """A handle on an existing dataset by id (no request is sent)."""
        _path(dataset_id)
        return Dataset(self._client, dataset_id)

    @awaitable("rc.datasets.find(...)")
    async def find(self, name_or_id: str) -> Dataset | None:
        """A handle on the dataset whose id or name is ``name_or_id``, or None (one list call).

        An id match wins over a name match, so a dataset named like another one's id still
        resolves to the latter. Use it where a user may type either, as the CLI does.

        Args:
            name_or_id: a dataset id, or a dataset name (names are unique in the account).

        Raises:
            ValidationError: ``name_or_id`` is empty or not a string (nothing is sent).
        """
        if not isinstance(name_or_id, str) or not name_or_id:
            raise errors.ValidationError(
                f"name_or_id must be a dataset id or name, got {name_or_id!r}"
            )
        infos = await self.list()
        found = next((i for i in infos if i.id == name_or_id), None) or next(
            (i for i in infos if i.name == name_or_id), None
        )
        return None if found is None else Dataset(self._client, found.id, found.name)

    @awaitable("rc.datasets.list()")
    async def list(self) -> list[DatasetInfo]:
        """Every dataset of the account."""
        payload = await self._client.request(RequestSpec(api=API.TRAINER, method="GET", path=_BASE))
        return [
            structure(item, DatasetInfo, what="dataset list")
            for item in unwrap_list(payload, "datasets")
        ]

    @awaitable("rc.datasets.delete(...)")
    async def delete(self, dataset_id: str) -> None:
        """Delete a dataset by id.

        Repeated after a lost answer or a 5xx; a 404 on such a repeat means the first try
        deleted it, which is success.

        Raises:
            NotFoundError: no such dataset (on the first try).
        """
        await self._client.request(
            RequestSpec(
                api=API.TRAINER, method="DELETE", path=_path(dataset_id), retry=Retry.CLEANUP
            )
        )
