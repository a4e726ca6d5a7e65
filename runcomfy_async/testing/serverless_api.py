"""Serverless API: deployments (``/prod/v2/deployments``) and their queue endpoints.

Deployments are created, listed (``ids=``, ``includes=payload|readme``), read, patched
(``is_enabled`` included) and deleted; the service's checks apply (exactly one known hardware
SKU, ``min_instances`` 0-3 and ``max_instances`` 1-10 as the vendor page says, a non-negative
keep-warm, a workflow of the account). Inference is served under both ``/prod/v1`` and
``/prod/v2``: overrides must name nodes and inputs of the deployed workflow (422001 otherwise),
media values may be URLs or base64 data URIs, a disabled deployment answers 10002 and a deleted
one 10003. Requests move in_queue -> in_progress -> completed | cancelled on the deployment's
simulated instances (see ``_deployments``); webhooks are POSTed for real (see ``_webhooks``).
The stores are ``emu.state.deployments`` and ``emu.state.webhooks``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from ..types.deployments import Hardware
from ._deployments import DeploymentRecord, ServerlessRequestRecord
from ._wire import ApiError, field_error, not_found, read_json, validation_error

if TYPE_CHECKING:
    from ._state import EmulatorState

__all__ = ["DELETED", "DISABLED", "add_routes"]

DISABLED: Final = 10002
DELETED: Final = 10003
#: Largest inference body read (inline workflows and data URIs make bodies large).
MAX_BODY: Final = 64 * 1024 * 1024
_SKUS: Final = frozenset(h.value for h in Hardware)
_DEFAULTS: Final = {
    "min_instances": 0,
    "max_instances": 1,
    "queue_size": 1,
    "keep_warm_duration_in_seconds": 60,
}
_PATCHABLE: Final = frozenset(
    {"name", "workflow_version", "hardware", *_DEFAULTS, "is_enabled"}
)
_INTERMEDIATE: Final = ("in_queue", "in_progress")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(
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


def _check_limits(settings: Mapping[str, Any], state: EmulatorState) -> None:
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


def _apply_overrides(workflow: dict[str, Any], overrides: Any) -> dict[str, Any]:
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


def _check_workflow(workflow: Any) -> dict[str, Any]:
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


def _webhook_url(value: Any) -> str | None:
    """A webhook URL, checked: absent, or an http(s) URL with a host."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            return value
    raise validation_error([field_error(["query", "webhook"], "must be an http(s) URL")])


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the deployment endpoints and the queue endpoints under both prefixes."""
    store = state.deployments
    watchers: set[asyncio.Task[None]] = set()

    def deployment_json(record: DeploymentRecord, includes: set[str]) -> dict[str, Any]:
        """A deployment as the API shows it, with the parts ``includes`` asks for."""
        body: dict[str, Any] = {
            "id": record.id,
            "name": record.name,
            "workflow_id": record.workflow_id,
            "workflow_version": record.workflow_version,
            "hardware": record.hardware,
            "min_instances": record.min_instances,
            "max_instances": record.max_instances,
            "queue_size": record.queue_size,
            "keep_warm_duration_in_seconds": record.keep_warm,
            "status": store.status(record),
            "is_enabled": record.is_enabled,
            "created_at": state.clock.iso(record.created),
            "updated_at": state.clock.iso(record.updated),
        }
        if "payload" in includes:
            info = state.storage.put_blob(
                f"serverless/{record.id}/object_info.json",
                json.dumps({"nodes": sorted({n["class_type"] for n in record.workflow.values()})})
                .encode(),
            )
            body["payload"] = {
                "workflow_api_json": record.workflow,
                "overrides": {},
                "object_info_url": info,
            }
        if "readme" in includes:
            body["readme"] = f"# {record.name}\n\nDeployment of workflow {record.workflow_id}.\n"
        return body

    def includes_of(request: web.Request) -> set[str]:
        """The repeatable ``includes`` query parameter, checked."""
        includes = set(request.query.getall("includes", []))
        unknown = includes - {"payload", "readme"}
        if unknown:
            raise validation_error(
                [field_error(["query", "includes"], "must be 'payload' or 'readme'")]
            )
        return includes

    def lookup(deployment_id: str) -> DeploymentRecord:
        """A deployment that exists (not deleted), or 404001."""
        record = store.deployments.get(deployment_id)
        if record is None or record.deleted:
            raise not_found(f"Deployment {deployment_id} not found")
        return record

    async def json_object(request: web.Request) -> dict[str, Any]:
        body = await read_json(request, limit=MAX_BODY)
        if not isinstance(body, dict):
            raise validation_error([field_error(["body"], "body must be a JSON object")])
        return body

    async def create(request: web.Request) -> web.Response:
        """POST /prod/v2/deployments."""
        fields = _check_fields(await json_object(request), state, creating=True)
        _check_limits(fields, state)
        created = store.create(state.new_id(), fields)
        return web.json_response(deployment_json(created, set()))

    async def list_deployments(request: web.Request) -> web.Response:
        """GET /prod/v2/deployments[?ids=..&includes=..]: a bare array."""
        includes = includes_of(request)
        ids = request.query.getall("ids", [])
        records = [r for r in store.deployments.values() if not r.deleted]
        if ids:
            records = [r for r in records if r.id in ids]
        return web.json_response([deployment_json(r, includes) for r in records])

    async def get_one(request: web.Request) -> web.Response:
        """GET /prod/v2/deployments/{id}[?includes=..]."""
        includes = includes_of(request)
        record = lookup(request.match_info["deployment_id"])
        return web.json_response(deployment_json(record, includes))

    async def patch(request: web.Request) -> web.Response:
        """PATCH /prod/v2/deployments/{id}: any subset of the fields, ``is_enabled`` included."""
        record = lookup(request.match_info["deployment_id"])
        fields = _check_fields(await json_object(request), state, creating=False)
        current = {
            "min_instances": record.min_instances,
            "max_instances": record.max_instances,
            "queue_size": record.queue_size,
        }
        _check_limits({**current, **fields}, state)
        store.update(record, fields)
        return web.json_response(deployment_json(record, set()))

    async def delete(request: web.Request) -> web.Response:
        """DELETE /prod/v2/deployments/{id}."""
        record = lookup(request.match_info["deployment_id"])
        store.delete(record)
        return web.json_response({"id": record.id, "status": "deleted"})

    def urls(request: web.Request, deployment_id: str, request_id: str) -> dict[str, str]:
        """The tracking URLs, under the prefix (v1 or v2) the caller used."""
        version = request.match_info["version"]
        base = f"{state.base_url}/prod/{version}/deployments/{deployment_id}/requests/{request_id}"
        return {
            "status_url": f"{base}/status",
            "result_url": f"{base}/result",
            "cancel_url": f"{base}/cancel",
        }

    def gate(deployment_id: str) -> DeploymentRecord:
        """The deployment inference goes to: 404 unknown, 10003 deleted, 10002 disabled."""
        record = store.deployments.get(deployment_id)
        if record is None:
            raise not_found(f"Deployment {deployment_id} not found")
        if record.deleted:
            raise ApiError(404, DELETED, f"Deployment {deployment_id} has been deleted")
        if not record.is_enabled:
            raise ApiError(
                403, DISABLED, f"Deployment {deployment_id} is disabled; enable it to run requests"
            )
        return record

    async def inference(request: web.Request) -> web.Response:
        """POST /prod/{v1|v2}/deployments/{id}/inference (webhook options in the query or body)."""
        deployment = gate(request.match_info["deployment_id"])
        body = await json_object(request)
        inline = body.get("workflow_api_json")
        overrides = body.get("overrides")
        if inline:
            workflow = _check_workflow(inline)
            if overrides:
                workflow = _apply_overrides(workflow, overrides)
        else:
            workflow = _apply_overrides(deployment.workflow, overrides or {})
        extra = body.get("extra_data")
        if extra is not None and not isinstance(extra, dict):
            raise validation_error([field_error(["body", "extra_data"], "must be an object")])
        webhook = _webhook_url(request.query.get("webhook") or body.get("webhook"))
        flag = request.query.get("webhook_intermediate_status")
        intermediate = (
            flag.lower() == "true" if flag is not None
            else body.get("webhook_intermediate_status") is True
        )
        record = store.submit(
            deployment,
            state.new_id(),
            workflow,
            extra_data=extra,
            webhook=webhook,
            intermediate=intermediate,
        )
        if webhook is not None:
            task = asyncio.create_task(watch(record))
            watchers.add(task)
            task.add_done_callback(watchers.discard)
        return web.json_response(
            {"request_id": record.id, **urls(request, deployment.id, record.id)}
        )

    def find(request: web.Request) -> ServerlessRequestRecord:
        """The request in the path (of that deployment), or 404001."""
        deployment_id = request.match_info["deployment_id"]
        request_id = request.match_info["request_id"]
        record = store.requests.get(request_id)
        if record is None or record.deployment_id != deployment_id:
            raise not_found(f"Request {request_id} not found")
        return record

    def status_json(record: ServerlessRequestRecord) -> dict[str, Any]:
        """What ``/status`` and the intermediate webhook events say of a request."""
        current = store.state(record)
        body: dict[str, Any] = {
            "request_id": record.id,
            "status": current,
            "queue_position": store.queue_position(record),
        }
        if current != "in_queue" and record.start <= state.clock.time():
            body["instance_id"] = record.instance_id
        return body

    def result_json(record: ServerlessRequestRecord) -> dict[str, Any]:
        """The ``/result`` body: exactly status, times, outputs and error."""
        final = store.final_status(record)
        body: dict[str, Any] = {
            "status": final or store.state(record),
            "created_at": state.clock.iso(record.created),
            "finished_at": None if final is None else state.clock.iso(record.finished_at()),
            "outputs": None,
            "error": None,
        }
        if final == "succeeded":
            body["outputs"] = store.outputs(record)
        elif final == "failed":
            body["error"] = [
                {"errorCode": 500, "error": "Prompt execution failed", "debugInfo": record.fail}
            ]
        return body

    def event_json(record: ServerlessRequestRecord, status: str) -> dict[str, Any]:
        """A webhook event: the request's ids, status and times; outputs or error when final."""
        event: dict[str, Any] = {
            "request_id": record.id,
            "deployment_id": record.deployment_id,
            "status": status,
            "created_at": state.clock.iso(record.created),
        }
        if status == "in_queue":
            event["queue_position"] = store.queue_position(record)
            return event
        if status == "in_progress":
            event["instance_id"] = record.instance_id
            return event
        event["finished_at"] = state.clock.iso(record.finished_at())
        if status == "succeeded":
            event["outputs"] = store.outputs(record)
        elif status == "failed":
            event["error"] = {"type": "execution_error", "message": record.fail}
        elif status == "cancelled":
            event["outcome"] = "cancelled"
        return event

    def passed(record: ServerlessRequestRecord, final: str | None) -> list[str]:
        """The states a request has been through so far, in order (one poll may skip some)."""
        now = state.clock.time()
        states = ["in_queue"]
        if record.start <= min(now, record.finished_at()) and not (
            record.cancelled_at is not None and record.cancelled_at <= record.start
        ):
            states.append("in_progress")
        if final is not None:
            states.append(final)
        return states

    async def watch(record: ServerlessRequestRecord) -> None:
        """Emit the request's webhook events as its state changes, until the final one."""
        assert record.webhook is not None
        sent = 0
        while True:
            final = store.final_status(record)
            states = passed(record, final)
            for current in states[sent:]:
                if current in _INTERMEDIATE and not record.intermediate:
                    continue
                state.webhooks.emit(
                    record.webhook, event_json(record, current), deployment_id=record.deployment_id
                )
            sent = len(states)
            if final is not None:
                return
            due = record.start if len(states) == 1 else record.finished_at()
            changed = store.changed
            with contextlib.suppress(TimeoutError):
                # Woken by a reschedule (a cancel) or the due time; bounded so that
                # ``emu.advance`` is noticed soon as well.
                wait = min(max(due - state.clock.time(), 0), 0.25)
                await asyncio.wait_for(changed.wait(), timeout=wait)

    async def status(request: web.Request) -> web.Response:
        record = find(request)
        links = _without_cancel(urls(request, record.deployment_id, record.id))
        return web.json_response({**status_json(record), **links})

    async def result(request: web.Request) -> web.Response:
        return web.json_response(result_json(find(request)))

    async def cancel(request: web.Request) -> web.Response:
        record = find(request)
        outcome = "cancellation_requested" if store.cancel(record) else "not_cancellable"
        return web.json_response(
            {"request_id": record.id, "status": outcome, "outcome": outcome}, status=202
        )

    async def on_shutdown(_: web.Application) -> None:
        for task in set(watchers):
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await state.webhooks.aclose()

    app.on_shutdown.append(on_shutdown)
    v2 = "/prod/v2/deployments"
    app.router.add_post(v2, create)
    app.router.add_get(v2, list_deployments)
    app.router.add_get(v2 + "/{deployment_id}", get_one)
    app.router.add_patch(v2 + "/{deployment_id}", patch)
    app.router.add_delete(v2 + "/{deployment_id}", delete)
    queue = "/prod/{version:v1|v2}/deployments/{deployment_id}"
    app.router.add_post(queue + "/inference", inference)
    app.router.add_get(queue + "/requests/{request_id}/status", status)
    app.router.add_get(queue + "/requests/{request_id}/result", result)
    app.router.add_post(queue + "/requests/{request_id}/cancel", cancel)


def _without_cancel(links: dict[str, str]) -> dict[str, str]:
    """``/status`` carries the status and result URLs only."""
    return {k: v for k, v in links.items() if k != "cancel_url"}
