"""Object storage: HMAC-signed URLs, exact-size streaming PUTs and ranged GETs of artifacts.

Dataset files arrive by signed PUT (docs/wire.md): the URL carries ``size``, ``expires``
and ``sig`` = HMAC-SHA256 over ``"PUT\\n{key}\\n{size}\\n{expires}"``, so a PUT of any other
size, after expiry or with a tampered query is refused and nothing is stored. ``expires`` is
UNIX seconds with millisecond decimals on the emulator's clock: a URL lives ``url_ttl``
simulated seconds, ``url_ttl / speed`` real ones, which at high speed is well under a second.
Bodies stream to a temporary file (sha256 computed on the way) and are renamed into place only
when complete.
Other emulator modules publish downloadable blobs with :meth:`ObjectStorage.put_blob`; GETs
support ``Range: bytes=N-`` so clients can resume.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import shutil
import uuid
from collections.abc import AsyncIterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Protocol
from urllib.parse import quote, urlencode

import attrs
from aiohttp import web

from .._files import open_file

if TYPE_CHECKING:
    from ._clock import Clock
    from ._state import EmulatorState

__all__ = [
    "ObjectStorage",
    "Received",
    "SignedUpload",
    "StorageError",
    "StoredObject",
    "TooLarge",
    "UploadSink",
    "WrongSize",
    "add_routes",
    "storage_error_response",
]

CHUNK: Final = 1 << 20  # write to disk in MiB batches: few thread hops, flat memory
ARTIFACTS: Final = "artifacts"


def storage_error_response(status: int, code: str, message: str) -> web.Response:
    """Storage's own error body (``{"error": code, "message": ...}``), unlike the APIs' body."""
    return web.json_response({"error": code, "message": message}, status=status)


class StorageError(Exception):
    """A refused storage operation; the logging middleware renders it as storage JSON."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        """Render as storage's JSON error."""
        return storage_error_response(self.status, self.code, self.message)


class TooLarge(Exception):
    """The body grew past the allowed maximum; nothing was stored."""


class WrongSize(Exception):
    """The body's length differs from the expected size; nothing was stored."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(f"expected {expected} bytes, received {received}")
        self.expected = expected
        self.received = received


@attrs.frozen(kw_only=True)
class SignedUpload:
    """A signed PUT URL and its expiry (UNIX seconds of the emulator's clock, to the ms)."""

    url: str
    expires: float
    signature: str


@attrs.frozen(kw_only=True)
class Received:
    """A complete body in a temporary file, not yet placed."""

    temp_path: Path
    size: int
    sha256: str


@attrs.frozen(kw_only=True)
class StoredObject:
    """A body placed at its final path."""

    path: Path
    size: int
    sha256: str


class UploadSink(Protocol):
    """The owner of a bucket that accepts signed PUTs (the datasets store)."""

    def accept(self, key: str) -> None:
        """Raise :class:`StorageError` if ``key`` cannot be written now (before the body)."""

    def commit(self, key: str, obj: StoredObject, signature: str) -> None:
        """Take ownership of a stored object; raise :class:`StorageError` to refuse it."""


def _check_key(key: str) -> None:
    """Keys are relative paths without empty, ``.`` or ``..`` segments: no escaping the root."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise ValueError(f"invalid storage key {key!r}")


class _Spool:
    """A received body on its way to a temporary file: created with the first full batch, so a
    body smaller than one batch is written in a single thread call (open, write, close); most
    dataset files are that small."""

    def __init__(self, temp: Path) -> None:
        self.temp = temp
        self._fh: IO[bytes] | None = None

    async def write(self, data: bytes) -> None:
        if self._fh is None:
            self._fh = await open_file(self.temp, "wb")
        await asyncio.to_thread(self._fh.write, data)

    async def finish(self, data: bytes) -> None:
        if self._fh is None:
            await asyncio.to_thread(self.temp.write_bytes, data)
        else:
            await asyncio.to_thread(_write_and_close, self._fh, data)

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self.temp.unlink(missing_ok=True)


def _write_and_close(fh: IO[bytes], data: bytes) -> None:
    with fh:
        fh.write(data)


async def _copy(
    chunks: AsyncIterable[bytes],
    spool: _Spool,
    *,
    expected_size: int | None,
    max_size: int | None,
) -> tuple[int, str]:
    """Write chunks in MiB batches off the event loop; returns (size, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray()
    async for chunk in chunks:
        size += len(chunk)
        if max_size is not None and size > max_size:
            raise TooLarge(f"more than {max_size} bytes")
        if expected_size is not None and size > expected_size:
            raise WrongSize(expected_size, size)
        digest.update(chunk)
        buffer += chunk
        if len(buffer) >= CHUNK:
            await spool.write(bytes(buffer))
            buffer.clear()
    if expected_size is not None and size != expected_size:
        raise WrongSize(expected_size, size)
    await spool.finish(bytes(buffer))
    return size, digest.hexdigest()


class ObjectStorage:
    """Files under ``root/{bucket}/{key}``, signed URLs, and the upload sinks per bucket."""

    def __init__(self, root: Path, *, clock: Clock, url_ttl: float) -> None:
        """Serve files under ``root``; signed URLs live ``url_ttl`` simulated seconds."""
        self.root = root
        self.clock = clock
        self.url_ttl = url_ttl
        #: ``http://host:port`` of the running emulator; set when it starts.
        self.base_url = ""
        self._secret = secrets.token_bytes(32)
        self._sinks: dict[str, UploadSink] = {}
        self._blobs: dict[str, Path] = {}
        (root / ".tmp").mkdir(parents=True, exist_ok=True)

    # -- signing -------------------------------------------------------------------------

    def _signature(self, bucket: str, message: str) -> str:
        """HMAC-SHA256 with a per-bucket key, so a signature never crosses buckets."""
        bucket_key = hmac.new(self._secret, bucket.encode(), hashlib.sha256).digest()
        return hmac.new(bucket_key, message.encode(), hashlib.sha256).hexdigest()

    def _expiry(self) -> str:
        """Expiry of a URL issued now: UNIX seconds with three decimals, rounded up.

        The lifetime is simulated time, so it goes through the clock like every other duration;
        milliseconds keep a sub-second lifetime (``url_ttl / speed``) exact enough to test.
        """
        expires = self.clock.time() + self.clock.real(self.url_ttl)
        return f"{math.ceil(expires * 1000) / 1000:.3f}"

    def sign_put(self, bucket: str, key: str, size: int) -> SignedUpload:
        """A URL that accepts exactly one body of ``size`` bytes at ``bucket/key`` until expiry."""
        _check_key(key)
        expires = self._expiry()
        sig = self._signature(bucket, f"PUT\n{key}\n{size}\n{expires}")
        query = urlencode({"size": size, "expires": expires, "sig": sig})
        url = f"{self.base_url}/storage/{bucket}/{quote(key, safe='/')}?{query}"
        return SignedUpload(url=url, expires=float(expires), signature=sig)

    def sign_get(self, key: str) -> str:
        """A fresh signed GET URL for the artifact blob ``key``."""
        _check_key(key)
        expires = self._expiry()
        sig = self._signature(ARTIFACTS, f"GET\n{key}\n{expires}")
        query = urlencode({"expires": expires, "sig": sig})
        return f"{self.base_url}/storage/{ARTIFACTS}/{quote(key, safe='/')}?{query}"

    def verify(self, bucket: str, message: str, expires: float, sig: str) -> None:
        """Check a signature, then expiry; raise the storage error a real bucket would send."""
        expected = self._signature(bucket, message)
        if not hmac.compare_digest(expected, sig):
            raise StorageError(
                403,
                "SignatureDoesNotMatch",
                "The request signature does not match; request a fresh upload URL.",
            )
        if self.clock.time() > expires:
            raise StorageError(
                403, "ExpiredToken", "The signed URL has expired; request a fresh one."
            )

    # -- sinks and blobs -------------------------------------------------------------------

    def register_sink(self, bucket: str, sink: UploadSink) -> None:
        """Let signed PUTs into ``bucket``, handing each finished object to ``sink``."""
        self._sinks[bucket] = sink

    def sink(self, bucket: str) -> UploadSink | None:
        """The sink of a bucket, if it accepts uploads."""
        return self._sinks.get(bucket)

    def put_blob(self, key: str, data: bytes | Path) -> str:
        """Publish a downloadable blob (bytes are written, a path is served in place).

        Returns:
            A signed GET URL; call :meth:`sign_get` for a fresh one later.
        """
        _check_key(key)
        if isinstance(data, Path):
            self._blobs[key] = data
        else:
            path = self.path_for(ARTIFACTS, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self._blobs[key] = path
        return self.sign_get(key)

    def blob_path(self, key: str) -> Path | None:
        """Where the blob ``key`` lives, if it was published."""
        return self._blobs.get(key)

    # -- bytes on disk ---------------------------------------------------------------------

    def path_for(self, bucket: str, key: str) -> Path:
        """The final path of ``bucket/key``."""
        _check_key(bucket)
        _check_key(key)
        return self.root / bucket / key

    async def receive(
        self,
        chunks: AsyncIterable[bytes],
        *,
        expected_size: int | None = None,
        max_size: int | None = None,
    ) -> Received:
        """Stream ``chunks`` to a temporary file, hashing on the way; never hold the whole body.

        Raises:
            TooLarge: more than ``max_size`` bytes arrived.
            WrongSize: the body's length differs from ``expected_size``.
        """
        spool = _Spool(self.root / ".tmp" / uuid.uuid4().hex)
        try:
            size, sha256 = await _copy(
                chunks, spool, expected_size=expected_size, max_size=max_size
            )
        except BaseException:
            # cleanup that re-raises (a dropped connection or cancellation included)
            spool.discard()
            raise
        return Received(temp_path=spool.temp, size=size, sha256=sha256)

    def place(self, received: Received, bucket: str, key: str) -> StoredObject:
        """Atomically move a received body to ``bucket/key`` (a same-name object is replaced)."""
        dest = self.path_for(bucket, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        received.temp_path.replace(dest)
        return StoredObject(path=dest, size=received.size, sha256=received.sha256)

    @staticmethod
    def discard(received: Received) -> None:
        """Drop a received body that will not be placed."""
        received.temp_path.unlink(missing_ok=True)

    def remove_prefix(self, bucket: str, prefix: str) -> None:
        """Delete everything under ``bucket/prefix`` (a deleted dataset's files)."""
        shutil.rmtree(self.path_for(bucket, prefix), ignore_errors=True)


# -- HTTP ------------------------------------------------------------------------------------


def _bad_query(name: str) -> StorageError:
    """A missing or mangled signed-URL parameter fails like a wrong signature."""
    message = f"The signed URL is missing a valid {name!r}."
    return StorageError(403, "SignatureDoesNotMatch", message)


def _query_int(request: web.Request, name: str) -> int:
    """An integer query parameter of a signed URL (``size``)."""
    try:
        return int(request.query[name])
    except (KeyError, ValueError) as exc:
        raise _bad_query(name) from exc


def _query_expiry(request: web.Request) -> tuple[str, float]:
    """``expires`` as signed (the exact text) and as UNIX seconds."""
    text = request.query.get("expires", "")
    try:
        value = float(text)
    except ValueError as exc:
        raise _bad_query("expires") from exc
    if not math.isfinite(value):
        raise _bad_query("expires")
    return text, value


def _refuse_second_credential(request: web.Request) -> None:
    """Refuse a signed request that also carries Authorization, as S3 and GCS do.

    The signature is the credential; a bearer header on top is "more than one auth mechanism"
    to real object storage, and for us a leaked API token.
    """
    if "Authorization" in request.headers:
        raise StorageError(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed: a signed URL must not also carry an "
            "Authorization header (do not send the API token to object storage).",
        )


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the storage endpoints: signed PUT into sink buckets, signed GET of artifacts."""
    storage = state.storage

    async def put_object(request: web.Request) -> web.StreamResponse:
        """Accept one signed PUT of exactly the signed size (errors render as storage JSON)."""
        _refuse_second_credential(request)
        bucket = request.match_info["bucket"]
        key = request.match_info["key"]
        sink = storage.sink(bucket)
        if sink is None:
            raise StorageError(404, "NoSuchBucket", f"Bucket {bucket!r} does not exist.")
        size = _query_int(request, "size")
        expires_text, expires = _query_expiry(request)
        sig = request.query.get("sig", "")
        storage.verify(bucket, f"PUT\n{key}\n{size}\n{expires_text}", expires, sig)
        if request.content_length is None:
            raise StorageError(411, "MissingContentLength", "A Content-Length header is required.")
        if request.content_length != size:
            raise StorageError(
                400,
                "ContentLengthMismatch",
                f"Content-Length {request.content_length} differs from the signed size {size}.",
            )
        sink.accept(key)
        try:
            received = await storage.receive(
                request.content.iter_chunked(CHUNK), expected_size=size
            )
        except WrongSize as exc:
            raise StorageError(400, "IncompleteBody", str(exc)) from exc
        obj = storage.place(received, bucket, key)
        try:
            sink.commit(key, obj, sig)
        except StorageError:
            obj.path.unlink(missing_ok=True)
            raise
        return web.Response(status=200, headers={"ETag": f'"{obj.sha256}"'})

    async def get_artifact(request: web.Request) -> web.StreamResponse:
        """Serve a published blob; ``Range`` requests get 206 with ``Content-Range``."""
        _refuse_second_credential(request)
        key = request.match_info["key"]
        expires_text, expires = _query_expiry(request)
        sig = request.query.get("sig", "")
        storage.verify(ARTIFACTS, f"GET\n{key}\n{expires_text}", expires, sig)
        path = storage.blob_path(key)
        if path is None or not path.is_file():
            raise StorageError(404, "NoSuchKey", f"No object {key!r}.")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    app.router.add_get("/storage/artifacts/{key:.+}", get_artifact)
    app.router.add_put("/storage/{bucket}/{key:.+}", put_object)
