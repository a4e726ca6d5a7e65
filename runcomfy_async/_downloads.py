"""Artifact downloads: safe local names, streaming to disk, resume with ``Range``.

Artifacts live on object storage behind signed URLs (API.md section 2.3). Downloads go through
the client's aiohttp session directly: no rate-limit token and never the Authorization header
(the URL's signature is the credential; DESIGN, rules of the pipeline). Each file streams in MiB
chunks to ``<name>.part`` and is renamed into place only when complete, so a half-written file
never looks finished. Beside it, ``<name>.part.validator`` records the version the bytes belong
to (the server's Last-Modified or ETag). A ``.part`` left by an interrupted run is continued with
``Range: bytes=N-`` plus ``If-Range: <validator>`` when the server answers 206 for that same
version; a changed file (200), a server that ignores ranges, or a ``.part`` without a validator
gets the file rewritten from the start, so two versions are never spliced together.

Names come from the server and are untrusted: :func:`safe_name` keeps only the last path
segment and a conservative character set, and :func:`plan_paths` gives each artifact its own
path inside ``dest`` (``dest/<kind>/<name>``, a ``_2`` suffix on a clash).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Final

import aiofiles
import aiofiles.os
import aiohttp
import attrs

from . import errors
from ._protocol import error_from_response, redact_url
from ._retry import RetryPolicy
from ._transport import map_error
from .types.jobs import Artifact

__all__ = [
    "CHUNK",
    "DownloadProgress",
    "ProgressCallback",
    "download_artifacts",
    "plan_paths",
    "safe_name",
]

#: Bytes per disk write: few thread hops, memory flat whatever the file size.
CHUNK: Final = 1 << 20
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
_ERROR_BODY_LIMIT: Final = 64 * 1024


@attrs.frozen(kw_only=True)
class DownloadProgress:
    """Progress of one file: ``done`` of ``total`` bytes on disk (``total`` None if unknown)."""

    artifact: Artifact
    path: Path
    done: int
    total: int | None


ProgressCallback = Callable[[DownloadProgress], None]
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
    try:
        async with aiofiles.open(_validator_path(part)) as fh:
            value = (await fh.read()).strip()
    except FileNotFoundError:
        return None
    return value or None


async def _write_validator(part: Path, headers: Mapping[str, str]) -> None:
    """Record which version of the file a new ``.part`` holds (a date suits every server)."""
    value = headers.get("Last-Modified") or headers.get("ETag")
    if value and not value.startswith("W/"):
        async with aiofiles.open(_validator_path(part), "w") as fh:
            await fh.write(value)
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


class _Restart(Exception):
    """The partial file cannot be continued; start over from byte 0."""


async def _download_once(
    session: aiohttp.ClientSession,
    artifact: Artifact,
    url: str,
    path: Path,
    *,
    timeout: aiohttp.ClientTimeout,
    progress: ProgressCallback | None,
) -> None:
    """One GET of ``url`` into ``path``'s ``.part`` (continued where possible), then rename."""
    part = _part_path(path)
    offset = await _size_on_disk(part)
    validator = await _read_validator(part) if offset else None
    if offset and validator is None:
        offset = 0  # a .part we cannot tie to this exact file version: start over, never mix
    # No Authorization here, ever: the signed URL is the credential (API.md section 1.3).
    # If-Range: the server sends the rest only if the file is still the version the .part
    # began with; a regenerated artifact comes back whole (200) and replaces it.
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if validator and offset else {}
    safe_url = redact_url(url)
    try:
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status == 416 and offset:
                _, total = _content_range(resp.headers.get("Content-Range"))
                if total != offset:
                    raise _Restart
                await aiofiles.os.replace(part, path)
                await _forget_validator(part)
                return
            if resp.status >= 400:
                body = await resp.content.read(_ERROR_BODY_LIMIT)
                raise error_from_response(
                    resp.status, resp.headers, body, method="GET", url=url, now=time.time()
                )
            if resp.status == 206:
                start, total = _content_range(resp.headers.get("Content-Range"))
                if start != offset or not _same_version(validator, resp.headers):
                    raise _Restart  # a server that ignored If-Range sent another version's tail
                append = True
            else:
                # 200: the whole file (no Range support, or it changed since the .part began).
                # The old validator goes first: a crash before the new one is written must not
                # leave old bytes vouched for by the new version's validator.
                await _forget_validator(part)
                offset, append = 0, False
                total = resp.content_length
            done = offset
            buffer = bytearray()
            async with aiofiles.open(part, "ab" if append else "wb") as fh:
                if not append:
                    await _write_validator(part, resp.headers)
                async for chunk in resp.content.iter_chunked(CHUNK):
                    buffer += chunk
                    if len(buffer) >= CHUNK:
                        await fh.write(bytes(buffer))
                        done += len(buffer)
                        buffer.clear()
                        if progress is not None:
                            progress(DownloadProgress(
                                artifact=artifact, path=path, done=done, total=total
                            ))
                if buffer:
                    await fh.write(bytes(buffer))
                    done += len(buffer)
            if progress is not None:
                progress(DownloadProgress(artifact=artifact, path=path, done=done, total=total))
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise map_error(exc, method="GET", url=url) from exc
    if total is not None and done != total:
        raise errors.TransportError(
            f"download of {safe_url} ended at byte {done} of {total}; it resumes from there",
            method="GET",
            url=safe_url,
        )
    await aiofiles.os.replace(part, path)
    await _forget_validator(part)


async def _download_with_retries(
    session: aiohttp.ClientSession,
    artifact: Artifact,
    path: Path,
    *,
    timeout: aiohttp.ClientTimeout,
    retry: RetryPolicy,
    rng: random.Random,
    progress: ProgressCallback | None,
    refresh: RefreshArtifact | None,
) -> None:
    """Download one artifact, resuming after broken connections and 5xx; re-sign once on 403."""
    started = time.monotonic()
    attempt = 0
    refreshed = False
    while True:
        attempt += 1
        retry_after: float | None = None
        try:
            await _download_once(
                session, artifact, artifact.url, path, timeout=timeout, progress=progress
            )
        except _Restart:
            await aiofiles.os.remove(_part_path(path))
            await _forget_validator(_part_path(path))
            failure: errors.RunComfyError = errors.TransportError(
                f"{redact_url(artifact.url)} did not continue the partial file; starting over",
                method="GET",
                url=redact_url(artifact.url),
            )
        except errors.PermissionDeniedError:
            # A 403 from storage is an expired or bad signature: a fresh result re-signs it.
            if refresh is None or refreshed:
                raise
            artifact, refreshed = await refresh(artifact), True
            continue
        except errors.RateLimitError as exc:
            failure, retry_after = exc, exc.retry_after
        except (errors.TransportError, errors.ServerError) as exc:
            failure = exc
        else:
            return
        delay = retry.next_delay(
            attempt, elapsed=time.monotonic() - started, retry_after=retry_after, rng=rng
        )
        if delay is None:
            failure.add_note(
                f"gave up after {attempt} attempts; {_part_path(path).name} is kept and "
                "downloading again resumes it"
            )
            raise failure
        await asyncio.sleep(delay)


async def download_artifacts(
    session: aiohttp.ClientSession,
    artifacts: Sequence[Artifact],
    dest: Path,
    *,
    timeout: aiohttp.ClientTimeout,
    retry: RetryPolicy,
    concurrency: int,
    progress: ProgressCallback | None = None,
    refresh: RefreshArtifact | None = None,
) -> list[Path]:
    """Download ``artifacts`` into ``dest`` (``concurrency`` at a time); return their paths.

    Every file is attempted even if another fails; partial files stay as ``.part`` for the next
    run to resume.

    Raises:
        ValidationError: a planned path would leave ``dest``.
        APIError: storage refused a file (the first failure; others are added as notes).
        TransportError: a file could not be fetched after retries.
    """
    paths = plan_paths(dest, artifacts)
    for folder in sorted({p.parent for p in paths}):
        await aiofiles.os.makedirs(folder, exist_ok=True)
    semaphore = asyncio.Semaphore(concurrency)
    rng = random.Random()
    failures: list[tuple[PurePath, Exception]] = []

    async def one(artifact: Artifact, path: Path) -> None:
        """Download one file under the semaphore, recording (not raising) its failure."""
        async with semaphore:
            try:
                await _download_with_retries(
                    session,
                    artifact,
                    path,
                    timeout=timeout,
                    retry=retry,
                    rng=rng,
                    progress=progress,
                    refresh=refresh,
                )
            except (errors.RunComfyError, OSError) as exc:
                failures.append((path, exc))

    async with asyncio.TaskGroup() as group:
        for artifact, path in zip(artifacts, paths, strict=True):
            group.create_task(one(artifact, path))
    if failures:
        first = failures[0][1]
        for failed_path, exc in failures[1:]:
            first.add_note(f"also failed: {failed_path.name}: {exc}")
        raise first
    return paths
