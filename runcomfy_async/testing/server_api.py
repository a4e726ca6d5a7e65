"""Server API (docs/wire.md): workflows, and machines Initializing -> Ready -> Stopping -> gone.

A machine's status is computed from the scaled clock on each read: ``Initializing`` for
``boot_seconds`` (simulated), then ``Ready`` with ``main_service_url`` pointing at this
emulator's ComfyUI (``{emu.url}/comfyui/{server_id}``), until its ``estimated_duration`` runs out
or a DELETE arrives; then ``Stopping`` for ``stop_seconds`` and gone (404). Like the real service
(docs/wire.md) the status of a new machine answers 404 for its first ``not_found_reads`` reads.
The store is ``emu.state.machines`` (e.g. ``.fail_next_launch()``, ``.boot_seconds``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeGuard

import attrs
from aiohttp import web

from ..types.machines import ServerType
from ._wire import ApiError, field_error, not_found, read_json, validation_error

if TYPE_CHECKING:
    from ._clock import Clock
    from ._state import EmulatorState

__all__ = [
    "PREFIX",
    "SERVER_TYPES",
    "MachineRecord",
    "MachineStore",
    "add_routes",
    "machine_store",
]

PREFIX: Final = "/prod/api/users/{user_id}"
#: The documented machine sizes (docs/wire.md).
SERVER_TYPES: Final = tuple(size.value for size in ServerType)


@attrs.define(kw_only=True)
class MachineRecord:
    """One launched machine and the times its status derives from (emulator wall seconds)."""

    server_id: str
    user_id: str
    server_type: str
    workflow_version_id: str
    estimated_duration: int
    launched_at: float
    ready_at: float
    #: the status the boot ends in instead of Ready (an injected start failure)
    failure: str | None = None
    stop_requested_at: float | None = None
    hidden_reads: int = 0


class MachineStore:
    """The account's workflows and machines, with the knobs tests turn.

    Attributes:
        boot_seconds: simulated time from launch to Ready.
        stop_seconds: simulated time a stopping machine stays listed as ``Stopping``.
        not_found_reads: status reads of a new machine answered 404 ("not registered yet").
        workflows: the account's workflows (two are seeded).
    """

    def __init__(self, clock: Clock, new_id: Callable[[], str]) -> None:
        self.clock = clock
        self.boot_seconds = 60.0
        self.stop_seconds = 10.0
        self.not_found_reads = 1
        self.base_url = ""
        self._new_id = new_id
        self._machines: dict[str, MachineRecord] = {}
        self._failures: list[str] = []
        now = clock.iso()
        self.workflows: list[dict[str, Any]] = [
            {
                "workflow_id": new_id(),
                "workflow_name": name,
                "version_id": new_id(),
                "created_at": now,
                "updated_at": now,
            }
            for name in ("flux-realism", "sdxl-basic")
        ]

    def fail_next_launch(self, status: str = "Error") -> None:
        """Make the next launched machine end its boot in ``status`` instead of Ready."""
        self._failures.append(status)

    def launch(
        self, user_id: str, version_id: str, server_type: str, duration: int
    ) -> MachineRecord:
        """Start a machine (status Initializing)."""
        now = self.clock.time()
        record = MachineRecord(
            server_id=self._new_id(),
            user_id=user_id,
            server_type=server_type,
            workflow_version_id=version_id,
            estimated_duration=duration,
            launched_at=now,
            ready_at=now + self.clock.real(self.boot_seconds),
            failure=self._failures.pop(0) if self._failures else None,
            hidden_reads=self.not_found_reads,
        )
        self._machines[record.server_id] = record
        return record

    def _stops_at(self, record: MachineRecord) -> float | None:
        """When the machine began stopping: a DELETE, its duration running out, or a failure."""
        ends = [] if record.stop_requested_at is None else [record.stop_requested_at]
        if record.failure is None:
            ends.append(record.ready_at + self.clock.real(record.estimated_duration))
        return min(ends) if ends else None

    def status(self, record: MachineRecord) -> str | None:
        """The machine's ``current_status`` now; None once it is gone."""
        now = self.clock.time()
        stops_at = self._stops_at(record)
        if stops_at is not None and now >= stops_at:
            return "Stopping" if now < stops_at + self.clock.real(self.stop_seconds) else None
        if now < record.ready_at:
            return "Initializing"
        return record.failure or "Ready"

    def get(self, server_id: str) -> MachineRecord | None:
        """The machine if it still exists (gone machines are forgotten)."""
        record = self._machines.get(server_id)
        if record is not None and self.status(record) is None:
            del self._machines[server_id]
            return None
        return record

    def live(self) -> list[MachineRecord]:
        """Every machine not gone yet, oldest first."""
        return [r for r in list(self._machines.values()) if self.get(r.server_id) is not None]

    def is_ready(self, server_id: str) -> bool | None:
        """Ready now (True), existing but not Ready (False), or unknown / gone (None)."""
        record = self.get(server_id)
        return None if record is None else self.status(record) == "Ready"

    def stop(self, record: MachineRecord) -> None:
        """A DELETE: the machine stops now (a second DELETE changes nothing)."""
        if record.stop_requested_at is None:
            record.stop_requested_at = self.clock.time()

    def to_json(self, record: MachineRecord) -> dict[str, Any]:
        """The machine object docs/wire.md shows."""
        status = self.status(record)
        ready = status == "Ready"
        stops_at = self._stops_at(record)
        scheduled = record.ready_at + self.clock.real(record.estimated_duration)
        return {
            "server_id": record.server_id,
            "user_id": record.user_id,
            "server_type": record.server_type,
            "current_status": status or "Stopped",
            "estimated_duration": record.estimated_duration,
            "workflow_version_id": record.workflow_version_id,
            "main_service_url": f"{self.base_url}/comfyui/{record.server_id}" if ready else None,
            "service_ready_at": self.clock.iso(record.ready_at) if ready else None,
            "estimated_stopping_at": self.clock.iso(stops_at if stops_at is not None else scheduled)
            if record.failure is None
            else None,
        }


def machine_store(state: EmulatorState) -> MachineStore:
    """``state.machines``, the machine store of one emulator (kept for earlier callers)."""
    return state.machines


def _positive_int(value: object) -> TypeGuard[int]:
    """Durations are whole positive seconds; JSON true is not 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the six Server API endpoints."""

    def account(request: web.Request) -> MachineStore:
        """The store, after checking the path's user id is this account's (else 403)."""
        if request.match_info["user_id"] != state.config.user_id:
            raise ApiError(403, 403003, "Forbidden: this token does not own that user id")
        return state.machines

    def lookup(request: web.Request, store: MachineStore) -> MachineRecord:
        """The machine named in the path, or 404."""
        server_id = request.match_info["server_id"]
        record = store.get(server_id)
        if record is None:
            raise not_found(f"Server {server_id} not found")
        return record

    async def workflows(request: web.Request) -> web.Response:
        """GET /workflows: a bare array (docs/wire.md)."""
        return web.json_response(account(request).workflows)

    async def list_servers(request: web.Request) -> web.Response:
        """GET /servers: a bare array of machine objects (docs/wire.md)."""
        store = account(request)
        return web.json_response([store.to_json(r) for r in store.live()])

    async def status(request: web.Request) -> web.Response:
        """GET /servers/{id}: the machine; 404 for a new machine's first reads (docs/wire.md)."""
        store = account(request)
        record = lookup(request, store)
        if record.hidden_reads > 0:
            record.hidden_reads -= 1
            raise not_found(f"Server {record.server_id} not found")
        return web.json_response(store.to_json(record))

    async def launch(request: web.Request) -> web.Response:
        """POST /servers: validate, then start a machine (docs/wire.md)."""
        store = account(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise validation_error([field_error(["body"], "body must be a JSON object")])
        problems = []
        version_id = body.get("workflow_version_id")
        versions = {w["version_id"] for w in store.workflows}
        if version_id not in versions:
            problems.append(
                field_error(
                    ["body", "workflow_version_id"],
                    "unknown workflow_version_id; use a version_id from GET .../workflows",
                )
            )
        server_type = body.get("server_type")
        if server_type not in SERVER_TYPES:
            problems.append(
                field_error(
                    ["body", "server_type"],
                    f"server_type must be one of {', '.join(SERVER_TYPES)}",
                    "value_error.enum",
                )
            )
        given = body.get("estimated_duration")
        duration = given if _positive_int(given) else 0
        if not duration:
            problems.append(
                field_error(
                    ["body", "estimated_duration"], "must be a positive integer number of seconds"
                )
            )
        if problems:
            raise validation_error(problems)
        record = store.launch(state.config.user_id, str(version_id), str(server_type), duration)
        return web.json_response(store.to_json(record))

    async def update_duration(request: web.Request) -> web.Response:
        """POST /servers/{id}/update-estimated-duration (docs/wire.md)."""
        store = account(request)
        record = lookup(request, store)
        body = await read_json(request)
        value = body.get("update_estimated_duration") if isinstance(body, dict) else None
        if not _positive_int(value):
            raise validation_error(
                [
                    field_error(
                        ["body", "update_estimated_duration"],
                        "must be a positive integer number of seconds",
                    )
                ]
            )
        current = store.status(record)
        if current != "Ready":
            # docs/wire.md: the duration is changed "after the machine is Ready".
            when = "once it is Ready" if current == "Initializing" else "only while it is Ready"
            raise ApiError(
                409,
                409001,
                f"Server {record.server_id} is {current}: its running duration can be changed "
                f"{when}",
            )
        record.estimated_duration = value
        return web.json_response(store.to_json(record))

    async def stop(request: web.Request) -> web.Response:
        """DELETE /servers/{id}: Stopping now, gone soon after (docs/wire.md)."""
        store = account(request)
        record = lookup(request, store)
        store.stop(record)
        return web.json_response(store.to_json(record))

    servers = PREFIX + "/servers"
    app.router.add_get(PREFIX + "/workflows", workflows)
    app.router.add_get(servers, list_servers)
    app.router.add_post(servers, launch)
    app.router.add_get(servers + "/{server_id}", status)
    app.router.add_delete(servers + "/{server_id}", stop)
    app.router.add_post(servers + "/{server_id}/update-estimated-duration", update_duration)
