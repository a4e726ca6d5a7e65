"""Wire helpers every emulated endpoint shares: the JSON error body, timestamps, body parsing.

The error body is the one documented in docs/wire.md: ``{"error_code", "error_message",
"detail"}``; validation errors carry a FastAPI-style ``detail`` array (code 422001).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

__all__ = [
    "ApiError",
    "error_response",
    "field_error",
    "iso_timestamp",
    "not_found",
    "read_json",
    "validation_error",
]


def error_response(
    status: int,
    error_code: int | str | None,
    message: str,
    detail: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Build the documented JSON error response (docs/wire.md)."""
    body = {"error_code": error_code, "error_message": message, "detail": detail}
    return web.json_response(body, status=status, headers=headers)


class ApiError(Exception):
    """Raised by handlers to answer with an error body; the logging middleware renders it."""

    def __init__(
        self,
        status: int,
        error_code: int | str | None,
        message: str,
        detail: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """Render this error as the JSON error response."""
        return error_response(
            self.status, self.error_code, self.message, self.detail, headers=self.headers
        )


def field_error(loc: Sequence[str | int], msg: str, type_: str = "value_error") -> dict[str, Any]:
    """One FastAPI-style validation item: where, what, and the error type."""
    return {"loc": list(loc), "msg": msg, "type": type_}


def validation_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 422 with code 422001 and the FastAPI-style ``detail`` array."""
    return ApiError(422, 422001, "Validation Error", [dict(e) for e in errors])


def not_found(message: str) -> ApiError:
    """A 404 with code 404001."""
    return ApiError(404, 404001, message)


def iso_timestamp(unix_seconds: float) -> str:
    """ISO 8601 with microseconds and ``+00:00``, as the vendor documents (docs/wire.md)."""
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="microseconds")


async def read_json(request: web.Request, *, limit: int | None = None) -> Any:
    """The parsed JSON body, ``None`` for an empty body; malformed JSON is a 422.

    Args:
        limit: read up to this many bytes instead of the app's ``client_max_size`` (bodies
            with inline workflows and data URIs are larger); a longer body is a 413.
    """
    if limit is None:
        raw = await request.read()
    else:
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, 413001, f"Request body larger than {limit} bytes")
        raw = await request.content.read(limit + 1)
        if len(raw) > limit:
            raise ApiError(413, 413001, f"Request body larger than {limit} bytes")
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise validation_error(
            [field_error(["body"], f"Invalid JSON: {exc}", "value_error.jsondecode")]
        ) from exc
