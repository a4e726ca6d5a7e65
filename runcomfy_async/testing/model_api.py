"""Model API (docs/wire.md): submit, status, result and cancel, over a simulated queue.

Requests wait in one FIFO queue served by ``workers`` concurrent workers; each run takes its
model's duration (simulated seconds, divided by the emulator's speed). The schedule is computed
when a request is submitted or cancelled, and each read derives the state from the clock (no
background tasks): ``in_queue`` (with a ``queue_position`` that moves as runs finish) ->
``in_progress`` -> ``completed``, or ``cancelled`` (only while queued). ``/status`` never says
whether a run failed; ``/result`` does. Outputs are small downloadable blobs whose shape depends on
the model id: ``video`` -> ``{"video": url}``, ``multi``/``batch`` -> ``{"images": [...]}``,
anything else ``{"image": url}``. :meth:`ModelRequestStore.set_behavior` makes a model fail or
run slow for tests. A submit names a model of the catalog (:mod:`.model_catalog`) and is paid
from the account's wallet (:mod:`.account`): what it costs is charged when it is accepted.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import attrs
from aiohttp import web

from .._rules import is_model_id
from ._wire import ApiError, field_error, not_found, read_json, validation_error

if TYPE_CHECKING:
    from ._clock import Clock
    from ._state import EmulatorState
    from ._storage import ObjectStorage

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_WORKERS",
    "ModelBehavior",
    "ModelRequestRecord",
    "ModelRequestStore",
    "add_routes",
    "model_id_problem",
]

#: Simulated seconds one run takes unless :meth:`ModelRequestStore.set_behavior` says otherwise.
DEFAULT_DURATION: Final = 10.0
#: Runs served at the same time; further requests wait in the queue.
DEFAULT_WORKERS: Final = 4
DEFAULT_FAILURE: Final = "Upstream provider rejected the input"
_MAX_IMAGES: Final = 8
# A 1x1 transparent PNG and the first box of an MP4: enough for a client to download and sniff.
_PNG: Final = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)
_MP4: Final = bytes.fromhex("0000001866747970") + b"mp42" + bytes(4) + b"mp42isom"


def model_id_problem(model_id: str) -> str | None:
    """Why ``model_id`` is not a well-formed model id (``owner/model/variant``), or None."""
    if is_model_id(model_id):
        return None
    return (
        "model id must be segments of letters, digits, '.', '_' and '-' separated by "
        "single slashes, without '..', e.g. blackforestlabs/flux-1-kontext/pro/edit"
    )


@attrs.frozen(kw_only=True)
class ModelBehavior:
    """How a model's runs behave: their simulated duration, and whether they fail (and why)."""

    duration: float = DEFAULT_DURATION
    fail: str | None = None


@attrs.define(kw_only=True)
class ModelRequestRecord:
    """One submitted request and its place in the schedule (emulator-time UNIX seconds)."""

    id: str
    model_id: str
    inputs: dict[str, Any]
    created: float
    run_seconds: float
    fail: str | None
    start: float = 0.0
    end: float = 0.0
    cancelled_at: float | None = None
    output: Any = None
    cost: float = 0.0


class ModelRequestStore:
    """The requests of one emulator, the queue that serves them, and per-model behaviour."""

    def __init__(
        self, *, clock: Clock, storage: ObjectStorage, workers: int = DEFAULT_WORKERS
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.clock = clock
        self.storage = storage
        self.workers = workers
        self._records: dict[str, ModelRequestRecord] = {}
        self._behaviors: dict[str, ModelBehavior] = {}
        # The requests still in the schedule (not cancelled), in FIFO order; their start times
        # never decrease, so a bisect finds where the queue begins.
        self._active: list[ModelRequestRecord] = []
        self._starts: list[float] = []
        self._index: dict[str, int] = {}
        self._free: list[float] = []

    # -- control -------------------------------------------------------------------------------

    def set_behavior(
        self, model_id: str, *, fail: bool | str = False, duration: float | None = None
    ) -> None:
        """Make later runs of ``model_id`` fail and/or take ``duration`` simulated seconds.

        Args:
            model_id: the model whose runs change (requests already submitted keep theirs).
            fail: ``True`` (a default error) or an error message: runs end as ``failed``.
            duration: simulated seconds per run; None keeps the default.

        Raises:
            ValueError: a negative duration.
        """
        if duration is not None and duration < 0:
            raise ValueError(f"duration must be >= 0 simulated seconds, got {duration}")
        message = DEFAULT_FAILURE if fail is True else (fail or None)
        self._behaviors[model_id] = ModelBehavior(
            duration=DEFAULT_DURATION if duration is None else duration, fail=message
        )

    def set_workers(self, workers: int) -> None:
        """Serve ``workers`` runs at once; the queue is rescheduled (set it before submitting).

        Raises:
            ValueError: fewer than one worker.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._reschedule()

    # -- the queue -----------------------------------------------------------------------------

    def behavior(self, model_id: str) -> ModelBehavior:
        """How runs of ``model_id`` submitted now will behave."""
        return self._behaviors.get(model_id, ModelBehavior())

    def submit(
        self, request_id: str, model_id: str, inputs: dict[str, Any], *, cost: float = 0.0
    ) -> ModelRequestRecord:
        """Queue a request behind every earlier one; ``cost`` is what it was charged."""
        behavior = self.behavior(model_id)
        record = ModelRequestRecord(
            id=request_id,
            model_id=model_id,
            inputs=inputs,
            created=self.clock.time(),
            run_seconds=self.clock.real(behavior.duration),
            fail=behavior.fail,
            cost=cost,
        )
        self._records[request_id] = record
        self._schedule(record)
        return record

    def _schedule(self, record: ModelRequestRecord) -> None:
        """Give ``record`` the first free worker after it arrives, never before earlier ones."""
        while len(self._free) < self.workers:
            heapq.heappush(self._free, float("-inf"))
        start = max(record.created, heapq.heappop(self._free))
        if self._starts:
            start = max(start, self._starts[-1])
        record.start = start
        record.end = start + record.run_seconds
        heapq.heappush(self._free, record.end)
        self._index[record.id] = len(self._active)
        self._active.append(record)
        self._starts.append(start)

    def _reschedule(self) -> None:
        """Schedule every request that is not cancelled again, in arrival order."""
        active = [r for r in self._active if r.cancelled_at is None]
        self._active, self._starts, self._index, self._free = [], [], {}, []
        for record in active:
            self._schedule(record)

    def get(self, request_id: str) -> ModelRequestRecord:
        """The request with this id.

        Raises:
            KeyError: no such request.
        """
        return self._records[request_id]

    def status(self, record: ModelRequestRecord) -> str:
        """``in_queue``, ``in_progress``, ``completed`` or ``cancelled``, as of now."""
        if record.cancelled_at is not None:
            return "cancelled"
        now = self.clock.time()
        if now < record.start:
            return "in_queue"
        if now < record.end:
            return "in_progress"
        return "completed"

    def queue_position(self, record: ModelRequestRecord) -> int | None:
        """1 for the next request to start, and so on; None unless queued."""
        if self.status(record) != "in_queue":
            return None
        head = bisect.bisect_right(self._starts, self.clock.time())
        return self._index[record.id] - head + 1

    def cancel(self, record: ModelRequestRecord) -> bool:
        """Cancel a queued request; False once it has started (or finished).

        Nobody behind a queued request has started yet (FIFO), so removing it moves only
        requests that are still queued: the rebuilt schedule keeps every past start.
        """
        state = self.status(record)
        if state == "cancelled":
            return True
        if state != "in_queue":
            return False
        record.cancelled_at = self.clock.time()
        self._reschedule()
        return True

    def output(self, record: ModelRequestRecord) -> Any:
        """The finished run's output, shaped by the model id; its blobs are published once."""
        if record.output is None:
            model = record.model_id.lower()
            if "video" in model:
                record.output = {"video": self._publish(record, "output.mp4", _MP4)}
            elif "multi" in model or "batch" in model:
                count = record.inputs.get("num_images", 2)
                if isinstance(count, bool) or not isinstance(count, int):
                    count = 2
                count = min(max(count, 1), _MAX_IMAGES)
                record.output = {
                    "images": [self._publish(record, f"output_{i}.png", _PNG) for i in range(count)]
                }
            else:
                record.output = {"image": self._publish(record, "output.png", _PNG)}
        return record.output

    def _publish(self, record: ModelRequestRecord, name: str, data: bytes) -> str:
        """A downloadable blob for one output file."""
        return self.storage.put_blob(f"model-outputs/{record.id}/{name}", data)

    def result_json(self, record: ModelRequestRecord, *, include_cost: bool) -> dict[str, Any]:
        """The ``/result`` body (docs/wire.md); while unfinished, the current status."""
        state = self.status(record)
        body: dict[str, Any] = {
            "request_id": record.id,
            "model_id": record.model_id,
            "status": state,
            "output": None,
            "error": None,
            "created_at": self.clock.iso(record.created),
            "finished_at": None,
        }
        cost: float | None = None
        if record.cancelled_at is not None:
            body["finished_at"] = self.clock.iso(record.cancelled_at)
            cost = 0.0
        elif state == "completed":
            body["finished_at"] = self.clock.iso(record.end)
            if record.fail is not None:
                body["status"] = "failed"
                body["error"] = {"code": "MODEL_ERROR", "message": record.fail}
                cost = 0.0
            else:
                body["status"] = "succeeded"
                body["output"] = self.output(record)
                cost = record.cost
        if include_cost:
            body["cost"] = cost
        return body


def _check_lora(inputs: Mapping[str, Any]) -> None:
    """The LoRA input, when given, is ``{"path": <asset name or https URL>}`` (docs/wire.md)."""
    if "lora" not in inputs:
        return
    lora = inputs["lora"]
    path = lora.get("path") if isinstance(lora, dict) else None
    loc = ["body", "lora", "path"]
    if not isinstance(path, str) or not path:
        raise validation_error([field_error(loc, "field required", "value_error.missing")])
    if "://" in path and urlsplit(path).scheme.lower() != "https":
        raise validation_error([field_error(loc, "LoRA URL must be a public https URL")])


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the four Model API endpoints."""
    store = state.model_requests

    def urls(request_id: str) -> dict[str, str]:
        """The convenience URLs every answer about a request carries."""
        base = f"{state.base_url}/v1/requests/{request_id}"
        return {
            "status_url": f"{base}/status",
            "result_url": f"{base}/result",
            "cancel_url": f"{base}/cancel",
        }

    def lookup(request: web.Request) -> ModelRequestRecord:
        """The request named in the path, or 404 with 404001."""
        request_id = request.match_info["request_id"]
        try:
            return store.get(request_id)
        except KeyError:
            raise not_found(f"Request {request_id} not found") from None

    async def submit(request: web.Request) -> web.Response:
        """POST /v1/models/{model_id}: the body is the model's inputs, flat."""
        model_id = request.match_info["model_id"]
        problem = model_id_problem(model_id)
        if problem is not None:
            raise ApiError(400, 400001, f"Invalid model id {model_id!r}: {problem}")
        body = await read_json(request)
        if not isinstance(body, dict):
            raise validation_error(
                [field_error(["body"], "body must be a JSON object of the model's inputs")]
            )
        if model_id not in state.catalog:
            raise state.catalog.unknown(model_id)
        _check_lora(body)
        fails = store.behavior(model_id).fail is not None
        cost = 0.0 if fails else state.catalog.cost(model_id, body)
        state.wallet.charge(cost, f"a run of {model_id}")
        record = store.submit(state.new_id(), model_id, body, cost=cost)
        return web.json_response({"request_id": record.id, **urls(record.id)})

    async def status(request: web.Request) -> web.Response:
        """GET /v1/requests/{id}/status: the state, with the queue position while queued."""
        record = lookup(request)
        body: dict[str, Any] = {"request_id": record.id, "status": store.status(record)}
        position = store.queue_position(record)
        if position is not None:
            body["queue_position"] = position
        links = urls(record.id)
        body["status_url"] = links["status_url"]
        body["result_url"] = links["result_url"]
        return web.json_response(body)

    async def result(request: web.Request) -> web.Response:
        """GET /v1/requests/{id}/result[?include_cost=true]: 200 also while unfinished."""
        record = lookup(request)
        include_cost = request.query.get("include_cost", "").lower() == "true"
        return web.json_response(store.result_json(record, include_cost=include_cost))

    async def cancel(request: web.Request) -> web.Response:
        """POST /v1/requests/{id}/cancel: 202; cancelled only while queued."""
        record = lookup(request)
        was_queued = store.status(record) == "in_queue"
        cancelled = store.cancel(record)
        if cancelled and was_queued:
            state.wallet.refund(record.cost)
        return web.json_response(
            {
                "request_id": record.id,
                "status": store.status(record),
                "outcome": "cancelled" if cancelled else "not_cancellable",
            },
            status=202,
        )

    app.router.add_post("/v1/models/{model_id:.+}", submit)
    app.router.add_get("/v1/requests/{request_id}/status", status)
    app.router.add_get("/v1/requests/{request_id}/result", result)
    app.router.add_post("/v1/requests/{request_id}/cancel", cancel)
