"""Sans-I/O protocol: request specs in, data or errors out.

Pure functions only (no aiohttp, no ``await``), so every decision about the wire -- what is an
error, what may be retried, how long a server asked us to wait -- is tested without an event loop.
Wire facts are described in the repository's docs/wire.md.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from . import errors
from ._retry import RetryPolicy

__all__ = [
    "API",
    "MAX_URL_REFRESHES",
    "Action",
    "Decision",
    "Failure",
    "Outcome",
    "RequestSpec",
    "Retry",
    "decide",
    "decode_response",
    "error_from_response",
    "is_loopback",
    "may_have_reached",
    "parse_retry_after",
    "redact_url",
]

#: Status codes that mean "try again later" (docs/wire.md).
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

#: Fresh signed URLs one transfer (upload or download) may fetch after storage refused its URL
#: with 403 (expired or bad signature) before it fails.
MAX_URL_REFRESHES = 3

#: Query keys whose values are harmless to log; every other value is masked.
_SAFE_QUERY_KEYS = frozenset(
    {
        "include_cost",
        "limit",
        "offset",
        "max_items",
        "size",
        "expires",
        "search",
        "category",
        "kind",
        "include_schema",
    }
)

#: Numeric ``error_code`` -> the HTTP status it stands for (docs/wire.md, suggested mapping).
_CODE_STATUS = {
    400001: 400,
    400002: 402,
    400004: 401,
    401001: 401,
    403001: 403,
    403003: 403,
    404001: 404,
    409001: 409,
    413001: 413,
    422001: 422,
    500001: 500,
    10001: 402,
    10002: 403,
    10003: 404,
}

#: Error codes with an exception of their own, whatever the HTTP status they come with.
_CODE_ERRORS: dict[int, type[errors.APIError]] = {
    10002: errors.DeploymentDisabledError,
    10003: errors.DeploymentDeletedError,
}

_STATUS_ERRORS: dict[int, type[errors.APIError]] = {
    400: errors.BadRequestError,
    401: errors.AuthenticationError,
    402: errors.InsufficientBalanceError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    413: errors.PayloadTooLargeError,
    422: errors.BadRequestError,
    429: errors.RateLimitError,
}

_EXCERPT = 200


class API(enum.Enum):
    """The three API hosts; each has its own base URL."""

    TRAINER = "trainer"
    MODEL = "model"
    SERVER = "server"


class Retry(enum.Enum):
    """What kind of request this is, for the retry decision (:func:`decide`).

    ``SAFE``: idempotent (a GET, or a POST whose repeat is harmless): repeated after connection
    failures, 429 and 5xx. ``UNSENT``: a POST that could create (and bill) something twice:
    repeated only when it provably never reached the handler (the connection never opened, or a
    429, which is refused before processing). ``CLEANUP``: a delete or stop: repeated like SAFE;
    a 404 after an earlier try that may have reached the server means that try did it; a
    server-set pause past the cap is waited out up to the cap rather than given up on.
    """

    SAFE = "safe"
    UNSENT = "unsent"
    CLEANUP = "cleanup"


class Failure(enum.Enum):
    """Why an exchange produced no usable answer."""

    #: The connection never opened (refused, connect timeout): nothing reached the server.
    UNSENT = "unsent"
    #: Reset, read timeout or cut after the request left: the server may have acted.
    SENT = "sent"
    #: A 2xx whose body was unreadable (cut, or not the JSON documented): the server acted.
    UNREADABLE = "unreadable"


@attrs.frozen(kw_only=True)
class Outcome:
    """What one attempt produced: an HTTP status with its headers, or a transport failure."""

    status: int = 0
    headers: Mapping[str, str] = attrs.field(factory=dict)
    failure: Failure | None = None


def may_have_reached(outcome: Outcome) -> bool:
    """Whether the server may have acted on the attempt that produced ``outcome``.

    Only a connection that never opened and a 429 (refused before processing) prove it did not.
    """
    if outcome.failure is not None:
        return outcome.failure is not Failure.UNSENT
    return outcome.status != 429


class Action(enum.Enum):
    """What the retry loop does next."""

    DELIVER = "deliver"  #: hand the answer (or "already gone") to the caller
    RETRY = "retry"  #: try again after ``delay`` seconds
    PAUSE = "pause"  #: hold the whole rate-limit bucket for ``delay`` seconds, then try again
    RAISE = "raise"  #: give the error to the caller


@attrs.frozen(kw_only=True)
class Decision:
    """One step of the retry loop: an action and, for RETRY and PAUSE, how long to wait."""

    action: Action
    delay: float = 0.0


_DELIVER = Decision(action=Action.DELIVER)
_RAISE = Decision(action=Action.RAISE)


def decide(
    kind: Retry,
    outcome: Outcome,
    *,
    attempt: int,
    reached: bool,
    elapsed: float,
    now: float,
    policy: RetryPolicy,
    jitter: float,
) -> Decision:
    """The one retry decision for every HTTP exchange (API, storage, downloads, ComfyUI).

    Args:
        kind: what kind of request it was.
        outcome: what the attempt produced.
        attempt: which try this was (from 1).
        reached: whether an earlier try may have reached the server (its answer was lost or a
            5xx), as opposed to provably not (never sent, or refused with 429).
        elapsed: seconds the call has spent on the wire and in decided waits since its first
            try (time queued for a rate-limit token does not count).
        now: the wall clock (epoch seconds), for a ``Retry-After`` given as an HTTP date.
        policy: the retry bounds.
        jitter: a uniform sample of [0, 1) for the backoff.
    """
    status, failure = outcome.status, outcome.failure
    cleanup = kind is Retry.CLEANUP
    if failure is None and 200 <= status < 400:
        return _DELIVER
    if failure is None and status == 404 and cleanup and reached:
        return _DELIVER  # an earlier try did it; its answer was lost (docs/reliability.md)
    server_wait: float | None = None
    if failure is not None:
        repeatable = failure is Failure.UNSENT or kind is not Retry.UNSENT
    elif status == 429:
        # Refused before processing, so even a create may be repeated.
        repeatable = True
        server_wait = parse_retry_after(outcome.headers.get("Retry-After"), now=now)
        if server_wait is None:
            server_wait = policy.rate_limit_pause
    elif status in RETRYABLE_STATUSES:
        # A 5xx may have been processed: only a request whose repeat is harmless goes again.
        repeatable = kind is not Retry.UNSENT
        if status == 503:
            server_wait = parse_retry_after(outcome.headers.get("Retry-After"), now=now)
    else:
        repeatable = False
    if not repeatable:
        return _RAISE
    if server_wait is not None and server_wait > policy.max_retry_after:
        if not cleanup:
            return _RAISE  # past the cap the caller hears of it rather than hang silently
        server_wait = policy.max_retry_after
    if server_wait is not None:
        delay = policy.after_server_wait(server_wait, jitter)
    else:
        delay = policy.backoff(attempt, jitter)
    if attempt >= policy.max_attempts:
        return _RAISE
    budget = policy.total_timeout
    if budget is not None and elapsed + delay > budget:
        return _RAISE
    action = Action.PAUSE if status == 429 and failure is None else Action.RETRY
    return Decision(action=action, delay=delay)


@attrs.frozen(kw_only=True)
class RequestSpec:
    """One API call, as data: which host, method, path, query and JSON body."""

    api: API
    method: str
    path: str
    params: Mapping[str, str] | None = None
    json: Any = None
    retry: Retry = Retry.SAFE


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def redact_url(url: str) -> str:
    """The URL with every query value that could be a credential replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = [
        (k, v if k.lower() in _SAFE_QUERY_KEYS else "***")
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(pairs, safe="*")))


def _excerpt(body: bytes) -> str:
    text = body[:_EXCERPT].decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())
    return text + ("..." if len(body) > _EXCERPT else "")


def _message_of(payload: Any) -> str | None:
    """The human-readable message of an error body, whichever key the API used (docs/wire.md)."""
    if not isinstance(payload, dict):
        return None
    for key in ("error_message", "message"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    err = payload.get("error")
    if isinstance(err, str) and err:
        return err
    if isinstance(err, dict):
        inner = _message_of(err)
        if inner:
            return inner
    detail = payload.get("detail")
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        return "; ".join(_detail_line(item) for item in detail[:5])
    return None


def _detail_line(item: Any) -> str:
    if isinstance(item, dict):
        loc = ".".join(str(p) for p in item.get("loc", []) or [])
        msg = str(item.get("msg", item))
        return f"{loc}: {msg}" if loc else msg
    return str(item)


def _status_for_code(code: Any, http_status: int) -> int:
    """The status of an error: the HTTP one, or the one an ``error_code`` implies on a 2xx."""
    if http_status >= 400:
        return http_status
    if code == "rate_limited":
        return 429
    if isinstance(code, int):
        if code in _CODE_STATUS:
            return _CODE_STATUS[code]
        guess = code // 1000
        if 400 <= guess < 600:
            return guess
    return 400


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str,
    url: str,
    payload: Any = None,
    now: float,
) -> errors.APIError:
    """Build the APIError subclass for an error answer (never includes the request's token)."""
    if payload is None and body:
        payload = _loads(body)
    code = payload.get("error_code") if isinstance(payload, dict) else None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    effective = _status_for_code(code, status)
    message = _message_of(payload)
    if message is not None and isinstance(detail, list) and detail:
        # "Validation Error" alone does not say what to fix: the detail items do.
        lines = "; ".join(_detail_line(item) for item in detail[:5])
        if lines not in message:
            message = f"{message}: {lines}"
    if message is None:
        kind = "an empty body" if not body else f"a body without a message: {_excerpt(body)!r}"
        message = f"the server answered with {kind}"
    fallback = errors.ServerError if effective >= 500 else errors.APIError
    cls = _STATUS_ERRORS.get(effective, fallback)
    if isinstance(code, int) and code in _CODE_ERRORS:
        cls = _CODE_ERRORS[code]
    common: dict[str, Any] = {
        "status": effective,
        "code": code,
        "detail": detail,
        "method": method,
        "url": redact_url(url),
        "request_id": headers.get("X-Request-Id") or headers.get("x-request-id"),
    }
    if cls is errors.RateLimitError:
        return errors.RateLimitError(
            message, retry_after=parse_retry_after(headers.get("Retry-After"), now=now), **common
        )
    return cls(message, **common)


_NOT_JSON = object()


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return _NOT_JSON


def decode_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str,
    url: str,
    now: float,
) -> Any:
    """Decoded JSON of a successful answer; raises the matching APIError otherwise.

    A 2xx body with a non-null ``error_code`` is an error too (docs/wire.md:
    errors in a 200). An empty 2xx body decodes to None (DELETE answers may be empty, docs/wire.md).
    """
    payload = _loads(body) if body.strip() else None
    if payload is _NOT_JSON:
        if status >= 400:
            raise error_from_response(status, headers, body, method=method, url=url, now=now)
        raise errors.UnexpectedResponseError(
            f"expected JSON but got: {_excerpt(body)!r}",
            status=status,
            method=method,
            url=redact_url(url),
            request_id=headers.get("X-Request-Id"),
        )
    if status >= 400 or (isinstance(payload, dict) and payload.get("error_code") is not None):
        raise error_from_response(
            status, headers, body, method=method, url=url, payload=payload, now=now
        )
    return payload


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (where plain http cannot leak a token)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
