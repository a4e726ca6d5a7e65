"""Arguments of the deployment calls, checked before anything is sent.

Ids become single path segments, ``includes`` is ``payload`` and/or ``readme``, and the settings
of a create or update are bounded by the widest documented limits: the service decides the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final
from urllib.parse import quote

from .. import errors
from .._rules import DEPLOYMENT_MAX_INSTANCES, DEPLOYMENT_MIN_INSTANCES
from ..types.deployments import Hardware

__all__ = ["check_id", "check_includes", "deployment_fields"]

_INCLUDES: Final = frozenset({"payload", "readme"})
#: A SKU this library does not list yet still looks like ``FAMILY_MEMORY[_TIER]``.
_SKU_SHAPE: Final = re.compile(r"[A-Z]+_[0-9]+(?:_[A-Z]+)?")


def check_id(value: object, what: str) -> str:
    """A non-empty id without whitespace, as one quoted path segment."""
    if not isinstance(value, str) or not value or value != value.strip() or "/" in value:
        raise errors.ValidationError(
            f"{what} {value!r} must be a non-empty string without slashes or surrounding "
            f"whitespace (copy it from `runcomfy deployments list` or the submit answer)"
        )
    return quote(value, safe="")


def check_includes(includes: str | Iterable[str] | None) -> list[str]:
    """``includes`` as the list of repeatable query values (``payload`` and/or ``readme``)."""
    if includes is None:
        return []
    values = [includes] if isinstance(includes, str) else list(includes)
    unknown = [v for v in values if v not in _INCLUDES]
    if unknown:
        raise errors.ValidationError(
            f"includes may name 'payload' (the deployed workflow) and 'readme', got {unknown!r}"
        )
    return sorted(set(values))


def _hardware(value: object) -> list[str]:
    """``hardware`` as the one-SKU array the service takes."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 1:
            raise errors.ValidationError(
                f"hardware takes exactly one SKU (the service accepts no more for now), got "
                f"{list(value)!r}; pass e.g. hardware='AMPERE_48'"
            )
        value = value[0]
    known = [h.value for h in Hardware]
    if not isinstance(value, str) or not _SKU_SHAPE.fullmatch(value):
        raise errors.ValidationError(
            f"hardware {value!r} is not a GPU SKU; pass one of {', '.join(known)}"
        )
    return [value]


def _count(value: object, name: str, allowed: range, fix: str) -> int:
    """An int within ``allowed``, or an error saying the bounds and the fix."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise errors.ValidationError(
            f"{name} must be an integer from {allowed.start} to {allowed.stop - 1}, got "
            f"{value!r}; {fix}"
        )
    return value


def deployment_fields(
    *,
    name: str | None = None,
    workflow_version: str | None = None,
    hardware: str | Sequence[str] | None = None,
    min_instances: int | None = None,
    max_instances: int | None = None,
    queue_size: int | None = None,
    keep_warm_duration_in_seconds: int | None = None,
) -> dict[str, Any]:
    """The JSON fields of a create or update, each checked; ``None`` means "not sent".

    Instance bounds are checked against the widest documented ones (0-30 and 1-60): the
    vendor's pages say 0-3 and 1-10, its own tool schema 0-30 and 1-60, so anything between
    is left for the service to accept or refuse.

    Raises:
        ValidationError: an empty name or version, not exactly one SKU, instance counts out of
            bounds or ``min_instances`` above ``max_instances``, a queue size below 1, a
            negative keep-warm.
    """
    body: dict[str, Any] = {}
    for key, value in (("name", name), ("workflow_version", workflow_version)):
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise errors.ValidationError(f"{key} must be a non-empty string, got {value!r}")
            body[key] = value
    if hardware is not None:
        body["hardware"] = _hardware(hardware)
    if min_instances is not None:
        body["min_instances"] = _count(
            min_instances, "min_instances", DEPLOYMENT_MIN_INSTANCES,
            "0 lets the deployment scale to zero when idle",
        )
    if max_instances is not None:
        body["max_instances"] = _count(
            max_instances, "max_instances", DEPLOYMENT_MAX_INSTANCES,
            "it caps how many instances run at once",
        )
    if min_instances is not None and max_instances is not None and min_instances > max_instances:
        raise errors.ValidationError(
            f"min_instances ({min_instances}) is above max_instances ({max_instances}); "
            "raise max_instances or lower min_instances"
        )
    if queue_size is not None:
        body["queue_size"] = _count(
            queue_size, "queue_size", range(1, 2**31), "it is how many requests may wait"
        )
    if keep_warm_duration_in_seconds is not None:
        body["keep_warm_duration_in_seconds"] = _count(
            keep_warm_duration_in_seconds, "keep_warm_duration_in_seconds", range(2**31),
            "0 shuts an idle instance down at once",
        )
    return body


