"""The FastAPI example: its endpoints, and one account limit shared by 4 uvicorn workers.

The endpoint test serves the app in-process (uvicorn) against an in-process emulator. The rate
tests use real processes throughout: the emulator runs standalone (``python -m
runcomfy_async.testing``), the app under ``uvicorn --workers 4``, Redis is a real server; what
reached the emulator is read from its emulator-only ``GET /_emulator/log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio
import uvicorn
import yaml

from runcomfy_async.testing import Emulator, WebhookPolicy
from tests._services import (  # noqa: F401 (registers the redis_url and redis_server fixtures)
    RedisServer,
    free_port,
    redis_server_fixture,
    redis_url_fixture,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent
JOB_CONFIG: dict[str, Any] = {
    "job": "extension",
    "config": {
        "name": "my_lora",
        "process": [
            {
                "type": "sd_trainer",
                "training_folder": "/app/ai-toolkit/output",
                "datasets": [{"folder_path": "/app/ai-toolkit/datasets/dogs"}],
                "train": {"steps": 20},
            }
        ],
    },
}
RATE = 1.0  # the emulator's (and the account's) limit, requests/s
SERVER_BURST = 3  # the emulator's bucket capacity: what the service tolerates back to back
WINDOW = 5.0  # seconds of the sliding windows checked
WEBHOOK_SECRET = "example-webhook-secret"
_RANK = {"in_queue": 0, "in_progress": 1, "succeeded": 2, "failed": 2, "cancelled": 2}


@pytest_asyncio.fixture
async def served(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Emulator]]:
    """The app on one in-process uvicorn worker against an in-process emulator (no rate limit)."""
    from examples.fastapi_app.main import app

    async with Emulator(rate_limit=None, speed=1000.0) as emu:
        port = free_port()
        for name, value in {
            "RUNCOMFY_API_TOKEN": emu.token,
            "RUNCOMFY_USER_ID": emu.user_id,
            "RUNCOMFY_TRAINER_URL": emu.url,
            "RUNCOMFY_MODEL_URL": emu.url,
            "RUNCOMFY_SERVER_URL": emu.url,
            "RUNCOMFY_UPLOAD_ROOT": str(tmp_path),
            "RUNCOMFY_RATE": "1000",
            "RUNCOMFY_WEBHOOK_URL": f"http://127.0.0.1:{port}/runcomfy/webhook",
            "RUNCOMFY_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RUNCOMFY_WEBHOOK_POLL_AFTER": "0.3",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("RUNCOMFY_REDIS_URL", raising=False)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), "uvicorn stopped while starting"
            await asyncio.sleep(0.01)
        try:
            async with aiohttp.ClientSession() as session:
                yield session, f"http://127.0.0.1:{port}", emu
        finally:
            server.should_exit = True
            await task


@pytest.mark.asyncio
async def test_endpoints_map_the_library(
    served: tuple[aiohttp.ClientSession, str, Emulator], tmp_path: Path
) -> None:
    """Folder dataset -> READY, job submit + status, generate (200 and 504), errors as HTTP."""
    session, url, emu = served
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "dogs" / "a.txt").write_text("a dog")

    async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with session.request(method, url + path, **kwargs) as response:
            return response.status, await response.json()

    status, created = await call("POST", "/datasets", json={"name": "dogs", "folder": "dogs"})
    assert (status, sorted(created["uploaded"]), created["failed"]) == (201, ["a.jpg", "a.txt"], {})
    for _ in range(200):
        status, info = await call("GET", f"/datasets/{created['id']}")
        if info["status"] == "READY":
            break
        await asyncio.sleep(0.02)
    assert (status, info["status"], info["name"]) == (200, "READY", "dogs")

    status, job = await call("POST", "/jobs", json={"config": yaml.safe_dump(JOB_CONFIG)})
    assert status == 201
    status, job_info = await call("GET", f"/jobs/{job['id']}")
    assert (status, job_info["id"]) == (200, job["id"])

    emu.add_model("acme/fast/v1")
    status, out = await call("POST", "/generate", json={"model_id": "acme/fast/v1", "inputs": {}})
    assert status == 200
    assert "image" in out["output"]
    emu.set_model_behavior("acme/slow/v1", duration=1e6)
    body = {"model_id": "acme/slow/v1", "inputs": {"prompt": "x"}, "timeout": 0.3}
    status, slow = await call("POST", "/generate", json=body)
    assert (status, slow["error"]) == (504, "WaitTimeoutError")
    status, state = await call("GET", f"/generate/{slow['request_id']}")
    assert (status, state["status"]) == (200, "in_progress")

    assert (await call("GET", "/datasets/no-such-id"))[0] == 404
    status, error = await call("POST", "/datasets", json={"name": "dogs2", "folder": "../.."})
    assert status == 422
    status, error = await call("POST", "/datasets", json={"name": "dogs", "folder": "dogs"})
    assert (status, error["error"]) == (409, "ConflictError")  # the name is taken
    status, error = await call("POST", "/jobs", json={"config": "job: [unclosed"})
    assert (status, error["error"]) == (422, "ConfigError")


@pytest.mark.asyncio
async def test_webhooks_hand_every_final_event_over_once(
    served: tuple[aiohttp.ClientSession, str, Emulator],
) -> None:
    """The emulator duplicates, reorders and drops deliveries: each final is handled once.

    Two deployments: on one every event may come twice and intermediate events late; on the
    other every event is dropped, so only the app's recovery poll finds the finals.
    """
    session, url, emu = served
    async with emu.client(rate=1000.0) as rc:
        deployments = [
            await rc.deployments.create(
                name=f"hooks-{n}",
                workflow_id=emu.state.machines.workflows[0]["workflow_id"],
                workflow_version="v1",
                hardware="AMPERE_48",
                max_instances=4,
            )
            for n in range(2)
        ]
    noisy, silent = (d.id for d in deployments)
    emu.set_webhook_policy(
        WebhookPolicy(duplicate_rate=0.6, reorder_rate=0.6, backoff=0.0), deployment_id=noisy
    )
    emu.set_webhook_policy(WebhookPolicy(drop_rate=1.0), deployment_id=silent)

    async def submit(deployment_id: str, text: str) -> str:
        body = {
            "deployment_id": deployment_id,
            "overrides": {"6": {"inputs": {"text": text}}},
            "intermediate": True,
        }
        async with session.post(f"{url}/runs", json=body) as response:
            assert response.status == 202, await response.text()
            return str((await response.json())["request_id"])

    expected = {
        await submit(noisy, "EMULATOR_FAIL" if n % 5 == 0 else f"a cat {n}"): noisy
        for n in range(15)
    }
    expected |= {await submit(silent, f"a dog {n}"): silent for n in range(3)}

    finals: list[dict[str, Any]] = []
    for _ in range(500):
        async with session.get(f"{url}/runs") as response:
            events = await response.json()
        finals = [e for e in events if e["status"] in ("succeeded", "failed", "cancelled")]
        if len(finals) >= len(expected):
            break
        await asyncio.sleep(0.02)
    await emu.webhooks_idle()
    await asyncio.sleep(0.1)  # deliveries still in flight have been answered and handled
    async with session.get(f"{url}/runs") as response:
        events = await response.json()

    finals = [e for e in events if e["status"] in ("succeeded", "failed", "cancelled")]
    assert sorted(e["request_id"] for e in finals) == sorted(expected)  # each exactly once
    assert all(e["verified"] for e in finals)
    failed = {e["request_id"] for e in finals if e["status"] == "failed"}
    assert len(failed) == 3
    for event in finals:
        if event["status"] == "succeeded":
            assert event["outputs"]["9"]["images"][0]["url"].startswith("http")
    pairs = [(e["request_id"], e["status"]) for e in events]
    assert len(pairs) == len(set(pairs))  # no status of a run handled twice
    for request_id in expected:
        ranks = [_RANK[s] for r, s in pairs if r == request_id]
        assert ranks == sorted(ranks), f"{request_id} went back: {ranks}"

    deliveries = emu.webhook_deliveries
    to_app = [d for d in deliveries if d.payload["deployment_id"] == noisy]
    assert any(d.duplicate for d in to_app), "the emulator sent no duplicate"
    assert not [d for d in deliveries if d.payload["deployment_id"] == silent]
    assert all(d.ok for d in deliveries)
    assert all("secret=" + WEBHOOK_SECRET in d.url for d in deliveries)
    late = [
        d for n, d in enumerate(to_app)
        if d.payload["status"] == "in_progress"
        and any(
            e.payload["request_id"] == d.payload["request_id"]
            and e.payload["status"] in ("succeeded", "failed")
            for e in to_app[:n]
        )
    ]
    assert late, "no intermediate event arrived after its final one"

    async with session.post(f"{url}/runcomfy/webhook", json=to_app[0].payload) as response:
        assert response.status == 403  # no secret: refused


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def emulator_env() -> Iterator[dict[str, str]]:
    """A standalone emulator process (1 request/s, burst 3); the RUNCOMFY_* variables for it."""
    command = [sys.executable, "-m", "runcomfy_async.testing", "--port", "0"]
    command += ["--rate-limit", str(RATE), "--burst", str(SERVER_BURST), "--speed", "1000"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        env: dict[str, str] = {}
        while len(env) < 5:
            line = process.stdout.readline().decode()
            assert line, "the emulator exited before printing its export lines"
            name, _, value = line.removeprefix("export ").strip().partition("=")
            env[name] = shlex.split(value)[0]
        yield env
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def app_url(
    emulator_env: dict[str, str], redis_url: str, tmp_path: Path
) -> Iterator[tuple[str, int]]:
    """``uvicorn examples.fastapi_app.main:app --workers 4`` on a free port: (URL, master pid)."""
    with _serve_app(emulator_env, redis_url, tmp_path) as served:
        yield served


@pytest.fixture
def app_on_own_redis(
    emulator_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[str, int]]:
    """The same four workers on a Redis of the test's own, which it may restart or stop."""
    with _serve_app(emulator_env, redis_server.url, tmp_path) as served:
        yield served


@contextlib.contextmanager
def _serve_app(
    emulator_env: dict[str, str], redis_url: str, tmp_path: Path
) -> Iterator[tuple[str, int]]:
    """Run the app under uvicorn with four workers; (URL, master pid)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOMFY_")}
    env |= emulator_env | {"RUNCOMFY_REDIS_URL": redis_url}
    log = tmp_path / "uvicorn.log"  # shutdown cancels queued handlers: noisy, expected
    with log.open("wb") as stderr:
        command = [sys.executable, "-m", "uvicorn", "examples.fastapi_app.main:app"]
        command += ["--workers", "4", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--log-level", "warning", "--timeout-graceful-shutdown", "2"]
        process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stderr=stderr,
        )
    try:
        try:
            # Four workers importing the app: seconds on a quiet machine, far more on a busy one.
            wait_for_port(port, timeout=90.0, process=process)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}; uvicorn said:\n{log.read_text()[-3000:]}") from exc
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        _stop(process)


def _workers(master: int) -> list[int]:
    """Pids of the uvicorn master's worker processes, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[1]) == master and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


async def _wait_for_workers(session: aiohttp.ClientSession, url: str, master: int) -> None:
    """Until four workers run and the app answers (the OpenAPI page makes no API call)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/openapi.json") as response:
                if response.status == 200 and len(_workers(master)) == 4:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError("uvicorn did not start four workers within 90 s")


async def _drive(
    session: aiohttp.ClientSession,
    url: str,
    *,
    seconds: float,
    callers: int = 40,
    at: tuple[float, Callable[[], Awaitable[None]]] | None = None,
) -> list[int]:
    """``callers`` concurrent loops on GET /ping-api for ``seconds``; the statuses answered."""
    statuses: list[int] = []

    async def caller() -> None:
        while True:
            try:
                async with session.get(f"{url}/ping-api") as response:
                    await response.read()
                    statuses.append(response.status)
            except aiohttp.ClientError:
                statuses.append(0)  # the worker serving it was killed
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    if at is not None:
        await asyncio.sleep(at[0])
        await at[1]()
        await asyncio.sleep(seconds - at[0])
    else:
        await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return statuses


async def _api_log(session: aiohttp.ClientSession, emulator_url: str) -> list[dict[str, Any]]:
    """Every Trainer API request the emulator received, oldest first."""
    async with session.get(f"{emulator_url}/_emulator/log", params={"api": "trainer"}) as response:
        assert response.status == 200
        records: list[dict[str, Any]] = await response.json()
        return records


def _check_shared_limit(records: list[dict[str, Any]], *, until: float) -> None:
    """No 429; at most rate * window + burst in every window; >= 90 % of the rate used."""
    assert [r for r in records if r["status"] == 429] == []
    times = sorted(r["at"] for r in records)
    for i, start in enumerate(times):
        inside = sum(1 for t in times[i:] if t - start <= WINDOW)
        assert inside <= RATE * WINDOW + SERVER_BURST, f"{inside} requests in {WINDOW} s"
    busy = [t for t in times if t <= until]
    allowed = RATE * (until - busy[0])
    assert len(busy) >= 0.9 * allowed, f"{len(busy)} requests where {allowed:.1f} were allowed"


@pytest.mark.asyncio
async def test_four_workers_share_one_limit(
    app_url: tuple[str, int], emulator_env: dict[str, str]
) -> None:
    """40 callers on 4 workers for 20 s: no 429, never above the limit, >= 90 % of it used."""
    url, master = app_url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await _wait_for_workers(session, url, master)
        statuses = await _drive(session, url, seconds=20.0)
        until = time.monotonic()
        records = await _api_log(session, emulator_env["RUNCOMFY_TRAINER_URL"])
    assert statuses, "no caller got an answer"
    assert set(statuses) == {200}
    _check_shared_limit(records, until=until)


@pytest.mark.asyncio
async def test_killed_worker_leaves_the_limit_intact(
    app_url: tuple[str, int], emulator_env: dict[str, str]
) -> None:
    """SIGKILL of one worker mid-run: the others keep within the limit and keep using it."""
    url, master = app_url
    killed: list[int] = []

    async def kill_one() -> None:
        victim = _workers(master)[0]
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await _wait_for_workers(session, url, master)
        statuses = await _drive(session, url, seconds=16.0, at=(5.0, kill_one))
        until = time.monotonic()
        records = await _api_log(session, emulator_env["RUNCOMFY_TRAINER_URL"])
    assert killed
    assert killed[0] not in _workers(master)
    assert statuses.count(200) >= 10
    _check_shared_limit(records, until=until)


@pytest.mark.asyncio
async def test_redis_restart_mid_run_is_invisible(
    app_on_own_redis: tuple[str, int], emulator_env: dict[str, str], redis_server: RedisServer
) -> None:
    """Redis restarted (down 1 s) under 40 callers on 4 workers: every call 200, no 429."""
    url, master = app_on_own_redis

    async def restart() -> None:
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_server.start)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await _wait_for_workers(session, url, master)
        statuses = await _drive(session, url, seconds=10.0, at=(3.0, restart))
        records = await _api_log(session, emulator_env["RUNCOMFY_TRAINER_URL"])
    assert statuses
    assert set(statuses) == {200}
    assert [r for r in records if r["status"] == 429] == []


@pytest.mark.asyncio
async def test_redis_outage_degrades_to_the_fallback_shares_and_recovers(
    app_on_own_redis: tuple[str, int], emulator_env: dict[str, str], redis_server: RedisServer
) -> None:
    """Redis down 20 s under 4 workers: all 200, within 4 fallback shares, shared again in 1 s."""
    url, master = app_on_own_redis
    retry_for, share = 5.0, RATE / 4  # the example's defaults: RUNCOMFY_WORKERS=4
    marks: dict[str, float] = {}

    async def outage() -> None:
        await asyncio.to_thread(redis_server.stop)
        marks["down"] = time.monotonic()
        await asyncio.sleep(20.0)
        await asyncio.to_thread(redis_server.start)
        marks["up"] = time.monotonic()
        client = redis_asyncio.Redis.from_url(redis_server.url)
        while not await client.exists("runcomfy:ratelimit:default"):  # noqa: ASYNC110 (polls Redis)
            await asyncio.sleep(0.02)
        marks["shared"] = time.monotonic()
        await client.aclose()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await _wait_for_workers(session, url, master)
        statuses = await _drive(session, url, seconds=6.0, at=(2.0, outage))
        records = await _api_log(session, emulator_env["RUNCOMFY_TRAINER_URL"])
    assert statuses
    assert set(statuses) == {200}
    assert [r for r in records if r["status"] == 429] == []
    assert marks["shared"] - marks["up"] < 1.0
    # While falling back, each worker sends at most its share (plus one request each at the edge).
    fallback = sorted(
        r["at"] for r in records if marks["down"] + retry_for < r["at"] < marks["up"]
    )
    assert fallback, "no worker served a call during the outage"
    for i, start in enumerate(fallback):
        inside = sum(1 for t in fallback[i:] if t - start <= WINDOW)
        assert inside <= 4 * share * WINDOW + 4, f"{inside} requests in {WINDOW} s"
