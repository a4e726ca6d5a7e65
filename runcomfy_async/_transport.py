"""The one seam between the request pipeline and aiohttp.

Sends a request, reads the whole (small, JSON) answer, and maps aiohttp/asyncio failures to
:class:`~runcomfy_async.errors.TransportError` with ``raise ... from exc``. ``request_sent`` on the
error tells the retry logic whether the server could have seen the request at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import attrs
from multidict import CIMultiDictProxy

from . import errors
from ._protocol import redact_url

__all__ = ["RawResponse", "Timeouts", "Transport", "UnsentTimeoutError", "UnsentTransportError"]


@attrs.frozen(kw_only=True)
class Timeouts:
    """Timeouts in seconds for API calls (``connect``/``read``/``total``) and for transfers.

    Uploads and downloads get their own, longer read timeout: a 2 GiB PUT must not be cut off by
    the limit that suits a JSON status call (LESSONS 5: connect apart from long reads).
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


@attrs.frozen(kw_only=True)
class RawResponse:
    """Status, headers and the whole body of one answer."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class UnsentTransportError(errors.TransportError):
    """The connection could not be opened: the request provably never left the machine."""


class UnsentTimeoutError(UnsentTransportError, errors.APITimeoutError):
    """Connecting timed out: nothing was sent, so even a create may be tried again."""


def map_error(exc: BaseException, *, method: str, url: str) -> errors.TransportError:
    """Translate an aiohttp/asyncio failure into our tree (the URL has query secrets masked)."""
    safe = redact_url(url)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UnsentTimeoutError(
            f"timed out connecting to {safe} ({method}); the request was not sent",
            method=method,
            url=safe,
        )
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return errors.APITimeoutError(
            f"timed out talking to {safe} ({method}); raise the client's timeout if the "
            "network is slow",
            method=method,
            url=safe,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UnsentTransportError(
            f"could not connect to {safe} ({method}): {exc.os_error}", method=method, url=safe
        )
    return errors.TransportError(
        f"connection failed during {method} {safe}: {type(exc).__name__}: {exc}",
        method=method,
        url=safe,
    )


class Transport:
    """Sends one HTTP request on a shared ``aiohttp.ClientSession``."""

    def __init__(self, session: aiohttp.ClientSession, timeouts: Timeouts) -> None:
        self.session = session
        self.timeouts = timeouts
        # Built once: a fresh ClientTimeout per call showed up in the pipeline's profile.
        self._api_timeout = timeouts.for_api()

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Callable[[], Any] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> RawResponse:
        """Send and read the full answer; ``data`` builds a fresh body for this attempt."""
        try:
            async with self.session.request(
                method,
                url,
                headers=headers,
                params=params,
                json=json,
                data=data() if data is not None else None,
                timeout=timeout or self._api_timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                return RawResponse(status=resp.status, headers=resp.headers, body=body)
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
            if self.session.closed:
                # aiohttp's bare "Session is closed", or a connection it cut on closing.
                raise errors.ClientClosedError(
                    f"the client was closed while {method} {redact_url(url)} was in flight"
                ) from exc
            if isinstance(exc, RuntimeError):
                raise
            raise map_error(exc, method=method, url=url) from exc
