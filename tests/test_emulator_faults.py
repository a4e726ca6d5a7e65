"""The documented quirks as fault kinds: error bodies in a 200, server-set Retry-After pauses."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async.testing import Emulator, FaultRule

DATASETS = "/prod/v1/trainers/datasets"


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit."""
    async with Emulator(rate_limit=None) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def bare() -> AsyncIterator[aiohttp.ClientSession]:
    """A session without credentials, as a client talks to object storage."""
    async with aiohttp.ClientSession() as session:
        yield session


async def list_datasets(api: aiohttp.ClientSession) -> tuple[int, Any]:
    """GET the dataset list: (status, JSON body)."""
    async with api.get(DATASETS) as resp:
        return resp.status, await resp.json()


async def signed_put_url(api: aiohttp.ClientSession, data: bytes) -> tuple[str, str]:
    """A new dataset's id and a signed PUT URL for ``a.jpg`` of ``len(data)`` bytes."""
    async with api.post(DATASETS, json={}) as resp:
        dataset_id = (await resp.json())["id"]
    async with api.post(
        f"{DATASETS}/{dataset_id}/get-upload-endpoint",
        json={"filenameToByteSize": {"a.jpg": len(data)}},
    ) as resp:
        assert resp.status == 200
        return dataset_id, (await resp.json())["uploads"]["a.jpg"]["upload_url"]


# -- 200 with an error body (docs/wire.md: errors in a 200) -----------------------------


@pytest.mark.asyncio
async def test_200_error_answers_http_200_with_an_error_code(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """A 200_error fault answers HTTP 200 with a top-level non-null error_code and message."""
    rule = emu.inject("200_error", api="trainer", count=1)
    status, body = await list_datasets(api)
    assert status == 200
    assert body == {
        "error_code": 500001,
        "error_message": "Internal Server Error",
        "detail": None,
    }
    assert await list_datasets(api) == (200, {"datasets": []})
    assert rule.fired == 1
    assert [r.status for r in emu.log] == [200, 200]


@pytest.mark.asyncio
async def test_200_error_takes_a_custom_code_and_message(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """error_code and error_message choose the body, e.g. a string code or a 404001."""
    emu.inject("200_error", count=1, error_code=404001, error_message="Request not found")
    emu.inject("200_error", count=1, error_code="rate_limited", error_message="slow down")
    first, second = await list_datasets(api), await list_datasets(api)
    assert first[0] == 200
    assert first[1] == {"error_code": 404001, "error_message": "Request not found", "detail": None}
    assert second[0] == 200
    assert second[1]["error_code"] == "rate_limited"
    assert second[1]["error_message"] == "slow down"


@pytest.mark.asyncio
async def test_200_error_follows_skip_count_and_rate(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """Like every kind, 200_error is scheduled by skip/count and drawn by a seeded rate."""
    emu.inject("200_error", skip=1, count=2)
    codes = [(await list_datasets(api))[1].get("error_code") for _ in range(4)]
    assert codes == [None, 500001, 500001, None]
    emu.clear_faults()
    rule = emu.inject("200_error", rate=0.5)
    codes = [(await list_datasets(api))[1].get("error_code") for _ in range(40)]
    assert 0 < codes.count(500001) == rule.fired < 40


@pytest.mark.asyncio
async def test_200_error_after_the_handler_ran_keeps_the_side_effect(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """With after=True the dataset is created, yet the answer is a 200 with an error body."""
    emu.inject("200_error", method="POST", count=1, after=True)
    async with api.post(DATASETS, json={"name": "ghost"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["error_code"] == 500001
    _, body = await list_datasets(api)
    assert [d["name"] for d in body["datasets"]] == ["ghost"]


@pytest.mark.asyncio
async def test_200_error_leaves_storage_alone(
    emu: Emulator, api: aiohttp.ClientSession, bare: aiohttp.ClientSession
) -> None:
    """Storage bodies have no error_code: an unscoped 200_error never fires on a signed PUT."""
    dataset_id, url = await signed_put_url(api, b"jpg")
    rule = emu.inject("200_error")
    async with bare.put(url, data=b"jpg") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    assert rule.fired == 0
    assert set(emu.stored_files(dataset_id)) == {"a.jpg"}
    with pytest.raises(ValueError, match="API hosts only"):
        emu.inject("200_error", api="storage")


# -- Retry-After on 503 and on storage -------------------------------------------------------


@pytest.mark.asyncio
async def test_503_with_retry_after_seconds(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """A 503 fault with retry_after sends Retry-After in whole seconds, rounded up."""
    emu.inject("503", api="trainer", count=1, retry_after=1.2)
    emu.inject("503", api="trainer", count=1)
    async with api.get(DATASETS) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert (await resp.json())["error_code"] == 503001
    async with api.get(DATASETS) as resp:
        assert resp.status == 503
        assert "Retry-After" not in resp.headers


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "code"), [("429", "SlowDown"), ("503", "ServiceUnavailable")])
async def test_storage_put_pause_with_retry_after(
    emu: Emulator,
    api: aiohttp.ClientSession,
    bare: aiohttp.ClientSession,
    kind: Any,
    code: str,
) -> None:
    """A signed PUT answered 429/503 with Retry-After stores nothing; the retry then succeeds."""
    dataset_id, url = await signed_put_url(api, b"jpg")
    emu.inject(kind, api="storage", method="PUT", count=1, retry_after=3)
    async with bare.put(url, data=b"jpg") as resp:
        assert resp.status == int(kind)
        assert resp.headers["Retry-After"] == "3"
        assert (await resp.json())["error"] == code
    assert emu.stored_files(dataset_id) == {}
    async with bare.put(url, data=b"jpg") as resp:
        assert resp.status == 200
    assert set(emu.stored_files(dataset_id)) == {"a.jpg"}


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "code"), [("429", "SlowDown"), ("503", "ServiceUnavailable")])
async def test_storage_download_pause_with_retry_after(
    emu: Emulator, bare: aiohttp.ClientSession, kind: Any, code: str
) -> None:
    """An artifact GET answered 429/503 carries Retry-After and storage's body, then serves."""
    url = emu.state.storage.put_blob("outputs/x.bin", b"artifact")
    emu.inject(kind, api="storage", method="GET", count=1, retry_after=0)
    async with bare.get(url) as resp:
        assert resp.status == int(kind)
        assert resp.headers["Retry-After"] == "0"
        assert (await resp.json())["error"] == code
    async with bare.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == b"artifact"


@pytest.mark.asyncio
@pytest.mark.parametrize("api_name", ["trainer", "storage"])
async def test_retry_after_as_http_date(
    emu: Emulator, api: aiohttp.ClientSession, bare: aiohttp.ClientSession, api_name: str
) -> None:
    """retry_after_form="date" sends an RFC 9110 HTTP-date retry_after seconds ahead."""
    emu.inject("503", api=api_name, count=1, retry_after=30, retry_after_form="date")
    before = time.time()
    if api_name == "storage":
        _, url = await signed_put_url(api, b"jpg")
        request = bare.put(url, data=b"jpg")
    else:
        request = api.get(DATASETS)
    async with request as resp:
        assert resp.status == 503
        value = resp.headers["Retry-After"]
        server_date = parsedate_to_datetime(resp.headers["Date"]).timestamp()
    assert value.endswith(" GMT")
    when = parsedate_to_datetime(value).timestamp()
    assert math.floor(before) + 30 <= when <= time.time() + 31
    assert 29 <= when - server_date <= 31  # agrees with the Date header the server sent


@pytest.mark.asyncio
async def test_429_fault_takes_the_date_form_too(
    emu: Emulator, api: aiohttp.ClientSession
) -> None:
    """A 429 fault's Retry-After can be an HTTP-date as well."""
    emu.inject("429", count=1, retry_after=5, retry_after_form="date")
    async with api.get(DATASETS) as resp:
        assert resp.status == 429
        when = parsedate_to_datetime(resp.headers["Retry-After"]).timestamp()
    assert 4 <= when - time.time() <= 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "500", "retry_after": 1}, "429 and 503"),
        ({"kind": "reset", "retry_after": 1}, "429 and 503"),
        ({"kind": "503", "retry_after": -1}, "retry_after"),
        ({"kind": "503", "retry_after": math.nan}, "retry_after"),
        ({"kind": "503", "retry_after": math.inf}, "retry_after"),
        ({"kind": "503", "retry_after_form": "date"}, "needs retry_after"),
        ({"kind": "503", "retry_after": 1, "retry_after_form": "ms"}, "retry_after_form"),
        ({"kind": "500", "error_code": 500001}, "200_error"),
        ({"kind": "truncated", "error_message": "x"}, "200_error"),
        ({"kind": "200_error", "api": "comfyui"}, "API hosts only"),
    ],
)
def test_options_a_kind_does_not_take_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """An option that would be silently ignored, or an impossible value, is a ValueError."""
    with pytest.raises(ValueError, match=message):
        FaultRule(**kwargs)
