"""The emulated ComfyUI answers the recorded scenarios as a real ComfyUI did.

Each fixture in ``tests/fixtures/comfyui/`` is a real server's transcript of one scenario of
``tests/_comfy_scenarios.py`` (recorded with ``scripts/record_comfyui.py``). The same scenario
runs against an emulated machine and the two must agree on every HTTP status and content type,
the keys and kinds of every JSON body, the type and order of the WebSocket messages (``status``
broadcasts interleave with a prompt's events by timing, so they are compared as a set), and the
values of error types, messages, node ids and the like.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async import PollPolicy
from runcomfy_async.testing import Emulator
from tests._comfy_scenarios import SCENARIOS, Driver, shape

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"
RECORDED = sorted(p.stem for p in FIXTURES.glob("*.json"))


def test_every_scenario_has_a_recording() -> None:
    """A scenario added without recording it would check nothing."""
    assert sorted(SCENARIOS) == RECORDED


@pytest_asyncio.fixture
async def comfy_url() -> AsyncIterator[str]:
    """The ComfyUI URL of a Ready emulated machine.

    Speed 100: the scenario that interrupts a slow prompt needs its 8192x8192 ImageScale to
    last a moment (0.6 s) while the others take a few milliseconds a node.
    """
    async with Emulator(rate_limit=None, speed=100.0) as emu, emu.client(rate=100.0) as rc:
        emu.state.machines.boot_seconds = 1.0
        version = (await rc.machines.workflows())[0].version_id or ""
        async with await rc.machines.launch(version) as machine:
            await machine.wait_ready(poll=PollPolicy(initial=0.02, max_interval=0.1))
            assert machine.main_service_url
            yield machine.main_service_url


def _socket_view(messages: list[dict[str, Any]]) -> tuple[list[Any], list[str]]:
    """The events in order with their shapes, and the set of ``status`` shapes."""
    events = [[m["type"], shape(m["data"])] for m in messages if m["type"] != "status"]
    statuses = sorted({json.dumps(shape(m["data"])) for m in messages if m["type"] == "status"})
    return events, statuses


@pytest.mark.parametrize("name", RECORDED)
@pytest.mark.asyncio
async def test_emulator_matches_the_recording(comfy_url: str, name: str) -> None:
    """The emulator's transcript of the scenario has the recording's shape."""
    recorded = json.loads((FIXTURES / f"{name}.json").read_text())
    async with aiohttp.ClientSession() as session:
        driver = Driver(session, comfy_url)
        await SCENARIOS[name](driver)
        emulated = await driver.finish()
    assert [s["label"] for s in emulated["steps"]] == [s["label"] for s in recorded["steps"]]
    for real, ours in zip(recorded["steps"], emulated["steps"], strict=True):
        where = f"{name}: {real['label']}"
        assert (ours["status"], ours["content_type"]) == (real["status"], real["content_type"]), (
            where
        )
        assert shape(ours["body"]) == shape(real["body"]), where
    assert sorted(emulated["sockets"]) == sorted(recorded["sockets"])
    for socket, messages in recorded["sockets"].items():
        real_events, real_statuses = _socket_view(messages)
        our_events, our_statuses = _socket_view(emulated["sockets"][socket])
        assert [e[0] for e in our_events] == [e[0] for e in real_events], f"{name}: {socket}"
        assert our_events == real_events, f"{name}: {socket}"
        assert our_statuses == real_statuses, f"{name}: {socket}"
