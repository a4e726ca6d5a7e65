"""Dataset upload planning: pure functions and data, no I/O beyond listing and stat-ing files.

Which files are valid (types, sizes, name collisions, caption pairs), which the dataset already
holds (resume), which go direct and which by signed URL. A bad set raises
:class:`~runcomfy_async.errors.DatasetValidationError` listing every problem before any request
is sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import aiofiles.os
import attrs

from . import errors
from ._media import CONTENT_TYPES, content_type_for, stem, unpaired_files
from ._rules import DIRECT_UPLOAD_LIMIT, MAX_UPLOAD_URLS_PER_REQUEST

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DIRECT_UPLOAD_LIMIT",
    "MAX_BATCH_SIZE",
    "Plan",
    "ScannedFile",
    "UploadSource",
    "changed_message",
    "check_batch_size",
    "content_type_for",
    "plan_uploads",
    "scan_folder",
    "scan_paths",
    "set_problems",
    "to_sources",
    "unreadable_message",
]

#: Files per ``get-upload-endpoint`` call by default: 1,000 files cost two API calls.
DEFAULT_BATCH_SIZE: Final = 500
#: The most files one ``get-upload-endpoint`` call may name.
MAX_BATCH_SIZE: Final = MAX_UPLOAD_URLS_PER_REQUEST


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
    """One file to upload, re-read from its origin for every attempt: a local file (re-opened),
    bytes in memory (``data``), or a remote URL (``url``, fetched again).

    Attributes:
        path: the local file (for a URL source, its temporary copy if the remote announced no
            size; None for in-memory bytes or a URL streamed as it is fetched).
        filename: its name in the dataset (the base name of ``path``, or the source's name).
        size: bytes when planned; the upload is refused if this changes.
        content_type: sent with the file, from its extension.
        data: the bytes of an in-memory source.
        url: the remote address of a URL source.
    """

    path: Path | None
    filename: str
    size: int
    content_type: str
    data: bytes | None = attrs.field(default=None, repr=False)
    url: str | None = attrs.field(default=None, repr=False)

    @property
    def local_path(self) -> Path | None:
        """The user's own file, if this source is one (not bytes, a URL or its copy)."""
        return self.path if self.url is None else None

    async def changed(self) -> str | None:
        """Why the file no longer matches its plan (unreadable, other size), or None."""
        if self.path is None or self.url is not None:
            return None  # memory does not change; a URL's copy is ours; a stream is checked live
        try:
            size = (await aiofiles.os.stat(self.path)).st_size
        except OSError as exc:
            return unreadable_message(self, exc)
        if size != self.size:
            return changed_message(self, size)
        return None


def unreadable_message(source: UploadSource, exc: OSError) -> str:
    return f"{source.path} can no longer be read ({exc.strerror or exc}); restore it and re-run"


def changed_message(source: UploadSource, now: int | str) -> str:
    return (
        f"{source.path} changed while uploading (planned {source.size} bytes, now {now}); "
        "it was not uploaded: re-run the upload to send the current version"
    )


@attrs.frozen(kw_only=True)
class ScannedFile:
    """A file found on disk or a source given in code, before validation (size None if a file
    could not be read, or for a URL whose size is not asked for yet)."""

    path: Path | None
    filename: str
    size: int | None
    error: str | None = None
    data: bytes | None = attrs.field(default=None, repr=False)
    url: str | None = attrs.field(default=None, repr=False)


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
        if f.error is not None or (f.size is None and f.url is None):
            problems.append(
                f"{f.path or f.filename}: cannot read it ({f.error}); fix permissions or remove it"
            )
            continue
        if not f.filename or "/" in f.filename or "\\" in f.filename:
            problems.append(
                f"{f.filename!r}: not a file name; name it without folders, e.g. 'dog_01.jpg'"
            )
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
    """The caption rule both ways (docs/wire.md), one line per file that breaks it."""
    unpaired = unpaired_files(names)
    problems = [
        f"{n}: no caption {stem(n)}.txt; write one (each image/video needs a .txt caption with "
        "the same base name)"
        for n in unpaired.media
    ]
    problems.extend(
        f"{n}: caption without an image or video named {stem(n)}.*; add the media or remove it"
        for n in unpaired.captions
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
            data=f.data,
            url=f.url,
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
            name overwrites, docs/wire.md).
        direct_limit: files up to this many bytes go direct, larger by signed URL; None sends
            every file by signed URL (bulk: many files per API call). A URL streamed as it is
            fetched always goes by signed URL: a plain PUT of its exact size.
    """
    direct: list[UploadSource] = []
    signed: list[UploadSource] = []
    skipped: list[UploadSource] = []
    for source in sources:
        if existing is not None and existing.get(source.filename) == source.size:
            skipped.append(source)
        elif (
            direct_limit is not None
            and source.size <= direct_limit
            and not (source.url is not None and source.path is None)
        ):
            direct.append(source)
        else:
            signed.append(source)
    return Plan(direct=tuple(direct), signed=tuple(signed), skipped=tuple(skipped))
