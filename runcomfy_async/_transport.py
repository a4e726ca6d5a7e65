"""The one seam between the library and aiohttp: every HTTP exchange goes through here.

API calls, signed-URL PUTs, artifact and output downloads and ComfyUI calls are all one
:class:`Exchange` sent by :meth:`Transport.exchange`; ComfyUI's event stream is opened by
:meth:`Transport.websocket` under the same credential rules. Each call says which credentials it may
carry: the API token goes only to the base URLs the transport was given for it, and a call to
object storage carries none (its URL's signature is the credential). aiohttp/asyncio failures are
mapped to :class:`~runcomfy_async.errors.TransportError` with ``raise ... from exc``; whether the
request could have reached the server decides the error's class (``UnsentTransportError``).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import aiohttp
import attrs
from multidict import CIMultiDictProxy

from . import errors
from ._protocol import redact_url

__all__ = [
    "Answer",
    "BodyAbort",
    "Consume",
    "Credentials",
    "Exchange",
    "Timeouts",
    "Transport",
    "map_error",
]

R = TypeVar("R")

#: Bytes of an error answer kept for its message; the rest is not read.
ERROR_BODY_LIMIT = 64 * 1024


@attrs.frozen(kw_only=True)
class Timeouts:
    """Timeouts in seconds for API calls (``connect``/``read``/``total``) and for transfers.

    Uploads and downloads get their own, longer read timeout: a 2 GiB PUT must not be cut off by
    the limit that suits a JSON status call (connect apart from long reads).
    """

    connect: float = 10.0
    read: float = 60.0
    total: float | None = 120.0
    transfer_read: float = 300.0

    def for_api(self) -> aiohttp.ClientTimeout:
        """The aiohttp timeout for one API call."""
        return aiohttp.ClientTimeout(
            total=self.total, sock_connect=self.connect, sock_read=self.read
        )

    def for_transfer(self) -> aiohttp.ClientTimeout:
        """The aiohttp timeout for one upload or download (no total: big files take long)."""
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect, sock_read=self.transfer_read
        )


class Credentials(enum.Enum):
    """What a call may carry to prove who it is."""

    #: The bearer token: only to the base URLs the transport holds the token for.
    BEARER = "bearer"
    #: Nothing: object storage and downloads, whose signed URL is the credential.
    NONE = "none"


@attrs.frozen(kw_only=True)
class Exchange:
    """One HTTP request as data; ``data`` builds a fresh body for each attempt (never a consumed
    iterator replayed)."""

    method: str
    url: str
    params: Mapping[str, str] | None = None
    json: Any = None
    data: Callable[[], Any] | None = None
    headers: Mapping[str, str] | None = None
    timeout: aiohttp.ClientTimeout | None = None
    credentials: Credentials = Credentials.BEARER


@attrs.frozen(kw_only=True)
class Answer(Generic[R]):
    """Status and headers of one answer; ``body`` for an error status (at most 64 KiB) or when
    no consumer was given, ``value`` what the consumer made of a success."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes = b""
    value: R | None = None


#: Reads a non-error answer (status < 400) while the connection is open, e.g. to stream it to
#: disk; returns what the caller wants from it.
Consume = Callable[[aiohttp.ClientResponse], Awaitable[R]]


class BodyAbort(Exception):
    """Raised from a request body or a consumer to stop the call with a failure of its own.

    aiohttp reports an exception raised inside a request body as a connection error; the
    transport finds this one behind it and raises its ``cause`` instead, never retried.
    """

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


def _aborted(exc: BaseException) -> BaseException | None:
    """The failure a body or consumer signalled, if ``exc`` was caused by one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BodyAbort):
            return current.cause
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def map_error(exc: BaseException, *, method: str, url: str) -> errors.TransportError:
    """Translate an aiohttp/asyncio failure into our tree (the URL has query secrets masked)."""
    safe = redact_url(url)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return errors.UnsentTimeoutError(
            f"timed out connecting to {safe} ({method}); the request was not sent",
            method=method,
            url=safe,
        )
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return errors.APITimeoutError(
            f"timed out talking to {safe} ({method})",
            method=method,
            url=safe,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return errors.UnsentTransportError(
            f"could not connect to {safe} ({method}): {exc.os_error}", method=method, url=safe
        )
    return errors.TransportError(
        f"connection failed during {method} {safe}: {type(exc).__name__}: {exc}",
        method=method,
        url=safe,
    )


class Transport:
    """Sends exchanges on a shared ``aiohttp.ClientSession``.

    Args:
        session: the session every exchange uses (the client's, owned or borrowed).
        timeouts: the default API timeout comes from here.
        token: the bearer token for :attr:`Credentials.BEARER` calls (None: such calls are refused).
        token_bases: the base URLs the token may be sent to.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeouts: Timeouts,
        *,
        token: str | None = None,
        token_bases: Sequence[str] = (),
    ) -> None:
        self.session = session
        self.timeouts = timeouts
        # Built once: a fresh ClientTimeout per call showed up in the pipeline's profile.
        self._api_timeout = timeouts.for_api()
        self._auth: Mapping[str, str] = (
            _AuthHeaders({"Authorization": f"Bearer {token}", "Accept": "application/json"})
            if token is not None
            else {}
        )
        self._token_bases = tuple(base.rstrip("/") + "/" for base in token_bases)

    def _headers(self, exchange: Exchange) -> Mapping[str, str]:
        """The exchange's headers plus, where allowed, the token."""
        extra = exchange.headers or {}
        if exchange.credentials is Credentials.NONE:
            if any(k.lower() == "authorization" for k in extra):
                raise errors.ConfigurationError(
                    "an object-storage request must not carry an Authorization header: its "
                    "signed URL is the credential"
                )
            return extra
        if not self._auth:
            raise errors.ConfigurationError(
                f"{exchange.method} {redact_url(exchange.url)} asks for the API token, but this "
                "transport holds none"
            )
        if not (exchange.url + "/").startswith(self._token_bases):
            raise errors.ConfigurationError(
                f"refusing to send the API token to {redact_url(exchange.url)}: it goes only to "
                "the API base URLs"
            )
        return _AuthHeaders({**self._auth, **extra}) if extra else self._auth

    async def exchange(
        self, exchange: Exchange, consume: Consume[R] | None = None
    ) -> Answer[R]:
        """Send one request; read an error answer's body, or hand a success to ``consume``
        (without one the whole body is read).

        Raises:
            TransportError: no answer (``UnsentTransportError`` when nothing left the machine).
            ClientClosedError: the session was closed meanwhile.
            Exception: what a body or consumer signalled with :class:`BodyAbort`.
        """
        method, url = exchange.method, exchange.url
        headers = self._headers(exchange)
        # Downloads may be redirected (model outputs often point at a CDN): they carry no token.
        # Anything else is answered where it was sent.
        follow = method == "GET" and exchange.credentials is Credentials.NONE
        try:
            async with self.session.request(
                method,
                url,
                headers=headers,
                params=exchange.params,
                json=exchange.json,
                data=exchange.data() if exchange.data is not None else None,
                timeout=exchange.timeout or self._api_timeout,
                allow_redirects=follow,
            ) as resp:
                if resp.status >= 400:
                    body = await resp.content.read(ERROR_BODY_LIMIT)
                    return Answer(status=resp.status, headers=resp.headers, body=body)
                if consume is None:
                    body = await resp.read()
                    return Answer(status=resp.status, headers=resp.headers, body=body)
                value = await consume(resp)
                return Answer(status=resp.status, headers=resp.headers, value=value)
        except BodyAbort as abort:
            raise abort.cause from None
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
            cause = _aborted(exc)
            if cause is not None:
                raise cause from None
            if self.session.closed:
                # aiohttp's bare "Session is closed", or a connection it cut on closing.
                raise errors.ClientClosedError(
                    f"the client was closed while {method} {redact_url(url)} was in flight"
                ) from exc
            if isinstance(exc, RuntimeError):
                raise
            raise map_error(exc, method=method, url=url) from exc


    async def websocket(
        self,
        url: str,
        *,
        params: Mapping[str, str],
        credentials: Credentials,
        heartbeat: float,
        max_message: int,
    ) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket (ComfyUI's event stream), carrying the token only where an exchange
        to ``url`` would; the handshake is bounded by the connect timeout.

        Raises:
            TransportError: the handshake failed or was refused.
            ClientClosedError: the session was closed meanwhile.
        """
        headers = self._headers(Exchange(method="GET", url=url, credentials=credentials))
        try:
            async with asyncio.timeout(self.timeouts.connect):
                return await self.session.ws_connect(
                    url,
                    params=params,
                    headers=headers,
                    heartbeat=heartbeat,
                    max_msg_size=max_message,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                )
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
            if self.session.closed:
                raise errors.ClientClosedError(
                    f"the client was closed while opening {redact_url(url)}"
                ) from exc
            if isinstance(exc, RuntimeError):
                raise
            raise map_error(exc, method="GET", url=url) from exc


class _AuthHeaders(dict[str, str]):
    """Headers whose repr masks the token, for tracebacks that show locals and debuggers."""

    def __repr__(self) -> str:
        return repr({k: "***" if k.lower() == "authorization" else v for k, v in self.items()})
