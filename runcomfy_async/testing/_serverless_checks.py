"""What the emulated Serverless API checks in a request, as the service does (422001 otherwise).

Deployment settings (one known SKU, instance bounds, queue size, keep-warm, a workflow of the
account), overrides against the deployed workflow (known nodes and inputs; media values as
well-formed URLs or base64 data URIs), inline workflows and webhook URLs.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from ..types.deployments import Hardware
from ._wire import field_error, validation_error

if TYPE_CHECKING:
    from ._state import EmulatorState

__all__ = ["apply_overrides", "check_fields", "check_limits", "check_workflow", "webhook_url"]

_SKUS: Final = frozenset(h.value for h in Hardware)
_DEFAULTS: Final = MappingProxyType(
    {
        "min_instances": 0,
        "max_instances": 1,
        "queue_size": 1,
        "keep_warm_duration_in_seconds": 60,
    }
)
_PATCHABLE: Final = frozenset({"name", "workflow_version", "hardware", *_DEFAULTS, "is_enabled"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fields(
    body: Mapping[str, Any], state: EmulatorState, *, creating: bool
) -> dict[str, Any]:
    """The deployment fields of a create or patch body, or a 422 listing every problem."""
    problems: list[dict[str, Any]] = []
    fields: dict[str, Any] = {}
    allowed = {"workflow_id", *_PATCHABLE} - ({"is_enabled"} if creating else {"workflow_id"})
    for key in body:
        if key not in allowed:
            problems.append(field_error(["body", key], "extra fields not permitted"))
    required = ("name", "workflow_id", "workflow_version", "hardware") if creating else ()
    for key in required:
        if key not in body:
            problems.append(field_error(["body", key], "field required", "value_error.missing"))
    for key in ("name", "workflow_id", "workflow_version"):
        if key in body and key in allowed:
            if not isinstance(body[key], str) or not body[key].strip():
                problems.append(field_error(["body", key], "must be a non-empty string"))
            else:
                fields[key] = body[key]
    if "hardware" in body:
        hardware = body["hardware"]
        if not isinstance(hardware, list) or len(hardware) != 1:
            problems.append(field_error(["body", "hardware"], "exactly one hardware SKU"))
        elif hardware[0] not in _SKUS:
            problems.append(
                field_error(["body", "hardware", 0], f"unknown SKU; one of {sorted(_SKUS)}")
            )
        else:
            fields["hardware"] = hardware
    for key, default in _DEFAULTS.items():
        value = body.get(key, default if creating else None)
        if value is None and not creating:
            continue
        if not _is_int(value) or value < 0:
            problems.append(field_error(["body", key], "must be an integer >= 0"))
        else:
            fields[key] = value
    if "is_enabled" in body and "is_enabled" in allowed:
        if not isinstance(body["is_enabled"], bool):
            problems.append(field_error(["body", "is_enabled"], "must be a boolean"))
        else:
            fields["is_enabled"] = body["is_enabled"]
    if "workflow_id" in fields:
        known = {w["workflow_id"] for w in state.machines.workflows}
        if fields["workflow_id"] not in known:
            problems.append(
                field_error(["body", "workflow_id"], "no cloud-saved workflow with this id")
            )
    if problems:
        raise validation_error(problems)
    return fields


def check_limits(settings: Mapping[str, Any], state: EmulatorState) -> None:
    """Instance bounds and queue size of the settings a deployment would end up with."""
    low, high = state.deployments.instance_limits
    problems = []
    if settings["min_instances"] not in low:
        problems.append(
            field_error(["body", "min_instances"], f"must be {low.start}..{low.stop - 1}")
        )
    if settings["max_instances"] not in high:
        problems.append(
            field_error(["body", "max_instances"], f"must be {high.start}..{high.stop - 1}")
        )
    if settings["min_instances"] > settings["max_instances"]:
        problems.append(field_error(["body", "min_instances"], "must be <= max_instances"))
    if settings["queue_size"] < 1:
        problems.append(field_error(["body", "queue_size"], "must be >= 1"))
    if problems:
        raise validation_error(problems)


def _media_problem(value: str) -> str | None:
    """Why a media-looking string value is malformed (a bad data URI or URL), else None."""
    if value.startswith("data:"):
        header, sep, data = value.partition(",")
        if not sep or not header.endswith(";base64"):
            return "malformed data URI: expected data:<type>;base64,<data>"
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return "malformed Base64 in data URI"
        return None
    if "://" in value[:12]:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "malformed media URL: expected an http(s) URL with a host"
    return None


def apply_overrides(workflow: dict[str, Any], overrides: Any) -> dict[str, Any]:
    """The workflow with ``overrides`` applied, or a 422 naming each unknown node and input."""
    if not isinstance(overrides, dict):
        raise validation_error(
            [field_error(["body", "overrides"], "must be an object keyed by node id")]
        )
    problems: list[dict[str, Any]] = []
    result = json.loads(json.dumps(workflow))
    for node_id, change in overrides.items():
        loc: list[str | int] = ["body", "overrides", node_id]
        if node_id not in workflow:
            nodes = ", ".join(sorted(workflow, key=lambda n: (len(n), n)))
            problems.append(field_error(loc, f"node not in the workflow (nodes: {nodes})"))
            continue
        inputs = change.get("inputs") if isinstance(change, dict) else None
        if not isinstance(inputs, dict):
            problems.append(field_error([*loc, "inputs"], "must be an object of input values"))
            continue
        known = workflow[node_id].get("inputs", {})
        for key, value in inputs.items():
            if key not in known:
                problems.append(
                    field_error(
                        [*loc, "inputs", key],
                        f"input not in node {node_id} (inputs: {', '.join(sorted(known))})",
                    )
                )
            elif isinstance(value, str) and (problem := _media_problem(value)):
                problems.append(field_error([*loc, "inputs", key], problem))
            else:
                result[node_id]["inputs"][key] = value
    if problems:
        raise validation_error(problems)
    return result  # type: ignore[no-any-return]


def check_workflow(workflow: Any) -> dict[str, Any]:
    """An inline ``workflow_api_json``: nodes with a ``class_type`` and ``inputs`` each."""
    if not isinstance(workflow, dict) or not workflow:
        raise validation_error(
            [field_error(["body", "workflow_api_json"], "must be a non-empty object of nodes")]
        )
    problems = [
        field_error(["body", "workflow_api_json", node_id], "needs class_type and inputs")
        for node_id, node in workflow.items()
        if not (
            isinstance(node, dict)
            and isinstance(node.get("class_type"), str)
            and isinstance(node.get("inputs"), dict)
        )
    ]
    if problems:
        raise validation_error(problems)
    return workflow


def webhook_url(value: Any) -> str | None:
    """A webhook URL, checked: absent, or an http(s) URL with a host."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            return value
    raise validation_error([field_error(["query", "webhook"], "must be an http(s) URL")])
