"""Dataset upload sources other than local files: bytes and text from code, remote URLs.

:func:`scan_items` turns what ``Dataset.upload`` was given (paths, source objects, a mapping of
names to contents) into the planner's :class:`~runcomfy_async._upload_plan.ScannedFile` list, so
every rule applies to them as to files. :func:`size_urls` asks each URL's size (HEAD) before
anything is sent; a remote that announces none is copied to a temporary file first. At send time
:class:`URLPayload` streams the remote into the storage PUT chunk by chunk, fetching it again on
every attempt. All remote traffic goes through the client's transport, without credentials.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
from aiohttp.abc import AbstractStreamWriter

from . import errors
from ._files import open_file
from ._pipeline import Pipeline, storage_answer
from ._protocol import Retry, redact_url
from ._transport import Answer, BodyAbort, Credentials, Exchange, Transport
from ._upload_body import (
    CHUNK_SIZE,
    FilePayload,
    FileState,
    MemoryPayload,
    SourcePayload,
    UploadProgress,
)
from ._upload_plan import ScannedFile, UploadSource, scan_paths
from .types.uploads import (
    BytesSource,
    FailureReason,
    FileResult,
    TextSource,
    UploadItem,
    URLSource,
)

__all__ = [
    "SourceFailed",
    "SourceUnavailable",
    "URLPayload",
    "payload_for",
    "scan_items",
    "size_urls",
]

#: Bytes of a remote answer asked for per read (its read buffer is as large).
_READ_SIZE: Final = 1 << 20
#: Ask the remote for the bytes as stored: a compressed transfer would change the size.
_IDENTITY: Final = {"Accept-Encoding": "identity"}


class SourceFailed(Exception):
    """A URL source cannot be sent as planned (4xx, another size): stops every further attempt."""


class SourceUnavailable(errors.TransportError):
    """A URL source's remote failed for now (5xx, a dropped connection): the upload attempt is
    retried, fetching the remote again from the start."""


# -- scanning -------------------------------------------------------------------------------


def scan_items(items: Iterable[UploadItem]) -> tuple[list[ScannedFile], list[str]]:
    """What ``Dataset.upload`` was given as scanned files, and what is wrong with the items
    themselves; blocking (it stats the paths), so call it through ``asyncio.to_thread``."""
    scanned: list[ScannedFile] = []
    problems: list[str] = []
    for item in items:
        if isinstance(item, Mapping):
            for name, content in item.items():
                if isinstance(content, str):
                    _add_text(TextSource(name=name, text=content), scanned, problems)
                elif isinstance(content, bytes | bytearray | memoryview):
                    scanned.append(_memory(name, bytes(content)))
                else:
                    problems.append(
                        f"{name!r}: the mapping's values must be str (text) or bytes, got "
                        f"{type(content).__name__}"
                    )
        elif isinstance(item, BytesSource):
            if isinstance(item.data, bytes | bytearray | memoryview):
                scanned.append(_memory(item.name, bytes(item.data)))
            else:
                problems.append(
                    f"{item.name!r}: BytesSource.data must be bytes, got {type(item.data).__name__}"
                )
        elif isinstance(item, TextSource):
            _add_text(item, scanned, problems)
        elif isinstance(item, URLSource):
            scheme = item.url.split(":", 1)[0].lower() if isinstance(item.url, str) else ""
            if scheme not in ("http", "https"):
                problems.append(
                    f"{redact_url(str(item.url))}: not an http(s) URL; pass a local file's path "
                    "instead, or an http:// or https:// address"
                )
                continue
            if not item.filename:
                problems.append(
                    f"{redact_url(item.url)}: its path names no file; pass a name: "
                    "URLSource(url=..., name='dog_01.jpg')"
                )
                continue
            scanned.append(ScannedFile(path=None, filename=item.filename, size=None, url=item.url))
        elif isinstance(item, str | os.PathLike):
            scanned.extend(scan_paths([item]))
        else:
            problems.append(
                f"{type(item).__name__} is not something to upload: pass a path, "
                "BytesSource(name=..., data=...), TextSource(name=..., text=...), "
                "URLSource(url=...) or a {name: str | bytes} mapping"
            )
    return scanned, problems


def _memory(name: str, data: bytes) -> ScannedFile:
    return ScannedFile(path=None, filename=name, size=len(data), data=data)


def _add_text(source: TextSource, scanned: list[ScannedFile], problems: list[str]) -> None:
    try:
        scanned.append(_memory(source.name, source.text.encode(source.encoding)))
    except (UnicodeError, LookupError, AttributeError) as exc:
        problems.append(
            f"{source.name!r}: cannot encode its text ({exc}); fix the text or its encoding"
        )


# -- sizing URLs before anything is sent -----------------------------------------------------


def _fetch(url: str, timeout: aiohttp.ClientTimeout, method: str = "GET") -> Exchange:
    """A request to a URL source's remote: no credentials, redirects followed."""
    return Exchange(
        method=method,
        url=url,
        headers=_IDENTITY,
        timeout=timeout,
        credentials=Credentials.NONE,
        read_bufsize=_READ_SIZE,
    )


def _announced(answer: Answer[Any]) -> int | None:
    """The Content-Length an answer announced, if it is a byte count."""
    value = answer.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _remote_failed(url: str, exc: errors.RunComfyError) -> str:
    return (
        f"could not fetch {redact_url(url)}: {exc}; check the URL is reachable and run the "
        "upload again"
    )


async def size_urls(
    scanned: Sequence[ScannedFile],
    *,
    pipeline: Pipeline,
    spool: Path,
    timeout: aiohttp.ClientTimeout,
    concurrency: int,
) -> tuple[list[ScannedFile], list[FileResult]]:
    """Every URL source's size, asked before any file is sent: the scans with sizes filled in,
    and the URL sources that failed (as failed results, the others go on).

    A HEAD that answers 2xx with a Content-Length gives the size; otherwise (no length, or a
    remote that refuses HEAD, as signed GET URLs do) the file is copied into ``spool`` in MiB
    steps and sent from there.
    """
    gate = asyncio.Semaphore(concurrency)

    async def size_one(index: int, scan: ScannedFile) -> ScannedFile | FileResult:
        url = scan.url
        assert url is not None
        async with gate:
            try:
                size = await _head(url, pipeline, timeout)
                if size is None:
                    path = spool / f"{index}-{scan.filename}"
                    size = await _copy(url, path, pipeline, timeout)
                    scan = attrs.evolve(scan, path=path)
            except SourceFailed as exc:
                return _failed(scan, str(exc))
            except errors.RunComfyError as exc:
                return _failed(scan, _remote_failed(url, exc))
        if size == 0:
            return _failed(scan, f"{redact_url(url)} is empty; a dataset file needs content")
        return attrs.evolve(scan, size=size)

    done = await asyncio.gather(
        *(size_one(i, s) for i, s in enumerate(scanned) if s.url is not None)
    )
    sized = iter(done)
    kept: list[ScannedFile] = []
    failed: list[FileResult] = []
    for scan in scanned:
        outcome = next(sized) if scan.url is not None else scan
        if isinstance(outcome, FileResult):
            failed.append(outcome)
        else:
            kept.append(outcome)
    return kept, failed


def _failed(scan: ScannedFile, message: str) -> FileResult:
    return FileResult(
        filename=scan.filename,
        path=None,
        size=scan.size or 0,
        reason=FailureReason.SOURCE_FAILED,
        message=message,
    )


async def _head(url: str, pipeline: Pipeline, timeout: aiohttp.ClientTimeout) -> int | None:
    """The size a HEAD announces; None when it announces none or HEAD is refused (not 404/410:
    the file is gone, a GET would say the same)."""
    exchange = _fetch(url, timeout, "HEAD")
    try:
        answer = await pipeline.call(
            exchange,
            functools.partial(_checked, method="HEAD", url=url),
            kind=Retry.SAFE,
            priority=None,
        )
    except errors.APIError as exc:
        if exc.status in (404, 410, 429) or exc.status >= 500:
            raise SourceFailed(_remote_failed(url, exc)) from None
        return None  # e.g. 403 or 405: HEAD is not allowed there, a GET will tell
    assert answer is not None
    return _announced(answer)


def _checked(answer: Answer[Any], *, method: str, url: str) -> Answer[Any]:
    """The answer itself, or the APIError an error status stands for."""
    storage_answer(answer, method=method, url=url)
    return answer


async def _copy(url: str, path: Path, pipeline: Pipeline, timeout: aiohttp.ClientTimeout) -> int:
    """Copy the remote into ``path`` in MiB steps (every attempt starts over); its size."""

    async def consume(resp: aiohttp.ClientResponse) -> int:
        fh = await open_file(path, "wb")
        try:
            size = 0
            while chunk := await resp.content.read(_READ_SIZE):
                await asyncio.to_thread(fh.write, chunk)
                size += len(chunk)
            expected = resp.content_length
            if expected is not None and size != expected:
                raise BodyAbort(SourceFailed(_mismatch(url, expected, f"{size} bytes")))
            return size
        finally:
            await asyncio.to_thread(fh.close)

    try:
        size = await pipeline.call(
            _fetch(url, timeout),
            functools.partial(storage_answer, method="GET", url=url),
            kind=Retry.SAFE,
            priority=None,
            consume=consume,
        )
    except errors.APIError as exc:
        raise SourceFailed(_remote_failed(url, exc)) from None
    assert isinstance(size, int)
    return size


def _mismatch(url: str, planned: int, now: str) -> str:
    return (
        f"{redact_url(url)} announced {planned} bytes but sent {now}; it was not uploaded: "
        "run the upload again once the remote file is stable"
    )


# -- sending ----------------------------------------------------------------------------------


class URLPayload(SourcePayload):
    """A URL source's bytes for one attempt: fetched from the remote inside ``write()`` and
    written on as they arrive, one MiB read at a time, so memory stays flat whatever the size.

    The remote answering 4xx or with another size than planned stops the file for good
    (:class:`SourceFailed`); a 5xx or a dropped connection fails this attempt only
    (:class:`SourceUnavailable`), and the retry fetches the remote again from the start.
    """

    def __init__(
        self,
        state: FileState,
        progress: UploadProgress,
        *,
        content_type: str,
        attempt: int,
        transport: Transport,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        super().__init__(state, progress, content_type=content_type, attempt=attempt)
        self._transport = transport
        self._timeout = timeout

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        source = self._state.source
        url = source.url
        assert url is not None, "a URL body is built for a URL source"
        self._started()

        async def pipe(resp: aiohttp.ClientResponse) -> None:
            announced = resp.content_length
            if announced is not None and announced != source.size:
                self._fail(_mismatch(url, source.size, f"a Content-Length of {announced}"))
            sent = reported = 0
            while chunk := await resp.content.read(_READ_SIZE):
                if sent + len(chunk) > source.size:
                    self._fail(_mismatch(url, source.size, f"more than {source.size} bytes"))
                await writer.write(chunk)
                sent += len(chunk)
                if sent - reported >= CHUNK_SIZE:
                    self._sent(sent, sent - reported)
                    reported = sent
            if sent < source.size:
                self._fail(_mismatch(url, source.size, f"{sent} bytes"))
            if sent > reported:
                self._sent(sent, sent - reported)

        try:
            answer = await self._transport.exchange(_fetch(url, self._timeout), pipe)
        except SourceFailed as exc:
            raise BodyAbort(exc) from None  # the remote's own exchange unwrapped it
        except errors.TransportError as exc:
            raise BodyAbort(
                SourceUnavailable(_remote_failed(url, exc), method="GET", url=redact_url(url))
            ) from None
        if answer.status >= 500 or answer.status == 429:
            raise BodyAbort(
                SourceUnavailable(
                    f"{redact_url(url)} answered {answer.status}; check the remote is up and "
                    "run the upload again",
                    method="GET",
                    url=redact_url(url),
                )
            )
        if answer.status >= 400:
            self._fail(
                f"could not fetch {redact_url(url)}: it answered {answer.status}; check the URL "
                "and run the upload again"
            )

    def _fail(self, message: str) -> None:
        self._state.source_failed = message
        raise BodyAbort(SourceFailed(message))


def payload_for(
    state: FileState,
    progress: UploadProgress,
    *,
    content_type: str,
    transport: Transport,
    timeout: aiohttp.ClientTimeout,
) -> SourcePayload:
    """A fresh body for the source's next attempt, read from wherever the source lives.

    Raises:
        SourceFailed: an earlier attempt found the URL source unusable.
    """
    if state.source_failed is not None:
        raise SourceFailed(state.source_failed)
    state.attempts += 1
    source: UploadSource = state.source
    if source.path is None and source.url is not None:
        return URLPayload(
            state,
            progress,
            content_type=content_type,
            attempt=state.attempts,
            transport=transport,
            timeout=timeout,
        )
    kind = MemoryPayload if source.data is not None else FilePayload
    return kind(state, progress, content_type=content_type, attempt=state.attempts)
