"""Artifact downloads: safe local names, streaming to disk, resume with ``Range``.

Artifacts live on object storage behind signed URLs (docs/wire.md). Downloads take no
rate-limit token and never carry the Authorization header (the URL's signature is the
credential). Each file streams to ``<name>.part`` and is renamed into place only when complete,
so a half-written file never looks finished. On a client that owns its session the transport's
worker thread receives the body and writes it straight to the ``.part`` (:class:`_Download` is
its :class:`~runcomfy_async._transport.ThreadedConsumer`); through aiohttp, what arrives is
gathered, never copied, and written in 4 MiB batches by a worker thread while the next batch
arrives. Beside the ``.part``, ``<name>.part.validator`` records the version the bytes belong
to (the server's Last-Modified or ETag). A ``.part`` left by an interrupted run is continued
with ``Range: bytes=N-`` plus ``If-Range: <validator>`` when the server answers 206 for that
same version; a changed file (200), a server that ignores ranges, or a ``.part`` without a
validator gets the file rewritten from the start, so two versions are never spliced together.

Names come from the server and are untrusted: :func:`safe_name` keeps only the last path
segment and a conservative character set, and :func:`plan_paths` gives each artifact its own
path inside ``dest`` (``dest/<kind>/<name>``, a ``_2`` suffix on a clash).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final

import aiofiles
import aiofiles.os
import aiohttp
import attrs

from . import errors
from ._files import open_file, read_small, write_small
from ._pipeline import Pipeline, storage_answer
from ._progress import ProgressRelay, reraise_first, with_progress
from ._protocol import MAX_URL_REFRESHES, Retry, redact_url
from ._transport import Answer, Credentials, Exchange, ThreadedConsumer
from .types.downloads import DownloadReport, FailedDownload
from .types.jobs import Artifact
from .types.progress import DownloadProgress, ProgressCallback

__all__ = [
    "CHUNK",
    "DownloadProgress",
    "download_artifacts",
    "plan_paths",
    "safe_name",
]

#: Bytes per disk write (and per progress event): few thread hops, memory flat whatever the size.
CHUNK: Final = 4 << 20
#: Pieces gathered into one write at most (the system's writev limit is 1,024).
_MAX_PIECES: Final = 512
_PART_SUFFIX: Final = ".part"
_MAX_NAME: Final = 150
_UNSAFE_CHARS: Final = re.compile(r"[^A-Za-z0-9._-]+")
_CONTENT_RANGE: Final = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")
# Device names Windows refuses as file names, whatever the extension.
_RESERVED: Final = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
#: Times one download may start over because the server would not continue its ``.part``.
_MAX_RESTARTS: Final = 2

RefreshArtifact = Callable[[Artifact], Awaitable[Artifact]]


def safe_name(raw: str, *, fallback: str = "artifact") -> str:
    """A file name that cannot leave its folder, derived from an untrusted name.

    Keeps the last segment after any ``/`` or ``\\``, replaces every character outside
    ``A-Z a-z 0-9 . _ -`` with ``_``, strips leading dots and dashes (no hidden files, no
    ``..``), trailing dots and spaces, prefixes Windows device names, and caps the length
    (keeping the extension). An empty result becomes ``fallback``.
    """
    last = re.split(r"[/\\]", raw)[-1]
    name = _UNSAFE_CHARS.sub("_", last).lstrip(".-").rstrip(". ")
    if not name.strip("_"):
        name = fallback
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    if stem.lower() in _RESERVED or name.lower() in _RESERVED:
        name = "_" + name
    if len(name) > _MAX_NAME:
        keep = f".{ext}" if dot and len(ext) < 20 else ""
        name = name[: _MAX_NAME - len(keep)] + keep
    return name


def _with_suffix_number(name: str, n: int) -> str:
    """``model.safetensors`` -> ``model_2.safetensors``: a clash-free variant of a name."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name}_{n}"
    return f"{stem}_{n}.{ext}"


def plan_paths(dest: Path, artifacts: Sequence[Artifact]) -> list[Path]:
    """One distinct path inside ``dest`` per artifact: ``dest/<kind>/<safe name>``.

    Names are compared case-insensitively (macOS and Windows disks are), and a clash gets a
    ``_2``, ``_3``... suffix, so no two artifacts are ever written onto one file.

    Raises:
        ValidationError: a planned path resolves outside ``dest`` (a symlink in ``dest``).
    """
    root = dest.resolve()
    taken: set[str] = set()
    paths: list[Path] = []
    for index, artifact in enumerate(artifacts):
        kind = safe_name(artifact.kind, fallback="other")
        name = safe_name(artifact.name, fallback=f"{kind}_{index + 1}")
        candidate, n = name, 1
        while f"{kind}/{candidate}".casefold() in taken:
            n += 1
            candidate = _with_suffix_number(name, n)
        taken.add(f"{kind}/{candidate}".casefold())
        path = root / kind / candidate
        if not path.resolve().is_relative_to(root):
            raise errors.ValidationError(
                f"artifact {artifact.name!r} would be written to {path.resolve()}, outside "
                f"{root} (is {root / kind} a symlink?); choose an empty destination folder"
            )
        paths.append(path)
    return paths


def _part_path(path: Path) -> Path:
    """Where a file is written until complete."""
    return path.with_name(path.name + _PART_SUFFIX)


def _validator_path(part: Path) -> Path:
    """Beside a ``.part``: the Last-Modified/ETag of the file version it holds."""
    return part.with_name(part.name + ".validator")


async def _read_validator(part: Path) -> str | None:
    """The validator a ``.part`` was started with, or None when unknown."""
    value = await read_small(_validator_path(part))
    return (value.strip() or None) if value is not None else None


async def _write_validator(part: Path, headers: Mapping[str, str]) -> None:
    """Record which version of the file a new ``.part`` holds (a date suits every server)."""
    value = headers.get("Last-Modified") or headers.get("ETag")
    if value and not value.startswith("W/"):
        await write_small(_validator_path(part), value)
    else:
        await _forget_validator(part)


def _same_version(validator: str | None, headers: Mapping[str, str]) -> bool:
    """Whether a 206 answer is of the version the ``.part`` began with (when it says)."""
    if validator is None:
        return True
    sent = [v for v in (headers.get("Last-Modified"), headers.get("ETag")) if v]
    return not sent or validator in sent


async def _forget_validator(part: Path) -> None:
    """Drop the validator once its ``.part`` is complete or abandoned."""
    with contextlib.suppress(FileNotFoundError):
        await aiofiles.os.remove(_validator_path(part))


async def _size_on_disk(path: Path) -> int:
    """The file's size, 0 if it does not exist."""
    try:
        stat = await aiofiles.os.stat(path)
    except FileNotFoundError:
        return 0
    return stat.st_size


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` of a ``Content-Range`` header; None for what it does not say."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


class _PartFile:
    """A ``.part`` written by worker threads, one batch in flight at a time.

    :meth:`close` waits for a write in flight (a lock both hold), so no write outlives the file
    and the file is as long as what was written.
    """

    def __init__(self, fh: BinaryIO, done: int) -> None:
        self._fh = fh
        self._lock = threading.Lock()
        self._done = done
        self._pending: asyncio.Future[None] | None = None

    async def write(self, pieces: list[bytes]) -> int:
        """Wait for the previous batch, start writing ``pieces``; the bytes on disk so far."""
        done = await self.written()
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._write, pieces)
        return done

    async def written(self) -> int:
        """Wait for the batch in flight; the bytes on disk."""
        if self._pending is not None:
            await self._pending
            self._pending = None
        return self._done

    def write_blocking(self, data: memoryview) -> int:
        """From a worker thread: write ``data`` now; the bytes on disk."""
        self._write([data])
        return self._done

    def _write(self, pieces: list[bytes] | list[memoryview]) -> None:
        with self._lock:
            if self._fh.closed:
                return
            fd = self._fh.fileno()
            views = [memoryview(p) for p in pieces]
            while views:
                n = os.writev(fd, views)
                self._done += n
                while views and n >= len(views[0]):
                    n -= len(views.pop(0))
                if n:
                    views[0] = views[0][n:]

    def close(self) -> None:
        """Close the file once a write in flight is done (its error, if any, is not wanted)."""
        pending = self._pending
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        with self._lock:
            self._fh.close()


class _Restart(Exception):
    """The partial file cannot be continued; start over from byte 0."""


@attrs.define(kw_only=True)
class _Attempt:
    """What one GET asked for: from which byte, for which version of the file."""

    offset: int = 0
    validator: str | None = None


class _Download(ThreadedConsumer[None]):
    """One artifact into one path: each attempt continues the ``.part`` where it can.

    It is the consumer of each attempt's answer: read from aiohttp here, or (on the transport's
    worker-thread path) opened here, written from the thread, finished here.
    """

    def __init__(
        self,
        artifact: Artifact,
        path: Path,
        *,
        timeout: aiohttp.ClientTimeout,
        relay: ProgressRelay[DownloadProgress],
    ) -> None:
        self.artifact = artifact
        self.path = path
        self.part = _part_path(path)
        self._timeout = timeout
        self._relay = relay
        self._attempt = _Attempt()
        self._disk: _PartFile | None = None
        self._total: int | None = None
        self._reported = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(self) -> Exchange:
        """The GET for this attempt, with ``Range``/``If-Range`` when a ``.part`` can go on."""
        offset = await _size_on_disk(self.part)
        validator = await _read_validator(self.part) if offset else None
        if offset and validator is None:
            offset = 0  # a .part we cannot tie to this exact file version: start over, never mix
        self._attempt = _Attempt(offset=offset, validator=validator)
        # If-Range: the server sends the rest only if the file is still the version the .part
        # began with; a regenerated artifact comes back whole (200) and replaces it.
        headers = (
            {"Range": f"bytes={offset}-", "If-Range": validator} if validator and offset else {}
        )
        # No Authorization here, ever: the signed URL is the credential (docs/wire.md).
        return Exchange(
            method="GET",
            url=self.artifact.url,
            headers=headers,
            timeout=self._timeout,
            credentials=Credentials.NONE,
            read_bufsize=CHUNK,
        )

    def interpret(self, answer: Answer[None]) -> bool:
        """True when a 416 says the ``.part`` already holds the whole file."""
        attempt = self._attempt
        if answer.status == 416 and attempt.offset:
            _, total = _content_range(answer.headers.get("Content-Range"))
            if total != attempt.offset:
                raise _Restart
            return True
        storage_answer(answer, method="GET", url=self.artifact.url)
        return False

    async def begin(self, status: int, headers: Mapping[str, str]) -> None:
        """Check a 200/206 answer and open the ``.part`` where it continues."""
        attempt, part = self._attempt, self.part
        if status not in (200, 206):
            raise errors.UnexpectedResponseError(
                f"storage answered {status} instead of the file",
                status=status,
                method="GET",
                url=redact_url(self.artifact.url),
            )
        if status == 206:
            start, total = _content_range(headers.get("Content-Range"))
            if start != attempt.offset or not _same_version(attempt.validator, headers):
                raise _Restart  # a server that ignored If-Range sent another version's tail
            append, done = True, attempt.offset
        else:
            # 200: the whole file (no Range support, or it changed since the .part began).
            # The old validator goes first: a crash before the new one is written must not
            # leave old bytes vouched for by the new version's validator.
            await _forget_validator(part)
            length = headers.get("Content-Length")
            append, done = False, 0
            total = int(length) if length and length.isdigit() else None
        self._loop = asyncio.get_running_loop()
        fh = await open_file(part, "ab" if append else "wb")
        disk = _PartFile(fh, done)
        try:
            if not append:  # after truncating: old bytes are never vouched for by it
                await _write_validator(part, headers)
        except BaseException:
            disk.close()
            raise
        self._disk, self._total, self._reported = disk, total, done

    async def __call__(self, resp: aiohttp.ClientResponse) -> None:
        """Stream a 200/206 from aiohttp into the ``.part``, then rename it into place once
        complete."""
        await self.begin(resp.status, resp.headers)
        assert self._disk is not None
        try:
            await self._stream(resp, self._disk, self._total)
        finally:
            # Waits for a write still running in its thread: a cancelled download leaves its
            # .part exactly as long as what reached the disk.
            self.close()
        await self.end()

    def write(self, data: memoryview) -> None:
        """From the transport's worker thread: append to the ``.part``; progress per 4 MiB."""
        disk, loop = self._disk, self._loop
        assert disk is not None, "begin() opened the .part"
        assert loop is not None
        done = disk.write_blocking(data)
        if done - self._reported >= CHUNK:
            self._reported = done
            event = DownloadProgress(
                artifact=self.artifact, path=self.path, done=done, total=self._total
            )
            loop.call_soon_threadsafe(self._relay.emit, event)

    def close(self) -> None:
        """Close the ``.part`` (once a write in flight is done)."""
        if self._disk is not None:
            self._disk.close()

    async def end(self) -> None:
        """The answer's body is on disk: complete (renamed into place), or a resumable error."""
        assert self._disk is not None
        done, total = await self._disk.written(), self._total
        self._relay.emit(
            DownloadProgress(artifact=self.artifact, path=self.path, done=done, total=total)
        )
        if total is not None and done != total:
            safe_url = redact_url(self.artifact.url)
            raise errors.TransportError(
                f"download of {safe_url} ended at byte {done} of {total}; it resumes from there",
                method="GET",
                url=safe_url,
            )
        await self.finish()

    async def _stream(
        self, resp: aiohttp.ClientResponse, disk: _PartFile, total: int | None
    ) -> int:
        """Gather what arrives and write it in batches, one in flight while the next arrives;
        the bytes on disk."""
        emit = self._relay.emit
        batch: list[bytes] = []
        batched = 0
        reported = await disk.written()
        async for piece, _ in resp.content.iter_chunks():
            if not piece:
                continue
            batch.append(piece)
            batched += len(piece)
            if batched >= CHUNK or len(batch) >= _MAX_PIECES:
                done = await disk.write(batch)  # the previous batch is on disk now
                if done > reported:
                    reported = done
                    emit(DownloadProgress(
                        artifact=self.artifact, path=self.path, done=done, total=total
                    ))
                batch, batched = [], 0
        if batch:
            await disk.write(batch)
        return await disk.written()

    async def finish(self) -> None:
        """The ``.part`` is complete: put it in place."""
        await aiofiles.os.replace(self.part, self.path)
        await _forget_validator(self.part)

    async def start_over(self) -> None:
        """Drop the ``.part`` and its validator."""
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(self.part)
        await _forget_validator(self.part)


async def _download(
    pipeline: Pipeline,
    download: _Download,
    *,
    refresh: RefreshArtifact | None,
) -> None:
    """Download one artifact through the retry loop; re-sign on 403, start over when a server
    will not continue the ``.part``."""
    refreshes = restarts = 0
    while True:
        try:
            complete = await pipeline.call(
                download.request,
                download.interpret,
                kind=Retry.SAFE,
                priority=None,
                consume=download,
            )
        except _Restart:
            await download.start_over()
            restarts += 1
            if restarts > _MAX_RESTARTS:
                url = redact_url(download.artifact.url)
                raise errors.TransportError(
                    f"{url} would not continue the partial file; download it again",
                    method="GET",
                    url=url,
                ) from None
            continue
        except errors.PermissionDeniedError:
            # A 403 from storage is an expired or bad signature: a fresh result re-signs it.
            if refresh is None or refreshes >= MAX_URL_REFRESHES:
                raise
            refreshes += 1
            download.artifact = await refresh(download.artifact)
            continue
        except errors.RunComfyError as exc:
            exc.add_note(
                f"{download.part.name} is kept and downloading again resumes it"
            )
            raise
        if complete:
            await download.finish()
        return


async def download_artifacts(
    pipeline: Pipeline,
    artifacts: Sequence[Artifact],
    dest: Path,
    *,
    timeout: aiohttp.ClientTimeout,
    concurrency: int,
    progress: ProgressCallback[DownloadProgress] | None = None,
    refresh: RefreshArtifact | None = None,
    check: bool = True,
) -> DownloadReport:
    """Download ``artifacts`` into ``dest`` (``concurrency`` at a time); report what was written.

    Every file is attempted even if another fails; partial files stay as ``.part`` for the next
    run to resume. Downloads take no rate-limit token and carry no token, but run through the
    client's one retry loop (Retry-After on 429/503 honoured, 5xx and broken connections
    retried with backoff).

    Args:
        check: raise :class:`~runcomfy_async.errors.DownloadError` when any file failed;
            False returns the report with the failures in ``failed``.

    Raises:
        ValidationError: a planned path would leave ``dest``.
        DownloadError: ``check`` and a file could not be downloaded (storage refused it or it
            could not be fetched after retries); the first file's error is the ``__cause__``.
        Exception: what the progress callback raised (the downloads stop).
    """
    paths = plan_paths(dest, artifacts)
    for folder in sorted({p.parent for p in paths}):
        await aiofiles.os.makedirs(folder, exist_ok=True)

    async def run(relay: ProgressRelay[DownloadProgress]) -> dict[Path, Exception]:
        """Every download, their events going to ``relay``; the failures by path."""
        semaphore = asyncio.Semaphore(concurrency)
        failures: dict[Path, Exception] = {}

        async def one(artifact: Artifact, path: Path) -> None:
            """Download one file under the semaphore, recording (not raising) its failure."""
            async with semaphore:
                download = _Download(artifact, path, timeout=timeout, relay=relay)
                try:
                    await _download(pipeline, download, refresh=refresh)
                except (errors.RunComfyError, OSError) as exc:
                    failures[path] = exc

        try:
            async with asyncio.TaskGroup() as group:
                for artifact, path in zip(artifacts, paths, strict=True):
                    group.create_task(one(artifact, path))
        except ExceptionGroup as group_error:
            reraise_first(group_error)
        return failures

    failures = await with_progress(progress, run)
    report = DownloadReport(
        paths=tuple(p for p in paths if p not in failures),
        failed=tuple(
            FailedDownload(path=p, message=str(failures[p])) for p in paths if p in failures
        ),
    )
    if check and failures:
        lines = [f"{f.path.name}: {f.message}" for f in report.failed]
        shown = "\n  - ".join(lines[:20])
        more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
        raise errors.DownloadError(
            f"{len(lines)} of {len(paths)} file(s) could not be downloaded into {dest}:"
            f"\n  - {shown}{more}\n"
            "their .part files are kept: downloading again resumes them",
            report=report,
        ) from next(failures[p] for p in paths if p in failures)
    return report
