"""Dataset uploads: re-openable sources, streamed bodies, signed-URL PUTs and the bulk planner.

Three layers, each usable on its own:

- **Planning** (pure functions, no I/O): which files are valid (types, sizes, name collisions,
  caption pairs), which the dataset already holds (resume), which go direct and which by signed
  URL. A bad set raises :class:`~runcomfy_async.errors.DatasetValidationError` listing every
  problem before any request is sent.
- **Bodies**: :class:`UploadSource` is a path plus its planned size; every attempt opens the file
  again and streams it in MiB chunks (read in a worker thread) through an aiohttp payload with
  an exact ``Content-Length``, so memory stays flat whatever the size (STYLE rule 7, LESSONS 5).
  A file whose size changes is caught before and during each send and fails clearly.
- **The engine** (:func:`run_uploads`): asks for signed URLs in batches, sends files concurrently,
  retries each file on its own (network errors, 5xx), fetches fresh URLs for 403s (batched too),
  reports typed progress events, and on cancellation stops every transfer, closing files and
  connections (nothing is half-stored: storage keeps a file only when its body is complete).

Endpoint paths live in ``resources/datasets.py``; this module receives the two API calls it
needs (signed URLs, direct upload) as callables.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

import aiofiles.os
import aiohttp
import attrs
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from . import errors
from ._media import CAPTION_TYPES, CONTENT_TYPES, stem, suffix
from ._protocol import is_retryable_status, redact_url
from ._retry import RetryPolicy
from ._transport import map_error
from .types.uploads import (
    BytesSent,
    FailureReason,
    FileDone,
    FileFailed,
    FileResult,
    FileRetrying,
    FileStarted,
    ProgressCallback,
    UploadEvent,
    UploadMethod,
    UploadPlanned,
    UploadTarget,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_BATCH_SIZE",
    "DIRECT_UPLOAD_LIMIT",
    "MAX_BATCH_SIZE",
    "Plan",
    "ScannedFile",
    "UploadSource",
    "check_batch_size",
    "content_type_for",
    "plan_uploads",
    "run_uploads",
    "scan_folder",
    "scan_paths",
    "set_problems",
    "to_sources",
]

#: Largest file the direct (multipart) endpoint takes, in bytes (API.md 1.2, decimal 150 MB).
DIRECT_UPLOAD_LIMIT: Final = 150_000_000
#: Files per ``get-upload-endpoint`` call by default: 1,000 files cost two API calls.
DEFAULT_BATCH_SIZE: Final = 500
#: The most files one ``get-upload-endpoint`` call may name (the emulator's cap, and our bound).
MAX_BATCH_SIZE: Final = 1000
#: Bytes read from disk and written to the socket per step.
CHUNK_SIZE: Final = 1 << 20
#: Fresh signed URLs fetched for one file after 403s before it fails.
MAX_URL_REFRESHES: Final = 3
#: How long a 403'd file waits for others to join its refresh request (one API call for all).
_REFRESH_WINDOW: Final = 0.05







def content_type_for(filename: str) -> str | None:
    """The Content-Type of a supported dataset file (image, video or ``.txt``), else None."""
    return CONTENT_TYPES.get(suffix(filename))


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size the signed-URL endpoint would not take.

    Raises:
        ValidationError: not an int between 1 and :data:`MAX_BATCH_SIZE`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise errors.ValidationError(f"batch_size must be an int, got {batch_size!r}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise errors.ValidationError(
            f"batch_size={batch_size} is out of range; pass 1..{MAX_BATCH_SIZE} files per "
            "signed-URL request"
        )


# -- sources and planning ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class UploadSource:
    """A local file to upload: re-opened from ``path`` for every attempt (STYLE rule 7).

    Attributes:
        path: the local file.
        filename: its name in the dataset (the base name of ``path``).
        size: bytes when planned; the upload is refused if this changes.
        content_type: sent with the file, from its extension.
    """

    path: Path
    filename: str
    size: int
    content_type: str

    async def changed(self) -> str | None:
        """Why the file no longer matches its plan (unreadable, other size), or None."""
        try:
            size = (await aiofiles.os.stat(self.path)).st_size
        except OSError as exc:
            reason = exc.strerror or exc
            return f"{self.path} can no longer be read ({reason}); restore it and re-run"
        if size != self.size:
            return _changed_message(self, size)
        return None


def _changed_message(source: UploadSource, now: int | str) -> str:
    return (
        f"{source.path} changed while uploading (planned {source.size} bytes, now {now}); "
        "it was not uploaded: re-run the upload to send the current version"
    )


@attrs.frozen(kw_only=True)
class ScannedFile:
    """A file found on disk, before validation (size None if it could not be read)."""

    path: Path
    filename: str
    size: int | None
    error: str | None = None


def _stat_entry(path: Path) -> ScannedFile:
    """Stat one file (following links); an unreadable one is kept with its error."""
    try:
        st = path.stat()
    except OSError as exc:
        return ScannedFile(path=path, filename=path.name, size=None, error=exc.strerror or str(exc))
    if not path.is_file():
        return ScannedFile(path=path, filename=path.name, size=None, error="not a regular file")
    return ScannedFile(path=path, filename=path.name, size=st.st_size)


def scan_folder(folder: Path) -> tuple[list[ScannedFile], list[str]]:
    """The files of a dataset folder, sorted, and the problems found while listing it.

    Blocking (it lists and stats): call it through ``asyncio.to_thread``. Hidden files
    (``.DS_Store``, ``._x`` and the like) are ignored; subfolders are reported, since a dataset
    is flat.
    """
    if not folder.is_dir():
        return [], [f"{folder} is not a folder; pass the folder that holds the images and captions"]
    found: list[ScannedFile] = []
    problems: list[str] = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                problems.append(
                    f"{entry.name}/ is a subfolder; datasets are flat: move its files up or "
                    "remove it"
                )
                continue
            found.append(_stat_entry(Path(entry.path)))
    if not found and not problems:
        problems.append(
            f"{folder} holds no files to upload; put the images/videos and their .txt captions "
            "in it (hidden files are ignored)"
        )
    return found, problems


def scan_paths(paths: Iterable[str | os.PathLike[str]]) -> list[ScannedFile]:
    """Stat each given file; blocking, so call it through ``asyncio.to_thread``."""
    return [_stat_entry(Path(p)) for p in paths]


def set_problems(files: Sequence[ScannedFile], *, captions: bool) -> list[str]:
    """Every reason the set cannot be uploaded as a dataset (empty list: it can).

    Args:
        files: the scanned files.
        captions: also require caption pairs both ways (every image/video has a same-stem
            ``.txt`` and every ``.txt`` has an image/video), as a training set needs.
    """
    problems: list[str] = []
    seen: dict[str, str] = {}
    for f in files:
        if f.error is not None or f.size is None:
            problems.append(f"{f.path}: cannot read it ({f.error}); fix permissions or remove it")
            continue
        if any(ord(c) < 32 or c == "\x7f" for c in f.filename):
            problems.append(f"{f.filename!r}: the name contains control characters; rename it")
        if content_type_for(f.filename) is None:
            supported = " ".join(sorted(e.lstrip(".") for e in CONTENT_TYPES))
            problems.append(
                f"{f.filename}: unsupported file type; supported: {supported} "
                "(remove or convert it)"
            )
        if f.size == 0:
            problems.append(f"{f.filename}: the file is empty; remove it or write its content")
        folded = f.filename.casefold()
        if folded in seen:
            problems.append(
                f"{f.filename} and {seen[folded]}: names differ only in case and would collide "
                "in the dataset; rename one"
            )
        else:
            seen[folded] = f.filename
    if captions:
        problems.extend(_caption_problems([f.filename for f in files]))
    return problems


def _caption_problems(names: Sequence[str]) -> list[str]:
    """The caption rule both ways (API.md 1.2): media need a ``.txt``, a ``.txt`` needs media."""
    typed = [n for n in names if content_type_for(n) is not None]
    captions = {stem(n) for n in typed if suffix(n) in CAPTION_TYPES}
    media = {stem(n) for n in typed if suffix(n) not in CAPTION_TYPES}
    problems = [
        f"{n}: no caption {stem(n)}.txt; write one (each image/video needs a .txt caption with "
        "the same base name)"
        for n in typed
        if suffix(n) not in CAPTION_TYPES and stem(n) not in captions
    ]
    problems.extend(
        f"{n}: caption without an image or video named {stem(n)}.*; add the media or remove it"
        for n in typed
        if suffix(n) in CAPTION_TYPES and stem(n) not in media
    )
    return problems


def to_sources(files: Sequence[ScannedFile]) -> list[UploadSource]:
    """Validated scans as upload sources (call :func:`set_problems` first)."""
    return [
        UploadSource(
            path=f.path,
            filename=f.filename,
            size=f.size or 0,
            content_type=content_type_for(f.filename) or "application/octet-stream",
        )
        for f in files
    ]


@attrs.frozen(kw_only=True)
class Plan:
    """Which files go how: ``direct`` and ``signed`` to send, ``skipped`` already present."""

    direct: tuple[UploadSource, ...]
    signed: tuple[UploadSource, ...]
    skipped: tuple[UploadSource, ...]


def plan_uploads(
    sources: Sequence[UploadSource],
    *,
    existing: Mapping[str, int | None] | None,
    direct_limit: int | None,
) -> Plan:
    """Split sources by route; pure.

    Args:
        sources: the validated files.
        existing: ``{filename: size}`` the dataset already lists (resume), or None to send all.
            A listed file with the same size is skipped; another size is sent again (the same
            name overwrites, API.md 1.2).
        direct_limit: files up to this many bytes go direct, larger by signed URL; None sends
            every file by signed URL (bulk: many files per API call).
    """
    direct: list[UploadSource] = []
    signed: list[UploadSource] = []
    skipped: list[UploadSource] = []
    for source in sources:
        if existing is not None and existing.get(source.filename) == source.size:
            skipped.append(source)
        elif direct_limit is not None and source.size <= direct_limit:
            direct.append(source)
        else:
            signed.append(source)
    return Plan(direct=tuple(direct), signed=tuple(signed), skipped=tuple(skipped))


# -- bodies ------------------------------------------------------------------------------------


class _FileChanged(Exception):
    """The file differs from its plan; raised to stop every further attempt for it."""


class _Progress:
    """Delivers events to the user's callback (sync or async) and counts bytes on the wire.

    A callback that raises stops the run with its own exception; ``failure`` keeps it because
    aiohttp reports an error raised inside a request body as a connection error.
    """

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self.bytes_sent = 0
        self.failure: Exception | None = None

    async def emit(self, event: UploadEvent) -> None:
        if self._callback is None:
            return
        try:
            result = self._callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.failure = exc
            raise

    def reraise(self) -> None:
        """Raise the callback's exception, if it raised one inside a request body."""
        if self.failure is not None:
            raise self.failure


@attrs.define(kw_only=True)
class _FileState:
    """One file's attempts, and the change a send noticed (shared by all its attempts)."""

    source: UploadSource
    method: UploadMethod
    attempts: int = 0
    changed: str | None = None


class _FilePayload(Payload):
    """A file's bytes for one attempt: opened, streamed in MiB chunks, closed, all in write().

    The declared size is the planned one, so the request carries an exact Content-Length. A file
    that shrinks stops the send; one that grew is caught before its last chunk goes out, so
    storage never keeps a cut version.
    """

    _autoclose = True  # nothing stays open outside write()

    def __init__(
        self, state: _FileState, progress: _Progress, *, content_type: str, attempt: int
    ) -> None:
        super().__init__(state.source.path, content_type=content_type)
        self._size = state.source.size
        self._state = state
        self._progress = progress
        self._attempt = attempt

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file body cannot be decoded in memory")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        source = self._state.source
        progress = self._progress
        await progress.emit(
            FileStarted(
                filename=source.filename,
                size=source.size,
                method=self._state.method,
                attempt=self._attempt,
            )
        )
        total = source.size if content_length is None else min(content_length, source.size)
        sent = 0
        fh = await _open_for_reading(source.path)
        try:
            while sent < total:
                want = min(CHUNK_SIZE, total - sent)
                last = want == total - sent
                # On the last chunk read one byte more: a file that grew must not be stored cut.
                chunk = await asyncio.to_thread(fh.read, want + 1 if last else want)
                if len(chunk) > want:
                    self._changed(f"more than {source.size} bytes")
                if not chunk:
                    self._changed(f"{sent} bytes")
                await writer.write(chunk)
                sent += len(chunk)
                progress.bytes_sent += len(chunk)
                await progress.emit(
                    BytesSent(
                        filename=source.filename, size=source.size, sent=sent, delta=len(chunk)
                    )
                )
        finally:
            fh.close()  # closing a read-only file does not block; it must happen even if cancelled

    def _changed(self, now: str) -> None:
        self._state.changed = _changed_message(self._state.source, now)
        raise _FileChanged(self._state.changed)


async def _open_for_reading(path: Path) -> BinaryIO:
    """Open in a worker thread; if the caller is cancelled meanwhile, the file is still closed.

    (A plain ``await`` on a threaded open leaks the handle when a cancellation lands while the
    thread is opening it: aiohttp cancels a body writer as soon as the server answers early.)
    """
    opening: asyncio.Future[BinaryIO] = asyncio.ensure_future(asyncio.to_thread(_open_rb, path))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_if_opened)
        raise


def _open_rb(path: Path) -> BinaryIO:
    return path.open("rb")


def _close_if_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _multipart(state: _FileState, progress: _Progress) -> aiohttp.MultipartWriter:
    """A fresh ``multipart/form-data`` body with the single field ``file`` (API.md 1.2)."""
    if state.changed is not None:
        raise _FileChanged(state.changed)
    state.attempts += 1
    source = state.source
    payload = _FilePayload(
        state, progress, content_type=source.content_type, attempt=state.attempts
    )
    payload.set_content_disposition("form-data", name="file", filename=source.filename)
    writer = aiohttp.MultipartWriter("form-data")
    writer.append_payload(payload)
    return writer


# -- the engine --------------------------------------------------------------------------------

#: ``{filename: size}`` -> the parsed ``get-upload-endpoint`` answer's targets.
FetchTargets = Callable[[dict[str, int]], Awaitable[Mapping[str, UploadTarget]]]
#: Sends one direct upload; the argument builds a fresh body for each attempt.
SendDirect = Callable[[Callable[[], aiohttp.MultipartWriter]], Awaitable[Any]]


class _NoTarget(Exception):
    """No signed URL could be had for a file (the API refused or left it out)."""


def _reason_for_api_error(exc: errors.RunComfyError) -> FailureReason:
    if isinstance(exc, errors.TransportError):
        return FailureReason.NETWORK
    if isinstance(exc, errors.ServerError):
        return FailureReason.SERVER_ERROR
    return FailureReason.REJECTED


class _Engine:
    """One upload run: the queue, the workers, the URL batches and the per-file retries."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        fetch_targets: FetchTargets,
        send_direct: SendDirect,
        retry: RetryPolicy,
        timeout: aiohttp.ClientTimeout,
        progress: _Progress,
        batch_size: int,
    ) -> None:
        self._session = session
        self._fetch = fetch_targets
        self._send_direct = send_direct
        self._retry = retry
        self._timeout = timeout
        self._progress = progress
        self._batch_size = batch_size
        self._rng = random.Random()
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
        queue: asyncio.Queue[tuple[_FileState, UploadTarget | None] | None],
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
                state = _FileState(source=source, method=UploadMethod.SIGNED_URL)
                if source.filename in targets:
                    await queue.put((state, targets[source.filename]))
                else:
                    await self._fail(
                        state,
                        FailureReason.NO_UPLOAD_URL,
                        message or "the API returned no upload URL for it; re-run the upload",
                    )
        for source in direct:
            await queue.put((_FileState(source=source, method=UploadMethod.DIRECT), None))
        for _ in range(workers):
            await queue.put(None)

    async def work(
        self, queue: asyncio.Queue[tuple[_FileState, UploadTarget | None] | None]
    ) -> None:
        """Take files off the queue until the end marker."""
        while (item := await queue.get()) is not None:
            state, target = item
            if target is None:
                await self._upload_direct(state)
            else:
                await self._upload_signed(state, target)

    # -- one file --------------------------------------------------------------------------

    async def _done(self, state: _FileState) -> None:
        source = state.source
        self.results.append(
            FileResult(
                filename=source.filename,
                path=source.path,
                size=source.size,
                method=state.method,
                attempts=state.attempts,
            )
        )
        await self._progress.emit(
            FileDone(
                filename=source.filename,
                size=source.size,
                method=state.method,
                attempts=state.attempts,
            )
        )

    async def _fail(self, state: _FileState, reason: FailureReason, message: str) -> None:
        source = state.source
        self.results.append(
            FileResult(
                filename=source.filename,
                path=source.path,
                size=source.size,
                method=state.method,
                attempts=state.attempts,
                reason=reason,
                message=message,
            )
        )
        await self._progress.emit(
            FileFailed(filename=source.filename, size=source.size, reason=reason, message=message)
        )

    async def _upload_direct(self, state: _FileState) -> None:
        """One multipart POST through the API pipeline (its limiter, retries, error mapping)."""
        changed = await state.source.changed()
        if changed is not None:
            await self._fail(state, FailureReason.FILE_CHANGED, changed)
            return
        try:
            await self._send_direct(lambda: _multipart(state, self._progress))
        except _FileChanged as exc:
            await self._fail(state, FailureReason.FILE_CHANGED, str(exc))
        except errors.RunComfyError as exc:
            self._progress.reraise()
            if state.changed is not None:
                await self._fail(state, FailureReason.FILE_CHANGED, state.changed)
            else:
                await self._fail(state, _reason_for_api_error(exc), str(exc))
        else:
            await self._done(state)

    async def _upload_signed(self, state: _FileState, target: UploadTarget) -> None:
        """PUT one file to its signed URL, retrying on its own; 403 means "get a fresh URL"."""
        source = state.source
        refreshes = 0
        while True:
            changed = await source.changed()
            if changed is not None:
                await self._fail(state, FailureReason.FILE_CHANGED, changed)
                return
            state.attempts += 1
            try:
                status, message = await self._put(state, target)
            except errors.TransportError as exc:
                self._progress.reraise()
                if state.changed is not None:
                    await self._fail(state, FailureReason.FILE_CHANGED, state.changed)
                    return
                status, message, reason = 0, str(exc), FailureReason.NETWORK
            else:
                if 200 <= status < 300:
                    await self._done(state)
                    return
                reason = FailureReason.SERVER_ERROR
            if status == 403:
                # Expired or rejected signature: the URL is spent, the file is not (API.md 1.3).
                refreshes += 1
                if refreshes > MAX_URL_REFRESHES:
                    await self._fail(
                        state,
                        FailureReason.URL_EXPIRED,
                        f"storage refused {refreshes} signed URLs in a row ({message})",
                    )
                    return
                try:
                    target = await self.refresh(source)
                except _NoTarget as exc:
                    await self._fail(state, FailureReason.NO_UPLOAD_URL, str(exc))
                    return
                continue
            if status and not is_retryable_status(status):
                changed = await source.changed()
                if changed is not None:
                    await self._fail(state, FailureReason.FILE_CHANGED, changed)
                else:
                    await self._fail(state, FailureReason.REJECTED, message)
                return
            if state.attempts >= self._retry.max_attempts:
                await self._fail(state, reason, f"{message} (after {state.attempts} attempts)")
                return
            delay = self._retry.backoff(state.attempts, self._rng)
            await self._progress.emit(
                FileRetrying(
                    filename=source.filename, attempt=state.attempts, delay=delay, message=message
                )
            )
            await asyncio.sleep(delay)

    async def _put(self, state: _FileState, target: UploadTarget) -> tuple[int, str]:
        """One signed send: the returned method, URL and headers exactly, plus Content-Length.

        The session carries no Authorization header and takes no rate-limit token: the URL's
        signature is the credential (API.md 1.3, DESIGN "rules of the pipeline").
        """
        source = state.source
        headers = dict(target.headers)
        content_type = next(
            (v for k, v in headers.items() if k.lower() == "content-type"), source.content_type
        )
        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        headers["Content-Length"] = str(source.size)
        payload = _FilePayload(
            state, self._progress, content_type=content_type, attempt=state.attempts
        )
        method = (target.method or "PUT").upper()
        try:
            async with self._session.request(
                method,
                target.upload_url,
                data=payload,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise map_error(exc, method=method, url=target.upload_url) from exc
        if 200 <= status < 300:
            return status, ""
        where = redact_url(target.upload_url)
        return status, f"storage answered {status} to {method} {where}: {_storage_message(body)}"


def _storage_message(body: bytes) -> str:
    """The message of a storage error body (``{"error": code, "message": ...}`` or XML)."""
    text = body[:300].decode("utf-8", errors="replace").strip()
    return " ".join(text.split()) or "(empty body)"


async def run_uploads(
    *,
    direct: Sequence[UploadSource],
    signed: Sequence[UploadSource],
    session: aiohttp.ClientSession,
    fetch_targets: FetchTargets,
    send_direct: SendDirect,
    retry: RetryPolicy,
    timeout: aiohttp.ClientTimeout,
    progress: ProgressCallback | None,
    concurrency: int,
    batch_size: int,
    planned: UploadPlanned,
) -> tuple[list[FileResult], int]:
    """Send every file, concurrently; return each sent file's result and the bytes sent.

    One failed file does not stop the others. Cancellation stops every transfer at once: open
    files are closed, connections dropped, and storage discards incomplete bodies, so the
    dataset holds only whole files and a re-run (resume) sends the rest.

    Raises:
        Exception: whatever the progress callback raised (the run stops).
    """
    reporter = _Progress(progress)
    await reporter.emit(planned)
    engine = _Engine(
        session=session,
        fetch_targets=fetch_targets,
        send_direct=send_direct,
        retry=retry,
        timeout=timeout,
        progress=reporter,
        batch_size=batch_size,
    )
    workers = max(1, min(concurrency, len(direct) + len(signed)))
    queue: asyncio.Queue[tuple[_FileState, UploadTarget | None] | None] = asyncio.Queue(
        maxsize=max(batch_size, workers)
    )
    try:
        async with asyncio.TaskGroup() as group:
            engine.group = group
            group.create_task(engine.produce(queue, direct, signed, workers))
            for _ in range(workers):
                group.create_task(engine.work(queue))
    except ExceptionGroup as group_error:
        # Surface the first real error (e.g. from the progress callback), not a group.
        raise group_error.exceptions[0] from None
    return engine.results, reporter.bytes_sent
