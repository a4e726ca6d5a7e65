"""The :class:`Emulator`: a local RunComfy on one port, started in-process for tests and demos."""

from __future__ import annotations

import math
import os
import secrets
import ssl
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web

from .._rules import DIRECT_UPLOAD_LIMIT
from ._app import build_app
from ._faults import FaultKind, FaultRule, RetryAfterForm
from ._state import EmulatorConfig, EmulatorState, RequestRecord
from ._webhooks import WebhookDelivery, WebhookPolicy
from .model_catalog import load_models_file, model_entry

if TYPE_CHECKING:
    from runcomfy_async._client import RunComfy

__all__ = ["Emulator"]


def _url_host(host: str) -> str:
    """The host part of the URL clients use: a wildcard bind is reached via loopback."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - recognising the wildcard, not binding to it
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Emulator:
    """A faithful local RunComfy: Trainer, Model, Server and Serverless APIs plus object storage,
    one port.

    Use ``async with Emulator() as emu:`` (or :meth:`start` / :meth:`close`). Point a client at
    ``emu.url`` with ``emu.token``, or call :meth:`client`.

    Args:
        host: interface to listen on.
        port: TCP port; 0 picks a free one.
        token: the account's bearer token; default a fresh ``rc_emu_...`` token.
        user_id: the account's user id; default a fresh UUID.
        rate_limit: requests per second per token on the API hosts; ``None`` switches it off.
        burst: capacity of the rate-limit bucket.
        speed: divides every simulated duration (``speed=50``: a 50 s step takes 1 s).
        max_direct_upload: byte limit of one direct (multipart) dataset upload.
        url_ttl: simulated seconds a signed URL stays valid (divided by ``speed``, like every
            simulated duration: 900 at ``speed=1000`` is 0.9 s of real time).
        seed: seeds the fault injector's random choices, so runs replay.
        storage_dir: where uploaded files live; default a temporary directory removed on close.
        dataset_processing_seconds: simulated time from a dataset's last file to READY.
        models: Model API models to add to the built-in catalog (or to replace entries of it):
            entries like ``{"model_id": "acme/my-model/v1", "base_price_usd": 0.01,
            "input_schema": {...}}``, or the path of a JSON file holding a list of them.
            Submits to ids the catalog lacks are refused, as the service refuses them.
        balance: the account's starting balance in US dollars; paid calls draw it down and
            one it cannot cover is answered 402.
        webhook_policy: how serverless webhooks are delivered (duplicates, reordering, drops,
            retries); see :class:`WebhookPolicy`. Default: each event once, in order.
        ssl_context: serve HTTPS with this server context (clients then need its CA).

    Raises:
        ValueError: a non-positive speed, rate or size, a negative balance, or a malformed
            model entry or models file.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        user_id: str | None = None,
        rate_limit: float | None = 1.0,
        burst: int = 3,
        speed: float = 50.0,
        max_direct_upload: int = DIRECT_UPLOAD_LIMIT,
        url_ttl: float = 900.0,
        seed: int = 0,
        storage_dir: Path | None = None,
        dataset_processing_seconds: float = 5.0,
        models: Iterable[Mapping[str, Any]] | str | os.PathLike[str] | None = None,
        balance: float = 100.0,
        webhook_policy: WebhookPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a finite number > 0, got {speed}")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"rate_limit must be > 0 or None, got {rate_limit}")
        if burst < 1 or max_direct_upload < 1 or url_ttl <= 0 or dataset_processing_seconds < 0:
            raise ValueError(
                "burst, max_direct_upload and url_ttl must be positive, "
                "dataset_processing_seconds not negative"
            )
        if not (math.isfinite(balance) and balance >= 0):
            raise ValueError(f"balance must be a number of US dollars >= 0, got {balance}")
        if models is None:
            entries: tuple[dict[str, Any], ...] = ()
        elif isinstance(models, str | os.PathLike):
            entries = load_models_file(Path(models))
        else:
            entries = tuple(model_entry(entry) for entry in models)
        self.config = EmulatorConfig(
            host=host,
            port=port,
            token=token if token is not None else "rc_emu_" + secrets.token_hex(16),
            user_id=user_id if user_id is not None else str(uuid.uuid4()),
            rate_limit=rate_limit,
            burst=burst,
            speed=speed,
            max_direct_upload=max_direct_upload,
            url_ttl=url_ttl,
            seed=seed,
            dataset_processing_seconds=dataset_processing_seconds,
            models=entries,
            balance=float(balance),
        )
        self._storage_dir = storage_dir
        self._webhook_policy = webhook_policy
        self._ssl_context = ssl_context
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._runner: web.AppRunner | None = None
        self._state: EmulatorState | None = None
        self._url: str | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Self:
        """Listen on the configured host and port.

        Raises:
            RuntimeError: already started, or closed.
            OSError: the port could not be bound.
        """
        if self._closed:
            raise RuntimeError("this Emulator was closed; create a new one")
        if self._runner is not None:
            raise RuntimeError("this Emulator is already running")
        if self._storage_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="runcomfy-emulator-")
            root = Path(self._tempdir.name)
        else:
            root = self._storage_dir
            root.mkdir(parents=True, exist_ok=True)
        state = EmulatorState(self.config, root)
        state.webhooks.set_policy(self._webhook_policy)
        runner = web.AppRunner(
            build_app(state), handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        try:
            await runner.setup()
            site = web.TCPSite(
                runner, self.config.host, self.config.port, ssl_context=self._ssl_context
            )
            await site.start()
        except BaseException:
            # cleanup that re-raises, cancellation included
            await runner.cleanup()
            self._cleanup_tempdir()
            raise
        port = runner.addresses[0][1]
        scheme = "https" if self._ssl_context is not None else "http"
        self._url = f"{scheme}://{_url_host(self.config.host)}:{port}"
        state.listening_at(self._url)
        self._state = state
        self._runner = runner
        return self

    async def close(self) -> None:
        """Stop serving and remove the temporary storage; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            self._cleanup_tempdir()

    def _cleanup_tempdir(self) -> None:
        """Remove the default storage directory, if this emulator made one."""
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    async def __aenter__(self) -> Self:
        """Start the emulator."""
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the emulator."""
        await self.close()

    # -- what clients need -----------------------------------------------------------------

    @property
    def state(self) -> EmulatorState:
        """The live state, for emulator modules and advanced tests.

        Raises:
            RuntimeError: the emulator is not running.
        """
        if self._state is None:
            raise RuntimeError("the Emulator is not running; use 'async with Emulator()'")
        return self._state

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash): the base URL of every API.

        Raises:
            RuntimeError: the emulator was never started.
        """
        if self._url is None:
            raise RuntimeError("the Emulator is not running; use 'async with Emulator()'")
        return self._url

    @property
    def token(self) -> str:
        """The bearer token the emulator accepts."""
        return self.config.token

    @property
    def user_id(self) -> str:
        """The account's user id (the Server API's ``{user_id}`` path segment)."""
        return self.config.user_id

    def client(self, **overrides: Any) -> RunComfy:
        """A :class:`~runcomfy_async.RunComfy` pointed at this emulator with a valid token.

        Args:
            overrides: further ``RunComfy`` keyword arguments (or replacements of the defaults).
        """
        from runcomfy_async._client import RunComfy  # late: the client imports lazily

        kwargs: dict[str, Any] = {
            "token": self.token,
            "user_id": self.user_id,
            "trainer_url": self.url,
            "model_url": self.url,
            "server_url": self.url,
        }
        kwargs.update(overrides)
        return RunComfy(**kwargs)

    # -- inspection and control --------------------------------------------------------------

    @property
    def log(self) -> list[RequestRecord]:
        """Every request received so far, oldest first (a snapshot)."""
        return list(self.state.log)

    def clear_log(self) -> None:
        """Forget the requests logged so far."""
        self.state.log.clear()

    def stored_files(self, dataset_id: str) -> dict[str, tuple[int, str]]:
        """``{filename: (size, sha256 hex)}`` of a dataset's files exactly as stored.

        Raises:
            KeyError: no such dataset.
        """
        return self.state.datasets.stored_files(dataset_id)

    def fail_dataset(self, dataset_id: str, error: str = "Dataset validation failed") -> None:
        """Force a dataset to FAILED with ``error`` (until another file arrives).

        Raises:
            KeyError: no such dataset.
        """
        self.state.datasets.fail(dataset_id, error)

    def set_model_behavior(
        self, model_id: str, *, fail: bool | str = False, duration: float | None = None
    ) -> None:
        """Make later Model API runs of ``model_id`` fail and/or run for ``duration``.

        Args:
            model_id: the model whose runs change (requests already submitted keep theirs).
            fail: ``True`` (a default error) or the error message: runs end as ``failed``.
            duration: simulated seconds per run (divided by ``speed``); None: the default.

        A model the catalog does not know is added to it (a test describing a model's runs
        means it to exist), priced :data:`~.model_catalog.DEFAULT_PRICE` per output.

        Raises:
            ValueError: a negative duration, or a malformed model id.
        """
        if model_id not in self.state.catalog:
            self.add_model(model_id)
        self.state.model_requests.set_behavior(model_id, fail=fail, duration=duration)

    def add_model(
        self,
        model_id: str,
        *,
        input_schema: Mapping[str, Any] | None = None,
        base_price_usd: float | None = None,
        **fields: Any,
    ) -> None:
        """Add a model to the catalog (or replace the one with this id).

        Args:
            model_id: the id clients submit to (``"acme/my-model/v1"``).
            input_schema: its inputs' JSON Schema; default: any object.
            base_price_usd: what one output costs; default
                :data:`~.model_catalog.DEFAULT_PRICE`.
            fields: further catalog keys (``display_name``, ``categories``, ``kind``,
                ``price_unit``, ``pricing_note``).

        Raises:
            ValueError: a malformed id, price or schema.
        """
        entry: dict[str, Any] = {"model_id": model_id, **fields}
        if input_schema is not None:
            entry["input_schema"] = dict(input_schema)
        if base_price_usd is not None:
            entry["base_price_usd"] = base_price_usd
        self.state.catalog.add(entry)

    @property
    def balance(self) -> float:
        """The account's balance in US dollars, as ``GET /prod/v2/balance`` reports it."""
        return self.state.wallet.balance

    def set_balance(self, usd: float) -> None:
        """Set the account's balance (0 makes every paid call fail with 402).

        Raises:
            ValueError: a negative or non-finite amount.
        """
        self.state.wallet.set(usd)

    def set_webhook_policy(
        self, policy: WebhookPolicy | None, *, deployment_id: str | None = None
    ) -> None:
        """Change how webhooks are delivered: for one deployment, or for every other one.

        Args:
            policy: the delivery policy (duplicates, reordering, drops, retries); ``None``
                restores the default (or, with ``deployment_id``, the emulator-wide one).
            deployment_id: the deployment whose requests it applies to; None: all others.
        """
        self.state.webhooks.set_policy(policy, deployment_id)

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every webhook POST attempt so far (a snapshot), in the order they ended."""
        return list(self.state.webhooks.deliveries)

    async def webhooks_idle(self) -> None:
        """Wait until the webhook events of every finished serverless request are delivered
        (or given up after their retries); requests still running are not waited for."""
        await self.state.webhooks.idle()

    def serverless_files(self, request_id: str) -> dict[str, bytes]:
        """``{filename: bytes}`` of the files a finished serverless request produced.

        Raises:
            KeyError: no such request.
        """
        return dict(self.state.deployments.requests[request_id].files)

    def preempt_job(self, job_id: str, *, at_step: int | None = None) -> None:
        """Stop a training job as a reclaimed server does: STOPPED short of its last step.

        Args:
            job_id: the job.
            at_step: stop when the run reaches this step; None stops it now.
        """
        self.state.jobs.preempt(job_id, at_step=at_step)

    def fail_next_launch(self, status: str = "Error") -> None:
        """Make the next launched machine end its boot in ``status`` instead of Ready."""
        self.state.machines.fail_next_launch(status)

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward (expires URLs, ends processing) without sleeping.

        Args:
            seconds: real seconds, the unit the emulator's timestamps move in; a simulated
                duration ``d`` is over after ``d / speed`` of them (:meth:`Clock.real`).
        """
        self.state.clock.advance(seconds)

    def inject(
        self,
        kind: FaultKind,
        *,
        api: str | None = None,
        method: str | None = None,
        path: str | None = None,
        rate: float | None = None,
        count: int | None = None,
        skip: int = 0,
        retry_after: float | None = None,
        retry_after_form: RetryAfterForm = "seconds",
        error_code: int | str | None = None,
        error_message: str | None = None,
        delay: float = 0.0,
        after: bool = False,
    ) -> FaultRule:
        """Inject a fault; see :class:`FaultRule` for the kinds and filters.

        Examples: ``emu.inject("200_error", api="trainer", count=1)`` answers HTTP 200 with
        ``{"error_code": 500001, ...}``; ``emu.inject("503", api="storage", retry_after=2)``
        answers signed PUTs and artifact GETs 503 with ``Retry-After: 2``;
        ``retry_after_form="date"`` sends that pause as an HTTP-date instead.

        Returns:
            The active rule; its ``fired`` counter shows how often it hit.

        Raises:
            ValueError: an unknown kind or API, an out-of-range number, or an option the kind
                does not take (see :class:`FaultRule`).
        """
        rule = FaultRule(
            kind=kind,
            api=api,
            method=method,
            path=path,
            rate=rate,
            count=count,
            skip=skip,
            retry_after=retry_after,
            retry_after_form=retry_after_form,
            error_code=error_code,
            error_message=error_message,
            delay=delay,
            after=after,
        )
        return self.state.faults.add(rule)

    def remove_fault(self, rule: FaultRule) -> None:
        """Deactivate one injected fault."""
        self.state.faults.remove(rule)

    def clear_faults(self) -> None:
        """Deactivate every injected fault."""
        self.state.faults.clear()
