"""The ComfyUI client against a real ComfyUI, or against the emulator when none is given.

``COMFYUI_URL=http://127.0.0.1:8188 pytest tests/test_comfyui_live.py`` runs these tests
against a real server (model-free workflows: they run on a CPU-only ComfyUI without weights);
without the variable they run against an emulated machine, so they always check something.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async import ComfyEvent, ComfyUI, ComfyUIError, PollPolicy, RetryPolicy
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.comfyui import ComfyStore, tiny_png

FAST = PollPolicy(initial=0.05, max_interval=0.5)


@pytest_asyncio.fixture
async def target() -> AsyncIterator[tuple[ComfyUI, ComfyStore | None]]:
    """A client of ``$COMFYUI_URL``, or of an emulated Ready machine's ComfyUI with the
    emulator's ComfyUI store (to slow a test's prompts where timing matters)."""
    url = os.environ.get("COMFYUI_URL")
    if url:
        async with aiohttp.ClientSession() as session:
            yield ComfyUI(session, url, retry=RetryPolicy(base_delay=0.05)), None
        return
    # Speed 60: a megapixel node takes 17 ms, so prompts still run when their waits begin.
    async with Emulator(rate_limit=None, speed=60.0) as emu, emu.client(rate=100.0) as rc:
        emu.state.machines.boot_seconds = 1.0
        version = (await rc.machines.workflows())[0].version_id or ""
        async with await rc.machines.launch(version) as machine:
            await machine.wait_ready(poll=PollPolicy(initial=0.02, max_interval=0.1))
            url = machine.main_service_url or ""
            yield ComfyUI(rc.session, url, retry=RetryPolicy(base_delay=0.05)), emu.state.comfy


@pytest.fixture
def comfy(target: tuple[ComfyUI, ComfyStore | None]) -> ComfyUI:
    """The client of the target ComfyUI."""
    return target[0]


def _images(prefix: str, *, size: int = 1024, colour: int = 0) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> SaveImage (a second or so on a CPU at 1024x1024)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": colour},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def _colour() -> int:
    """A colour no earlier run used, so ComfyUI's cache does not answer for the nodes."""
    return uuid.uuid4().int % (1 << 24)


@pytest.mark.asyncio
async def test_five_concurrent_waits_follow_over_one_socket(comfy: ComfyUI) -> None:
    """Five waits on one instance each hear their prompt end over the shared socket."""
    comfy.history_check = 60.0  # a wait left without events would stall, not poll its way out
    ids = [await comfy.queue_prompt(_images("live/many", colour=_colour())) for _ in range(5)]
    heard: dict[str, list[str]] = {i: [] for i in ids}
    took: dict[str, float] = {}

    async def follow(prompt_id: str) -> None:
        began = time.monotonic()
        await comfy.wait(
            prompt_id, timeout=120, progress=lambda e: heard[prompt_id].append(e.type), poll=FAST
        )
        took[prompt_id] = time.monotonic() - began

    began = time.monotonic()
    await asyncio.gather(*(follow(i) for i in ids))
    total = time.monotonic() - began
    print(f"five waits: {total:.2f} s in all; each {[round(took[i], 2) for i in ids]}")
    assert all("execution_success" in heard[i] for i in ids[1:]), heard
    assert max(took.values()) <= total


@pytest.mark.asyncio
async def test_partly_valid_prompt_is_followed_to_its_output(
    comfy: ComfyUI, tmp_path: Path
) -> None:
    """ComfyUI runs the valid output of a partly valid prompt; the client follows it there."""
    workflow = _images("live/partly", colour=_colour())
    workflow["4"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0},
    }
    workflow["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0]}}
    accepted = await comfy.submit(workflow)
    assert accepted.node_errors["4"]["errors"][0]["type"] == "value_smaller_than_min"
    events: list[ComfyEvent] = []
    (output,) = await comfy.wait(accepted.prompt_id, timeout=60, progress=events.append, poll=FAST)
    assert (output.node_id, output.subfolder) == ("3", "live")
    assert any(e.type == "progress_state" and e.node is not None for e in events)
    path = await comfy.download(output, tmp_path)
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.asyncio
async def test_upload_into_a_subfolder_feeds_load_image(comfy: ComfyUI, tmp_path: Path) -> None:
    """An image uploaded into a subfolder is loaded by its input_value."""
    source = tmp_path / f"live_{uuid.uuid4().hex[:8]}.png"
    source.write_bytes(tiny_png(3))
    uploaded = await comfy.upload_image(source, subfolder="live")
    workflow: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": uploaded.filename}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    with pytest.raises(ComfyUIError, match="Invalid image file"):
        await comfy.queue_prompt(workflow)
    workflow["1"]["inputs"]["image"] = uploaded.input_value
    outputs = await comfy.wait(await comfy.queue_prompt(workflow), timeout=60, poll=FAST)
    assert [(o.node_id, o.type) for o in outputs] == [("2", "temp")]


@pytest.mark.asyncio
async def test_queue_interrupt_and_object_info(
    target: tuple[ComfyUI, ComfyStore | None],
) -> None:
    """A slow prompt shows in queue() and interrupt() stops it; object_info() describes nodes."""
    comfy, store = target
    if store is not None:
        store.node_seconds = 4.0  # the 16-megapixel ImageScale lasts 1 s, as long as it must
    slow = _images("live/slow", size=512, colour=_colour())
    slow["2"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["1", 0],
            "upscale_method": "lanczos",
            "width": 4096,
            "height": 4096,
            "crop": "disabled",
        },
    }
    slow["4"] = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}
    slow["3"]["inputs"]["images"] = ["4", 0]
    prompt_id = await comfy.queue_prompt(slow)
    scaling = asyncio.Event()

    def watch(event: ComfyEvent) -> None:
        if event.type == "executing" and event.node == "2":
            scaling.set()

    waiting = asyncio.ensure_future(comfy.wait(prompt_id, timeout=120, progress=watch, poll=FAST))
    seen = asyncio.ensure_future(scaling.wait())
    await asyncio.wait({seen, waiting}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    seen.cancel()
    assert scaling.is_set(), "the scaling node was not seen running"
    assert (await comfy.queue()).position(prompt_id) == 0
    await comfy.interrupt(prompt_id)
    with pytest.raises(ComfyUIError, match="interrupted"):
        await waiting
    info = await comfy.object_info("ImageScale")
    assert "lanczos" in info["ImageScale"]["input"]["required"]["upscale_method"][0]
