"""The ComfyUI client of a Ready machine: prompts over the WebSocket and the polling fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from runcomfy_async import ComfyUIError, PollPolicy, RunComfy, ValidationError, WaitTimeoutError
from runcomfy_async.resources.comfyui import ComfyUI
from runcomfy_async.resources.machines import Machine
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import FAIL_MARKER, comfy_store, example_workflow
from runcomfy_async.types.machines import ComfyEvent

FAST = PollPolicy(initial=0.02, max_interval=0.1)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit, fast boots and fast prompts."""
    async with Emulator(rate_limit=None, speed=600.0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def machine(emu: Emulator) -> AsyncIterator[Machine]:
    """A Ready machine, stopped after the test."""
    async with emu.client(rate=100.0, burst=20) as rc:
        version = (await rc.machines.workflows())[0].version_id or ""
        async with await rc.machines.launch(version) as launched:
            await launched.wait_ready(poll=FAST)
            yield launched


@pytest_asyncio.fixture
async def comfy(machine: Machine) -> ComfyUI:
    """The ComfyUI client of the Ready machine."""
    return machine.comfyui()


def _stored(emu: Emulator, machine: Machine, name: str, kind: str = "output") -> bytes:
    return comfy_store(emu.state).machine(machine.id).files[(kind, "", name)]


@pytest.mark.asyncio
async def test_websocket_path_reports_progress_and_outputs(
    emu: Emulator, machine: Machine, comfy: ComfyUI, tmp_path: Path
) -> None:
    """wait() follows the socket events (progress, executed) and returns the output files."""
    events: list[ComfyEvent] = []
    prompt_id = await comfy.queue_prompt(example_workflow(steps=5))
    outputs = await comfy.wait(prompt_id, timeout=10, progress=events.append, poll=FAST)
    kinds = [e.type for e in events]
    assert "progress" in kinds and "executed" in kinds
    fractions = [e.fraction for e in events if e.type == "progress"]
    assert fractions[-1] == 1.0
    assert all(e.data["prompt_id"] == prompt_id for e in events)
    path = await comfy.download(outputs[0], tmp_path / "out.png")
    assert path == tmp_path / "out.png"
    assert path.read_bytes() == _stored(emu, machine, outputs[0].filename)
    assert await comfy.outputs(prompt_id) == outputs


@pytest.mark.asyncio
async def test_polling_path_when_the_socket_cannot_open(
    emu: Emulator, machine: Machine, comfy: ComfyUI, tmp_path: Path
) -> None:
    """With /ws refused (502), wait() polls /history and still returns the outputs."""
    emu.inject("502", api="comfyui", path=r"/ws$")
    comfy_store(emu.state).node_seconds = 12.0  # ~0.15 s in all: several polls see it unfinished
    events: list[ComfyEvent] = []
    prompt_id = await comfy.queue_prompt(example_workflow())
    outputs = await comfy.wait(prompt_id, timeout=10, progress=events.append, poll=FAST)
    assert events == []
    path = await comfy.download(outputs[0], tmp_path)
    assert path.read_bytes() == _stored(emu, machine, outputs[0].filename)
    ws = [r.status for r in emu.log if r.path.endswith("/ws")]
    assert ws == [502]
    polls = [r for r in emu.log if r.path.endswith(f"/history/{prompt_id}")]
    assert len(polls) >= 2


@pytest.mark.asyncio
async def test_polling_takes_over_when_the_socket_drops(
    emu: Emulator, machine: Machine, comfy: ComfyUI
) -> None:
    """A socket closed mid-run hands over to /history polling; the result still arrives."""
    comfy_store(emu.state).step_seconds = 30.0
    store = comfy_store(emu.state)
    dropped: list[str] = []

    async def drop_once(event: ComfyEvent) -> None:
        if event.type == "progress" and not dropped:
            dropped.append(event.type)
            await store.drop_sockets(machine.id)

    prompt_id = await comfy.queue_prompt(example_workflow(steps=6))
    outputs = await comfy.wait(prompt_id, timeout=10, progress=drop_once, poll=FAST)
    assert dropped and [o.node_id for o in outputs] == ["9"]


@pytest.mark.asyncio
async def test_unknown_node_type_is_a_comfyui_error(comfy: ComfyUI) -> None:
    """An unknown class_type comes back as ComfyUIError with ComfyUI's error object."""
    workflow = example_workflow()
    workflow["8"]["class_type"] = "NoSuchNode"
    with pytest.raises(ComfyUIError, match="NoSuchNode") as caught:
        await comfy.queue_prompt(workflow)
    assert caught.value.status == 400
    assert caught.value.error["type"] == "missing_node_type"


@pytest.mark.asyncio
async def test_link_to_a_missing_node_surfaces_node_errors(comfy: ComfyUI) -> None:
    """An input linking to a node not in the prompt is reported per node in node_errors."""
    workflow = example_workflow()
    workflow["3"]["inputs"]["model"] = ["99", 0]
    del workflow["7"]  # the negative prompt is gone too
    with pytest.raises(ComfyUIError) as caught:
        await comfy.queue_prompt(workflow)
    errors = caught.value.node_errors
    assert set(errors) == {"3"}
    assert errors["3"]["class_type"] == "KSampler"
    assert errors["3"]["dependent_outputs"] == ["9"]
    assert {e["extra_info"]["input_name"] for e in errors["3"]["errors"]} == {"model", "negative"}
    assert "node 3 (KSampler)" in str(caught.value)
    assert caught.value.error["type"] == "prompt_outputs_failed_validation"


@pytest.mark.asyncio
async def test_ui_format_and_malformed_workflows_refused_before_sending(
    emu: Emulator, comfy: ComfyUI
) -> None:
    """A UI-format workflow or a node without class_type is refused with nothing sent."""
    before = len(emu.log)
    with pytest.raises(ValidationError, match="Save \\(API Format\\)"):
        await comfy.queue_prompt({"nodes": [], "links": []})
    with pytest.raises(ValidationError, match="class_type"):
        await comfy.queue_prompt({"1": {"inputs": {}}})
    with pytest.raises(ValidationError, match="non-empty"):
        await comfy.queue_prompt({})
    assert len(emu.log) == before


@pytest.mark.asyncio
async def test_execution_error_raises_over_the_socket(comfy: ComfyUI) -> None:
    """An execution_error event fails wait() with the failing node named."""
    prompt_id = await comfy.queue_prompt(example_workflow(text=f"x {FAIL_MARKER}"))
    with pytest.raises(ComfyUIError, match="node 6 \\(CLIPTextEncode\\)") as caught:
        await comfy.wait(prompt_id, timeout=10, poll=FAST)
    assert caught.value.prompt_id == prompt_id
    assert caught.value.error["exception_type"] == "RuntimeError"


@pytest.mark.asyncio
async def test_execution_error_raises_when_polling(emu: Emulator, comfy: ComfyUI) -> None:
    """Without a socket the failed history entry raises the same ComfyUIError."""
    emu.inject("502", api="comfyui", path=r"/ws$")
    prompt_id = await comfy.queue_prompt(example_workflow(text=f"x {FAIL_MARKER}"))
    with pytest.raises(ComfyUIError, match="node 6 \\(CLIPTextEncode\\)"):
        await comfy.wait(prompt_id, timeout=10, poll=FAST)


@pytest.mark.asyncio
async def test_upload_image_feeds_a_load_image_node(
    emu: Emulator, machine: Machine, comfy: ComfyUI, tmp_path: Path
) -> None:
    """An uploaded image is stored byte-exact and a LoadImage node may use it; a clash renames."""
    source = tmp_path / "input.png"
    source.write_bytes(b"\x89PNG fake image bytes" * 1000)
    uploaded = await comfy.upload_image(source)
    assert (uploaded.filename, uploaded.type) == ("input.png", "input")
    assert _stored(emu, machine, "input.png", "input") == source.read_bytes()
    source.write_bytes(b"different")
    assert (await comfy.upload_image(source)).filename == "input (1).png"
    assert (await comfy.upload_image(source, overwrite=True)).filename == "input.png"
    workflow: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": uploaded.filename}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    outputs = await comfy.wait(await comfy.queue_prompt(workflow), timeout=10, poll=FAST)
    assert [(o.node_id, o.type) for o in outputs] == [("2", "temp")]
    workflow["1"]["inputs"]["image"] = "missing.png"
    with pytest.raises(ComfyUIError, match="Value not in list"):
        await comfy.queue_prompt(workflow)


@pytest.mark.asyncio
async def test_upload_of_a_missing_file_sends_nothing(emu: Emulator, comfy: ComfyUI) -> None:
    """upload_image of a path that is not a file is refused before sending."""
    before = len(emu.log)
    with pytest.raises(ValidationError, match="not a file"):
        await comfy.upload_image("/nonexistent/image.png")
    assert len(emu.log) == before


@pytest.mark.asyncio
async def test_wait_timeout(emu: Emulator, comfy: ComfyUI) -> None:
    """A prompt slower than the timeout raises WaitTimeoutError."""
    comfy_store(emu.state).node_seconds = 600.0
    prompt_id = await comfy.queue_prompt(example_workflow())
    with pytest.raises(WaitTimeoutError, match=prompt_id):
        await comfy.wait(prompt_id, timeout=0.2)


@pytest.mark.asyncio
async def test_outputs_of_an_unfinished_prompt(emu: Emulator, comfy: ComfyUI) -> None:
    """outputs() before the prompt finished says so instead of returning nothing."""
    comfy_store(emu.state).node_seconds = 600.0
    prompt_id = await comfy.queue_prompt(example_workflow())
    with pytest.raises(ComfyUIError, match="has not finished"):
        await comfy.outputs(prompt_id)


@pytest.mark.asyncio
async def test_download_of_a_missing_file_leaves_nothing(comfy: ComfyUI, tmp_path: Path) -> None:
    """A 404 from /view raises and leaves no partial file behind."""
    from runcomfy_async import NotFoundError
    from runcomfy_async.types.machines import ComfyFile

    with pytest.raises(NotFoundError):
        await comfy.download(ComfyFile(filename="nope.png"), tmp_path)
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


@pytest.mark.asyncio
async def test_token_over_plain_http_to_a_remote_host_is_refused(emu: Emulator) -> None:
    """Opting in to the token is refused for a plain-http, non-loopback ComfyUI URL."""
    from runcomfy_async import ConfigurationError

    async with emu.client() as rc:
        with pytest.raises(ConfigurationError, match="plain http"):
            ComfyUI(rc.session, "http://example.com/comfy", token="secret")
        assert isinstance(rc, RunComfy)
