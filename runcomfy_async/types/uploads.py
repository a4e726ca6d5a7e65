"""Dataset uploads (docs/wire.md): per-file results, the report, progress events."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TypeAlias
from urllib.parse import unquote, urlsplit

import attrs

from .._protocol import redact_url
from .progress import ProgressCallback

__all__ = [
    "BytesSent",
    "BytesSource",
    "FailureReason",
    "FileDone",
    "FileFailed",
    "FileResult",
    "FileRetrying",
    "FileStarted",
    "FolderCheck",
    "ProgressCallback",
    "TextSource",
    "URLSource",
    "UploadEndpoints",
    "UploadEvent",
    "UploadItem",
    "UploadMethod",
    "UploadPlanned",
    "UploadReport",
    "UploadTarget",
]


class UploadMethod(enum.StrEnum):
    """How a file travelled: one multipart API call, or a PUT to a signed storage URL."""

    DIRECT = "direct"
    SIGNED_URL = "signed_url"


class FailureReason(enum.StrEnum):
    """Why a file was not uploaded.

    ``FILE_CHANGED``: its size changed after the upload was planned (re-run to pick it up).
    ``REJECTED``: the API or storage refused it (a 4xx other than an expired URL).
    ``URL_EXPIRED``: storage kept refusing fresh signed URLs (403).
    ``NO_UPLOAD_URL``: the API would not hand out a signed URL for it.
    ``NETWORK``: connection errors or timeouts outlasted the retries.
    ``SERVER_ERROR``: 5xx answers outlasted the retries.
    ``SOURCE_FAILED``: a :class:`URLSource`'s remote refused it (4xx), kept failing (5xx or
    connection errors past the retries), or sent another size than it announced.
    """

    FILE_CHANGED = "file_changed"
    REJECTED = "rejected"
    URL_EXPIRED = "url_expired"
    NO_UPLOAD_URL = "no_upload_url"
    NETWORK = "network"
    SERVER_ERROR = "server_error"
    SOURCE_FAILED = "source_failed"


# -- sources other than local files ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BytesSource:
    """Bytes made by code, uploaded under ``name`` (e.g. an image rendered in memory).

    Sent from memory in steps, re-sent whole on a retry; ``name`` follows the same rules as a
    file's base name (a supported extension, no control characters).
    """

    name: str
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen(kw_only=True)
class TextSource:
    """Text made by code, uploaded under ``name``: typically a ``.txt`` caption written by an
    auto-captioning pipeline. Encoded with ``encoding`` (UTF-8 unless told)."""

    name: str
    text: str
    encoding: str = "utf-8"


def _name_from_url(url: str) -> str:
    """The last path segment of ``url``, percent-decoded ("" when the path has none)."""
    return PurePosixPath(unquote(urlsplit(url).path)).name


@attrs.frozen(kw_only=True)
class URLSource:
    """A remote ``http(s)`` file streamed into the dataset, never held whole in memory.

    Fetched without the API token (the remote is not RunComfy); redirects are followed. Its
    size comes from a HEAD request before anything is sent; a remote that announces none is
    first copied to a temporary file (on disk, in MiB steps) and sent from there. A retry
    fetches it again from the start. URL sources always travel by signed URL (a PUT of the
    exact announced size), whatever their size.

    Attributes:
        url: the ``http://`` or ``https://`` address.
        name: the name in the dataset; None takes the URL path's last segment.
    """

    url: str = attrs.field(repr=lambda url: repr(redact_url(url)))
    name: str | None = None

    @property
    def filename(self) -> str:
        """The name in the dataset: ``name``, or the URL path's last segment."""
        return self.name if self.name is not None else _name_from_url(self.url)


#: What ``Dataset.upload`` takes: a local file's path, a source object, or a mapping of names to
#: ``str`` (text, e.g. a caption) or ``bytes`` contents.
UploadItem: TypeAlias = (
    str
    | os.PathLike[str]
    | BytesSource
    | TextSource
    | URLSource
    | Mapping[str, str | bytes]
)


@attrs.frozen(kw_only=True)
class UploadTarget:
    """Where and how to send one file (docs/wire.md): the signature in the URL is the credential.

    Its repr masks the URL's query, which holds the signature.
    """

    upload_url: str = attrs.field(repr=lambda url: repr(redact_url(url)))
    method: str = "PUT"
    headers: dict[str, str] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class UploadEndpoints:
    """The answer of ``get-upload-endpoint``: one target per requested file name."""

    uploads: dict[str, UploadTarget]
    expires_at: datetime | None = None


@attrs.frozen(kw_only=True)
class FileResult:
    """What happened to one local file.

    Attributes:
        filename: the name in the dataset.
        path: the local file (None for a :class:`BytesSource`, :class:`TextSource` or
            :class:`URLSource`).
        size: bytes, as planned.
        method: the transport used (None for a skipped file).
        attempts: sends tried (0 for a skipped file or one that failed before sending).
        reason: why it failed (None unless failed).
        message: the failure in words, naming the fix.
    """

    filename: str
    path: Path | None
    size: int
    method: UploadMethod | None = None
    attempts: int = 0
    reason: FailureReason | None = None
    message: str | None = None


@attrs.frozen(kw_only=True)
class UploadReport:
    """The outcome of ``Dataset.upload`` / ``Dataset.upload_folder``.

    Attributes:
        dataset_id: the dataset uploaded to.
        uploaded: files sent and accepted in this run.
        skipped: files the dataset already held with the same size (resume).
        failed: files not uploaded, each with its reason.
        bytes_sent: file bytes written to the network, retried attempts included.
        api_calls: rate-limited API requests this client sent during the upload (storage PUTs
            are not API calls); includes any other calls made through the client meanwhile.
        elapsed: wall-clock seconds.
    """

    dataset_id: str
    uploaded: tuple[FileResult, ...] = ()
    skipped: tuple[FileResult, ...] = ()
    failed: tuple[FileResult, ...] = ()
    bytes_sent: int = 0
    api_calls: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def summary(self) -> str:
        """One line for logs and CLIs."""
        return (
            f"{len(self.uploaded)} uploaded, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed; {self.bytes_sent} bytes in {self.elapsed:.1f}s "
            f"using {self.api_calls} API call(s)"
        )


@attrs.frozen(kw_only=True)
class FolderCheck:
    """A dataset folder that passed every upload rule (``rc.datasets.check_folder``).

    Attributes:
        path: the folder checked.
        files: the names the upload would send (media and captions), sorted.
        total_bytes: their sizes added up.
    """

    path: Path
    files: tuple[str, ...]
    total_bytes: int


# -- progress events ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class UploadPlanned:
    """Sent once, after validation and the resume check, before any file byte.

    Attributes:
        files: files this run will send.
        total_bytes: their sizes added up.
        skipped_files: files the dataset already holds with the same size (resume).
        skipped_bytes: the skipped files' sizes added up.
    """

    files: int
    total_bytes: int
    skipped_files: int
    skipped_bytes: int


@attrs.frozen(kw_only=True)
class FileStarted:
    """A send of one file begins (a retry starts again, with a new event).

    Attributes:
        filename: the name in the dataset.
        size: the file's bytes.
        method: direct multipart upload or signed-URL PUT.
        attempt: which send this is, counting from 1.
    """

    filename: str
    size: int
    method: UploadMethod
    attempt: int


@attrs.frozen(kw_only=True)
class BytesSent:
    """More of a file went out.

    Attributes:
        filename: the name in the dataset.
        size: the file's bytes.
        sent: bytes of it sent so far in the current attempt (a retry starts again at 0).
        delta: bytes sent since the previous event for this file.
    """

    filename: str
    size: int
    sent: int
    delta: int


@attrs.frozen(kw_only=True)
class FileRetrying:
    """A send failed and will be tried again (its bytes start over).

    Attributes:
        filename: the name in the dataset.
        attempt: the send that failed, counting from 1.
        delay: seconds until the next send.
        message: why the send failed.
    """

    filename: str
    attempt: int
    delay: float
    message: str


@attrs.frozen(kw_only=True)
class FileDone:
    """One file was accepted by the service.

    Attributes:
        filename: the name in the dataset.
        size: the file's bytes.
        method: direct multipart upload or signed-URL PUT.
        attempts: sends it took (1 when the first one went through).
    """

    filename: str
    size: int
    method: UploadMethod
    attempts: int


@attrs.frozen(kw_only=True)
class FileFailed:
    """One file could not be uploaded; the others carry on.

    Attributes:
        filename: the name in the dataset.
        size: the file's bytes.
        reason: why, as a :class:`FailureReason`.
        message: the failure in words, naming the fix.
    """

    filename: str
    size: int
    reason: FailureReason
    message: str


UploadEvent: TypeAlias = (
    UploadPlanned | FileStarted | BytesSent | FileRetrying | FileDone | FileFailed
)
