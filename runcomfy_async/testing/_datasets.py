"""The datasets store: records, files, and the lifecycle docs/wire.md describes, computed lazily.

Status is derived from timestamps whenever a dataset is read (no background tasks):
DRAFT until a file arrives; UPLOADING while files arrive, while a signed URL for the dataset is
outstanding (not yet used and not expired), or for ``processing_seconds`` (scaled by speed)
after the last file; then READY, or FAILED if the caption rule is broken. FAILED is sticky until
another file arrives.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._media import CAPTION_TYPES, CONTENT_TYPES, content_type_for, unpaired_files
from ._storage import StorageError, StoredObject

if TYPE_CHECKING:
    from ._clock import Clock
    from ._storage import ObjectStorage, SignedUpload

__all__ = [
    "BUCKET",
    "CAPTION_TYPES",
    "DatasetRecord",
    "DatasetStatus",
    "DatasetStore",
    "NameTaken",
    "caption_problem",
    "content_type_for",
    "filename_problem",
    "name_problem",
]

BUCKET: Final = "datasets"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME_LENGTH: Final = 128


class DatasetStatus(enum.StrEnum):
    """The documented dataset statuses."""

    DRAFT = "DRAFT"
    UPLOADING = "UPLOADING"
    READY = "READY"
    FAILED = "FAILED"


class NameTaken(Exception):
    """A dataset with this name already exists in the account."""


def filename_problem(filename: str) -> str | None:
    """Why ``filename`` cannot be a dataset file (a plain basename, supported type), or None."""
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename:
        return f"{filename!r} must be a plain file name without directories"
    if any(ord(c) < 32 for c in filename):
        return f"{filename!r} contains control characters"
    if content_type_for(filename) is None:
        supported = " ".join(sorted(e.lstrip(".") for e in CONTENT_TYPES))
        return f"{filename!r} has an unsupported file type; supported: {supported}"
    return None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a dataset (it becomes a mount path segment), or None."""
    if not name:
        return "name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"name must be at most {MAX_NAME_LENGTH} characters"
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        return "name may only contain letters, digits, '.', '_' and '-'"
    return None


def caption_problem(filenames: list[str]) -> str | None:
    """The caption rule, worded as the service fails a dataset for it (None: the set is sound)."""
    unpaired = unpaired_files(filenames)
    missing, orphans = sorted(unpaired.media), sorted(unpaired.captions)
    if not missing and not orphans:
        return None
    parts = []
    if missing:
        parts.append("missing captions for " + ", ".join(missing))
    if orphans:
        parts.append("captions without a matching image or video: " + ", ".join(orphans))
    return (
        "Caption pairing failed: "
        + "; ".join(parts)
        + " (each image/video needs a .txt caption with the same base name)"
    )


@attrs.define(kw_only=True)
class StoredFile:
    """A completed dataset file."""

    filename: str
    size: int
    sha256: str
    received_at: float


@attrs.define(kw_only=True)
class DatasetRecord:
    """One dataset and the timestamps its status is derived from."""

    id: str
    name: str
    created_at: float
    updated_at: float
    files: dict[str, StoredFile] = attrs.Factory(dict)
    last_file_at: float | None = None
    #: signature -> (filename, expiry) of signed URLs not yet used
    outstanding: dict[str, tuple[str, float]] = attrs.Factory(dict)
    last_expiry: float = 0.0
    ready: bool = False
    error: str | None = None


class DatasetStore:
    """Every dataset of the account; also the upload sink of the ``datasets`` bucket."""

    def __init__(self, *, clock: Clock, storage: ObjectStorage, processing_seconds: float) -> None:
        self.clock = clock
        self.storage = storage
        self.processing_seconds = processing_seconds
        self._datasets: dict[str, DatasetRecord] = {}
        storage.register_sink(BUCKET, self)

    # -- records -------------------------------------------------------------------------

    def create(self, dataset_id: str, name: str) -> DatasetRecord:
        """Add a DRAFT dataset; raise :class:`NameTaken` if the name is in use."""
        if any(d.name == name for d in self._datasets.values()):
            raise NameTaken(name)
        now = self.clock.time()
        record = DatasetRecord(id=dataset_id, name=name, created_at=now, updated_at=now)
        self._datasets[dataset_id] = record
        return record

    def __contains__(self, dataset_id: object) -> bool:
        """Whether a dataset with this id exists."""
        return dataset_id in self._datasets

    def get(self, dataset_id: str) -> DatasetRecord:
        """The dataset with this id, settled to now; ``KeyError`` if unknown."""
        record = self._datasets[dataset_id]
        self._settle(record)
        return record

    def all(self) -> list[DatasetRecord]:
        """Every dataset, oldest first, settled to now."""
        records = sorted(self._datasets.values(), key=lambda d: d.created_at)
        for record in records:
            self._settle(record)
        return records

    def delete(self, dataset_id: str) -> DatasetRecord:
        """Forget a dataset (the caller removes its files); ``KeyError`` if unknown."""
        return self._datasets.pop(dataset_id)

    def fail(self, dataset_id: str, error: str) -> None:
        """Force FAILED with ``error`` (sticky until another file arrives)."""
        record = self._datasets[dataset_id]
        record.error = error
        record.ready = False
        record.updated_at = self.clock.time()

    def stored_files(self, dataset_id: str) -> dict[str, tuple[int, str]]:
        """``{filename: (size, sha256)}`` of the dataset's completed files."""
        record = self._datasets[dataset_id]
        return {f.filename: (f.size, f.sha256) for f in record.files.values()}

    # -- lifecycle -----------------------------------------------------------------------

    def status(self, record: DatasetRecord) -> DatasetStatus:
        """The status of a settled record."""
        if record.error is not None:
            return DatasetStatus.FAILED
        if record.last_file_at is None:
            return DatasetStatus.DRAFT
        return DatasetStatus.READY if record.ready else DatasetStatus.UPLOADING

    def _settle(self, record: DatasetRecord) -> None:
        """Apply, as of now, the transitions the timestamps imply."""
        now = self.clock.time()
        for sig, (_, expires) in list(record.outstanding.items()):
            if now > expires:
                del record.outstanding[sig]
                record.last_expiry = max(record.last_expiry, expires)
        if record.error is not None or record.last_file_at is None or record.ready:
            return
        if record.outstanding:
            return
        ready_at = max(
            record.last_file_at + self.clock.real(self.processing_seconds), record.last_expiry
        )
        if now < ready_at:
            return
        record.updated_at = ready_at
        problem = caption_problem(list(record.files))
        if problem is None:
            record.ready = True
        else:
            record.error = problem

    def issue_upload(self, record: DatasetRecord, filename: str, size: int) -> SignedUpload:
        """Sign a PUT URL for one file; the dataset waits for it until used or expired."""
        upload = self.storage.sign_put(BUCKET, f"{record.id}/{filename}", size)
        record.outstanding[upload.signature] = (filename, upload.expires)
        return upload

    def add_file(self, dataset_id: str, filename: str, obj: StoredObject) -> DatasetRecord:
        """Record a completed file (same name overwrites); the dataset is UPLOADING again."""
        record = self._datasets[dataset_id]
        now = self.clock.time()
        record.files[filename] = StoredFile(
            filename=filename, size=obj.size, sha256=obj.sha256, received_at=now
        )
        record.last_file_at = now
        record.updated_at = now
        record.ready = False
        record.error = None
        return record

    # -- UploadSink ------------------------------------------------------------------------

    def _split(self, key: str) -> tuple[str, str]:
        """``{dataset_id}/{filename}`` of an existing dataset, else a storage 404."""
        dataset_id, _, filename = key.partition("/")
        if dataset_id not in self._datasets or filename_problem(filename) is not None:
            raise StorageError(404, "NoSuchKey", f"No dataset upload target {key!r}.")
        return dataset_id, filename

    def accept(self, key: str) -> None:
        """Check, before the body is read, that the dataset still exists."""
        self._split(key)

    def commit(self, key: str, obj: StoredObject, signature: str) -> None:
        """A signed PUT finished: the file joins the dataset; its URL is used up.

        Older unused URLs for the same file (from an interrupted run that a resumed one
        replaced) are dropped too, so they no longer hold the dataset in UPLOADING.
        """
        dataset_id, filename = self._split(key)
        record = self.add_file(dataset_id, filename, obj)
        record.outstanding.pop(signature, None)
        for sig, (name, _) in list(record.outstanding.items()):
            if name == filename:
                del record.outstanding[sig]

    # -- wire shapes -----------------------------------------------------------------------

    def to_json(self, record: DatasetRecord, *, files: bool = False) -> dict[str, Any]:
        """The documented dataset object (docs/wire.md)."""
        body: dict[str, Any] = {
            "id": record.id,
            "name": record.name,
            "status": self.status(record).value,
            "created_at": self.clock.iso(record.created_at),
            "updated_at": self.clock.iso(record.updated_at),
            "error": record.error,
        }
        if files:
            body["files"] = [
                {"filename": f.filename, "size_bytes": f.size}
                for f in sorted(record.files.values(), key=lambda f: f.filename)
            ]
        return body
