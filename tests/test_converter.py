"""The converter: lenient on unknown fields, keeps unknown statuses, aware timestamps."""

from __future__ import annotations

from datetime import UTC

import pytest

from runcomfy_async import errors
from runcomfy_async._converter import make_converter, structure
from runcomfy_async.types.datasets import DatasetInfo, DatasetStatus

SAMPLE = {
    "id": "5b0c2a8e",
    "name": "my-dog-dataset",
    "status": "READY",
    "created_at": "2025-07-01T12:00:00.123456+00:00",
    "updated_at": "2025-07-01T12:03:10.654321+00:00",
    "error": None,
    "files": [{"filename": "dog_01.jpg", "size_bytes": 183422}],
}


def test_recorded_sample_structures_strictly() -> None:
    """The documented sample structures with extra keys forbidden (every field is modelled)."""
    info = make_converter(strict=True).structure(SAMPLE, DatasetInfo)
    assert info.status is DatasetStatus.READY
    assert info.files[0].size_bytes == 183422
    assert info.created_at is not None and info.created_at.tzinfo is not None


def test_unknown_fields_are_ignored() -> None:
    """Fields the library does not know are ignored in production."""
    info = structure({**SAMPLE, "brand_new": {"x": 1}}, DatasetInfo, what="dataset")
    assert info.id == "5b0c2a8e"


def test_unknown_status_is_kept() -> None:
    """An unknown status value is kept as a usable, non-crashing pseudo-member."""
    info = structure({**SAMPLE, "status": "ARCHIVED"}, DatasetInfo, what="dataset")
    assert info.status == "ARCHIVED"
    assert not info.status.known
    assert info.status is not DatasetStatus.READY


def test_status_is_case_insensitive() -> None:
    """`ready` and `READY` are the same status."""
    assert DatasetStatus("ready") is DatasetStatus.READY


def test_naive_and_z_timestamps_are_aware() -> None:
    """'Z' and naive timestamps parse to UTC-aware datetimes."""
    info = structure(
        {"id": "a", "created_at": "2025-07-01T12:00:00Z", "updated_at": "2025-07-01T12:00:00"},
        DatasetInfo,
        what="dataset",
    )
    assert info.created_at is not None and info.created_at.tzinfo is UTC
    assert info.updated_at is not None and info.updated_at.utcoffset() is not None


def test_bad_shape_raises_our_error() -> None:
    """A shape we cannot read raises UnexpectedResponseError, never KeyError/TypeError."""
    with pytest.raises(errors.UnexpectedResponseError):
        structure({"name": "no id"}, DatasetInfo, what="dataset")
    with pytest.raises(errors.UnexpectedResponseError):
        structure(["not", "a", "dict"], DatasetInfo, what="dataset")
