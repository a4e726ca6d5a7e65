"""Machines: launch, await Ready, drive ComfyUI, and the stop on leaving the block, over sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from runcomfy_async import (
    BadRequestError,
    ComfyUIError,
    ConfigurationError,
    MachineFailed,
    PollPolicy,
    RetryPolicy,
    RunComfy,
    ServerError,
    ValidationError,
)
from runcomfy_async.resources.machines import Machine
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import comfy_store, example_workflow
from runcomfy_async.testing.server_api import machine_store
from runcomfy_async.types.machines import MachineStatus, ServerType

FAST = PollPolicy(initial=0.02, max_interval=0.1)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit, booting a machine in ~0.1 s."""
    async with Emulator(rate_limit=None, speed=600.0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client of the emulator with a fast local rate."""
    async with emu.client(rate=100.0, burst=20) as client:
        yield client


async def _version(rc: RunComfy) -> str:
    version = (await rc.machines.workflows())[0].version_id
    assert version is not None
    return version


def _deletes(emu: Emulator, server_id: str) -> list[Any]:
    return [r for r in emu.log if r.method == "DELETE" and r.path.endswith(f"/servers/{server_id}")]


def _server_calls(emu: Emulator) -> list[Any]:
    return [r for r in emu.log if r.api == "server"]


@pytest.mark.asyncio
async def test_launch_ready_prompt_download_then_exit_stops(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """Launch -> Ready -> prompt over the WebSocket -> byte-exact download -> DELETE on exit."""
    async with await rc.machines.launch(await _version(rc), estimated_duration=600) as machine:
        info = await machine.wait_ready(poll=FAST)
        assert info.current_status is MachineStatus.READY
        assert machine.main_service_url == f"{emu.url}/comfyui/{machine.id}"
        comfy = machine.comfyui()
        prompt_id = await comfy.queue_prompt(example_workflow())
        outputs = await comfy.wait(prompt_id, timeout=10)
        assert [o.node_id for o in outputs] == ["9"]
        path = await comfy.download(outputs[0], tmp_path)
        stored = comfy_store(emu.state).machine(machine.id).files[("output", "", path.name)]
        assert path.read_bytes() == stored
        assert not await asyncio.to_thread(lambda: list(tmp_path.glob("*.part")))
        assert _deletes(emu, machine.id) == []
    assert [r.status for r in _deletes(emu, machine.id)] == [200]
    assert any(r.path.endswith("/ws") and r.status == 101 for r in emu.log)
    comfy_calls = [r for r in emu.log if r.api == "comfyui"]
    assert comfy_calls and not any(r.authorized for r in comfy_calls)


@pytest.mark.asyncio
async def test_await_machine_waits_until_ready(emu: Emulator, rc: RunComfy) -> None:
    """`await machine` (default schedule) returns the Ready snapshot with its ComfyUI URL."""
    async with await rc.machines.launch(await _version(rc)) as machine:
        info = await machine
        assert info.main_service_url == machine.main_service_url
    assert machine.main_service_url is None  # stopped: the URL is gone with the machine
    assert info.server_type == "large" and info.estimated_duration == 3600


@pytest.mark.asyncio
async def test_block_that_raises_still_stops(emu: Emulator, rc: RunComfy) -> None:
    """An exception inside the block propagates and the DELETE was still sent."""
    launched: list[Machine] = []

    async def use_machine() -> None:
        async with await rc.machines.launch(await _version(rc)) as machine:
            launched.append(machine)
            await machine.wait_ready(poll=FAST)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await use_machine()
    assert [r.status for r in _deletes(emu, launched[0].id)] == [200]


@pytest.mark.asyncio
async def test_cancelled_mid_wait_still_stops(emu: Emulator, rc: RunComfy) -> None:
    """A task cancelled while waiting on a prompt still sends the DELETE before it ends."""
    comfy_store(emu.state).node_seconds = 600.0  # the prompt would take minutes
    launched: asyncio.Queue[Machine] = asyncio.Queue()
    waiting = asyncio.Event()

    async def run() -> None:
        async with await rc.machines.launch(await _version(rc)) as machine:
            launched.put_nowait(machine)
            await machine.wait_ready(poll=FAST)
            comfy = machine.comfyui()
            prompt_id = await comfy.queue_prompt(example_workflow())
            waiting.set()
            await comfy.wait(prompt_id)

    task = asyncio.create_task(run())
    machine = await launched.get()
    await asyncio.wait_for(waiting.wait(), 5)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.status for r in _deletes(emu, machine.id)] == [200]


@pytest.mark.asyncio
async def test_cancelled_again_while_stopping_still_stops(emu: Emulator, rc: RunComfy) -> None:
    """A second cancellation during a slow stop does not cut the DELETE off."""
    emu.inject("slow", api="server", method="DELETE", delay=0.3)
    launched: asyncio.Queue[Machine] = asyncio.Queue()

    async def run() -> None:
        async with await rc.machines.launch(await _version(rc)) as machine:
            launched.put_nowait(machine)
            await asyncio.sleep(60)

    task = asyncio.create_task(run())
    machine = await launched.get()
    task.cancel()
    await asyncio.sleep(0.1)  # the stop is in flight now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.status for r in _deletes(emu, machine.id)] == [200]


@pytest.mark.asyncio
async def test_failed_stop_is_raised_on_a_clean_exit(emu: Emulator) -> None:
    """When the stop fails and nothing else did, the block raises the stop's error."""
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
    async with emu.client(rate=100.0, burst=20, retry=retry) as rc:
        emu.inject("500", api="server", method="DELETE")
        with pytest.raises(ServerError) as caught:
            async with await rc.machines.launch(await _version(rc)) as machine:
                machine.stop_timeout = 0.3  # the stop keeps trying this long once sent
    assert any("may still be billing" in note for note in caught.value.__notes__)
    assert any("runcomfy machines stop" in note for note in caught.value.__notes__)


@pytest.mark.asyncio
async def test_failed_stop_does_not_hide_the_block_error(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """When the block raised, a failing stop is logged and the block's error propagates."""
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
    async with emu.client(rate=100.0, burst=20, retry=retry) as rc:
        emu.inject("500", api="server", method="DELETE")
        machine = await rc.machines.launch(await _version(rc))
        machine.stop_timeout = 0.3  # the stop keeps trying this long once sent
        with caplog.at_level(logging.WARNING, "runcomfy_async"), pytest.raises(KeyError):
            async with machine:
                raise KeyError("inner")
    assert "may still be billing" in caplog.text


@pytest.mark.asyncio
async def test_missing_user_id_fails_before_sending(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a user id every machine call says where to find it and sends nothing."""
    monkeypatch.delenv("RUNCOMFY_USER_ID", raising=False)
    async with emu.client(user_id=None) as rc:
        calls: list[Awaitable[object]] = [
            rc.machines.workflows(),
            rc.machines.list(),
            rc.machines.launch("v1"),
            rc.machines.get("abc").status(),
            rc.machines.get("abc").stop(),
        ]
        for call in calls:
            with pytest.raises(ConfigurationError, match="RUNCOMFY_USER_ID"):
                await call
    assert _server_calls(emu) == []


@pytest.mark.asyncio
async def test_404_right_after_launch_is_tolerated(emu: Emulator, rc: RunComfy) -> None:
    """The first status reads of a new machine answer 404; waiting keeps polling to Ready."""
    machine_store(emu.state).not_found_reads = 3
    async with await rc.machines.launch(await _version(rc)) as machine:
        await machine.wait_ready(poll=FAST)
    reads = [
        r.status for r in emu.log if r.method == "GET" and r.path.endswith(f"/servers/{machine.id}")
    ]
    assert reads[:3] == [404, 404, 404]
    assert reads[-1] == 200


@pytest.mark.asyncio
async def test_404_beyond_the_grace_period_fails(emu: Emulator, rc: RunComfy) -> None:
    """A machine that never appears fails the wait once the grace period is over."""
    machine = rc.machines.get("0f0f0f0f-0000-4000-8000-000000000000")
    with pytest.raises(MachineFailed, match="still not found"):
        await machine.wait_ready(poll=FAST, not_found_grace=0.2, timeout=5)


@pytest.mark.asyncio
async def test_start_failure_raises_machine_failed(emu: Emulator, rc: RunComfy) -> None:
    """A machine that errors while starting raises MachineFailed with the snapshot."""
    emu.fail_next_launch("Error")
    async with await rc.machines.launch(await _version(rc)) as machine:
        with pytest.raises(MachineFailed) as caught:
            await machine.wait_ready(poll=FAST)
    assert caught.value.snapshot.current_status is MachineStatus.ERROR
    assert machine.main_service_url is None


@pytest.mark.asyncio
async def test_machine_stopped_while_starting_fails(emu: Emulator, rc: RunComfy) -> None:
    """A machine stopped (from elsewhere) before Ready makes the wait raise MachineFailed."""
    machine_store(emu.state).boot_seconds = 3000.0
    machine_store(emu.state).not_found_reads = 0
    machine = await rc.machines.launch(await _version(rc))
    assert (await machine.status()).current_status is MachineStatus.INITIALIZING
    await rc.machines.get(machine.id).stop()
    # Seen while Stopping, or already gone (404) when the stop took less than a poll's interval.
    with pytest.raises(MachineFailed, match=r"Stopping|it was stopped"):
        await machine.wait_ready(poll=FAST, timeout=5)


@pytest.mark.parametrize("duration", [0, -60, 1.5, True, "3600", None])
@pytest.mark.asyncio
async def test_bad_estimated_duration_refused_before_sending(
    emu: Emulator, rc: RunComfy, duration: Any
) -> None:
    """A non-positive or non-integer duration is refused with nothing sent."""
    with pytest.raises(ValidationError, match="estimated_duration"):
        await rc.machines.launch("v1", estimated_duration=duration)
    assert _server_calls(emu) == []


@pytest.mark.parametrize("server_type", ["huge", "LARGE", "2xlarge", "", 3])
@pytest.mark.asyncio
async def test_unknown_server_type_refused_before_sending(
    emu: Emulator, rc: RunComfy, server_type: Any
) -> None:
    """An unknown server type is refused, naming the valid ones, with nothing sent."""
    with pytest.raises(ValidationError, match="'2xl-turbo'"):
        await rc.machines.launch("v1", server_type=server_type)
    assert _server_calls(emu) == []


@pytest.mark.asyncio
async def test_server_type_as_string_or_enum(emu: Emulator, rc: RunComfy) -> None:
    """A known server type works as the enum or as its exact string."""
    version = await _version(rc)
    first = await rc.machines.launch(version, server_type="2x-large")
    second = await rc.machines.launch(version, server_type=ServerType.X2L_TURBO)
    machines = {m.server_id: m.server_type for m in await rc.machines.list()}
    assert machines == {first.id: "2x-large", second.id: "2xl-turbo"}
    await first.stop()
    await second.stop()


@pytest.mark.asyncio
async def test_extend_sets_the_duration(emu: Emulator, rc: RunComfy) -> None:
    """extend() changes the running duration; a bad value is refused before sending."""
    async with await rc.machines.launch(await _version(rc)) as machine:
        await machine.wait_ready(poll=FAST)
        info = await machine.extend(7200)
        assert info.estimated_duration == 7200
        assert (await machine.status()).estimated_duration == 7200
        before = len(_server_calls(emu))
        with pytest.raises(ValidationError, match="positive whole number"):
            await machine.extend(0)
        assert len(_server_calls(emu)) == before


@pytest.mark.asyncio
async def test_stop_of_a_gone_machine_is_not_an_error(emu: Emulator, rc: RunComfy) -> None:
    """stop() on a machine that is already gone (404) returns None quietly."""
    machine_store(emu.state).stop_seconds = 0.0
    machine = await rc.machines.launch(await _version(rc))
    stopping = await machine.stop()
    assert stopping is not None and stopping.current_status is MachineStatus.STOPPED
    assert await machine.stop() is None
    assert [r.status for r in _deletes(emu, machine.id)] == [200, 404]


@pytest.mark.asyncio
async def test_workflows_and_list(emu: Emulator, rc: RunComfy) -> None:
    """workflows() reads workflow_name as name; list() shows the launched machine."""
    workflows = await rc.machines.workflows()
    assert [w.name for w in workflows] == ["flux-realism", "sdxl-basic"]
    assert all(w.workflow_id and w.version_id and w.created_at for w in workflows)
    machine = await rc.machines.launch(workflows[1].version_id or "")
    listed = await rc.machines.list()
    assert [m.id for m in listed] == [machine.id]
    assert listed[0].workflow_version_id == workflows[1].version_id
    await machine.stop()


@pytest.mark.asyncio
async def test_comfyui_needs_a_ready_machine(emu: Emulator, rc: RunComfy) -> None:
    """machine.comfyui() before Ready says to await the machine first."""
    machine = rc.machines.get("abc")
    with pytest.raises(ValidationError, match="await machine"):
        machine.comfyui()


@pytest.mark.asyncio
async def test_send_token_to_comfyui_only_on_request(emu: Emulator, rc: RunComfy) -> None:
    """The bearer token reaches the ComfyUI URL only with send_token=True."""
    async with await rc.machines.launch(await _version(rc)) as machine:
        await machine.wait_ready(poll=FAST)
        plain = machine.comfyui()
        with pytest.raises(ComfyUIError, match="not in ComfyUI's history"):
            await plain.outputs("x")
        with pytest.raises(ComfyUIError, match="not in ComfyUI's history"):
            await machine.comfyui(send_token=True).outputs("y")
    by_path = {r.path.rsplit("/", 1)[-1]: r.authorized for r in emu.log if r.api == "comfyui"}
    assert by_path == {"x": False, "y": True}


@pytest.mark.asyncio
async def test_cancelled_launch_stops_the_machine_it_started(emu: Emulator, rc: RunComfy) -> None:
    """A launch cancelled while its POST is in flight still stops the machine it created."""
    version = await _version(rc)
    emu.inject("slow", api="server", method="POST", path=r"/servers$", count=1, delay=0.5)
    task = asyncio.create_task(rc.machines.launch(version))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await rc.aclose()  # closing waits for the stop the cancelled launch left behind
    launches = [r for r in _server_calls(emu) if r.method == "POST" and r.path.endswith("/servers")]
    assert [r.status for r in launches] == [200]
    deletes = [r for r in _server_calls(emu) if r.method == "DELETE"]
    assert [r.status for r in deletes] == [200]
    async with emu.client() as fresh:
        running = await fresh.machines.list()
    assert all(m.current_status.value in ("Stopping", "Stopped") for m in running)


@pytest.mark.asyncio
async def test_unknown_version_names_the_call_that_lists_versions(
    emu: Emulator, rc: RunComfy
) -> None:
    """A launch the server refuses for its version names `rc.machines.workflows()` as the fix,
    not the wire path; no machine is left behind."""
    with pytest.raises(BadRequestError) as caught:
        await rc.machines.launch("no-such-version")
    assert "await rc.machines.workflows()" in caught.value.fix
    assert "await rc.machines.workflows()" in str(caught.value)
    assert await rc.machines.list() == []
