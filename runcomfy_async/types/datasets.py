"""Trainer datasets (docs/wire.md): status values and dataset snapshots."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from ._base import OpenStrEnum

__all__ = ["DatasetFile", "DatasetInfo", "DatasetStatus"]


class DatasetStatus(OpenStrEnum):
    """DRAFT -> UPLOADING -> READY, or FAILED with an error (unknown values are kept)."""

    DRAFT = "DRAFT"
    UPLOADING = "UPLOADING"
    READY = "READY"
    FAILED = "FAILED"


@attrs.frozen(kw_only=True)
class DatasetFile:
    """One file the dataset holds: only completed uploads are listed."""

    filename: str
    size_bytes: int | None = None


@attrs.frozen(kw_only=True)
class DatasetInfo:
    """A snapshot of a dataset as the server described it."""

    id: str
    name: str | None = None
    status: DatasetStatus = DatasetStatus.DRAFT
    files: tuple[DatasetFile, ...] = ()
    error: Any = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def sizes(self) -> dict[str, int | None]:
        """``{filename: size_bytes}`` of the listed files."""
        return {f.filename: f.size_bytes for f in self.files}
