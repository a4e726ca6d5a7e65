"""The emulated Server API and ComfyUI, spoken to in raw HTTP as the vendor's examples do."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import example_workflow, tiny_png


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit, booting a machine in 0.1 s."""
    async with Emulator(rate_limit=None, speed=600.0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    """A session sending the account's bearer token (to the API paths)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {emu.token}"}) as s:
        yield s


def _users(emu: Emulator, user_id: str | None = None) -> str:
    return f"{emu.url}/prod/api/users/{user_id or emu.user_id}"


async def _json(resp: aiohttp.ClientResponse) -> Any:
    async with resp:
        return resp.status, await resp.json()


async def _launch(emu: Emulator, http: aiohttp.ClientSession, **body: Any) -> dict[str, Any]:
    version = emu.state.machines.workflows[0]["version_id"]
    payload = {"workflow_version_id": version, "server_type": "large", "estimated_duration": 600}
    status, machine = await _json(await http.post(_users(emu) + "/servers", json=payload | body))
    assert status == 200, machine
    return dict(machine)


async def _until_ready(emu: Emulator, http: aiohttp.ClientSession, server_id: str) -> Any:
    for _ in range(200):
        status, machine = await _json(await http.get(f"{_users(emu)}/servers/{server_id}"))
        if status == 200 and machine["current_status"] == "Ready":
            return machine
        await asyncio.sleep(0.02)
    raise AssertionError("machine never became Ready")


@pytest.mark.asyncio
async def test_workflows_and_servers_are_bare_arrays(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """GET workflows and servers answer bare JSON arrays with the documented keys."""
    status, workflows = await _json(await http.get(_users(emu) + "/workflows"))
    assert status == 200 and isinstance(workflows, list) and len(workflows) == 2
    assert set(workflows[0]) == {
        "workflow_id",
        "workflow_name",
        "version_id",
        "created_at",
        "updated_at",
    }
    machine = await _launch(emu, http)
    status, servers = await _json(await http.get(_users(emu) + "/servers"))
    assert status == 200 and [s["server_id"] for s in servers] == [machine["server_id"]]


@pytest.mark.asyncio
async def test_lifecycle_initializing_ready_stopping_gone(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Launch answers Initializing; status 404s once, turns Ready with the URL; DELETE ends it."""
    store = emu.state.machines
    store.stop_seconds = 30.0
    machine = await _launch(emu, http)
    server_id = machine["server_id"]
    assert machine["current_status"] == "Initializing"
    assert machine["main_service_url"] is None
    first = await http.get(f"{_users(emu)}/servers/{server_id}")
    assert first.status == 404
    first.release()
    ready = await _until_ready(emu, http, server_id)
    assert ready["main_service_url"] == f"{emu.url}/comfyui/{server_id}"
    assert ready["service_ready_at"] is not None
    status, stopping = await _json(await http.delete(f"{_users(emu)}/servers/{server_id}"))
    assert (status, stopping["current_status"]) == (200, "Stopping")
    assert stopping["main_service_url"] is None
    emu.advance(30.0 / emu.config.speed + 0.01)
    gone = await http.get(f"{_users(emu)}/servers/{server_id}")
    assert gone.status == 404
    gone.release()
    again = await http.delete(f"{_users(emu)}/servers/{server_id}")
    assert again.status == 404
    again.release()


@pytest.mark.asyncio
async def test_duration_runs_out_and_can_be_changed(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A machine stops when its estimated duration is over; update-estimated-duration moves it."""
    emu.state.machines.stop_seconds = 1e9  # stays listed as Stopping
    machine = await _launch(emu, http, estimated_duration=60)
    server_id = machine["server_id"]
    await _until_ready(emu, http, server_id)
    status, updated = await _json(
        await http.post(
            f"{_users(emu)}/servers/{server_id}/update-estimated-duration",
            json={"update_estimated_duration": 6000},
        )
    )
    assert (status, updated["estimated_duration"]) == (200, 6000)
    emu.advance(61 / emu.config.speed)
    _, still = await _json(await http.get(f"{_users(emu)}/servers/{server_id}"))
    assert still["current_status"] == "Ready"
    emu.advance(6000 / emu.config.speed)
    _, ended = await _json(await http.get(f"{_users(emu)}/servers/{server_id}"))
    assert ended["current_status"] == "Stopping"
    status, body = await _json(
        await http.post(
            f"{_users(emu)}/servers/{server_id}/update-estimated-duration",
            json={"update_estimated_duration": 0},
        )
    )
    assert status == 422 and body["detail"][0]["loc"][-1] == "update_estimated_duration"
    status, body = await _json(
        await http.post(
            f"{_users(emu)}/servers/{server_id}/update-estimated-duration",
            json={"update_estimated_duration": 60},
        )
    )
    assert (status, body["error_code"]) == (409, 409001)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"server_type": "huge"}, "server_type"),
        ({"estimated_duration": 0}, "estimated_duration"),
        ({"estimated_duration": "3600"}, "estimated_duration"),
        ({"estimated_duration": True}, "estimated_duration"),
        ({"workflow_version_id": "nope"}, "workflow_version_id"),
    ],
)
@pytest.mark.asyncio
async def test_launch_validation(
    emu: Emulator, http: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    """A bad launch body is a 422 whose detail names the field, and nothing is launched."""
    version = emu.state.machines.workflows[0]["version_id"]
    payload = {"workflow_version_id": version, "server_type": "large", "estimated_duration": 600}
    status, error = await _json(await http.post(_users(emu) + "/servers", json=payload | body))
    assert (status, error["error_code"]) == (422, 422001)
    assert [d["loc"][-1] for d in error["detail"]] == [field]
    assert emu.state.machines.live() == []


@pytest.mark.asyncio
async def test_other_user_id_is_forbidden(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A user id other than the token's account is a 403."""
    status, error = await _json(await http.get(_users(emu, "someone-else") + "/workflows"))
    assert (status, error["error_code"]) == (403, 403003)


@pytest.mark.asyncio
async def test_start_failure_hook(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """fail_next_launch makes only the next machine end its boot in Error."""
    emu.state.machines.fail_next_launch()
    failing = await _launch(emu, http)
    healthy = await _launch(emu, http)
    await _until_ready(emu, http, healthy["server_id"])
    _, failed = await _json(await http.get(f"{_users(emu)}/servers/{failing['server_id']}"))
    _, failed = await _json(await http.get(f"{_users(emu)}/servers/{failing['server_id']}"))
    assert failed["current_status"] == "Error" and failed["main_service_url"] is None


@pytest.mark.asyncio
async def test_comfyui_only_while_ready(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """ComfyUI answers 502 while the machine boots and 404 for an unknown machine."""
    emu.state.machines.boot_seconds = 6000.0
    machine = await _launch(emu, http)
    booting = await http.get(f"{emu.url}/comfyui/{machine['server_id']}/history")
    unknown = await http.get(f"{emu.url}/comfyui/no-such-machine/history")
    assert (booting.status, unknown.status) == (502, 404)
    booting.release()
    unknown.release()


@pytest.mark.asyncio
async def test_websocket_messages_and_history(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """/ws sends status on connect, then the documented events; /history holds the outcome."""
    machine = await _launch(emu, http)
    ready = await _until_ready(emu, http, machine["server_id"])
    base = ready["main_service_url"]
    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as plain,
        plain.ws_connect(base + "/ws", params={"clientId": "me"}) as ws,
    ):
        hello = await ws.receive_json(timeout=5)
        assert hello == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"},
        }
        status, queued = await _json(
            await plain.post(
                base + "/prompt", json={"prompt": example_workflow(steps=3), "client_id": "me"}
            )
        )
        assert status == 200 and queued["node_errors"] == {}
        prompt_id = queued["prompt_id"]
        while True:
            event = await ws.receive_json(timeout=5)
            events.append(event)
            if event["type"] == "executing" and event["data"]["node"] is None:
                break
        _, history = await _json(await plain.get(f"{base}/history/{prompt_id}"))
        _, everything = await _json(await plain.get(f"{base}/history", params={"max_items": "1"}))
    kinds = [e["type"] for e in events if e["type"] != "status"]
    assert kinds[:2] == ["execution_start", "execution_cached"]
    assert kinds[-2:] == ["execution_success", "executing"]
    executing = [e["data"]["node"] for e in events if e["type"] == "executing"]
    assert executing[:-1] == ["4", "5", "7", "6", "3", "8", "9"]  # ComfyUI's node order
    assert [e["data"]["value"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    executed = next(e["data"] for e in events if e["type"] == "executed")
    image = executed["output"]["images"][0]
    assert executed["node"] == "9" and image["type"] == "output"
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["outputs"]["9"]["images"] == [image]
    assert list(everything) == [prompt_id]


@pytest.mark.asyncio
async def test_prompt_errors_have_comfyui_shape(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """/prompt answers no_prompt, invalid_prompt and node_errors as ComfyUI does."""
    machine = await _launch(emu, http)
    base = (await _until_ready(emu, http, machine["server_id"]))["main_service_url"]
    status, empty = await _json(await http.post(base + "/prompt", json={}))
    assert status == 400 and empty["error"]["type"] == "no_prompt" and empty["node_errors"] == {}
    unknown = example_workflow()
    unknown["3"]["class_type"] = "Mystery"
    status, body = await _json(await http.post(base + "/prompt", json={"prompt": unknown}))
    assert status == 400 and body["error"]["type"] == "invalid_prompt"
    assert body["error"]["message"] == "Cannot execute because node Mystery does not exist."
    missing = example_workflow()
    del missing["3"]["inputs"]["latent_image"]
    status, body = await _json(await http.post(base + "/prompt", json={"prompt": missing}))
    assert status == 400
    assert body["node_errors"]["3"]["errors"][0]["type"] == "required_input_missing"
    no_outputs = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 1, "height": 1}}}
    status, body = await _json(await http.post(base + "/prompt", json={"prompt": no_outputs}))
    assert status == 400 and body["error"]["type"] == "prompt_no_outputs"


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "a/../../b.png"])
@pytest.mark.asyncio
async def test_view_refuses_escaping_names(
    emu: Emulator, http: aiohttp.ClientSession, name: str
) -> None:
    """/view answers 400 for '..' or absolute names, 403 for an escaping subfolder, 404 for a
    missing file."""
    machine = await _launch(emu, http)
    base = (await _until_ready(emu, http, machine["server_id"]))["main_service_url"]
    bad = await http.get(base + "/view", params={"filename": name, "type": "output"})
    missing = await http.get(base + "/view", params={"filename": "none.png"})
    sub = await http.get(base + "/view", params={"filename": "x.png", "subfolder": name})
    assert (bad.status, missing.status, sub.status) == (400, 404, 403)
    for resp in (bad, missing, sub):
        resp.release()


def test_tiny_png_is_a_valid_png() -> None:
    """The generated PNG has a correct signature, chunk CRCs and 8x8 RGB pixel data."""
    data = tiny_png(7)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, {}
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = body
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (width, height, depth, colour) == (8, 8, 8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == 8 * (1 + 8 * 3)
    assert tiny_png(7) != tiny_png(8)


@pytest.mark.asyncio
async def test_duration_changes_only_once_ready(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Changing the duration answers 409 while Initializing and works once Ready (docs/wire.md)."""
    machine = await _launch(emu, http)
    url = f"{_users(emu)}/servers/{machine['server_id']}/update-estimated-duration"
    status, body = await _json(await http.post(url, json={"update_estimated_duration": 7200}))
    assert status == 409
    assert "once it is Ready" in body["error_message"]
    await _until_ready(emu, http, machine["server_id"])
    status, body = await _json(await http.post(url, json={"update_estimated_duration": 7200}))
    assert (status, body["estimated_duration"]) == (200, 7200)
