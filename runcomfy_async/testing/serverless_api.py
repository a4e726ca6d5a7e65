"""Serverless API: deployments (``/prod/v2/deployments``) and their queue endpoints.

Deployments are created, listed (``ids=``, ``includes=payload|readme``), read, patched
(``is_enabled`` included) and deleted; the service's checks apply (exactly one known hardware
SKU, ``min_instances`` 0-3 and ``max_instances`` 1-10 as the vendor page says, a non-negative
keep-warm, a workflow of the account). Inference is served under both ``/prod/v1`` and
``/prod/v2``: overrides must name nodes and inputs of the deployed workflow (422001 otherwise),
media values may be URLs or base64 data URIs, a disabled deployment answers 10002 and a deleted
one 10003, and an empty account balance 10001 (HTTP 402). Requests move in_queue ->
in_progress -> completed | cancelled on the deployment's simulated instances (see
``_deployments``); webhooks are POSTed for real (see ``_webhooks``). The stores are
``emu.state.deployments`` and ``emu.state.webhooks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from ._deployments import DeploymentRecord, ServerlessRequestRecord
from ._serverless_checks import (
    apply_overrides,
    check_fields,
    check_limits,
    check_workflow,
    webhook_url,
)
from ._wire import ApiError, field_error, not_found, read_json, validation_error

if TYPE_CHECKING:
    from ._state import EmulatorState

__all__ = ["DELETED", "DISABLED", "add_routes"]

DISABLED: Final = 10002
DELETED: Final = 10003
#: Deployment gating: the account has nothing left to pay for a run (InsufficientFunds).
INSUFFICIENT_FUNDS: Final = 10001
#: Largest inference body read (inline workflows and data URIs make bodies large).
MAX_BODY: Final = 64 * 1024 * 1024
_INTERMEDIATE: Final = ("in_queue", "in_progress")


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the deployment endpoints and the queue endpoints under both prefixes."""
    store = state.deployments

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
                json.dumps(
                    {"nodes": sorted({n["class_type"] for n in record.workflow.values()})}
                ).encode(),
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
        fields = check_fields(await json_object(request), state, creating=True)
        check_limits(fields, state)
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
        fields = check_fields(await json_object(request), state, creating=False)
        current = {
            "min_instances": record.min_instances,
            "max_instances": record.max_instances,
            "queue_size": record.queue_size,
        }
        check_limits({**current, **fields}, state)
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
        """The deployment inference goes to: 404 unknown, 10003 deleted, 10002 disabled, and
        10001 (HTTP 402) while the account's balance is empty."""
        record = store.deployments.get(deployment_id)
        if record is None:
            raise not_found(f"Deployment {deployment_id} not found")
        if record.deleted:
            raise ApiError(404, DELETED, f"Deployment {deployment_id} has been deleted")
        if not record.is_enabled:
            raise ApiError(
                403, DISABLED, f"Deployment {deployment_id} is disabled; enable it to run requests"
            )
        if state.wallet.balance <= 0:
            raise ApiError(
                402, INSUFFICIENT_FUNDS, "Insufficient funds: add funds to run deployments"
            )
        return record

    async def inference(request: web.Request) -> web.Response:
        """POST /prod/{v1|v2}/deployments/{id}/inference (webhook options in the query or body)."""
        deployment = gate(request.match_info["deployment_id"])
        body = await json_object(request)
        inline = body.get("workflow_api_json")
        overrides = body.get("overrides")
        if inline:
            workflow = check_workflow(inline)
            if overrides:
                workflow = apply_overrides(workflow, overrides)
        else:
            workflow = apply_overrides(deployment.workflow, overrides or {})
        extra = body.get("extra_data")
        if extra is not None and not isinstance(extra, dict):
            raise validation_error([field_error(["body", "extra_data"], "must be an object")])
        webhook = webhook_url(request.query.get("webhook") or body.get("webhook"))
        flag = request.query.get("webhook_intermediate_status")
        intermediate = (
            flag.lower() == "true"
            if flag is not None
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
            state.webhooks.watch(watch(record), lambda: store.final_status(record) is not None)
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
