"""Forgotten ``await`` and sync ``with``: the library's coroutines still work as coroutines
everywhere asyncio takes one, and say "await it" where they are used as their result."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from runcomfy_async import AsyncUsageError, RunComfy
from runcomfy_async.testing import Emulator


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit."""
    async with Emulator(rate_limit=None, speed=1000.0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client with a generous rate."""
    async with emu.client(rate=200.0, burst=20) as client:
        yield client


@pytest.mark.asyncio
async def test_calls_are_coroutines_for_tasks_gather_and_wait_for(rc: RunComfy) -> None:
    """create_task, TaskGroup, gather and wait_for take a call as they take any coroutine."""
    created = await asyncio.create_task(rc.datasets.create("task"))
    async with asyncio.TaskGroup() as group:
        listed = group.create_task(rc.datasets.list())
    found, infos = await asyncio.gather(rc.datasets.find("task"), rc.datasets.list())
    status = await asyncio.wait_for(created.status(), timeout=30)
    assert found is not None and found.id == created.id == status.id
    assert [i.name for i in listed.result()] == [i.name for i in infos] == ["task"]


@pytest.mark.asyncio
async def test_misuse_names_the_await_and_leaves_no_warning(rc: RunComfy) -> None:
    """Each misuse of an un-awaited call raises AsyncUsageError naming the call; the coroutine
    is closed, so no "never awaited" warning follows (warnings are errors in this suite)."""
    pending = rc.datasets.list()
    assert "await rc.datasets.list()" in repr(pending)
    with pytest.raises(AsyncUsageError, match=r"write `await rc\.datasets\.list\(\)`"):
        len(pending)  # type: ignore[arg-type]
    with pytest.raises(AsyncUsageError, match="indexed"):
        rc.datasets.list()[0]  # type: ignore[index]
    with pytest.raises(AsyncUsageError, match="iterated with `async for`"):
        async for _ in rc.datasets.list():  # type: ignore[attr-defined]
            pass
    with pytest.raises(AsyncUsageError, match=r"asked for \.status"):
        rc.jobs.get("job-1").status().status  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(rc.models.submit("acme/flux/dev", {"prompt": "x"}), "request_id")
    private = rc.datasets.list()
    with pytest.raises(AttributeError):
        private._private  # type: ignore[attr-defined]  # noqa: B018
    assert await private == []
    gc.collect()


@pytest.mark.asyncio
async def test_a_running_call_reads_as_a_coroutine(rc: RunComfy) -> None:
    """A task's repr (asyncio debug output) reads the coroutine's own attributes through the
    wrapper, and does not stop the call."""
    task = asyncio.create_task(rc.datasets.create("running"))
    await asyncio.sleep(0)
    assert "create" in repr(task)
    assert (await task).name == "running"


def test_sync_with_says_async_with() -> None:
    """`with RunComfy()` is an AsyncUsageError (also a TypeError) naming `async with`."""
    with pytest.raises(TypeError) as caught, RunComfy(token="rc_test"):
        pass
    assert isinstance(caught.value, AsyncUsageError)
    assert "async with RunComfy() as rc:" in str(caught.value)


@pytest.mark.asyncio
async def test_sync_with_on_a_machine_says_async_with_and_stops_it(
    emu: Emulator, rc: RunComfy
) -> None:
    """`with await rc.machines.launch(...)` names `async with`, and the launched machine is
    stopped at once (the block never runs), so the mistake leaves nothing billing."""
    version = (await rc.machines.workflows())[0].version_id
    assert version is not None
    machine = await rc.machines.launch(version)
    with (
        pytest.raises(AsyncUsageError, match=r"async with await rc\.machines\.launch") as caught,
        machine,
    ):
        pass
    assert "being stopped now" in str(caught.value)
    await rc.aclose()  # waits for the client's cleanups: the stop has been answered
    deletes = [r for r in emu.log if r.method == "DELETE" and machine.id in r.path]
    assert [r.status for r in deletes] == [200]


def test_sync_with_on_a_machine_outside_a_loop_only_says_so() -> None:
    """Outside an event loop nothing can be sent: the message says how to stop it by hand."""
    machine = RunComfy(token="rc_test", user_id="u").machines.get("m-1")
    with pytest.raises(AsyncUsageError, match=r"await machine\.stop\(\)"), machine:
        pass


def test_sync_with_on_an_emulator_says_async_with() -> None:
    """`with Emulator()` is an AsyncUsageError naming `async with`, like `with RunComfy()`."""
    with pytest.raises(AsyncUsageError, match=r"async with Emulator\(\) as emu:"), Emulator():
        pass
