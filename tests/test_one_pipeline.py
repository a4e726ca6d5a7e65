"""One pipeline for every byte: the behaviours that broke where the I/O paths parted ways.

Each test talks over real sockets: to the emulator, or to a small aiohttp server of its own
where the point is a server that is not our emulator.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runcomfy_async import (
    ComfyUI,
    DownloadError,
    DownloadProgress,
    NotFoundError,
    OutcomeUnknownError,
    Priority,
    RetryPolicy,
    RunComfy,
    UnsentTransportError,
    ValidationError,
)
from runcomfy_async._pipeline import storage_answer
from runcomfy_async._protocol import Retry
from runcomfy_async._transport import Credentials, Exchange
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import example_workflow
from runcomfy_async.testing.trainer_jobs import jobs_of
from runcomfy_async.types.uploads import BytesSent, UploadEvent
from tests.test_downloads import CONFIG_TEXT

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


class Boom(Exception):
    """A user's callback failing."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _serve(handler: Callable[[web.Request], Any]) -> tuple[web.AppRunner, str]:
    """A one-route aiohttp server on 127.0.0.1 (not the emulator)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_machine_is_stopped_after_exit_behind_a_server_pause_longer_than_its_timeout() -> (
    None
):
    """Leaving ``async with machine`` during a Retry-After pause longer than the stop's own
    timeout waits it out, then stops the machine ahead of every queued caller.

    The pause (3 s) is twice the stop's timeout (1.5 s instead of the default 300 s): the stop
    waits it out in the queue, and its timeout counts from sending. The client's rate is 10/s
    (the order after a pause does not depend on it: one token is ready when the pause ends).
    """
    pause = 3
    async with Emulator(rate_limit=None, speed=1000.0) as emu, emu.client(rate=10.0) as rc:
        version = (await rc.machines.workflows())[0].version_id
        assert version is not None
        # A day at speed 1000 is 86 s: the machine outlives the pause on its own.
        machine = await rc.machines.launch(version, estimated_duration=86400)
        machine.stop_timeout = pause / 2
        async with machine:
            await machine
            emu.inject("429", api="server", method="GET", count=1, retry_after=pause)
            paused = asyncio.create_task(machine.status())
            await _until(lambda: any(r.status == 429 for r in emu.log))
            queued = [asyncio.create_task(rc.machines.list()) for _ in range(3)] + [
                asyncio.create_task(machine.status(priority=Priority.BACKGROUND))
            ]
            await asyncio.sleep(0.1)
            left = time.monotonic()
        waited = time.monotonic() - left
        outcomes = await asyncio.gather(paused, *queued, return_exceptions=True)
    # The machine was gone before the queued status reads went out: they found no machine.
    assert isinstance(outcomes[0], NotFoundError) and isinstance(outcomes[-1], NotFoundError)
    rate_limited = next(r for r in emu.log if r.status == 429)
    after = [r for r in emu.log if r.at > rate_limited.at]
    assert after[0].method == "DELETE" and after[0].status == 200, after[:3]
    assert after[0].at - rate_limited.at >= pause - 0.1
    assert pause - 0.2 < waited < pause + 15.0


@pytest.mark.asyncio
async def test_a_launch_cancelled_before_it_left_sends_nothing() -> None:
    """A launch still waiting for a token when cancelled cancels at once and never reaches the
    server."""
    async with Emulator(rate_limit=None) as emu, emu.client() as rc:
        version = (await rc.machines.workflows())[0].version_id
        assert version is not None
        await rc.limiter.pause(2.0)
        task = asyncio.create_task(rc.machines.launch(version))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(2.5)  # past the pause: a launch still queued would go now
        await rc.aclose()
    assert not [r for r in emu.log if r.method == "POST" and r.path.endswith("/servers")]


@pytest.mark.asyncio
async def test_a_delete_whose_answer_was_lost_succeeds() -> None:
    """A dataset delete the server did, whose answer was lost, is success (404 on the repeat)."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=FAST) as rc:
        ds = await rc.datasets.create("gone-twice")
        emu.inject("reset", api="trainer", method="DELETE", count=1, after=True)
        await rc.datasets.delete(ds.id)
        deletes = [r.status for r in emu.log if r.method == "DELETE"]
        assert deletes[-1] == 404 and len(deletes) == 2
        with pytest.raises(NotFoundError):
            await rc.datasets.delete(ds.id)  # a first try's 404 is still an error


@pytest.mark.asyncio
async def test_a_raising_upload_callback_surfaces_as_itself_with_one_request(
    tmp_path: Path,
) -> None:
    """A progress callback raising inside a direct upload stops it with the callback's own
    exception, after at most one request, never retried."""
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x" * (3 << 20))

    def explode(event: UploadEvent) -> None:
        if isinstance(event, BytesSent):
            raise Boom("callback failed")

    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0) as rc:
        ds = await rc.datasets.create("cb")
        started = time.monotonic()
        with pytest.raises(Boom, match="callback failed"):
            await ds.upload(image, progress=explode)
        assert time.monotonic() - started < 2.0
    uploads = [r for r in emu.log if r.path.endswith("/upload")]
    assert len(uploads) <= 1


@pytest.mark.asyncio
async def test_a_raising_download_callback_surfaces_as_itself(tmp_path: Path) -> None:
    """A download's progress callback that raises reaches the caller as itself, not a group."""
    calls: list[int] = []

    def explode(event: DownloadProgress) -> None:
        calls.append(event.done)
        raise Boom("no downloads today")

    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0) as rc:
        store = jobs_of(emu.state)
        store.queue_seconds = 1e9  # only the artifacts added here exist
        job_id = store.submit(CONFIG_TEXT, "ADA_80_PLUS").id
        store.add_artifact(job_id, "samples", "a.jpg", b"y" * (3 << 20))
        store.add_artifact(job_id, "samples", "b.jpg", b"z" * (3 << 20))
        with pytest.raises(Boom, match="no downloads today"):
            await rc.jobs.get(job_id).download(tmp_path, progress=explode)
    assert len(calls) == 1


@pytest.mark.asyncio
async def test_an_unreachable_create_fails_fast_naming_the_post() -> None:
    """A create against a host that refuses connections fails in < 8 s as an unsent POST, with
    no name look-up after it."""
    dead = f"http://127.0.0.1:{_free_port()}"
    async with RunComfy(token="tok", trainer_url=dead) as rc:
        started = time.monotonic()
        with pytest.raises(UnsentTransportError) as caught:
            await rc.datasets.create("never-sent")
        elapsed = time.monotonic() - started
    assert elapsed < 8.0
    assert caught.value.method == "POST"
    assert caught.value.url == f"{dead}/prod/v1/trainers/datasets"
    assert "POST" in str(caught.value)


@pytest.mark.asyncio
async def test_a_lost_model_submit_says_it_may_have_been_billed() -> None:
    """A model submit whose answer was lost after the server queued it raises
    OutcomeUnknownError with what to check, and is not sent twice."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=FAST) as rc:
        emu.inject("reset", api="model", method="POST", count=1, after=True)
        with pytest.raises(OutcomeUnknownError) as caught:
            await rc.models.submit("blackforestlabs/flux-1-kontext/pro/edit", {"prompt": "x"})
    assert "billed" in caught.value.check
    assert len([r for r in emu.log if r.api == "model" and r.method == "POST"]) == 1


@pytest.mark.asyncio
async def test_a_lost_launch_is_found_in_the_machine_list() -> None:
    """A launch whose answer was lost after the machine started returns that machine (matched by
    workflow version and launch time), and no second machine is launched."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=FAST) as rc:
        version = (await rc.machines.workflows())[0].version_id
        assert version is not None
        emu.inject("reset", api="server", method="POST", path=r"/servers$", count=1, after=True)
        machine = await rc.machines.launch(version)
        listed = await rc.machines.list()
        await machine.stop()
    assert [m.server_id for m in listed] == [machine.id]
    launches = [r for r in emu.log if r.method == "POST" and r.path.endswith("/servers")]
    assert len(launches) == 1


@pytest.mark.asyncio
async def test_storage_retry_after_is_honoured_at_the_seam() -> None:
    """A storage 503 with Retry-After is waited out (not a bare backoff) and then retried."""
    seen: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        assert "Authorization" not in request.headers
        if len(seen) == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(status=200)

    runner, base = await _serve(handler)
    try:
        async with RunComfy(token="tok") as rc:
            exchange = Exchange(
                method="PUT", url=f"{base}/bucket/key?sig=s", credentials=Credentials.NONE
            )
            await rc.pipeline.call(
                exchange,
                lambda answer: storage_answer(answer, method="PUT", url=exchange.url),
                kind=Retry.SAFE,
                priority=None,
            )
    finally:
        await runner.cleanup()
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.99


@pytest.mark.asyncio
async def test_comfyui_date_retry_after_is_measured_from_now() -> None:
    """A ComfyUI 503 with an HTTP-date Retry-After a second ahead is waited for about a second
    (the clock is real, never an epoch default)."""
    hits: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        if len(hits) == 1:
            when = format_datetime(datetime.fromtimestamp(time.time() + 2, UTC), usegmt=True)
            return web.Response(status=503, headers={"Retry-After": when})
        return web.json_response({"p1": {"outputs": {}, "status": {"status_str": "success"}}})

    runner, base = await _serve(handler)
    try:
        async with RunComfy(token="tok") as rc:
            comfy = ComfyUI(rc.session, base, retry=RetryPolicy(max_retry_after=10.0))
            started = time.monotonic()
            assert await comfy.outputs("p1") == []
            assert time.monotonic() - started < 5.0
    finally:
        await runner.cleanup()
    assert len(hits) == 2 and hits[1] - hits[0] >= 0.9


@pytest.mark.asyncio
async def test_a_raising_comfyui_callback_surfaces_as_itself(tmp_path: Path) -> None:
    """A ComfyUI wait whose progress callback raises ends with that exception."""
    async with Emulator(rate_limit=None, speed=50.0) as emu, emu.client(rate=100.0) as rc:
        version = (await rc.machines.workflows())[0].version_id
        assert version is not None
        async with await rc.machines.launch(version) as machine:
            await machine
            comfy = machine.comfyui()
            prompt_id = await comfy.queue_prompt(example_workflow())

            def explode(event: Any) -> None:
                raise Boom("stop following")

            with pytest.raises(Boom):
                await comfy.wait(prompt_id, progress=explode)


@pytest.mark.asyncio
async def test_upload_reports_count_only_their_own_calls(tmp_path: Path) -> None:
    """Two uploads at once on one client, with polls in between, each count only their calls."""
    folders = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(b"j" * 100)
            (folder / f"{i}.txt").write_text("cap")
        folders.append(folder)
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0) as rc:
        first, second = await rc.datasets.create("one"), await rc.datasets.create("two")

        async def noise() -> None:
            for _ in range(10):
                await rc.datasets.list()

        before = len([r for r in emu.log if r.api == "trainer"])
        one, two, _ = await asyncio.gather(
            first.upload_folder(folders[0], verify=False),
            second.upload_folder(folders[1], verify=False),
            noise(),
        )
        total = len([r for r in emu.log if r.api == "trainer"]) - before
    # Each: one status (resume) and one signed-URL batch.
    assert (one.api_calls, two.api_calls) == (2, 2)
    assert total == one.api_calls + two.api_calls + 10


@pytest.mark.asyncio
async def test_a_launch_cancelled_during_a_429_pause_sends_no_second_post() -> None:
    """A launch refused with 429 and cancelled while it waits out the pause is never sent
    again: nothing was started, so nothing is sent or stopped."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0) as rc:
        version = (await rc.machines.workflows())[0].version_id
        assert version is not None
        emu.inject("429", api="server", method="POST", path=r"/servers$", count=1, retry_after=1)
        task = asyncio.create_task(rc.machines.launch(version))
        await _until(lambda: any(r.status == 429 for r in emu.log))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.5)  # past the pause
        await rc.aclose()
    posts = [r.status for r in emu.log if r.method == "POST" and r.path.endswith("/servers")]
    assert posts == [429]
    assert not [r for r in emu.log if r.method == "DELETE"]


@pytest.mark.asyncio
async def test_a_cancelled_launch_whose_answer_was_lost_still_stops_its_machine() -> None:
    """Cancelled while its lost answer is being resolved, a launch's machine is found in the
    list and stopped by the cleanup the client waits for on close."""
    async with Emulator(rate_limit=None) as emu:
        async with emu.client(rate=100.0, retry=FAST) as rc:
            version = (await rc.machines.workflows())[0].version_id
            assert version is not None
            emu.inject(
                "reset",
                api="server",
                method="POST",
                path=r"/servers$",
                count=1,
                after=True,
                delay=0.5,
            )
            task = asyncio.create_task(rc.machines.launch(version))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        async with emu.client() as fresh:
            running = [m for m in await fresh.machines.list() if not m.current_status.ended]
    assert all(m.current_status.value == "Stopping" for m in running), running
    assert len([r for r in emu.log if r.method == "DELETE" and r.status == 200]) == 1


@pytest.mark.asyncio
async def test_two_lost_launches_never_adopt_the_same_machine() -> None:
    """Two launches of one version whose answers are both lost never hand out one machine
    twice: beside another launch in flight a lost answer is ambiguous."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=FAST) as rc:
        version = (await rc.machines.workflows())[0].version_id
        assert version is not None
        emu.inject(
            "reset",
            api="server",
            method="POST",
            path=r"/servers$",
            count=2,
            after=True,
            delay=0.3,
        )
        results = await asyncio.gather(
            rc.machines.launch(version), rc.machines.launch(version), return_exceptions=True
        )
        machines = [r for r in results if not isinstance(r, BaseException)]
        assert len({m.id for m in machines}) == len(machines)
        assert all(isinstance(r, OutcomeUnknownError) for r in results if r not in machines)
        assert len(await rc.machines.list()) == 2


@pytest.mark.asyncio
async def test_downloads_follow_redirects(tmp_path: Path) -> None:
    """A model output URL that redirects (a CDN) downloads the file it points to, not the
    redirect page."""

    async def handler(request: web.Request) -> web.StreamResponse:
        assert "Authorization" not in request.headers
        if request.path == "/out.png":
            raise web.HTTPFound("/real/out.png")
        return web.Response(body=b"PNGDATA" * 1000)

    runner, base = await _serve(handler)
    try:
        async with RunComfy(token="tok") as rc:
            (path,) = await rc.models.download_outputs({"image": f"{base}/out.png"}, tmp_path)
    finally:
        await runner.cleanup()
    assert path.read_bytes() == b"PNGDATA" * 1000


@pytest.mark.asyncio
async def test_an_error_through_a_progress_callback_keeps_its_cause(tmp_path: Path) -> None:
    """With a progress callback, a failed download's error still carries its whole chain."""
    dead = f"http://127.0.0.1:{_free_port()}/out.png"
    async with RunComfy(token="tok", retry=RetryPolicy(max_attempts=1)) as rc:
        with pytest.raises(DownloadError) as caught:
            await rc.models.download_outputs({"image": dead}, tmp_path, progress=lambda _: None)
    unsent = caught.value.__cause__
    assert isinstance(unsent, UnsentTransportError)
    assert unsent.__cause__ is not None  # the aiohttp error behind it


def test_a_stop_timeout_must_be_a_positive_number() -> None:
    """A bad stop_timeout is refused when set, not when the stop must go out."""
    rc = RunComfy(token="tok", user_id="u")
    machine = rc.machines.get("m1")
    with pytest.raises(ValidationError, match="stop_timeout"):
        machine.stop_timeout = None  # type: ignore[assignment]
    machine.stop_timeout = 12
    assert machine.stop_timeout == 12.0
