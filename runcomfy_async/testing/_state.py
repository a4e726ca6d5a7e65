"""Everything one emulator instance knows: config, clock, request log, ids, and every API's store.

Endpoint modules receive the :class:`EmulatorState` in ``add_routes`` and keep no globals, so
several emulators can run side by side in one process. Each store is an attribute made here, in
one place, and reached one way: ``emu.state.datasets``, ``.jobs``, ``.model_requests``,
``.machines``, ``.comfy``,
``.deployments``, ``.webhooks``; every store takes its time from the one :class:`Clock`.
"""

from __future__ import annotations

import bisect
import itertools
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from ._clock import Clock
from ._datasets import DatasetStore
from ._deployments import DeploymentStore
from ._faults import FaultSet
from ._ratelimit import AccountLimiter
from ._storage import ObjectStorage
from ._webhooks import WebhookDispatcher
from .account import Wallet
from .comfyui import ComfyStore
from .model_api import ModelRequestStore
from .model_catalog import ModelCatalog
from .server_api import MachineStore
from .trainer_jobs import JobStore

__all__ = ["Api", "EmulatorConfig", "EmulatorState", "RequestRecord"]

Api = Literal["trainer", "model", "server", "storage", "comfyui", "other"]


@attrs.frozen(kw_only=True)
class EmulatorConfig:
    """The knobs an :class:`~runcomfy_async.testing.Emulator` was built with."""

    host: str
    port: int
    token: str
    user_id: str
    rate_limit: float | None
    burst: int
    speed: float
    max_direct_upload: int
    url_ttl: float
    seed: int
    dataset_processing_seconds: float
    models: tuple[Mapping[str, Any], ...] = ()
    balance: float = 100.0


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One request the emulator received, as answered (secrets masked, never the token).

    Attributes:
        method: HTTP method.
        path: URL path, percent-decoded.
        query: the raw query string (signed-URL parameters are kept).
        status: HTTP status sent; 0 when the connection was reset instead.
        headers: request headers; Authorization, Cookie and X-Goog-*/X-Amz-* values redacted.
        at: ``time.monotonic()`` when the request was received.
        api: ``"trainer"``, ``"model"``, ``"server"``, ``"storage"``, ``"comfyui"``, or
            ``"other"`` for paths outside every API.
        authorized: an Authorization header was present.
        body_size: request body bytes received.
        request_id: the ``X-Request-Id`` sent back.
    """

    method: str
    path: str
    query: str
    status: int
    headers: Mapping[str, str]
    at: float
    api: Api
    authorized: bool
    body_size: int
    request_id: str
    _seq: int = attrs.field(repr=False, eq=False, alias="seq")


class EmulatorState:
    """Shared state of one emulator: its config, clock, faults, log and every API's store.

    Attributes:
        config: the knobs the emulator was built with.
        clock: the one clock every store reads, with the ``speed`` factor.
        faults: the active fault rules.
        limiter: the account rate limit (real time, see ``_ratelimit``).
        storage: object storage (signed URLs, blobs).
        datasets: Trainer API datasets.
        jobs: Trainer API AI Toolkit jobs.
        model_requests: Model API requests.
        catalog: the Model API's models, their schemas and prices.
        wallet: the account's balance, drawn down by paid calls.
        machines: Server API workflows and machines.
        comfy: the ComfyUI of every machine.
        deployments: Serverless deployments and their requests.
        webhooks: the webhook deliveries of serverless requests.
        log: every request received, oldest first.
        base_url: ``http://host:port``; set when the server is listening.
    """

    def __init__(self, config: EmulatorConfig, storage_dir: Path) -> None:
        self.config = config
        self.clock = Clock(config.speed)
        self.faults = FaultSet(config.seed)
        self.limiter = AccountLimiter(config.rate_limit, config.burst)
        self.storage = ObjectStorage(storage_dir, clock=self.clock, url_ttl=config.url_ttl)
        self.datasets = DatasetStore(
            clock=self.clock,
            storage=self.storage,
            processing_seconds=config.dataset_processing_seconds,
        )
        self.jobs = JobStore(
            clock=self.clock, storage=self.storage, datasets=self.datasets, new_id=self.new_id
        )
        self.model_requests = ModelRequestStore(clock=self.clock, storage=self.storage)
        self.catalog = ModelCatalog(config.models)
        self.wallet = Wallet(config.balance)
        self.machines = MachineStore(self.clock, self.new_id)
        self.comfy = ComfyStore(clock=self.clock, machines=self.machines)
        self.deployments = DeploymentStore(clock=self.clock, storage=self.storage)
        self.webhooks = WebhookDispatcher(clock=self.clock, seed=config.seed)
        self.log: list[RequestRecord] = []
        self._seq = itertools.count()
        self.base_url = ""

    def listening_at(self, base_url: str) -> None:
        """The server listens at ``base_url``: every store that builds URLs learns it."""
        self.base_url = base_url
        self.storage.base_url = base_url
        self.machines.base_url = base_url

    def next_seq(self) -> int:
        """Arrival order of a request, so the log stays oldest-first under concurrency."""
        return next(self._seq)

    def record(self, record: RequestRecord) -> None:
        """Append to the log in arrival order (a long upload finishes after later requests)."""
        bisect.insort(self.log, record, key=lambda r: r._seq)

    @staticmethod
    def new_id() -> str:
        """A fresh resource id (a UUID, like the real service's)."""
        return str(uuid.uuid4())
