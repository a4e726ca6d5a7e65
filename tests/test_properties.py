"""Property tests (hypothesis): the converter and download-name sanitising.

The converter structures any shape the wire allows for each data class (unknown fields, unknown
status values, timestamps with or without offset, ``null`` for optional fields), and any other
JSON raises our :class:`UnexpectedResponseError` -- never a raw KeyError or TypeError. File
names from the server never escape the destination, are never absolute, never empty.
"""

from __future__ import annotations

import contextlib
import string
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runcomfy_async import errors
from runcomfy_async._converter import structure
from runcomfy_async._downloads import plan_paths, safe_name
from runcomfy_async.types.datasets import DatasetInfo
from runcomfy_async.types.jobs import Artifact, JobStatus
from runcomfy_async.types.machines import MachineInfo, Workflow
from runcomfy_async.types.models import RequestResult, RequestStatus
from runcomfy_async.types.uploads import UploadEndpoints

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
#: unknown fields the server may add (docs/wire.md: "unknown fields are ignored")
extras = st.dictionaries(st.text(min_size=1).map(lambda k: "x_" + k), json_values, max_size=3)
ids = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=40)
urls = st.builds(lambda p: f"https://storage.example/{p}?sig=abc", ids)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7))])
aware = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)
timestamps = st.none() | st.one_of(
    st.builds(lambda d, tz: d.astimezone(tz).isoformat(), aware, offsets),
    aware.map(lambda d: d.isoformat().replace("+00:00", "Z")),
    aware.map(lambda d: d.replace(tzinfo=None).isoformat()),
    aware.map(lambda d: int(d.timestamp())),
)


def status(*known: str) -> st.SearchStrategy[str]:
    """A documented status in any case, or a value the docs do not list (kept, not a crash)."""
    spelled = st.sampled_from(known).flatmap(
        lambda s: st.sampled_from([s, s.lower(), s.upper(), s.title()])
    )
    return spelled | st.text(min_size=1, max_size=20)


def shaped(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object: the required fields, any subset of the optional ones, and extras."""
    return st.fixed_dictionaries(required, optional=optional).flatmap(
        lambda body: extras.map(lambda more: {**more, **body})
    )


progress = st.none() | shaped(
    {},
    {
        "percent": st.none() | st.integers(0, 100) | st.floats(0, 100),
        "current_step": st.none() | st.integers(0, 10**6),
        "total_steps": st.none() | st.integers(1, 10**6),
    },
)
errors_any = st.none() | st.text() | st.dictionaries(st.text(), json_scalars, max_size=3)

SHAPES: dict[type, st.SearchStrategy[dict[str, Any]]] = {
    DatasetInfo: shaped(
        {"id": ids},
        {
            "name": st.none() | ids,
            "status": status("DRAFT", "UPLOADING", "READY", "FAILED"),
            "files": st.lists(
                shaped({"filename": ids}, {"size_bytes": st.none() | st.integers(0, 10**12)}),
                max_size=5,
            ),
            "error": errors_any,
            "created_at": timestamps,
            "updated_at": timestamps,
        },
    ),
    JobStatus: shaped(
        {"id": ids},
        {
            "name": st.none() | ids,
            "status": status("IN_QUEUE", "RUNNING", "STOPPED", "FAILED", "CANCELED", "cancelled"),
            "progress": progress,
            "error": errors_any,
            "created_at": timestamps,
            "started_at": timestamps,
            "finished_at": timestamps,
            "result_url": st.none() | urls,
        },
    ),
    RequestStatus: shaped(
        {
            "request_id": ids,
            "status": status("in_queue", "in_progress", "completed", "cancelled", "canceled"),
        },
        {
            "queue_position": st.none() | st.integers(0, 10**4),
            "status_url": st.none() | urls,
            "result_url": st.none() | urls,
        },
    ),
    RequestResult: shaped(
        {
            "request_id": ids,
            "status": status("succeeded", "failed", "cancelled", "completed", "in_queue"),
        },
        {
            "output": json_values,
            "error": errors_any,
            "created_at": timestamps,
            "finished_at": timestamps,
            "model_id": st.none() | ids,
            "cost": st.none() | st.floats(0, 100) | st.integers(0, 100),
        },
    ),
    MachineInfo: shaped(
        {"server_id": ids, "current_status": status("Initializing", "Ready", "Stopping")},
        {
            "user_id": st.none() | ids,
            "server_type": st.none() | st.sampled_from(["medium", "large", "2x-large"]),
            "estimated_duration": st.none() | st.integers(1, 10**6),
            "workflow_version_id": st.none() | ids,
            "main_service_url": st.none() | urls,
            "service_ready_at": timestamps,
            "estimated_stopping_at": timestamps,
        },
    ),
    Workflow: shaped(
        {"workflow_id": ids},
        {
            "name": st.none() | ids,
            "version_id": st.none() | ids,
            "created_at": timestamps,
            "updated_at": timestamps,
        },
    ),
    UploadEndpoints: shaped(
        {
            "uploads": st.dictionaries(
                ids,
                shaped(
                    {"upload_url": urls},
                    {
                        "method": st.sampled_from(["PUT", "POST"]),
                        "headers": st.dictionaries(st.sampled_from(["Content-Type"]), ids),
                    },
                ),
                max_size=4,
            )
        },
        {"expires_at": timestamps},
    ),
}
KEYS = {
    DatasetInfo: "id",
    JobStatus: "id",
    RequestStatus: "request_id",
    RequestResult: "request_id",
    MachineInfo: "server_id",
    Workflow: "workflow_id",
}
CLASSES = list(SHAPES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_documented_shapes_structure(cls: type, data: st.DataObject) -> None:
    """Any shape the wire allows structures; ids are kept; timestamps come out timezone-aware."""
    payload = data.draw(SHAPES[cls])
    value: Any = structure(payload, cls, what=cls.__name__)
    if cls in KEYS:
        assert getattr(value, KEYS[cls]) == payload[KEYS[cls]]
    for name in ("created_at", "updated_at", "started_at", "finished_at", "service_ready_at"):
        stamp = getattr(value, name, None)
        assert stamp is None or stamp.tzinfo is not None


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=200, deadline=None)
@given(payload=json_values)
def test_any_json_structures_or_raises_our_error(cls: type, payload: Any) -> None:
    """Any JSON at all either structures or raises UnexpectedResponseError, nothing else."""
    with contextlib.suppress(errors.UnexpectedResponseError):  # anything else fails the test
        structure(payload, cls, what=cls.__name__)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_documented_shape_with_one_field_broken(cls: type, data: st.DataObject) -> None:
    """A documented object with one field replaced by any JSON structures or raises our error."""
    payload = data.draw(SHAPES[cls])
    if payload:
        key = data.draw(st.sampled_from(sorted(payload)))
        payload[key] = data.draw(json_values)
    with contextlib.suppress(errors.UnexpectedResponseError):  # anything else fails the test
        structure(payload, cls, what=cls.__name__)


# -- file-name sanitising ----------------------------------------------------------------------

hostile = st.text() | st.sampled_from(
    ["..", ".", "../../etc/passwd", "/etc/passwd", "C:\\Windows\\x", "con", "NUL.txt", " ", ""]
)


@settings(max_examples=500, deadline=None)
@given(raw=hostile)
def test_safe_name_is_one_plain_relative_segment(raw: str) -> None:
    """A sanitised name is non-empty, one segment, not hidden or dotted, short, plain ASCII."""
    name = safe_name(raw)
    assert name
    assert "/" not in name and "\\" not in name and "\0" not in name
    assert name not in (".", "..")
    assert not name.startswith((".", "-"))
    assert len(name) <= 150
    assert set(name) <= set(string.ascii_letters + string.digits + "._-")
    assert not PurePosixPath(name).is_absolute()
    assert safe_name(name) == name  # stable


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=st.lists(st.tuples(hostile, hostile), max_size=8))
def test_planned_paths_stay_inside_dest_and_never_collide(
    tmp_path: Path, items: list[tuple[str, str]]
) -> None:
    """Every planned download path lies inside dest, distinct even ignoring case."""
    artifacts = [Artifact(kind=kind, url="https://s.example/a", name=name) for kind, name in items]
    dest = tmp_path / "out"
    paths = plan_paths(dest, artifacts)
    root = dest.resolve()
    assert len(paths) == len(artifacts)
    for path in paths:
        assert path.is_absolute() and path.is_relative_to(root)
        assert path.parent.parent == root
        assert path.name and path.parent.name
    assert len({str(p).casefold() for p in paths}) == len(paths)
