"""``RunComfy``: configuration, lifecycle and the one request pipeline every API call goes through.

Pipeline: limiter.acquire() -> send (transport) -> classify (protocol) -> retry/backoff -> data.
Uploads to and downloads from object storage use :meth:`RunComfy.storage_session` instead: they
take no rate-limit token and never carry the Authorization header (DESIGN, rules of the pipeline).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import os
import ssl as ssl_
import warnings
import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp

from . import errors
from ._limiter import Limiter, Priority, TokenBucket
from ._pipeline import CallTrace, Pipeline, json_answer
from ._protocol import API, RequestSpec, is_loopback, redact_url
from ._retry import RetryPolicy
from ._schedule import RunTimes
from ._transport import Exchange, Timeouts, Transport
from ._version import __version__
from .resources.account import Account
from .resources.datasets import Datasets
from .resources.deployments import Deployments
from .resources.jobs import Jobs
from .resources.machines import Machines
from .resources.model_requests import Models

__all__ = ["ClientState", "RunComfy"]

logger = logging.getLogger("runcomfy_async")

DEFAULT_URLS = {
    API.TRAINER: "https://trainer-api.runcomfy.net",
    API.MODEL: "https://model-api.runcomfy.net",
    API.SERVER: "https://api.runcomfy.net",
}
_URL_ENV = {
    API.TRAINER: "RUNCOMFY_TRAINER_URL",
    API.MODEL: "RUNCOMFY_MODEL_URL",
    API.SERVER: "RUNCOMFY_SERVER_URL",
}


#: Seconds closing a client waits for its cleanups (each is bounded by its own deadline).
CLEANUP_WAIT = 600.0
T = TypeVar("T")


class ClientState(enum.Enum):
    """Where a client is in its life: not yet opened, open, or closed for good."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _check_base_url(api: API, url: str) -> str:
    """A base URL without trailing slash; plain http only for loopback (the emulator)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.ConfigurationError(
            f"{api.value} base URL {redact_url(url)!r} is not an http(s) URL; "
            f"pass e.g. {DEFAULT_URLS[api]!r}"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise errors.ConfigurationError(
            f"{api.value} base URL {redact_url(url)!r} uses plain http to a non-loopback host, "
            "which would send the API token unencrypted; use https"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise errors.ConfigurationError(
            f"{api.value} base URL must not contain credentials, a query or a fragment; "
            "pass only scheme://host[:port][/prefix]"
        )
    return url.rstrip("/")


def _resolve_token(token: str | None) -> str:
    if token is None:
        token = os.environ.get("RUNCOMFY_API_TOKEN")
    if not token:
        raise errors.ConfigurationError(
            "no API token",
            fix="pass RunComfy(token=...) or set RUNCOMFY_API_TOKEN (find the token on your "
            "runcomfy.com Profile page)",
        )
    if token != token.strip() or any(c.isspace() for c in token):
        raise errors.ConfigurationError(
            "the API token contains whitespace or a newline (often from copying it or from "
            "`echo` into a file); strip it before passing it"
        )
    return token


def _resolve_rate(rate: float | None) -> float:
    """The built-in bucket's rate: the argument, else ``RUNCOMFY_RATE``, else the account's 1/s."""
    if rate is not None:
        return rate
    text = os.environ.get("RUNCOMFY_RATE", "").strip()
    if not text:
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise errors.ConfigurationError(
            f"RUNCOMFY_RATE={text!r} is not a positive number of requests per second; "
            "unset it (the default, 1, is the account limit) or set e.g. RUNCOMFY_RATE=1"
        )
    return value


class RunComfy:
    """Async client for RunComfy's Trainer, Model and Server APIs.

    Use as ``async with RunComfy() as rc:``. It owns an ``aiohttp.ClientSession`` (or borrows the
    one passed as ``session``, which it then never closes) and one rate limiter shared by every
    call made through it.

    Args:
        token: API token; defaults to ``RUNCOMFY_API_TOKEN``.
        user_id: account user id, needed only by the machine (Server) API; defaults to
            ``RUNCOMFY_USER_ID``.
        trainer_url, model_url, server_url: base URLs of the three hosts; default to
            ``RUNCOMFY_TRAINER_URL`` / ``RUNCOMFY_MODEL_URL`` / ``RUNCOMFY_SERVER_URL`` or the
            production hosts.
        rate: requests per second for the built-in token bucket; defaults to ``RUNCOMFY_RATE``
            or 1 (the account limit). Raise it only for an emulator started with a higher limit.
        burst: bucket capacity of the built-in token bucket.
        limiter: a :class:`Limiter` to use instead (e.g. a ``RedisTokenBucket`` that several
            processes share).
        session: an ``aiohttp.ClientSession`` to borrow.
        ssl: the ``ssl.SSLContext`` HTTPS connections verify with (e.g.
            ``ssl.create_default_context(cafile="corp-ca.pem")`` behind a proxy that re-signs
            traffic); default: the system's trust store, which also honours ``SSL_CERT_FILE``.
            Certificates are always verified. With a borrowed ``session``, configure its
            connector instead.
        timeout: seconds for one API call's total time, or a :class:`Timeouts`.
        max_retries: retries after the first try (connection errors, 429, 5xx).
        retry: a full :class:`RetryPolicy` (overrides ``max_retries``).

    Raises:
        ConfigurationError: no token, a malformed token, an unsafe base URL or a
            ``RUNCOMFY_RATE`` that is not a positive number.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        user_id: str | None = None,
        trainer_url: str | None = None,
        model_url: str | None = None,
        server_url: str | None = None,
        rate: float | None = None,
        burst: int = 2,
        limiter: Limiter | None = None,
        session: aiohttp.ClientSession | None = None,
        ssl: ssl_.SSLContext | None = None,
        timeout: float | Timeouts | None = None,
        max_retries: int = 4,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._token = _resolve_token(token)
        self.user_id = user_id if user_id is not None else os.environ.get("RUNCOMFY_USER_ID")
        given = {API.TRAINER: trainer_url, API.MODEL: model_url, API.SERVER: server_url}
        self._urls = {
            api: _check_base_url(api, given[api] or os.environ.get(_URL_ENV[api]) or default)
            for api, default in DEFAULT_URLS.items()
        }
        self.limiter: Limiter = (
            limiter if limiter is not None else TokenBucket(_resolve_rate(rate), burst)
        )
        self._owns_limiter = limiter is None
        # Run times seen per model: orders the polls of waits (see _schedule).
        self._run_times = RunTimes()
        if isinstance(timeout, Timeouts):
            self.timeouts = timeout
        elif timeout is not None:
            self.timeouts = Timeouts(total=float(timeout), read=float(timeout))
        else:
            self.timeouts = Timeouts()
        self.retry = retry or RetryPolicy(max_attempts=max_retries + 1)
        if ssl is not None and session is not None:
            raise errors.ConfigurationError(
                "pass ssl= or session=, not both: a borrowed session verifies with its own "
                "connector (aiohttp.TCPConnector(ssl=context))"
            )
        if ssl is not None and not isinstance(ssl, ssl_.SSLContext):
            raise errors.ConfigurationError(
                f"ssl must be an ssl.SSLContext, got {type(ssl).__name__}; build one with "
                "ssl.create_default_context(cafile=...)"
            )
        if ssl is not None and ssl.verify_mode is not ssl_.CERT_REQUIRED:
            raise errors.ConfigurationError(
                "the ssl context does not verify certificates (verify_mode is not "
                "CERT_REQUIRED); use ssl.create_default_context(cafile=...) so the API token "
                "only goes to the real server"
            )
        self._ssl = ssl
        self._session = session
        self._owns_session = session is None
        self._pipeline: Pipeline | None = None
        self._calls_at_close = 0
        self._cleanups: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = ClientState.UNOPENED

    def __repr__(self) -> str:
        return (
            f"RunComfy(state={self.state.value}, trainer_url={self._urls[API.TRAINER]!r}, "
            f"model_url={self._urls[API.MODEL]!r}, server_url={self._urls[API.SERVER]!r}, "
            f"user_id={self.user_id!r}, token=***)"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> NoReturn:
        raise errors.AsyncUsageError(
            "RunComfy is an async client: use `async with RunComfy() as rc:` inside an "
            "`async def` run by asyncio.run(...) (in Jupyter, top-level `async with` works), "
            "not `with RunComfy()`"
        )

    def __exit__(self, *exc_info: object) -> None:
        """Never reached: :meth:`__enter__` refuses; present so ``with`` reaches that message."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the session (when owned) and bind the client to the running event loop."""
        if self.state is ClientState.CLOSED:
            raise errors.ClientClosedError(
                "this RunComfy client was closed; create a new one (clients are not reopenable)"
            )
        if self.state is ClientState.OPEN:
            return
        self._loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=100, limit_per_host=64, ssl=self._ssl if self._ssl is not None else True
                ),
                headers={"User-Agent": f"runcomfy-async/{__version__}"},
            )
            # aiohttp silently resends an idempotent request once when a reused connection drops
            # before the answer. The one retry decision owns every repeat (a DELETE's 404 after a
            # lost answer is success only if we know it was a repeat), so it is switched off on
            # the session we own, as aiohttp's own test client does. A borrowed session keeps it.
            self._session._retry_connection = False
        transport = Transport(
            self._session,
            self.timeouts,
            token=self._token,
            token_bases=list(self._urls.values()),
            # A borrowed session may carry a proxy or TLS settings of its own: all its traffic
            # stays on it.
            threaded=self._owns_session,
            ssl=self._ssl,
        )
        # The guard holds the client weakly: no cycle, so an unclosed client is collected (and
        # warns) as soon as its last reference goes.
        client = weakref.ref(self)

        def guard() -> None:
            """Raise if the client closed or moved loops meanwhile."""
            alive = client()
            if alive is not None:
                alive._check_usable()

        self._pipeline = Pipeline(transport, limiter=self.limiter, policy=self.retry, guard=guard)
        self.state = ClientState.OPEN

    async def aclose(self) -> None:
        """Close the owned session and limiter; idempotent. A borrowed session stays open."""
        if self.state is ClientState.CLOSED:
            return
        try:
            await self._finish_cleanups()
        finally:
            # Even when the wait is cancelled (a second Ctrl-C), close what we own.
            self.state = ClientState.CLOSED
            if self._pipeline is not None:
                self._calls_at_close = self._pipeline.api_calls
                self._pipeline.transport.close()
            self._pipeline = None
            if self._owns_limiter:
                await self.limiter.aclose()
            if self._owns_session and self._session is not None:
                await self._session.close()

    async def _finish_cleanups(self) -> None:
        """Wait for the cleanups still running (machines being stopped), bounded."""
        deadline = asyncio.get_running_loop().time() + CLEANUP_WAIT
        while self._cleanups:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                logger.warning(
                    "closing with %d cleanup(s) unfinished after %gs (a machine may still be "
                    "billing: check `runcomfy machines list`)",
                    len(self._cleanups),
                    CLEANUP_WAIT,
                )
                return
            await asyncio.wait(set(self._cleanups), timeout=left)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if (
            getattr(self, "state", None) is ClientState.OPEN
            and getattr(self, "_owns_session", False)
            and self._session is not None
            and not self._session.closed
        ):
            _warn(
                "RunComfy client was not closed; use `async with RunComfy() as rc:` "
                "or `await rc.aclose()`",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    def _check_usable(self) -> None:
        """Raise unless the client is open and used on the loop it was opened on."""
        if self.state is ClientState.CLOSED or self._pipeline is None:
            if self.state is ClientState.UNOPENED:
                raise errors.ClientClosedError(
                    "this RunComfy client is not open; use `async with RunComfy() as rc:` "
                    "or `await rc.open()` first"
                )
            raise errors.ClientClosedError(
                "this RunComfy client is closed; create a new one inside `async with`"
            )
        if asyncio.get_running_loop() is not self._loop:
            raise errors.WrongEventLoopError(
                "this RunComfy client was opened in another event loop; create one client per "
                "event loop (e.g. in your FastAPI lifespan), not one at import time"
            )

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session (for object storage and ComfyUI traffic; carries no token)."""
        self._check_usable()
        assert self._session is not None
        return self._session

    def base_url(self, api: API) -> str:
        """The base URL of one API host, without trailing slash."""
        return self._urls[api]

    def require_user_id(self) -> str:
        """The account user id, or a clear error saying where to find it."""
        if not self.user_id:
            raise errors.ConfigurationError(
                "the machine (Server) API needs your user id; it is the UUID in your dashboard "
                "URL (https://www.runcomfy.com/comfyui/<user_id>/servers/...)",
                fix="pass RunComfy(user_id=...) or set RUNCOMFY_USER_ID",
            )
        return self.user_id

    # -- the pipeline ----------------------------------------------------------------------

    @property
    def api_calls(self) -> int:
        """Rate-limited API calls this client has sent."""
        return self._pipeline.api_calls if self._pipeline is not None else self._calls_at_close

    @property
    def pipeline(self) -> Pipeline:
        """The retry loop every exchange of this client runs through (API, storage, downloads).

        Raises:
            ClientClosedError, WrongEventLoopError: as for any call.
        """
        self._check_usable()
        assert self._pipeline is not None
        return self._pipeline

    async def request(
        self,
        spec: RequestSpec,
        *,
        priority: Priority = Priority.USER,
        data: Callable[[], Any] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        trace: CallTrace | None = None,
        policy: RetryPolicy | None = None,
    ) -> Any:
        """Send one API call through limiter, retries and error mapping; return decoded JSON.

        Args:
            spec: what to send.
            priority: ``Priority.BACKGROUND`` for polls, so user calls overtake them;
                ``Priority.CLEANUP`` for calls that stop billing.
            data: builds a fresh request body per attempt (a multipart upload); a consumed
                iterator is never replayed.
            timeout: overrides the API timeout (uploads need a longer one).
            trace: records whether the call may have reached the server.
            policy: retry bounds for this call instead of the client's.

        Raises:
            APIError: the server answered with an error (after retries where allowed).
            TransportError: no answer (after retries where allowed).
        """
        pipeline = self.pipeline
        url = self._urls[spec.api] + spec.path
        exchange = Exchange(
            method=spec.method, url=url, params=spec.params, json=spec.json, data=data,
            timeout=timeout,
        )
        try:
            return await pipeline.call(
                exchange,
                functools.partial(json_answer, method=spec.method, url=url),
                kind=spec.retry,
                priority=priority,
                trace=trace,
                policy=policy,
            )
        except errors.APIError as exc:
            exc.fix = exc.fix or exc.api_fix
            raise
        except errors.UnsentTransportError as exc:
            if not isinstance(exc, errors.APITimeoutError):
                exc.fix = self._url_fix(spec.api)
            raise

    def _url_fix(self, api: API) -> str:
        """Where the base URL of ``api`` that could not be reached comes from."""
        return (
            f"check the network, and the {api.value} base URL {self._urls[api]!r}: it comes "
            f"from RunComfy({api.value}_url=...) or the {_URL_ENV[api]} environment variable "
            f"(default {DEFAULT_URLS[api]!r})"
        )

    def spawn_cleanup(self, cleanup: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run a cleanup as a task of the client's (a machine's stop, an abandoned request's
        cancel): a caller's cancellation does not stop it, and closing the client waits for it.
        """
        task = asyncio.ensure_future(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    # -- collections -----------------------------------------------------------------------

    @functools.cached_property
    def datasets(self) -> Datasets:
        """Trainer datasets: create, list, upload, wait until READY."""
        return Datasets(self)

    @functools.cached_property
    def deployments(self) -> Deployments:
        """Serverless deployments: create, list, change, delete; submit and await requests."""
        return Deployments(self)

    @functools.cached_property
    def jobs(self) -> Jobs:
        """AI Toolkit training jobs: submit, rebuild by id, wait, watch and download artifacts."""
        return Jobs(self)

    @functools.cached_property
    def machines(self) -> Machines:
        """Server API machines: workflows, launch, wait until Ready, stop, drive ComfyUI."""
        return Machines(self)

    @functools.cached_property
    def models(self) -> Models:
        """Model API: the catalog and schemas, submit, await the output, cancel while queued."""
        return Models(self)

    @functools.cached_property
    def account(self) -> Account:
        """The account: its remaining balance."""
        return Account(self)
