"""The request pipeline in front of every handler: log, faults, bearer auth, account rate limit.

Order (outermost first): the log wraps everything, so rejected, faulted and reset requests are
recorded with the status actually sent; faults come before auth and the rate limit, so a faulted
request neither reaches a handler nor spends a rate token (unless the rule says ``after``: then
the request is processed in full and only its answer is replaced or lost); auth and the rate
limit apply to the three API hosts only (storage is authorised by its URL signature, see
docs/wire.md).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import socket
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from email.utils import formatdate
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ._state import RequestRecord
from ._storage import StorageError, storage_error_response
from ._wire import ApiError, error_response

if TYPE_CHECKING:
    from ._faults import FaultRule, RetryAfterForm
    from ._state import Api, EmulatorState

__all__ = ["api_for_path", "make_middlewares", "mask_headers", "retry_after_value"]

logger = logging.getLogger("runcomfy_async.testing")

# Path prefix -> API, first match wins (docs/wire.md: one host per API, one port here).
_PREFIXES: Final[tuple[tuple[str, Api], ...]] = (
    ("/prod/v1/trainers/", "trainer"),
    ("/v1/", "model"),
    ("/prod/api/users/", "server"),
    ("/prod/v1/deployments/", "server"),  # serverless queue endpoints, same host
    ("/prod/v2/", "server"),
    ("/storage/", "storage"),
    ("/comfyui/", "comfyui"),
)
_AUTHENTICATED: Final = frozenset({"trainer", "model", "server"})
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_SECRET_PREFIXES: Final = ("x-goog-", "x-amz-")
REDACTED: Final = "<redacted>"

_PROXY_PAGE: Final = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_TRUNCATED_BODY: Final = '{"id": "00000000-0000-4000-8000-000000000000", "status": "RUNN'


def api_for_path(path: str) -> Api:
    """Which API a path belongs to; ``"other"`` for none (answered 404)."""
    if path in ("/prod/v1/trainers", "/v1", "/storage", "/comfyui", "/prod/v2"):
        path += "/"
    for prefix, api in _PREFIXES:
        if path.startswith(prefix):
            return api
    return "other"


def mask_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers for the log, with credential and signature values replaced by ``<redacted>``."""
    masked: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        secret = lower in _SECRET_HEADERS or lower.startswith(_SECRET_PREFIXES)
        shown = REDACTED if secret else value
        masked[name] = f"{masked[name]}, {shown}" if name in masked else shown
    return masked


class _Reset(Exception):
    """A fault asked for the connection to be dropped without an answer."""


def _abort(request: web.Request) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), the rudest reset there is."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            logger.debug("could not set SO_LINGER; closing without RST")
    transport.abort()


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, bad method, body too large) in the API's body."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    message = "Not Found" if exc.status == 404 else exc.reason
    return error_response(exc.status, exc.status * 1000 + 1, message, headers=headers)


_FAULT_MESSAGES: Final[Mapping[int, tuple[str, str]]] = MappingProxyType(
    {
        500: ("InternalError", "Internal Server Error"),
        502: ("BadGateway", "Bad Gateway"),
        503: ("ServiceUnavailable", "Service Unavailable"),
        504: ("GatewayTimeout", "Gateway Timeout"),
    }
)


def retry_after_value(
    seconds: float, form: RetryAfterForm, *, wall: Callable[[], float] = time.time
) -> str:
    """A ``Retry-After`` value (RFC 9110 section 10.2.3): delta-seconds or an HTTP-date.

    Both round up, so a client never comes back early. The date is taken from the real wall
    clock, the one aiohttp's ``Date`` header uses, not the emulator's (advanceable) clock: the
    client compares it with its own clock and waits in real time.
    """
    if form == "date":
        return formatdate(math.ceil(wall() + seconds), usegmt=True)
    return str(max(0, math.ceil(seconds)))


def _fault_response(rule: FaultRule, api: str) -> web.Response:
    """The answer a fault sends instead of the real one (storage's own body on storage)."""
    kind = rule.kind
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = retry_after_value(rule.retry_after, rule.retry_after_form)
    if kind == "200_error":
        # docs/wire.md: some endpoints answer an error as HTTP 200 with a top-level error body.
        return error_response(200, rule.error_code, rule.error_message or "")
    if kind == "429":
        if api == "storage":
            response = storage_error_response(429, "SlowDown", "Please reduce your request rate.")
            response.headers.update(headers)
            return response
        return error_response(429, "rate_limited", "Too many requests", headers=headers)
    if kind == "html":
        return web.Response(status=502, text=_PROXY_PAGE, content_type="text/html")
    if kind == "truncated":
        return web.Response(status=200, text=_TRUNCATED_BODY, content_type="application/json")
    if kind == "expire_url":
        return storage_error_response(
            403, "ExpiredToken", "The signed URL has expired; request a fresh one."
        )
    status = int(kind)
    code, message = _FAULT_MESSAGES[status]
    if api == "storage":
        response = storage_error_response(status, code, message)
        response.headers.update(headers)
        return response
    return error_response(status, status * 1000 + 1, message, headers=headers)


async def _receive_part_of_body(request: web.Request) -> None:
    """Read about half of the request body, so the reset lands in the middle of it."""
    try:
        if request.content_length is None:
            await request.content.readany()
        else:
            await request.content.readexactly(request.content_length // 2)
    except (asyncio.IncompleteReadError, ConnectionError):
        logger.debug("the client went away before half of its body arrived")


async def _run_first(request: web.Request, handler: Handler) -> web.StreamResponse | None:
    """Process the request for an ``after`` fault; the handler's answer, if it made one."""
    try:
        return await handler(request)
    except (ApiError, StorageError, web.HTTPException):
        return None  # processed, and refused: the fault replaces that answer as well


def make_middlewares(state: EmulatorState) -> list[Middleware]:
    """The middleware chain for one emulator, bound to its state."""

    @web.middleware
    async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record every request with the status sent; render errors as JSON; add X-Request-Id."""
        seq = state.next_seq()
        at = time.monotonic()
        request_id = str(uuid.uuid4())
        reset = False
        try:
            response = await handler(request)
        except _Reset:
            _abort(request)
            response = web.Response(status=500)  # never written: the transport is gone
            reset = True
        except ConnectionError:
            # the client went away mid-request (e.g. an aborted upload): nothing can be sent
            response = web.Response(status=500)
            reset = True
        except (ApiError, StorageError) as exc:
            response = exc.response()
        except web.HTTPException as exc:
            response = _from_http_exception(exc)
        except Exception:
            logger.exception("emulator handler failed: %s %s", request.method, request.path)
            response = error_response(500, 500001, "Internal Server Error")
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        state.record(
            RequestRecord(
                method=request.method,
                path=request.path,
                query=request.query_string,
                status=0 if reset else response.status,
                headers=mask_headers(request.headers),
                at=at,
                api=api_for_path(request.path),
                authorized="Authorization" in request.headers,
                body_size=request.content.total_bytes,
                request_id=request_id,
                seq=seq,
            )
        )
        return response

    @web.middleware
    async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Apply the first fault rule that fires, before auth and the rate limit.

        With ``after`` the request is processed first (auth, rate limit and handler run) and
        the fault then replaces or drops the answer.
        """
        api = api_for_path(request.path)
        rule = state.faults.pick(api, request.method, request.path)
        if rule is None:
            return await handler(request)
        if rule.kind == "slow" and rule.after:
            try:
                return await handler(request)
            finally:
                await asyncio.sleep(rule.delay)  # the answer (or error) leaves late
        processed = await _run_first(request, handler) if rule.after else None
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.kind == "slow":
            return await handler(request)
        if rule.kind == "reset_mid_body":
            await _receive_part_of_body(request)
            raise _Reset
        if rule.kind == "reset":
            raise _Reset
        if processed is not None and processed.prepared:
            return processed  # already streamed (a WebSocket): too late to replace
        return _fault_response(rule, api)

    expected_auth = f"Bearer {state.config.token}"

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bearer auth on the three API hosts (docs/wire.md)."""
        if api_for_path(request.path) in _AUTHENTICATED:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), expected_auth.encode()):
                return error_response(401, 401001, "Unauthorized: invalid or missing bearer token")
        return await handler(request)

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        """One token bucket per bearer token on the API hosts; 429 ``rate_limited`` beyond."""
        if api_for_path(request.path) in _AUTHENTICATED:
            wait = state.limiter.try_acquire(request.headers.get("Authorization", ""))
            if wait is not None:
                return error_response(
                    429,
                    "rate_limited",
                    f"Too many requests: {state.limiter.describe()}",
                    headers={"Retry-After": state.limiter.retry_after(wait)},
                )
        return await handler(request)

    return [log_requests, inject_faults, authenticate, rate_limit]
