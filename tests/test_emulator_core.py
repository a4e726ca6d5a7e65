"""The emulator's cross-cutting behaviour: auth, rate limit, request log, faults, CLI, fixture."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async.testing import Emulator, FaultRule

DATASETS = "/prod/v1/trainers/datasets"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit."""
    async with Emulator(rate_limit=None) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session (no auth headers)."""
    async with aiohttp.ClientSession() as session:
        yield session


def auth(emu: Emulator) -> dict[str, str]:
    """The bearer header of the emulator's account."""
    return {"Authorization": f"Bearer {emu.token}"}


async def statuses(
    http: aiohttp.ClientSession, emu: Emulator, n: int, path: str = DATASETS
) -> list[int]:
    """Send ``n`` sequential authenticated GETs and return their statuses."""
    result = []
    for _ in range(n):
        async with http.get(emu.url + path, headers=auth(emu)) as resp:
            await resp.read()
            result.append(resp.status)
    return result


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("header", [None, "Bearer wrong", "bearer {token}", "{token}"])
async def test_missing_or_wrong_token_is_401(
    emu: Emulator, http: aiohttp.ClientSession, header: str | None
) -> None:
    """Anything but exactly ``Bearer <token>`` gets the documented 401 body."""
    headers = {} if header is None else {"Authorization": header.format(token=emu.token)}
    async with http.get(emu.url + DATASETS, headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == {
            "error_code": 401001,
            "error_message": "Unauthorized: invalid or missing bearer token",
            "detail": None,
        }
        assert re.fullmatch(r"[0-9a-f-]{36}", resp.headers["X-Request-Id"])


@pytest.mark.asyncio
async def test_valid_token_is_accepted(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """The emulator's own token opens the API."""
    async with http.get(emu.url + DATASETS, headers=auth(emu)) as resp:
        assert resp.status == 200
        assert await resp.json() == {"datasets": []}


@pytest.mark.asyncio
async def test_unknown_path_is_json_404(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Paths outside every API answer 404 with the JSON error body."""
    async with http.get(emu.url + "/nowhere") as resp:
        assert resp.status == 404
        body = await resp.json()
        assert body["error_code"] == 404001
        assert set(body) == {"error_code", "error_message", "detail"}


# -- rate limit -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rate_limit_429_after_burst(http: aiohttp.ClientSession) -> None:
    """Past the burst the account gets 429 rate_limited with an integer Retry-After."""
    async with Emulator(rate_limit=1.0, burst=3) as emu:
        assert await statuses(http, emu, 3) == [200, 200, 200]
        async with http.get(emu.url + DATASETS, headers=auth(emu)) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            assert await resp.json() == {
                "error_code": "rate_limited",
                "error_message": "Too many requests: the limit is 1 request per second per account",
                "detail": None,
            }
        assert emu.log[-1].status == 429
        await asyncio.sleep(1.05)
        assert await statuses(http, emu, 1) == [200]


@pytest.mark.asyncio
async def test_retry_after_rounds_up_slow_refill(http: aiohttp.ClientSession) -> None:
    """A slow refill rate gives a Retry-After of the whole seconds until the next token."""
    async with Emulator(rate_limit=0.25, burst=1) as emu:
        assert await statuses(http, emu, 1) == [200]
        async with http.get(emu.url + DATASETS, headers=auth(emu)) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "4"


@pytest.mark.asyncio
async def test_rate_limit_none_switches_it_off(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """With rate_limit=None a fast burst of requests all succeed."""
    assert await statuses(http, emu, 12) == [200] * 12


@pytest.mark.asyncio
async def test_storage_and_unauthorised_requests_take_no_token(
    http: aiohttp.ClientSession,
) -> None:
    """Storage is not rate limited, and a rejected token does not drain the account's bucket."""
    async with Emulator(rate_limit=1.0, burst=1) as emu:
        for _ in range(5):
            async with http.put(emu.url + "/storage/datasets/x/a.jpg", data=b"x") as resp:
                assert resp.status == 403
            async with http.get(emu.url + DATASETS) as resp:
                assert resp.status == 401
        assert await statuses(http, emu, 1) == [200]


# -- request log ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_log_records_fields_and_masks_secrets(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Each request is logged with its fields; the token and signature headers never appear."""
    before = time.monotonic()
    headers = {**auth(emu), "Cookie": "session=abc", "X-Goog-Signature": "deadbeef"}
    async with http.post(
        emu.url + DATASETS + "?trace=1", json={"name": "logged"}, headers=headers
    ) as resp:
        assert resp.status == 200
        request_id = resp.headers["X-Request-Id"]
    async with http.get(emu.url + DATASETS) as resp:
        assert resp.status == 401
    after = time.monotonic()

    first, second = emu.log
    assert (first.method, first.path, first.query, first.status) == (
        "POST",
        DATASETS,
        "trace=1",
        200,
    )
    assert first.api == "trainer"
    assert first.authorized is True
    assert first.body_size == len(json.dumps({"name": "logged"}).encode())
    assert before <= first.at <= second.at <= after
    assert first.request_id == request_id
    assert first.headers["Authorization"] == "<redacted>"
    assert first.headers["Cookie"] == "<redacted>"
    assert first.headers["X-Goog-Signature"] == "<redacted>"
    assert (second.status, second.authorized) == (401, False)
    assert emu.token not in repr(emu.log)


@pytest.mark.asyncio
async def test_log_classifies_apis(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """The log names the API of each path prefix."""
    paths = {
        "/prod/v1/trainers/ai-toolkit/jobs/x/status": "trainer",
        "/v1/requests/x/status": "model",
        f"/prod/api/users/{emu.user_id}/servers": "server",
        "/storage/artifacts/k?expires=1&sig=x": "storage",
        "/comfyui/x/queue": "comfyui",
    }
    for path in paths:
        async with http.get(emu.url + path, headers=auth(emu)) as resp:
            await resp.read()
    assert [r.api for r in emu.log] == list(paths.values())
    assert emu.log[3].query == "expires=1&sig=x"


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fault_skip_and_count(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A fault lets ``skip`` requests through, then fires ``count`` times, then stops."""
    rule = emu.inject("503", method="GET", path=r"/datasets$", skip=1, count=2)
    assert await statuses(http, emu, 5) == [200, 503, 503, 200, 200]
    assert (rule.matched, rule.fired) == (5, 2)
    assert [r.status for r in emu.log] == [200, 503, 503, 200, 200]


@pytest.mark.asyncio
async def test_fault_filters_by_api_and_method(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A fault limited to another API or method leaves the request alone."""
    emu.inject("500", api="model")
    emu.inject("502", method="DELETE")
    assert await statuses(http, emu, 2) == [200, 200]


async def _rate_run(seed: int) -> list[int]:
    """Statuses of 30 requests against a 50% 500-fault with the given seed."""
    async with Emulator(rate_limit=None, seed=seed) as emu, aiohttp.ClientSession() as http:
        emu.inject("500", rate=0.5)
        return await statuses(http, emu, 30)


@pytest.mark.asyncio
async def test_fault_rate_is_seeded_and_replays() -> None:
    """The same seed gives the same fault sequence; another seed gives another."""
    first, again, other = await _rate_run(7), await _rate_run(7), await _rate_run(8)
    assert first == again
    assert set(first) == {200, 500}
    assert first != other


@pytest.mark.asyncio
async def test_faulted_request_takes_no_rate_token(http: aiohttp.ClientSession) -> None:
    """A faulted request neither reaches auth nor spends the account's token."""
    async with Emulator(rate_limit=1.0, burst=1) as emu:
        emu.inject("429", count=2, retry_after=3)
        async with http.get(emu.url + DATASETS) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "3"
        async with http.get(emu.url + DATASETS, headers=auth(emu)) as resp:
            assert resp.status == 429
        assert await statuses(http, emu, 1) == [200]


@pytest.mark.asyncio
async def test_reset_fault_closes_the_connection(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A reset fault drops the connection unanswered, is logged as 0, and skips the handler."""
    emu.inject("reset", count=1)
    # POST: aiohttp silently retries idempotent methods once after a disconnect
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(emu.url + DATASETS, json={"name": "a"}, headers=auth(emu)) as resp:
            await resp.read()
    async with http.get(emu.url + DATASETS, headers=auth(emu)) as resp:
        assert await resp.json() == {"datasets": []}
    assert [r.status for r in emu.log] == [0, 200]


@pytest.mark.asyncio
async def test_html_and_truncated_faults(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """The html fault is a proxy's 502 page; the truncated fault is a 200 with broken JSON."""
    emu.inject("html", count=1)
    emu.inject("truncated", count=1)
    async with http.get(emu.url + DATASETS, headers=auth(emu)) as resp:
        assert resp.status == 502
        assert resp.content_type == "text/html"
        assert "Bad Gateway" in await resp.text()
    async with http.get(emu.url + DATASETS, headers=auth(emu)) as resp:
        assert resp.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(await resp.text())


@pytest.mark.asyncio
async def test_slow_fault_delays_then_answers(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """The slow fault waits ``delay`` seconds and then answers normally."""
    emu.inject("slow", delay=0.3, count=1)
    started = time.monotonic()
    assert await statuses(http, emu, 1) == [200]
    assert time.monotonic() - started >= 0.3


@pytest.mark.asyncio
async def test_expire_url_fault_targets_storage(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """expire_url answers storage requests 403 ExpiredToken and leaves the APIs alone."""
    emu.inject("expire_url")
    assert await statuses(http, emu, 1) == [200]
    async with http.put(emu.url + "/storage/datasets/x/a.jpg", data=b"abc") as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "ExpiredToken"


@pytest.mark.asyncio
async def test_clear_faults(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """clear_faults deactivates every rule."""
    emu.inject("500")
    emu.clear_faults()
    assert await statuses(http, emu, 2) == [200, 200]


def test_fault_rule_validation() -> None:
    """Unknown kinds and APIs and out-of-range rates are refused when the rule is made."""
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultRule(kind="418")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown api"):
        FaultRule(kind="500", api="trainers")
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRule(kind="500", rate=1.5)


# -- storage blobs ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_blob_get_supports_range(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Published blobs download whole or from an offset (206 with Content-Range)."""
    data = bytes(range(256)) * 40
    url = emu.state.storage.put_blob("jobs/j1/model.safetensors", data)
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == data
    async with http.get(url, headers={"Range": "bytes=1000-"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        assert await resp.read() == data[1000:]
    async with http.get(url.replace("sig=", "sig=0")) as resp:
        assert resp.status == 403
    assert not emu.log[0].authorized


# -- standalone process and pytest fixture ----------------------------------------------------


@pytest.mark.asyncio
async def test_module_cli_prints_exports_and_serves(http: aiohttp.ClientSession) -> None:
    """``python -m runcomfy_async.testing`` prints the export lines and serves until SIGTERM."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runcomfy_async.testing",
        "--port",
        "0",
        "--token",
        "rc_cli_token",
        "--rate-limit",
        "none",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [
            (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip() for _ in range(5)
        ]
        exports = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        assert list(exports) == [
            "RUNCOMFY_API_TOKEN",
            "RUNCOMFY_USER_ID",
            "RUNCOMFY_TRAINER_URL",
            "RUNCOMFY_MODEL_URL",
            "RUNCOMFY_SERVER_URL",
        ]
        assert exports["RUNCOMFY_API_TOKEN"] == "rc_cli_token"
        url = exports["RUNCOMFY_TRAINER_URL"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert exports["RUNCOMFY_MODEL_URL"] == exports["RUNCOMFY_SERVER_URL"] == url
        headers = {"Authorization": "Bearer rc_cli_token"}
        async with http.get(url + DATASETS, headers=headers) as resp:
            assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.communicate()
    assert proc.returncode == 0


@pytest.mark.asyncio
async def test_pytest_fixture_yields_running_emulator(
    runcomfy_emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    """The plugin's runcomfy_emulator fixture is a started emulator."""
    async with http.get(runcomfy_emulator.url + DATASETS, headers=auth(runcomfy_emulator)) as r:
        assert r.status == 200


@pytest.mark.asyncio
@pytest.mark.runcomfy_emulator(token="rc_marked", rate_limit=None)
async def test_pytest_fixture_takes_marker_kwargs(runcomfy_emulator: Emulator) -> None:
    """The runcomfy_emulator marker passes Emulator keyword arguments to the fixture."""
    assert runcomfy_emulator.token == "rc_marked"
    assert runcomfy_emulator.config.rate_limit is None


@pytest.mark.asyncio
async def test_client_points_at_the_emulator(emu: Emulator) -> None:
    """emu.client() builds a RunComfy with the emulator's token, user id and URLs."""
    rc = emu.client(max_retries=0)
    async with rc:
        assert type(rc).__name__ == "RunComfy"
        assert rc.user_id == emu.user_id


def test_public_names() -> None:
    """The package exports exactly its documented public names."""
    import runcomfy_async.testing as testing

    assert sorted(testing.__all__) == [
        "Emulator",
        "FaultKind",
        "FaultRule",
        "RequestRecord",
        "WebhookDelivery",
        "WebhookPolicy",
    ]
    assert all(hasattr(testing, name) for name in testing.__all__)


@pytest.mark.asyncio
async def test_lifecycle_errors() -> None:
    """The URL needs a started emulator; close is idempotent; a closed one cannot restart."""
    emu = Emulator()
    with pytest.raises(RuntimeError, match="not running"):
        _ = emu.url
    await emu.start()
    await emu.close()
    await emu.close()
    with pytest.raises(RuntimeError, match="closed"):
        await emu.start()
