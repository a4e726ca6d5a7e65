"""The one seam between the library and aiohttp: every HTTP exchange goes through here.

API calls, signed-URL PUTs, artifact and output downloads and ComfyUI calls are all one
:class:`Exchange` sent by :meth:`Transport.exchange`; ComfyUI's event stream is opened by
:meth:`Transport.websocket` under the same credential rules. Each call says which credentials it may
carry: the API token goes only to the base URLs the transport was given for it, and a call to
object storage carries none (its URL's signature is the credential). aiohttp/asyncio failures are
mapped to :class:`~runcomfy_async.errors.TransportError` with ``raise ... from exc``; whether the
request could have reached the server decides the error's class (``UnsentTransportError``).

One kind of exchange takes another road: a large file sent over HTTPS (a signed PUT to storage,
a direct multipart upload) goes from a worker thread on a blocking TLS socket
(:class:`_ThreadedPut`), where OpenSSL encrypts straight from the read buffer into the socket;
asyncio's TLS transport copies every byte three times more.
It is still one exchange of this seam, answered the same way, through the same retry loop.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import functools
import http.client
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from . import errors
from ._protocol import redact_url

__all__ = [
    "Answer",
    "BodyAbort",
    "Consume",
    "Credentials",
    "Exchange",
    "ThreadedBody",
    "Timeouts",
    "Transport",
    "map_error",
]

R = TypeVar("R")

#: Bytes of an error answer kept for its message; the rest is not read.
ERROR_BODY_LIMIT = 64 * 1024
#: Storage PUTs over HTTPS at least this large are sent by a worker thread (smaller ones reuse
#: the session's pooled connections; a fresh TLS handshake would cost more than it saves).
THREADED_MIN: Final = 8 << 20


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
    iterator replayed); ``read_bufsize`` sizes the answer's read buffer (a large download reads
    in MiB, not aiohttp's default 64 KiB)."""

    method: str
    url: str
    params: Mapping[str, str] | None = None
    json: Any = None
    data: Callable[[], Any] | None = None
    headers: Mapping[str, str] | None = None
    timeout: aiohttp.ClientTimeout | None = None
    credentials: Credentials = Credentials.BEARER
    read_bufsize: int | None = None


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


class ThreadedBody(abc.ABC):
    """A request body that can also be sent from a worker thread on a blocking socket."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """The exact number of bytes :meth:`send_blocking` sends (the Content-Length)."""

    @property
    @abc.abstractmethod
    def content_type(self) -> str:
        """The Content-Type sent unless the exchange's headers name one."""

    @abc.abstractmethod
    def started(self) -> None:
        """Called on the event loop just before the thread starts sending."""

    @abc.abstractmethod
    def send_blocking(self, send: Callable[[memoryview], None], stop: threading.Event) -> None:
        """Send every byte with ``send``, from a worker thread; stop early once ``stop`` is set.

        Raises:
            BodyAbort: the body cannot be sent as planned (its file changed).
        """


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
        threaded_tls: send large storage PUTs over HTTPS from a worker thread; only for a session
            whose connector uses no settings of its own (no proxy, the given ``ssl`` context).
        ssl: the context those threads verify with (None: the system's default).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeouts: Timeouts,
        *,
        token: str | None = None,
        token_bases: Sequence[str] = (),
        threaded_tls: bool = False,
        ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.session = session
        self._threaded_tls = threaded_tls
        self._ssl = ssl
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
        body = exchange.data() if exchange.data is not None else None
        if (
            isinstance(body, ThreadedBody)
            and self._threaded_tls
            and body.size >= THREADED_MIN
            and url.startswith("https://")
        ):
            put = _ThreadedPut(
                exchange,
                {**self.session.headers, **headers},
                body,
                self._ssl,
                exchange.timeout or self._api_timeout,
            )
            return await put.run()
        # Downloads (and a URL source's HEAD) may be redirected (model outputs often point at a
        # CDN): they carry no token.
        # Anything else is answered where it was sent.
        follow = method in ("GET", "HEAD") and exchange.credentials is Credentials.NONE
        try:
            async with self.session.request(
                method,
                url,
                headers=headers,
                params=exchange.params,
                json=exchange.json,
                data=body,
                timeout=exchange.timeout or self._api_timeout,
                allow_redirects=follow,
                read_bufsize=exchange.read_bufsize,
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


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system's trust store (honours ``SSL_CERT_FILE``), loaded once, on first use."""
    return ssl.create_default_context()


class _Unsent(Exception):
    """The connection or TLS handshake failed: no byte of the request left the machine."""


class _ThreadedPut:
    """One PUT (or POST) of a :class:`ThreadedBody` from a thread on a blocking TLS socket.

    The thread connects, verifies the certificate, sends the head and the body, and reads the
    answer; the event loop only waits. Cancelling shuts the socket down, so the thread stops
    within one send and closes its file itself. An answer the server sent before it stopped
    reading (an expired signature's 403) is still read and returned.
    """

    def __init__(
        self,
        exchange: Exchange,
        headers: Mapping[str, str],
        body: ThreadedBody,
        context: ssl.SSLContext | None,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        parts = urlsplit(exchange.url)
        self._method = exchange.method
        self._url = exchange.url
        self._host = parts.hostname or ""
        self._port = parts.port or 443
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{exchange.method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [
            f"{k}: {v}"
            for k, v in headers.items()
            if k.lower() not in ("host", "content-length", "connection", "transfer-encoding")
        ]
        if not any(k.lower() == "content-type" for k in headers):
            lines.append(f"Content-Type: {body.content_type}")
        lines += [f"Content-Length: {body.size}", "Connection: close"]
        self._head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._body = body
        self._context = context
        self._connect = timeout.sock_connect or timeout.total
        self._read = timeout.sock_read or timeout.total
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    async def run(self) -> Answer[Any]:
        """Send from a thread of its own; the answer, or the failure mapped like aiohttp's."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, list[tuple[str, str]], bytes]] = loop.create_future()

        def deliver(outcome: Any, failed: bool) -> None:
            if not done.done():
                (done.set_exception if failed else done.set_result)(outcome)

        def work() -> None:
            outcome: Any
            try:
                outcome, failed = self._exchange(), False
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting task as is)
                outcome, failed = exc, True
            # A closed loop (RuntimeError): nobody waits for this answer any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, outcome, failed)

        self._body.started()
        # A thread of its own, not the loop's executor: a long upload must not hold a thread
        # that file opens and disk writes elsewhere are queued for.
        threading.Thread(target=work, name="runcomfy-upload", daemon=True).start()
        try:
            status, headers, data = await done
        except asyncio.CancelledError:
            self._abort()
            raise
        except BodyAbort as abort:
            raise abort.cause from None
        except _Unsent as exc:
            raise self._error(exc.__cause__ or exc, unsent=True) from exc.__cause__
        except (OSError, http.client.HTTPException) as exc:
            raise self._error(exc, unsent=False) from exc
        return Answer(
            status=status, headers=CIMultiDictProxy(CIMultiDict(headers)), body=data
        )

    def _abort(self) -> None:
        """Stop the thread: no further step, and a send or read in progress fails now."""
        self._stop.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    self._sock.shutdown(socket.SHUT_RDWR)

    def _error(self, exc: BaseException, *, unsent: bool) -> errors.TransportError:
        method, safe = self._method, redact_url(self._url)
        if unsent and isinstance(exc, TimeoutError):
            return errors.UnsentTimeoutError(
                f"timed out connecting to {safe} ({method}); the request was not sent",
                method=method,
                url=safe,
            )
        if unsent:
            return errors.UnsentTransportError(
                f"could not connect to {safe} ({method}): {exc}", method=method, url=safe
            )
        if isinstance(exc, TimeoutError):
            return errors.APITimeoutError(
                f"timed out talking to {safe} ({method}); raise the client's timeout if the "
                "network is slow",
                method=method,
                url=safe,
            )
        return errors.TransportError(
            f"connection failed during {method} {safe}: {type(exc).__name__}: {exc}",
            method=method,
            url=safe,
        )

    def _exchange(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """In the thread: connect, verify, send, read the answer."""
        try:
            raw = socket.create_connection((self._host, self._port), timeout=self._connect)
        except OSError as exc:
            raise _Unsent from exc
        with raw:
            try:
                sock = (self._context or _default_context()).wrap_socket(
                    raw, server_hostname=self._host
                )
            except OSError as exc:  # ssl.SSLError (a bad certificate) included
                raise _Unsent from exc
            with sock:
                with self._lock:
                    if self._stop.is_set():
                        raise _Unsent("cancelled before sending")
                    self._sock = sock
                sock.settimeout(self._read)
                try:
                    sock.sendall(self._head)
                    self._body.send_blocking(sock.sendall, self._stop)
                except OSError:
                    early = self._answer(sock, early=True)
                    if early is None:
                        raise
                    return early
                answer = self._answer(sock, early=False)
                assert answer is not None
                return answer

    def _answer(
        self, sock: socket.socket, *, early: bool
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """Status, headers and (at most 64 KiB of) body; None if an early answer is not there."""
        response = http.client.HTTPResponse(sock, method=self._method)
        try:
            response.begin()
            return response.status, response.getheaders(), response.read(ERROR_BODY_LIMIT)
        except (OSError, http.client.HTTPException):
            if early:
                return None
            raise
        finally:
            response.close()


class _AuthHeaders(dict[str, str]):
    """Headers whose repr masks the token, for tracebacks that show locals and debuggers."""

    def __repr__(self) -> str:
        return repr({k: "***" if k.lower() == "authorization" else v for k, v in self.items()})
