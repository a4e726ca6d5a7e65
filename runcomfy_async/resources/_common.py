"""Small helpers every resource module shares: reading list answers, errors, arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import errors

__all__ = ["check_concurrency", "describe_error", "unwrap_list"]


def unwrap_list(payload: Any, key: str) -> list[Any]:
    """A list endpoint's items, whether the server sent a bare list or ``{key: [...]}``.

    RunComfy's own clients accept both: the shape of the dataset and machine lists is
    unconfirmed (docs/wire.md).
    """
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and isinstance(payload.get(key), list):
        return list(payload[key])
    raise errors.UnexpectedResponseError(
        f"expected a list of {key} (bare or wrapped as {{{key!r}: [...]}})", status=200
    )


def describe_error(error: Any) -> str:
    """The server's error in one line, whether a string or ``{"message": ..., "code": ...}``."""
    if isinstance(error, Mapping):
        message = error.get("message") or error.get("error_message")
        code = error.get("code") or error.get("error_code")
        if message:
            return f"{message} [{code}]" if code else str(message)
    if not error:
        return "the server gave no reason"
    return str(error)


def check_concurrency(concurrency: int, what: str) -> None:
    """Refuse a concurrency that is not an int >= 1, before anything is sent."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise errors.ValidationError(
            f"concurrency must be an int >= 1 ({what} in flight at once), got {concurrency!r}"
        )
