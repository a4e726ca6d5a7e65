"""The single cattrs converter that turns API JSON into the frozen data classes.

Lenient in production (unknown keys ignored, see docs/wire.md), strict on demand for our tests
(``make_converter(strict=True)`` forbids extra keys, so a recorded sample with a field we do not
model is noticed). Timestamps become timezone-aware datetimes; naive ones are taken as UTC.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.preconf.json import make_converter as _json_converter

from . import errors
from .types._base import OpenStrEnum

__all__ = ["converter", "make_converter", "structure", "to_jsonable"]

T = TypeVar("T")


def _structure_datetime(value: Any, _: type) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        # Epoch seconds, or milliseconds as ComfyUI sends them.
        seconds = value / 1000 if value > 10**11 else value
        parsed = datetime.fromtimestamp(seconds, tz=UTC)
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    else:
        raise TypeError(f"expected an ISO 8601 timestamp, got {type(value).__name__}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def make_converter(*, strict: bool = False) -> cattrs.Converter:
    """A converter with our hooks; ``strict`` forbids keys the data classes do not declare."""
    conv = _json_converter(forbid_extra_keys=strict, detailed_validation=True)
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_unstructure_hook(datetime, lambda dt: dt.isoformat())
    conv.register_structure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, OpenStrEnum),
        lambda value, cls: cls(str(value)),
    )
    return conv


converter = make_converter()


def structure(data: Any, cls: type[T], *, what: str) -> T:
    """Structure ``data`` as ``cls``; a shape we cannot read becomes our error, never a KeyError."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
        detail = "; ".join(cattrs.transform_error(exc)) if isinstance(
            exc, cattrs.BaseValidationError
        ) else str(exc)
        raise errors.UnexpectedResponseError(
            f"could not read the {what} the server sent: {detail}", status=200
        ) from exc


def to_jsonable(value: object) -> Any:
    """Any of the library's data objects, or containers of them, as plain JSON-ready data.

    Data classes become dicts of their fields (as the API names them), enums their values,
    datetimes ISO 8601 strings, paths strings, tuples and sets lists; dict keys become strings.
    The result goes straight into ``json.dumps``: ``json.dumps(to_jsonable(await job.result()))``.

    Args:
        value: a data object (``JobStatus``, ``UploadReport``...), or a dict, list, tuple or set
            holding them, or a plain JSON value (returned as it is).

    Raises:
        TypeError: something without a JSON form (a handle, a client, an arbitrary object).
    """
    if attrs.has(type(value)):
        return to_jsonable(converter.unstructure(value))
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(
        f"{type(value).__name__} has no JSON form; pass data objects (such as JobStatus), "
        "not handles or clients"
    )
