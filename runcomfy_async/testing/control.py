"""Emulator-only endpoints for tests that run the emulator as a separate process.

``GET /_emulator/log`` answers the request log (what :attr:`Emulator.log` holds in-process) as a
JSON list, oldest first, so a test that started ``python -m runcomfy_async.testing`` can check
what reached the "server" from outside. The real RunComfy has no such endpoint: it needs no
token, takes no rate-limit token and is never called by the client library. Its own requests
are logged too, with ``api`` ``"other"``.

Query parameters: ``api`` keeps only records of that API (e.g. ``?api=trainer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

if TYPE_CHECKING:
    from ._state import EmulatorState, RequestRecord

__all__ = ["LOG_PATH", "add_routes"]

LOG_PATH: Final = "/_emulator/log"


def _as_json(record: RequestRecord) -> dict[str, Any]:
    """One log record as JSON (headers are already masked when recorded)."""
    return {
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "status": record.status,
        "headers": dict(record.headers),
        "at": record.at,
        "api": record.api,
        "authorized": record.authorized,
        "body_size": record.body_size,
        "request_id": record.request_id,
    }


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the emulator's own inspection endpoint."""

    async def request_log(request: web.Request) -> web.Response:
        """GET /_emulator/log: every request received so far, oldest first."""
        api = request.query.get("api")
        records = [r for r in list(state.log) if api is None or r.api == api]
        return web.json_response([_as_json(r) for r in records])

    app.router.add_get(LOG_PATH, request_log)
