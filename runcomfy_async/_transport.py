"""The one seam between the library and aiohttp: every HTTP exchange goes through here.

API calls, signed-URL PUTs, artifact and output downloads and ComfyUI calls are all one
:class:`Exchange` sent by :meth:`Transport.exchange`; ComfyUI's event stream is opened by
:meth:`Transport.websocket` under the same credential rules. Each call says which credentials it may
carry: the API token goes only to the base URLs the transport was given for it, and a call to
object storage carries none (its URL's signature is the credential). aiohttp/asyncio failures are
mapped to :class:`~runcomfy_async.errors.TransportError` with ``raise ... from exc``; whether the
request could have reached the server decides the error's class (``UnsentTransportError``).

Two kinds of exchange take another road when the transport owns its session: a large upload
(a signed PUT to storage, a direct multipart POST) is sent from a worker thread on a blocking
socket (:class:`_ThreadedPut`: reads into one page-aligned buffer, each sent at once; over TLS
OpenSSL encrypts straight from it into the socket, where asyncio's TLS transport copies every
byte three times more; no step through the event loop), and a download's body is received by
a worker thread (:class:`_ThreadedGet`) into one page-aligned buffer that goes straight to
disk, on keep-alive connections the transport pools. Each is still one exchange of this seam,
answered the same way, through the same retry loop.
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
from urllib.parse import urljoin, urlsplit

import aiohttp
import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from . import errors
from ._buffers import aligned_buffer
from ._protocol import redact_url

__all__ = [
    "Answer",
    "BodyAbort",
    "Consume",
    "Credentials",
    "Exchange",
    "ThreadedBody",
    "ThreadedConsumer",
    "Timeouts",
    "Transport",
    "map_error",
]

R = TypeVar("R")

#: Bytes of an error answer kept for its message; the rest is not read.
ERROR_BODY_LIMIT = 64 * 1024
#: Uploads at least this large are sent by a worker thread (smaller ones reuse the session's
#: pooled connections; a fresh connection and TLS handshake would cost more than it saves).
THREADED_MIN: Final = 8 << 20
#: Bytes a worker-thread download reads at a time: its one buffer, written to disk as it fills.
RECV_BUFFER: Final = 1 << 20
#: Idle keep-alive connections a transport keeps per (scheme, host, port) for downloads.
POOL_SIZE: Final = 8
#: Redirects a download follows (aiohttp's limit too).
MAX_REDIRECTS: Final = 10
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


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
    def send_blocking(self, sock: socket.socket, stop: threading.Event) -> None:
        """Send every byte on the blocking ``sock`` (an ``ssl.SSLSocket`` over HTTPS), from a
        worker thread; stop early once ``stop`` is set.

        Raises:
            BodyAbort: the body cannot be sent as planned (its file changed).
        """


class ThreadedConsumer(abc.ABC, Generic[R]):
    """A consumer of a success answer that can also take the body from a worker thread.

    Called with an aiohttp response it reads it there; on the thread path :meth:`begin` runs
    on the event loop once the head arrived, :meth:`write` in the thread for each buffer,
    :meth:`close` always once :meth:`begin` succeeded, and :meth:`end` on the loop after the
    whole body.
    """

    @abc.abstractmethod
    async def __call__(self, resp: aiohttp.ClientResponse) -> R:
        """Read the answer from aiohttp."""

    @abc.abstractmethod
    async def begin(self, status: int, headers: CIMultiDictProxy[str]) -> None:
        """Check the answer's head and open where its body goes."""

    @abc.abstractmethod
    def write(self, data: memoryview) -> None:
        """In the worker thread: the next bytes of the body (the buffer is reused after)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close what :meth:`begin` opened (the body may have stopped early)."""

    @abc.abstractmethod
    async def end(self) -> R:
        """The whole body was written: what the caller wants from it."""


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
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _transport_error(
            exc.os_error, unsent=True, timed_out=False, method=method, url=url
        )
    # aiohttp's timeouts are TimeoutErrors; a connect timeout means nothing was sent.
    unsent = isinstance(exc, aiohttp.ConnectionTimeoutError)
    return _transport_error(exc, unsent=unsent, method=method, url=url)


def _transport_error(
    cause: BaseException, *, unsent: bool, method: str, url: str, timed_out: bool | None = None
) -> errors.TransportError:
    """The error for a failed exchange: unsent or not, timed out or not (by default: whether
    ``cause`` is a ``TimeoutError``), the same words whichever road the exchange took."""
    safe = redact_url(url)
    if timed_out is None:
        timed_out = isinstance(cause, TimeoutError)
    if unsent and timed_out:
        return errors.UnsentTimeoutError(
            f"timed out connecting to {safe} ({method}); the request was not sent",
            method=method,
            url=safe,
        )
    if unsent:
        return errors.UnsentTransportError(
            f"could not connect to {safe} ({method}): {cause}", method=method, url=safe
        )
    if timed_out:
        return errors.APITimeoutError(
            f"timed out talking to {safe} ({method})", method=method, url=safe
        )
    return errors.TransportError(
        f"connection failed during {method} {safe}: {type(cause).__name__}: {cause}",
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
        threaded: send large uploads from a worker thread, and receive downloads of a
            :class:`ThreadedConsumer` in one, on connections of its own; only for a session
            whose connector uses no settings of its own (no proxy, the given ``ssl`` context).
        threaded_min: the smallest upload body sent from a worker thread.
        ssl: the context those threads verify with (None: the system's default).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeouts: Timeouts,
        *,
        token: str | None = None,
        token_bases: Sequence[str] = (),
        threaded: bool = False,
        threaded_min: int = THREADED_MIN,
        ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.session = session
        self._threaded = threaded
        self._threaded_min = threaded_min
        self._pool = _Pool(ssl)
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
        # Downloads (and a URL source's HEAD) may be redirected (model outputs often point at a
        # CDN): they carry no token.
        # Anything else is answered where it was sent.
        follow = method in ("GET", "HEAD") and exchange.credentials is Credentials.NONE
        if self._threaded and url.startswith(("https://", "http://")):
            timeout = exchange.timeout or self._api_timeout
            if isinstance(body, ThreadedBody) and body.size >= self._threaded_min:
                # A direct upload's headers carry the token: keep them masked in reprs.
                merged = _AuthHeaders({**self.session.headers, **headers})
                put = _ThreadedPut(exchange, merged, body, self._pool, timeout)
                return await put.run()
            if (
                follow
                and method == "GET"
                and isinstance(consume, ThreadedConsumer)
                and not exchange.params
            ):
                get = _ThreadedGet(
                    exchange, {**self.session.headers, **headers}, consume, self._pool, timeout
                )
                return await get.run()
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

    def close(self) -> None:
        """Close the worker threads' idle connections (the session is its owner's to close)."""
        self._pool.close()

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


_Outcome = tuple[int, list[tuple[str, str]], bytes]
_Key = tuple[str, str, int]


def _key(url: str) -> tuple[_Key, str]:
    """``(scheme, host, port)`` of a URL and its request target (path and query)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname or "", port), target


def _shutdown(sock: socket.socket | None) -> None:
    """Make a blocking send or read on ``sock`` in another thread fail now.

    The plain socket's shutdown, also for a TLS socket: its own would drop the TLS state under
    the thread still using it.
    """
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Pool:
    """Connections for the worker threads: made, verified, and (downloads') kept alive when idle.

    At most :data:`POOL_SIZE` idle connections per ``(scheme, host, port)``; the transport
    closes them with itself. Every TLS connection is verified with the client's context.
    """

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self._context = context
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(self, key: _Key) -> http.client.HTTPConnection | None:
        """An idle connection to ``key``, most recently used first (None: make one)."""
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        """Keep a connection whose answer was read to its end, or close it if there is no room."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and conn.sock is not None and len(idle) < POOL_SIZE:
                idle.append(conn)
                return
        conn.close()

    def connect(
        self, key: _Key, *, connect: float | None, read: float | None
    ) -> http.client.HTTPConnection:
        """A fresh connection (TLS verified), with the read timeout set.

        Raises:
            _Unsent: the connection or the handshake failed.
        """
        scheme, host, port = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=connect, context=self._context or _default_context()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect)
        try:
            conn.connect()
        except OSError as exc:  # ssl.SSLError (a bad certificate) included
            conn.close()
            raise _Unsent from exc
        assert conn.sock is not None
        conn.sock.settimeout(read)
        return conn

    def close(self) -> None:
        """Close every idle connection; later ones are closed as they are given back."""
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


class _Worker(Generic[R]):
    """A worker thread whose outcome an event-loop task awaits, and how to stop it early.

    Cancelling the awaiting task sets :attr:`stop` and shuts the thread's socket down, so a
    send or read in progress fails at once; the task then waits for the thread to end, so
    nothing it writes (a download's ``.part``) outlives the cancellation.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def attach(self, sock: socket.socket | None) -> None:
        """The socket the thread uses now (shut down on cancellation).

        Raises:
            _Unsent: cancelled before the request was sent.
        """
        with self._lock:
            if self.stop.is_set():
                raise _Unsent("cancelled before sending")
            self._sock = sock

    def abort(self) -> None:
        """Stop the thread: no further step, and a send or read in progress fails now."""
        self.stop.set()
        with self._lock:
            _shutdown(self._sock)

    def start(self, loop: asyncio.AbstractEventLoop, work: Callable[[], R]) -> asyncio.Future[R]:
        """Run ``work`` in a thread of its own; its outcome as a future of ``loop``.

        A thread of its own, not the loop's executor: a long transfer must not hold a thread
        that file opens and disk writes elsewhere are queued for.
        """
        done: asyncio.Future[R] = loop.create_future()

        def deliver(outcome: Any, failed: bool) -> None:
            if not done.done():
                (done.set_exception if failed else done.set_result)(outcome)

        def run() -> None:
            outcome: Any
            try:
                outcome, failed = work(), False
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting task as is)
                outcome, failed = exc, True
            # A closed loop (RuntimeError): nobody waits for this outcome any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, outcome, failed)

        threading.Thread(target=run, name=self._name, daemon=True).start()
        return done

    async def wait(self, done: asyncio.Future[Any]) -> None:
        """After :meth:`abort`: wait for the thread to end (its outcome is not wanted); a
        further cancellation meanwhile stops the wait, the caller is ending anyway."""
        with contextlib.suppress(BaseException):
            await asyncio.shield(done)
        if not done.done():  # cancelled again meanwhile: still let the thread finish
            done.add_done_callback(lambda f: f.cancelled() or f.exception())


class _ThreadedPut:
    """One PUT (or POST) of a :class:`ThreadedBody` from a thread on a blocking socket.

    The thread connects (verifying the certificate over TLS), sends the head and the body, and
    reads the answer; the event loop only waits (the body decides how its bytes go:
    :meth:`ThreadedBody.send_blocking`). Cancelling shuts the socket down, so the
    thread stops within one send and closes its file itself. An answer the server sent before
    it stopped reading (an expired signature's 403) is still read and returned.
    """

    def __init__(
        self,
        exchange: Exchange,
        headers: Mapping[str, str],
        body: ThreadedBody,
        pool: _Pool,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self._key, target = _key(exchange.url)
        self._method = exchange.method
        self._url = exchange.url
        lines = [f"{exchange.method} {target} HTTP/1.1", f"Host: {urlsplit(exchange.url).netloc}"]
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
        self._pool = pool
        self._connect = timeout.sock_connect or timeout.total
        self._read = timeout.sock_read or timeout.total
        self._worker: _Worker[_Outcome] = _Worker("runcomfy-upload")

    async def run(self) -> Answer[Any]:
        """Send from a thread of its own; the answer, or the failure mapped like aiohttp's."""
        self._body.started()
        done = self._worker.start(asyncio.get_running_loop(), self._exchange)
        try:
            status, headers, data = await done
        except asyncio.CancelledError:
            self._worker.abort()
            raise
        except BodyAbort as abort:
            raise abort.cause from None
        except _Unsent as exc:
            cause = exc.__cause__ or exc
            raise _transport_error(
                cause, unsent=True, method=self._method, url=self._url
            ) from cause
        except (OSError, http.client.HTTPException) as exc:
            raise _transport_error(
                exc, unsent=False, method=self._method, url=self._url
            ) from exc
        return Answer(
            status=status, headers=CIMultiDictProxy(CIMultiDict(headers)), body=data
        )

    def _exchange(self) -> _Outcome:
        """In the thread: connect, verify, send, read the answer."""
        conn = self._pool.connect(self._key, connect=self._connect, read=self._read)
        try:
            sock = conn.sock
            assert sock is not None
            self._worker.attach(sock)
            try:
                sock.sendall(self._head)
                self._body.send_blocking(sock, self._worker.stop)
            except OSError:
                early = self._answer(sock, early=True)
                if early is None:
                    raise
                return early
            answer = self._answer(sock, early=False)
            assert answer is not None
            return answer
        finally:
            conn.close()

    def _answer(self, sock: socket.socket, *, early: bool) -> _Outcome | None:
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


class _Head:
    """A download answer's status and headers as the thread read them (``body``: an error
    answer's first 64 KiB, already read; None for a success, whose body follows)."""

    def __init__(
        self, status: int, headers: list[tuple[str, str]], body: bytes | None
    ) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self.body = body


class _ThreadedGet(Generic[R]):
    """One credential-less GET whose body a :class:`ThreadedConsumer` takes in a worker thread.

    The thread takes a pooled keep-alive connection (or makes one), sends the request, follows
    redirects, and reads the head; the event loop has the consumer check it and open where the
    body goes (:meth:`ThreadedConsumer.begin`); the thread then reads the body into one buffer
    and hands it to :meth:`ThreadedConsumer.write`, and gives the connection back to the pool
    once the answer was read to its end. A pooled connection the server closed meanwhile is
    retried once on a fresh one, before any byte of the answer arrived.
    """

    def __init__(
        self,
        exchange: Exchange,
        headers: Mapping[str, str],
        consumer: ThreadedConsumer[R],
        pool: _Pool,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self._url = exchange.url
        self._headers = {
            k: v for k, v in headers.items() if k.lower() not in ("host", "connection")
        }
        self._consumer = consumer
        self._pool = pool
        self._connect = timeout.sock_connect or timeout.total
        self._read = timeout.sock_read or timeout.total
        self._worker: _Worker[None] = _Worker("runcomfy-download")
        self._go = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head: asyncio.Future[_Head] | None = None

    async def run(self) -> Answer[R]:
        """Receive in a thread of its own; the answer, or the failure mapped like aiohttp's."""
        loop = self._loop = asyncio.get_running_loop()
        self._head = loop.create_future()
        done = self._worker.start(loop, self._receive)
        began = False
        try:
            head = await self._head
            if head.body is not None:
                return Answer(status=head.status, headers=head.headers, body=head.body)
            await self._consumer.begin(head.status, head.headers)
            began = True
            self._go.set()
            # Shielded: cancelling the task must not mark the thread as finished.
            await asyncio.shield(done)
            value = await self._consumer.end()
            return Answer(status=head.status, headers=head.headers, value=value)
        except BaseException as exc:
            if not done.done():
                self._worker.abort()
                self._go.set()
                await self._worker.wait(done)
            if isinstance(exc, _Unsent):
                cause = exc.__cause__ or exc
                raise _transport_error(cause, unsent=True, method="GET", url=self._url) from cause
            if isinstance(exc, OSError | http.client.HTTPException):
                raise _transport_error(exc, unsent=False, method="GET", url=self._url) from exc
            raise
        finally:
            if began:
                self._consumer.close()

    def _post_head(self, head: _Head | BaseException) -> None:
        """From the thread: hand the head (or the failure before it) to the waiting task."""
        loop, future = self._loop, self._head
        assert loop is not None
        assert future is not None

        def deliver() -> None:
            if future.done():
                return
            if isinstance(head, BaseException):
                future.set_exception(head)
            else:
                future.set_result(head)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(deliver)

    def _receive(self) -> None:
        """In the thread: the request (redirects followed), the head, then the body."""
        try:
            key, conn, response = self._request()
        except BaseException as exc:  # noqa: BLE001 (handed to the waiting task as is)
            self._post_head(exc)
            return
        reusable = False
        try:
            if response.status >= 400:
                body = response.read(ERROR_BODY_LIMIT)
                reusable = response.isclosed()
                self._post_head(_Head(response.status, response.getheaders(), body))
                return
            self._post_head(_Head(response.status, response.getheaders(), None))
            self._go.wait(self._read)
            if self._worker.stop.is_set() or not self._go.is_set():
                return
            if response.length is None:  # chunked or unframed: http.client takes it apart
                view = aligned_buffer(RECV_BUFFER)
                while n := response.readinto(view):
                    self._consumer.write(view[:n])
                    if self._worker.stop.is_set():
                        return
                reusable = True
            else:
                assert conn.sock is not None
                reusable = self._framed(response, conn.sock, response.length)
        finally:
            response.close()
            if reusable and not self._worker.stop.is_set():
                self._pool.give(key, conn)
            else:
                conn.close()

    def _framed(self, response: http.client.HTTPResponse, sock: socket.socket, left: int) -> bool:
        """In the thread: a body of ``left`` bytes, a full buffer per write; whether it came
        whole.

        What http.client's file object already holds goes first; the rest is read straight
        from the socket (over TLS one ``read`` per record, three Python calls fewer each than
        through the file object: about a tenth less CPU per GiB).
        """
        if not left:
            return True
        view = aligned_buffer(RECV_BUFFER)
        head = response.fp.read1(min(left, RECV_BUFFER))
        got = len(head)
        view[:got] = head
        left -= got
        tls = isinstance(sock, ssl.SSLSocket)
        ended = not head
        while True:
            while left and got < RECV_BUFFER and not ended:
                want = min(left, RECV_BUFFER - got)
                n = (
                    sock.read(want, view[got:])  # type: ignore[attr-defined]
                    if tls
                    else sock.recv_into(view[got:], want)
                )
                ended = not n
                got += n
                left -= n
            if got:
                self._consumer.write(view[:got])
            if ended or not left or self._worker.stop.is_set():
                return not left
            got = 0

    def _request(
        self,
    ) -> tuple[_Key, http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the GET, following up to :data:`MAX_REDIRECTS` redirects; the connection and
        the answer whose head was read."""
        url = self._url
        for _ in range(MAX_REDIRECTS + 1):
            key, target = _key(url)
            if key[0] not in ("http", "https"):
                raise http.client.HTTPException(f"cannot follow a redirect to {redact_url(url)}")
            conn, response = self._send(key, target)
            location = response.getheader("Location")
            if response.status not in _REDIRECTS or not location:
                return key, conn, response
            # Read the (short) redirect's body so the connection can be used again.
            response.read(ERROR_BODY_LIMIT)
            if response.isclosed():
                self._pool.give(key, conn)
            else:
                conn.close()
            url = urljoin(url, location)
        raise http.client.HTTPException(f"more than {MAX_REDIRECTS} redirects")

    def _send(
        self, key: _Key, target: str
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send on a pooled connection (once more on a fresh one if the server closed it
        meanwhile) and read the answer's head."""
        pooled = self._pool.take(key)
        if pooled is not None and pooled.sock is not None:
            pooled.sock.settimeout(self._read)  # this exchange's read timeout
        while True:
            conn = pooled or self._pool.connect(key, connect=self._connect, read=self._read)
            try:
                self._worker.attach(conn.sock)
                conn.request("GET", target, headers=self._headers)
                return conn, conn.getresponse()
            except (ConnectionError, http.client.BadStatusLine):
                conn.close()
                if pooled is None:
                    raise
                # A kept-alive connection the server had closed: no byte of an answer came.
                pooled = None
            except BaseException:
                conn.close()
                raise


class _AuthHeaders(dict[str, str]):
    """Headers whose repr masks the token, for tracebacks that show locals and debuggers."""

    def __repr__(self) -> str:
        return repr({k: "***" if k.lower() == "authorization" else v for k, v in self.items()})
