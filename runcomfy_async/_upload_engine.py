"""The upload engine: signed URLs in batches, files sent concurrently, each retried on its own.

It asks for signed URLs ``batch_size`` files at a time, just ahead of the workers; sends files
``concurrency`` at a time through the client's one retry loop (storage PUTs take no rate-limit
token and carry no token); fetches fresh URLs for 403s (files refreshing together share one API
call); reports typed progress events through a relay; and on cancellation stops every transfer,
closing files and connections (storage keeps a file only when its body is complete).

Endpoint paths live in ``resources/datasets.py``; this module receives the two API calls it
needs (signed URLs, direct upload) as callables.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import aiohttp

from . import errors
from ._pipeline import Pipeline, storage_answer
from ._progress import ProgressRelay, reraise_first, with_progress
from ._protocol import MAX_URL_REFRESHES, Retry
from ._transport import Credentials, Exchange
from ._upload_body import (
    FileChanged,
    FileState,
    FormPayload,
    SourcePayload,
    UploadProgress,
    checked_by_body,
    multipart,
)
from ._upload_plan import UploadSource
from ._upload_sources import SourceFailed, SourceUnavailable, payload_for
from .types.progress import ProgressCallback
from .types.uploads import (
    FailureReason,
    FileDone,
    FileFailed,
    FileResult,
    FileRetrying,
    UploadEvent,
    UploadMethod,
    UploadPlanned,
    UploadTarget,
)

__all__ = ["FetchTargets", "SendDirect", "run_uploads"]

#: How long a 403'd file waits for others to join its refresh request (one API call for all).
_REFRESH_WINDOW: Final = 0.05

#: ``{filename: size}`` -> the parsed ``get-upload-endpoint`` answer's targets.
FetchTargets = Callable[[dict[str, int]], Awaitable[Mapping[str, UploadTarget]]]
#: Sends one direct upload; the argument builds a fresh body for each attempt.
SendDirect = Callable[[Callable[[], FormPayload]], Awaitable[Any]]


class _NoTarget(Exception):
    """No signed URL could be had for a file (the API refused or left it out)."""


def _reason_for_api_error(exc: errors.RunComfyError) -> FailureReason:
    if isinstance(exc, SourceUnavailable):
        return FailureReason.SOURCE_FAILED
    if isinstance(exc, errors.TransportError):
        return FailureReason.NETWORK
    if isinstance(exc, errors.ServerError | errors.RateLimitError):
        return FailureReason.SERVER_ERROR
    return FailureReason.REJECTED


class _Engine:
    """One upload run: the queue, the workers, the URL batches and the per-file retries."""

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        fetch_targets: FetchTargets,
        send_direct: SendDirect,
        timeout: aiohttp.ClientTimeout,
        progress: UploadProgress,
        batch_size: int,
    ) -> None:
        self._pipeline = pipeline
        self._fetch = fetch_targets
        self._send_direct = send_direct
        self._timeout = timeout
        self._progress = progress
        self._emit = progress.relay.emit
        self._batch_size = batch_size
        self._pending_refresh: dict[str, tuple[UploadSource, asyncio.Future[UploadTarget]]] = {}
        self._refresher: asyncio.Task[None] | None = None
        #: the run's task group: refreshes run inside it, so cancellation reaches them too
        self.group: asyncio.TaskGroup | None = None
        self.results: list[FileResult] = []

    # -- signed URLs -----------------------------------------------------------------------

    async def _targets(self, sources: Sequence[UploadSource]) -> dict[str, UploadTarget]:
        """Signed URLs for ``sources`` in one call, halving the batch if the API says 413."""
        try:
            got = await self._fetch({s.filename: s.size for s in sources})
        except errors.PayloadTooLargeError:
            if len(sources) == 1:
                raise
            half = len(sources) // 2
            return {**await self._targets(sources[:half]), **await self._targets(sources[half:])}
        return dict(got)

    async def refresh(self, source: UploadSource) -> UploadTarget:
        """A fresh signed URL for one file; files refreshing together share one API call."""
        future: asyncio.Future[UploadTarget] = asyncio.get_running_loop().create_future()
        self._pending_refresh[source.filename] = (source, future)
        if self._refresher is None or self._refresher.done():
            assert self.group is not None
            self._refresher = self.group.create_task(self._refresh_loop())
        return await future

    async def _refresh_loop(self) -> None:
        """Gather 403'd files for a moment, then ask for all their URLs at once."""
        while self._pending_refresh:
            await asyncio.sleep(_REFRESH_WINDOW)
            names = list(self._pending_refresh)[: self._batch_size]
            batch = [self._pending_refresh.pop(n) for n in names]
            live = [(s, f) for s, f in batch if not f.done()]
            if not live:
                continue
            try:
                targets = await self._targets([s for s, _ in live])
            except errors.RunComfyError as exc:
                for _, future in live:
                    if not future.done():
                        future.set_exception(_NoTarget(f"no fresh upload URL: {exc}"))
                continue
            for source, future in live:
                if future.done():
                    continue
                if source.filename in targets:
                    future.set_result(targets[source.filename])
                else:
                    future.set_exception(_NoTarget("the API returned no upload URL for it"))

    # -- producers and workers -------------------------------------------------------------

    async def produce(
        self,
        queue: asyncio.Queue[tuple[FileState, UploadTarget | None] | None],
        direct: Sequence[UploadSource],
        signed: Sequence[UploadSource],
        workers: int,
    ) -> None:
        """Feed the queue: signed files batch by batch (URLs fetched just ahead), then direct."""
        fatal: str | None = None
        for start in range(0, len(signed), self._batch_size):
            batch = signed[start : start + self._batch_size]
            targets: dict[str, UploadTarget] = {}
            message = fatal
            if fatal is None:
                try:
                    targets = await self._targets(batch)
                except errors.RunComfyError as exc:
                    message = f"no upload URL: {exc}"
                    # A refused token or a vanished dataset will refuse every later batch too.
                    if isinstance(exc, errors.APIError) and exc.status in (401, 402, 403, 404):
                        fatal = message
            for source in batch:
                state = FileState(source=source, method=UploadMethod.SIGNED_URL)
                if source.filename in targets:
                    await queue.put((state, targets[source.filename]))
                else:
                    self._fail(
                        state,
                        FailureReason.NO_UPLOAD_URL,
                        message or "the API returned no upload URL for it; re-run the upload",
                    )
        for source in direct:
            await queue.put((FileState(source=source, method=UploadMethod.DIRECT), None))
        for _ in range(workers):
            await queue.put(None)

    async def work(
        self, queue: asyncio.Queue[tuple[FileState, UploadTarget | None] | None]
    ) -> None:
        """Take files off the queue until the end marker."""
        while (item := await queue.get()) is not None:
            state, target = item
            if target is None:
                await self._upload_direct(state)
            else:
                await self._upload_signed(state, target)

    # -- one file --------------------------------------------------------------------------

    def _done(self, state: FileState) -> None:
        self._record(state, None, None)
        source = state.source
        self._emit(
            FileDone(
                filename=source.filename,
                size=source.size,
                method=state.method,
                attempts=state.attempts,
            )
        )

    def _fail(self, state: FileState, reason: FailureReason, message: str) -> None:
        self._record(state, reason, message)
        source = state.source
        self._emit(
            FileFailed(filename=source.filename, size=source.size, reason=reason, message=message)
        )

    def _record(
        self, state: FileState, reason: FailureReason | None, message: str | None
    ) -> None:
        """Add the file's result to the run's results."""
        source = state.source
        self.results.append(
            FileResult(
                filename=source.filename,
                path=source.local_path,
                size=source.size,
                method=state.method,
                attempts=state.attempts,
                reason=reason,
                message=message,
            )
        )

    async def _upload_direct(self, state: FileState) -> None:
        """One multipart POST through the API pipeline (its limiter, retries, error mapping)."""
        changed = await state.source.changed()
        if changed is not None:
            self._fail(state, FailureReason.FILE_CHANGED, changed)
            return
        try:
            await self._send_direct(lambda: multipart(state, self._progress))
        except FileChanged as exc:
            self._fail(state, FailureReason.FILE_CHANGED, str(exc))
        except errors.RunComfyError as exc:
            if state.changed is not None:
                self._fail(state, FailureReason.FILE_CHANGED, state.changed)
            else:
                self._fail(state, _reason_for_api_error(exc), str(exc))
        else:
            self._done(state)

    async def _upload_signed(self, state: FileState, target: UploadTarget) -> None:
        """PUT one file to its signed URL, retried on its own; a 403 means "get a fresh URL"."""
        source = state.source
        refreshes = 0
        checked = checked_by_body(source)
        while True:
            changed = None if checked else await source.changed()
            if changed is not None:
                self._fail(state, FailureReason.FILE_CHANGED, changed)
                return
            exchange = self._put(state, target)
            try:
                await self._pipeline.call(
                    exchange,
                    functools.partial(storage_answer, method=exchange.method, url=exchange.url),
                    kind=Retry.SAFE,
                    priority=None,
                    on_retry=functools.partial(self._retrying, state),
                )
            except FileChanged as exc:
                self._fail(state, FailureReason.FILE_CHANGED, str(exc))
                return
            except SourceFailed as exc:
                self._fail(state, FailureReason.SOURCE_FAILED, str(exc))
                return
            except errors.PermissionDeniedError as exc:
                # Expired or rejected signature: the URL is spent, the file is not (docs/wire.md).
                refreshes += 1
                if refreshes > MAX_URL_REFRESHES:
                    self._fail(
                        state,
                        FailureReason.URL_EXPIRED,
                        f"storage refused {refreshes} signed URLs in a row ({exc})",
                    )
                    return
                # The send failed and goes again with a fresh URL: say so, as for any retry.
                self._retrying(state, state.attempts, _REFRESH_WINDOW, exc)
                try:
                    target = await self.refresh(source)
                except _NoTarget as no_target:
                    self._fail(state, FailureReason.NO_UPLOAD_URL, str(no_target))
                    return
                continue
            except errors.RunComfyError as exc:
                changed = state.changed or await source.changed()
                if changed is not None:
                    self._fail(state, FailureReason.FILE_CHANGED, changed)
                elif state.source_failed is not None:
                    self._fail(state, FailureReason.SOURCE_FAILED, state.source_failed)
                else:
                    reason = _reason_for_api_error(exc)
                    self._fail(state, reason, f"{exc} (after {state.attempts} attempts)")
                return
            self._done(state)
            return

    def _retrying(
        self, state: FileState, attempt: int, delay: float, failure: errors.RunComfyError
    ) -> None:
        """Report a file's retry as an event."""
        self._emit(
            FileRetrying(
                filename=state.source.filename, attempt=attempt, delay=delay, message=str(failure)
            )
        )

    def _put(self, state: FileState, target: UploadTarget) -> Exchange:
        """One signed send: the returned method, URL and headers exactly, plus Content-Length.

        It carries no Authorization header and takes no rate-limit token: the URL's signature
        is the credential (docs/wire.md).
        """
        source = state.source
        headers = {k: v for k, v in target.headers.items() if k.lower() != "content-length"}
        content_type = next(
            (v for k, v in headers.items() if k.lower() == "content-type"), source.content_type
        )
        headers["Content-Length"] = str(source.size)

        def body() -> SourcePayload:
            """A fresh streamed body for this attempt."""
            return payload_for(
                state,
                self._progress,
                content_type=content_type,
                transport=self._pipeline.transport,
                timeout=self._timeout,
            )

        return Exchange(
            method=(target.method or "PUT").upper(),
            url=target.upload_url,
            data=body,
            headers=headers,
            timeout=self._timeout,
            credentials=Credentials.NONE,
        )


async def run_uploads(
    *,
    direct: Sequence[UploadSource],
    signed: Sequence[UploadSource],
    pipeline: Pipeline,
    fetch_targets: FetchTargets,
    send_direct: SendDirect,
    timeout: aiohttp.ClientTimeout,
    progress: ProgressCallback[UploadEvent] | None,
    concurrency: int,
    batch_size: int,
    planned: UploadPlanned,
    failed_early: Sequence[FileResult] = (),
) -> tuple[list[FileResult], int]:
    """Send every file, concurrently; return each file's result and the bytes sent.

    ``failed_early`` are files that failed before sending (a URL source whose remote refused);
    they are reported as failed, with their events, after ``planned``.

    One failed file does not stop the others. Cancellation stops every transfer at once: open
    files are closed, connections dropped, and storage discards incomplete bodies, so the
    dataset holds only whole files and a re-run (resume) sends the rest.

    Raises:
        Exception: whatever the progress callback raised (the run stops, as it is).
    """

    async def run(relay: ProgressRelay[UploadEvent]) -> tuple[list[FileResult], int]:
        """The run itself, its events going to ``relay``."""
        reporter = UploadProgress(relay)
        relay.emit(planned)
        for result in failed_early:
            relay.emit(
                FileFailed(
                    filename=result.filename,
                    size=result.size,
                    reason=result.reason or FailureReason.REJECTED,
                    message=result.message or "",
                )
            )
        engine = _Engine(
            pipeline=pipeline,
            fetch_targets=fetch_targets,
            send_direct=send_direct,
            timeout=timeout,
            progress=reporter,
            batch_size=batch_size,
        )
        workers = max(1, min(concurrency, len(direct) + len(signed)))
        queue: asyncio.Queue[tuple[FileState, UploadTarget | None] | None] = asyncio.Queue(
            maxsize=max(batch_size, workers)
        )
        try:
            async with asyncio.TaskGroup() as group:
                engine.group = group
                group.create_task(engine.produce(queue, direct, signed, workers))
                for _ in range(workers):
                    group.create_task(engine.work(queue))
        except ExceptionGroup as group_error:
            reraise_first(group_error)
        return [*failed_early, *engine.results], reporter.bytes_sent

    return await with_progress(progress, run)
