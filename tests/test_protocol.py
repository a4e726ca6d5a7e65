"""Sans-I/O protocol decisions, tested without an event loop."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from runcomfy_async import errors
from runcomfy_async._protocol import (
    decode_response,
    parse_retry_after,
    redact_url,
)
from runcomfy_async._retry import RetryPolicy

URL = "https://trainer-api.runcomfy.net/prod/v1/trainers/datasets"


def _decode(status: int, body: bytes, **headers: str) -> object:
    return decode_response(status, CIMultiDict(headers), body, method="GET", url=URL, now=0.0)


def test_json_success_decodes() -> None:
    """A 2xx JSON body is returned as data."""
    assert _decode(200, b'{"id": "x"}') == {"id": "x"}


def test_empty_success_is_none() -> None:
    """An empty 2xx body (a DELETE) decodes to None."""
    assert _decode(204, b"") is None


def test_error_code_on_200_is_an_error() -> None:
    """A 2xx body with a non-null error_code raises (docs/wire.md: errors in a 200)."""
    with pytest.raises(errors.NotFoundError) as info:
        _decode(200, b'{"error_code": 404001, "error_message": "Request not found"}')
    assert info.value.status == 404
    assert info.value.code == 404001
    assert "Request not found" in str(info.value)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequestError),
        (401, errors.AuthenticationError),
        (402, errors.InsufficientBalanceError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (413, errors.PayloadTooLargeError),
        (422, errors.BadRequestError),
        (429, errors.RateLimitError),
        (500, errors.ServerError),
        (503, errors.ServerError),
    ],
)
def test_status_maps_to_class(status: int, cls: type[errors.APIError]) -> None:
    """Each documented status raises its own APIError subclass with the fields set."""
    with pytest.raises(cls) as info:
        decode_response(
            status,
            CIMultiDict({"X-Request-Id": "rid-1"}),
            b'{"error_code": 1, "error_message": "nope"}',
            method="POST",
            url=URL,
            now=0.0,
        )
    exc = info.value
    assert (exc.status, exc.message) == (status, "nope")
    assert (exc.method, exc.request_id) == ("POST", "rid-1")


def test_validation_detail_is_summarised() -> None:
    """A FastAPI-style detail array becomes a readable message and stays on .detail."""
    body = (
        b'{"error_code": 422001, "detail": [{"loc": ["body", "name"], "msg": "field required"}]}'
    )
    with pytest.raises(errors.BadRequestError) as info:
        _decode(422, body)
    assert "body.name: field required" in str(info.value)
    assert info.value.detail[0]["msg"] == "field required"


def test_html_error_page_gives_excerpt() -> None:
    """An HTML proxy page on 502 gives a ServerError quoting a short excerpt."""
    with pytest.raises(errors.ServerError) as info:
        _decode(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
    assert "502 Bad Gateway" in str(info.value)


def test_truncated_success_body_is_unexpected() -> None:
    """A 200 whose JSON is cut off raises UnexpectedResponseError, not a JSONDecodeError."""
    with pytest.raises(errors.UnexpectedResponseError):
        _decode(200, b'{"id": "abc", "sta')


def test_empty_error_body_is_clear() -> None:
    """A 404 with no body still names the status and says the body was empty."""
    with pytest.raises(errors.NotFoundError) as info:
        _decode(404, b"")
    assert "empty body" in str(info.value)


def test_error_object_message_is_found() -> None:
    """`error` given as an object with a message is read (docs/wire.md)."""
    with pytest.raises(errors.BadRequestError) as info:
        _decode(400, b'{"error": {"message": "bad yaml", "code": "X"}}')
    assert "bad yaml" in str(info.value)


def test_rate_limited_code_carries_retry_after() -> None:
    """A 429 rate_limited answer exposes Retry-After in seconds."""
    with pytest.raises(errors.RateLimitError) as info:
        _decode(429, b'{"error_code": "rate_limited", "error_message": "slow down"}', **{
            "Retry-After": "3"
        })
    assert info.value.retry_after == 3.0


def test_parse_retry_after_forms() -> None:
    """Retry-After parses as seconds or as an HTTP date; garbage gives None."""
    assert parse_retry_after("2", now=0) == 2.0
    assert parse_retry_after("1.5", now=0) == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=1445412480.0) == 5.0
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None
    assert parse_retry_after("-4", now=0) == 0.0


def test_redact_url_masks_signatures() -> None:
    """Signed-URL query secrets are masked, harmless keys kept."""
    url = "https://s.example/b/k.jpg?X-Goog-Signature=abc123&X-Goog-Credential=me&size=5"
    red = redact_url(url)
    assert "abc123" not in red and "me" not in red.split("?")[1].split("&")[1]
    assert "size=5" in red


def test_backoff_is_bounded_and_jittered() -> None:
    """Backoff grows exponentially with the attempt, stays under the cap, scales with jitter."""
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    assert [policy.backoff(a, 0.5) for a in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.backoff(3, 0.0) == 0.0
    assert policy.after_server_wait(2.0, 1.0) == 2.25
