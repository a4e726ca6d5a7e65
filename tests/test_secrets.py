"""The token never leaks: not to logs, exceptions, tracebacks' locals, storage or foreign hosts.

One full flow (dataset upload, training job and download, model runs, a machine with ComfyUI,
error paths with 401/404/429/5xx/reset) runs with every log record captured at DEBUG. Signed
storage URLs point at a second, foreign-host server (127.0.0.2) that proxies to the emulator and
records every request; an API host that answers with a redirect to it shows the client does not
follow API redirects. Then every captured text is searched for the token.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from aiohttp import web

from runcomfy_async import errors
from runcomfy_async._polling import PollPolicy
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import example_workflow

FAST = PollPolicy(initial=0.02, factor=1.5, max_interval=0.1, jitter=0.0)
FOREIGN_HOST = "127.0.0.2"
WRONG_TOKEN = "rc_wrong_" + "9" * 24

CONFIG: dict[str, Any] = {
    "job": "extension",
    "config": {
        "name": "secret_lora",
        "process": [
            {
                "type": "sd_trainer",
                "training_folder": "/app/ai-toolkit/output",
                "datasets": [{"folder_path": "/app/ai-toolkit/datasets/dogs"}],
                "train": {"steps": 10},
                "save": {"save_every": 5},
                "sample": {"sample_every": 5},
            }
        ],
    },
}


@attrs.frozen
class Seen:
    """One request a test server received."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


class Foreign:
    """A server on another host that records every request.

    With ``upstream`` it proxies ``/storage/...`` there (so signed URLs naming it still work);
    with ``redirect_to`` it answers every request with a 307 to that URL (an API host gone bad).
    """

    def __init__(
        self, *, host: str, upstream: str | None = None, redirect_to: str | None = None
    ) -> None:
        self.host = host
        self.upstream = upstream
        self.redirect_to = redirect_to
        self.seen: list[Seen] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Foreign:
        """Start listening on a free port of ``host``."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"
        self._http = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop listening."""
        assert self._http is not None and self._runner is not None
        await self._http.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Record the request, then redirect, proxy to the emulator, or answer 404."""
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        if self.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(self.redirect_to + request.path_qs)
        if self.upstream is None or not request.path.startswith("/storage/"):
            return web.json_response({"error": "not here"}, status=404)
        assert self._http is not None
        forward = {
            k: v for k, v in request.headers.items() if k.lower() in ("content-type", "range")
        }
        async with self._http.request(
            request.method, self.upstream + request.path_qs, data=body, headers=forward
        ) as resp:
            payload = await resp.read()
            keep = ("Content-Type", "Content-Range", "ETag")
            headers = {k: resp.headers[k] for k in keep if k in resp.headers}
            return web.Response(status=resp.status, body=payload, headers=headers)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """A fast emulator without the rate limit."""
    async with Emulator(rate_limit=None, speed=600.0, dataset_processing_seconds=0) as emulator:
        yield emulator


def frame_locals(exc: BaseException) -> list[str]:
    """repr of every local in our own frames of ``exc``'s traceback (and its causes)."""
    texts: list[str] = []
    stack = traceback.TracebackException.from_exception(exc, capture_locals=True)
    for part in [stack, *_causes(stack)]:
        for frame in part.stack:
            if "runcomfy_async" in frame.filename and frame.locals:
                texts.extend(f"{k}={v}" for k, v in frame.locals.items())
    return texts


def _causes(stack: traceback.TracebackException) -> list[traceback.TracebackException]:
    """The chained exceptions of a traceback, cause and context alike."""
    found = []
    current = stack.__cause__ or stack.__context__
    while current is not None:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


async def _full_flow(
    emu: Emulator, tmp: Path, failures: list[BaseException], redirect_url: str
) -> None:
    """Everything a user does, plus the error paths; collects every exception raised."""
    folder = tmp / "dogs"
    folder.mkdir()
    for i in range(3):
        (folder / f"d{i}.jpg").write_bytes(b"\xff\xd8" + bytes([i]) * 50)
        (folder / f"d{i}.txt").write_text(f"dog {i}")
    async with emu.client(rate=1000.0, burst=100) as rc:
        failures.append(errors.RunComfyError(repr(rc)))
        ds = await rc.datasets.create("dogs")
        emu.inject("expire_url", count=1)  # one refresh of a signed URL
        report = await ds.upload_folder(folder)
        assert report.ok
        await rc.datasets.list()
        job = await rc.jobs.submit(CONFIG)
        job.poll = FAST
        await job
        assert await job.download(tmp / "out")
        emu.add_model("acme/secret/good")
        assert await rc.models.run("acme/secret/good", {"prompt": "a dog"}, poll=FAST)
        emu.set_model_behavior("acme/secret/bad", fail=True)
        with pytest.raises(errors.RequestFailed) as failed:
            await rc.models.run("acme/secret/bad", {"prompt": "a cat"}, poll=FAST)
        failures.append(failed.value)
        version = (await rc.machines.workflows())[0].version_id or ""
        async with await rc.machines.launch(version) as machine:
            await machine.wait_ready(poll=FAST)
            comfy = machine.comfyui()
            prompt_id = await comfy.queue_prompt(example_workflow(steps=3))
            outputs = await comfy.wait(prompt_id, timeout=10, poll=FAST)
            await comfy.download(outputs[0], tmp / "comfy.png")
        with pytest.raises(errors.NotFoundError) as missing:
            await rc.datasets.get("no-such-dataset").status()
        failures.append(missing.value)
        # a file storage keeps refusing: its UploadError names the signed URL, query masked
        emu.inject("500", api="storage", path=r"d1\.jpg$")
        with pytest.raises(errors.UploadError) as refused:
            await (await rc.datasets.create("refused")).upload_folder(folder)
        failures.append(refused.value)
        emu.clear_faults()
    async with emu.client(rate=1000.0, burst=100, max_retries=0) as rc:
        for kind, expected in (
            ("429", errors.RateLimitError),
            ("503", errors.ServerError),
            ("html", errors.ServerError),
            ("truncated", errors.UnexpectedResponseError),
        ):
            emu.inject(kind, count=1)  # type: ignore[arg-type]
            with pytest.raises(expected) as caught:
                await rc.datasets.list()
            failures.append(caught.value)
        # an unnamed create: not repeated, and not resolved by a look-up (aiohttp itself
        # repeats an idempotent GET once after a reset)
        emu.inject("reset", count=1)
        with pytest.raises(errors.TransportError) as reset:
            await rc.datasets.create()
        failures.append(reset.value)
    async with emu.client(token=WRONG_TOKEN) as rc:
        with pytest.raises(errors.AuthenticationError) as denied:
            await rc.datasets.list()
        failures.append(denied.value)
    async with emu.client(model_url=redirect_url) as rc:
        with pytest.raises(errors.RunComfyError) as redirected:
            await rc.models.submit("acme/secret/good", {"prompt": "a dog"})
        failures.append(redirected.value)


@pytest.mark.asyncio
async def test_token_never_leaks_anywhere(
    emu: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Logs, exceptions, our frames' locals, storage and foreign hosts never see the token."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="runcomfy_async")
    failures: list[BaseException] = []
    async with Foreign(host=FOREIGN_HOST, upstream=emu.url) as storage, Foreign(
        host=FOREIGN_HOST
    ) as thief, Foreign(host="127.0.0.1", redirect_to=thief.url + "/stolen") as bad_api:
        emu.state.storage.base_url = storage.url  # every signed URL names the foreign host
        await _full_flow(emu, tmp_path, failures, bad_api.url)

    secrets = (emu.token, WRONG_TOKEN)
    records = caplog.records
    assert any(r.name.startswith("runcomfy_async") for r in records)
    log_texts = [caplog.text]
    for record in records:
        log_texts += [record.getMessage(), repr(record.args), repr(record.__dict__)]
    error_texts = []
    for failure in failures:
        error_texts += [str(failure), repr(failure), *frame_locals(failure)]
        error_texts += [repr(vars(failure))]
    emulator_texts = [f"{r.method} {r.path}?{r.query} {r.headers}" for r in emu.log]
    foreign_seen = storage.seen + thief.seen
    foreign_texts = [f"{s.method} {s.path_qs} {s.headers} {s.body!r}" for s in foreign_seen]
    for secret in secrets:
        for where, texts in (
            ("logs", log_texts),
            ("exceptions", error_texts),
            ("emulator log", emulator_texts),
            ("foreign hosts", foreign_texts),
        ):
            leaks = [t for t in texts if secret in t]
            assert leaks == [], f"the token leaked into {where}: {leaks[:3]}"

    # storage traffic went to the foreign host, without any Authorization header
    assert len(storage.seen) > 10
    assert not any("authorization" in {k.lower() for k in s.headers} for s in storage.seen)
    # the redirecting API host got its request; its redirect was not followed
    assert len(bad_api.seen) == 1
    assert thief.seen == []
    # ComfyUI and storage requests reaching the emulator carried no token
    assert not any(r.authorized for r in emu.log if r.api in ("storage", "comfyui"))
    assert all(
        r.headers.get("Authorization") == "<redacted>" for r in emu.log if r.authorized
    )
    # signed URLs show up masked: the UploadError names one, with sig=***
    signatures = {
        m.group(1) for s in storage.seen for m in re.finditer(r"[?&]sig=([0-9a-f]+)", s.path_qs)
    }
    assert signatures
    upload_error = next(f for f in failures if isinstance(f, errors.UploadError))
    assert "sig=***" in str(upload_error)
    for signature in signatures:
        assert not [t for t in log_texts + error_texts if signature in t]


def test_client_repr_and_headers_repr_mask_the_token() -> None:
    """repr(client) and the pipeline's header mapping never show the token."""
    from runcomfy_async._client import RunComfy
    from runcomfy_async._transport import _AuthHeaders

    token = "rc_repr_" + "7" * 24
    client = RunComfy(token=token)
    assert token not in repr(client) and token not in str(client)
    headers = _AuthHeaders({"Authorization": f"Bearer {token}", "Accept": "application/json"})
    assert token not in repr(headers) and token not in str(headers)
    assert headers["Authorization"] == f"Bearer {token}"
