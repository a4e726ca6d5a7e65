"""The ComfyUI client of a Ready machine: prompts over the WebSocket and the polling fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from runcomfy_async import (
    ComfyEvent,
    ComfyFile,
    ComfyUIError,
    ComfyUIWarning,
    PollPolicy,
    RetryPolicy,
    RunComfy,
    ValidationError,
    WaitTimeoutError,
)
from runcomfy_async.resources.comfyui import ComfyUI
from runcomfy_async.resources.machines import Machine
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import FAIL_MARKER, comfy_store, example_workflow, tiny_png

FAST = PollPolicy(initial=0.02, max_interval=0.1)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit, fast boots and fast prompts."""
    async with Emulator(rate_limit=None, speed=600.0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def machine(emu: Emulator) -> AsyncIterator[Machine]:
    """A Ready machine, stopped after the test."""
    # Quick reconnections: the socket's backoff is the client's retry policy.
    async with emu.client(rate=100.0, burst=20, retry=RetryPolicy(base_delay=0.01)) as rc:
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
    assert all(e.data["prompt_id"] == prompt_id for e in events if e.type != "status")
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
    assert ws and set(ws) == {502}  # tried, and tried again with backoff while polling
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
    assert caught.value.error["type"] == "invalid_prompt"
    assert caught.value.error["message"] == "Cannot execute because node NoSuchNode does not exist."


@pytest.mark.asyncio
async def test_link_to_a_missing_node_surfaces_node_errors(comfy: ComfyUI) -> None:
    """A link to a node not in the prompt is an exception while validating the linked node,
    reported under that node with the input that led there."""
    workflow = example_workflow()
    workflow["3"]["inputs"]["model"] = ["99", 0]
    with pytest.raises(ComfyUIError) as caught:
        await comfy.queue_prompt(workflow)
    errors = caught.value.node_errors
    assert set(errors) == {"3"}
    assert errors["3"]["class_type"] == "KSampler"
    assert errors["3"]["dependent_outputs"] == ["9"]
    (error,) = errors["3"]["errors"]
    assert error["type"] == "exception_during_inner_validation"
    assert (error["details"], error["extra_info"]["input_name"]) == ("'99'", "samples")
    assert "node 3 (KSampler)" in str(caught.value)
    assert caught.value.error["type"] == "prompt_outputs_failed_validation"


def _images(prefix: str, *, width: int = 16) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> SaveImage, model-free as on a real CPU ComfyUI."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": 16, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


@pytest.mark.asyncio
async def test_partly_valid_prompt_keeps_its_id_and_runs(comfy: ComfyUI) -> None:
    """A prompt with one refused output is accepted: submit() returns its id and node errors,
    queue_prompt() warns with them, and the valid output is followed to its file."""
    workflow = _images("good")
    workflow["4"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 0, "height": 16, "batch_size": 1, "color": 0},
    }
    workflow["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0]}}
    accepted = await comfy.submit(workflow)
    assert set(accepted.node_errors) == {"4", "5"}
    assert accepted.node_errors["4"]["errors"][0]["type"] == "value_smaller_than_min"
    outputs = await comfy.wait(accepted.prompt_id, timeout=10, poll=FAST)
    assert [(o.node_id, o.filename) for o in outputs] == [("3", "good_00001_.png")]
    with pytest.warns(ComfyUIWarning, match="node 4 \\(EmptyImage\\)") as warned:
        prompt_id = await comfy.queue_prompt(workflow)
    assert warned[0].message.prompt_id == prompt_id  # type: ignore[union-attr]
    assert [o.node_id for o in await comfy.wait(prompt_id, timeout=10, poll=FAST)] == ["3"]


@pytest.mark.asyncio
async def test_concurrent_waits_share_one_socket(
    emu: Emulator, machine: Machine, comfy: ComfyUI
) -> None:
    """Five waits on one instance follow their prompts over one WebSocket (ComfyUI feeds only
    the newest socket of a client id, so a socket per wait would leave all but one silent)."""
    comfy.history_check = 60.0  # a silent socket would show as a stalled wait
    # 20 ms a node: the later prompts still run when the waits begin
    comfy_store(emu.state).node_seconds = 12.0
    ids = [await comfy.queue_prompt(_images(f"p{n}", width=16 + n)) for n in range(5)]
    seen: dict[str, list[str]] = {i: [] for i in ids}

    def record(prompt_id: str) -> Any:
        return lambda event: seen[prompt_id].append(event.type)

    results = await asyncio.gather(
        *(comfy.wait(i, timeout=10, progress=record(i), poll=FAST) for i in ids)
    )
    assert [len(r) for r in results] == [1] * 5
    assert comfy_store(emu.state).machine(machine.id).connections == 1
    # Each wait heard its prompt's end over the socket (the first may have finished first).
    assert sum("execution_success" in kinds for kinds in seen.values()) >= 4


@pytest.mark.asyncio
async def test_progress_state_and_queue_status_reach_the_callback(
    emu: Emulator, comfy: ComfyUI
) -> None:
    """progress_state events carry the running node and its fraction; a prompt waiting its
    turn hears the queue length from the status broadcasts."""
    comfy_store(emu.state).step_seconds = 6.0
    first = await comfy.queue_prompt(example_workflow(steps=2))
    second = await comfy.queue_prompt(_images("behind"))
    events: list[ComfyEvent] = []
    waits = asyncio.gather(
        comfy.wait(first, timeout=10, poll=FAST),
        comfy.wait(second, timeout=10, progress=events.append, poll=FAST),
    )
    await waits
    queued = [e.queue_remaining for e in events if e.type == "status"]
    assert queued and all(isinstance(n, int) for n in queued)
    states = [e for e in events if e.type == "progress_state"]
    running = [e for e in states if e.node is not None]
    assert {e.node for e in running} == {"1", "2", "3"}
    assert all(e.fraction == 0.0 for e in running)
    assert states[-1].nodes["3"].state == "finished" and states[-1].nodes["3"].fraction == 1.0


@pytest.mark.asyncio
async def test_interrupt_queue_and_object_info(emu: Emulator, comfy: ComfyUI) -> None:
    """queue() shows the running and pending prompts; interrupt() stops the running one (its
    wait raises); object_info() describes the node classes."""
    comfy_store(emu.state).step_seconds = 60.0  # 0.1 s a step
    running = await comfy.queue_prompt(example_workflow(steps=8))
    pending = await comfy.queue_prompt(_images("after"))
    started = asyncio.Event()

    def watch(event: ComfyEvent) -> None:
        if event.type == "progress" or event.node == "3":
            started.set()

    stopped = asyncio.ensure_future(comfy.wait(running, timeout=10, progress=watch, poll=FAST))
    await asyncio.wait_for(started.wait(), 5)
    queue = await comfy.queue()
    assert [i.prompt_id for i in queue.running] == [running]
    assert (queue.position(running), queue.position(pending), queue.position("x")) == (0, 1, None)
    assert queue.pending[0].outputs == ("3",)
    await comfy.interrupt()
    with pytest.raises(ComfyUIError, match="interrupted") as caught:
        await stopped
    assert caught.value.error["node_type"] == "KSampler"
    assert [o.node_id for o in await comfy.wait(pending, timeout=10, poll=FAST)] == ["3"]
    assert (await comfy.queue()).running == ()
    info = await comfy.object_info("EmptyImage")
    assert info["EmptyImage"]["input"]["required"]["width"][1]["min"] == 1
    assert await comfy.object_info("NoSuchNode") == {}
    assert {"LoadImage", "SaveImageWebsocket"} <= set(await comfy.object_info())
    with pytest.raises(ValidationError, match="node_class"):
        await comfy.object_info("a/b")


@pytest.mark.asyncio
async def test_reconnection_resumes_events(emu: Emulator, machine: Machine, comfy: ComfyUI) -> None:
    """After a drop the socket reconnects; ComfyUI's reconnect ``executing`` (no prompt id)
    reaches the wait with the running prompt's id, and the wait ends over the socket."""
    store = comfy_store(emu.state)
    store.step_seconds = 60.0  # 0.1 s a step: the reconnection happens mid-sampling
    events: list[ComfyEvent] = []

    async def drop_once(event: ComfyEvent) -> None:
        events.append(event)
        if event.type == "progress" and event.data["value"] == 1:
            await store.drop_sockets(machine.id)

    prompt_id = await comfy.queue_prompt(example_workflow(steps=6))
    await comfy.wait(prompt_id, timeout=10, progress=drop_once, poll=FAST)
    sampling = [e for e in events if e.type == "executing" and e.node == "3"]
    assert len(sampling) == 2  # once as it started, once on reconnection
    assert all(e.data["prompt_id"] == prompt_id for e in sampling)
    assert events[-1].type == "execution_success"
    assert comfy_store(emu.state).machine(machine.id).connections == 2


def test_event_and_file_helpers() -> None:
    """progress_state, status and LoadImage values, read without a server."""
    state = ComfyEvent(
        type="progress_state",
        data={
            "nodes": {
                "1": {"value": 1.0, "max": 1.0, "state": "finished"},
                "2": {"value": 3, "max": 4, "state": "running"},
            }
        },
    )
    assert (state.node, state.fraction) == ("2", 0.75)
    assert state.nodes["1"].state == "finished"
    status = ComfyEvent(type="status", data={"status": {"exec_info": {"queue_remaining": 3}}})
    assert (status.queue_remaining, status.node, status.fraction) == (3, None, None)
    assert ComfyFile(filename="a.png", subfolder="in", type="input").input_value == "in/a.png"
    assert ComfyFile(filename="a.png", type="input").input_value == "a.png"
    assert ComfyFile(filename="o.png", subfolder="s").input_value == "s/o.png [output]"


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
    """An upload is stored byte-exact; a clash renames unless the bytes are the same; a file in
    a subfolder is loaded by its input_value (``subfolder/name``), not by its bare name."""
    source = tmp_path / "input.png"
    source.write_bytes(tiny_png(1))
    uploaded = await comfy.upload_image(source)
    assert (uploaded.filename, uploaded.type, uploaded.input_value) == (
        "input.png",
        "input",
        "input.png",
    )
    assert _stored(emu, machine, "input.png", "input") == source.read_bytes()
    assert (await comfy.upload_image(source)).filename == "input.png"  # same bytes: kept
    other = tmp_path / "other" / "input.png"
    other.parent.mkdir()
    other.write_bytes(tiny_png(2))
    assert (await comfy.upload_image(other)).filename == "input (1).png"
    assert (await comfy.upload_image(other, overwrite=True)).filename == "input.png"
    nested = await comfy.upload_image(source, subfolder="mine")
    assert (nested.subfolder, nested.input_value) == ("mine", "mine/input.png")
    workflow: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": nested.input_value}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    outputs = await comfy.wait(await comfy.queue_prompt(workflow), timeout=10, poll=FAST)
    assert [(o.node_id, o.type) for o in outputs] == [("2", "temp")]
    workflow["1"]["inputs"]["image"] = "missing.png"
    with pytest.raises(ComfyUIError, match=r"Invalid image file: missing\.png") as caught:
        await comfy.queue_prompt(workflow)
    assert caught.value.node_errors["1"]["errors"][0]["type"] == "custom_validation_failed"


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


@pytest.mark.asyncio
async def test_opt_in_token_goes_with_the_socket_too(emu: Emulator, machine: Machine) -> None:
    """With send_token=True the WebSocket handshake carries the token like every other
    ComfyUI call (it goes through the transport's credential rules)."""
    comfy = machine.comfyui(send_token=True)
    await comfy.wait(await comfy.queue_prompt(_images("token")), timeout=10, poll=FAST)
    async with asyncio.timeout(5):  # the emulator logs a socket once it closed
        while not any(r.path.endswith("/ws") for r in emu.log):  # noqa: ASYNC110 (no event to await)
            await asyncio.sleep(0.01)
    calls = [r for r in emu.log if r.api == "comfyui"]
    assert calls and all(r.authorized for r in calls)
