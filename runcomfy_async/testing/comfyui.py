"""The ComfyUI behind each Ready emulated machine's ``main_service_url`` (docs/wire.md).

Served under ``/comfyui/{server_id}`` (and ComfyUI's ``/api`` alias): ``POST /prompt`` with
ComfyUI's validation (see ``_comfy_validate``), ``GET /prompt``, ``GET|POST /queue``,
``POST /interrupt``, ``GET|POST /history[/{prompt_id}]``, ``GET /view``, ``POST /upload/image``,
``GET /object_info[/{class}]``, ``GET /system_stats`` and ``GET /ws``.

Prompts run one at a time, in queue order, through ComfyUI's node order and cache: the core
model-free image nodes (EmptyImage, LoadImage, ImageInvert, ImageScale, SaveImage,
PreviewImage, SaveImageWebsocket) and simulated model nodes (a txt2img chain). A node takes
``node_seconds`` of simulated time per megapixel (at least one), a sampler step
``step_seconds``; outputs are tiny valid PNGs named as ComfyUI names them. The socket events
follow ComfyUI's order, including ``progress_state``, broadcast ``status``, ``execution_cached``
and ``execution_interrupted``; only the newest socket of a client id gets its events. A
``CLIPTextEncode`` whose ``text`` contains ``EMULATOR_FAIL`` fails with an ``execution_error``,
as does a LoadImage of bytes that are no image. A machine that is not Ready answers 502, an
unknown or stopped one 404. The store is ``emu.state.comfy``; event timestamps come from the
emulator's clock. The conformance tests hold this behaviour to recordings of a real ComfyUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import posixpath
import random
import struct
import uuid
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
from aiohttp import BodyPartReader, WSCloseCode, web

from ._comfy_nodes import NODES, object_info
from ._comfy_plan import Plan, is_link, signatures
from ._comfy_validate import validate_prompt

if TYPE_CHECKING:
    from ._clock import Clock
    from ._state import EmulatorState
    from .server_api import MachineStore

__all__ = [
    "FAIL_MARKER",
    "ComfyMachine",
    "ComfyStore",
    "add_routes",
    "comfy_store",
    "example_workflow",
    "tiny_png",
]

PREFIX: Final = "/comfyui/{server_id}"
FAIL_MARKER: Final = "EMULATOR_FAIL"
MAX_UPLOAD: Final = 20 * 1024 * 1024
#: What aiohttp answers when a handler raises (ComfyUI's answer to a body that is not JSON).
_CRASH: Final = "500 Internal Server Error\n\nServer got itself in trouble"
_IMAGE_MAGIC: Final = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM")
#: The binary frame header of an image: PREVIEW_IMAGE, then PNG.
_PNG_FRAME: Final = struct.pack(">II", 1, 2)


def tiny_png(seed: int, size: int = 8) -> bytes:
    """A valid ``size`` x ``size`` RGB PNG whose colour depends on ``seed``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    pixel = bytes(((seed * 97) % 256, (seed * 57) % 256, (seed * 31) % 256))
    rows = b"".join(b"\x00" + pixel * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def example_workflow(text: str = "a cat in a hat", *, steps: int = 8) -> dict[str, Any]:
    """A txt2img workflow in ComfyUI's API format that this emulation runs (for tests, demos)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "steps": steps,
                "seed": 42,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "emu"}},
    }


@attrs.frozen(kw_only=True)
class _Images:
    """What flows along an IMAGE, MASK or LATENT link: how many pictures and their size."""

    batch: int = 1
    width: int = 8
    height: int = 8

    @property
    def megapixels(self) -> float:
        return self.batch * self.width * self.height / (1 << 20)


@attrs.define(kw_only=True)
class QueueItem:
    """A queued prompt: ``[number, prompt_id, prompt, extra_data, outputs]`` on the wire."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]

    def wire(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra, self.outputs]


class _NodeFailed(Exception):
    """A node raised while running (its ComfyUI exception type and message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Interrupted(Exception):
    """ComfyUI's interrupt flag was seen before a node ran."""


@attrs.define(kw_only=True)
class ComfyMachine:
    """The ComfyUI state of one machine: files, history, queue, cache and open sockets."""

    files: dict[tuple[str, str, str], bytes] = attrs.Factory(dict)
    history: dict[str, dict[str, Any]] = attrs.Factory(dict)
    pending: list[QueueItem] = attrs.Factory(list)
    running: QueueItem | None = None
    #: The newest socket of each client id (ComfyUI keeps no other).
    sockets: dict[str, web.WebSocketResponse] = attrs.Factory(dict)
    #: WebSockets opened so far (for tests of how clients use them).
    connections: int = 0
    number: int = 0
    interrupt: bool = False
    #: Cache key -> the UI output of a node that ran (None for nodes without one).
    cache: dict[str, dict[str, Any] | None] = attrs.Factory(dict)
    #: The client of the prompt running and the node it runs (for a reconnecting socket).
    client_id: str | None = None
    last_node: str | None = None
    worker: asyncio.Task[None] | None = None

    def queue_remaining(self) -> int:
        return len(self.pending) + (self.running is not None)

    async def send(self, kind: str, data: Mapping[str, Any], sid: str | None) -> None:
        """An event to one client id's socket, or to every socket when ``sid`` is None."""
        targets = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
        for ws in targets:
            if ws is not None and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_json({"type": kind, "data": dict(data)})

    async def send_bytes(self, data: bytes, sid: str | None) -> None:
        """A binary frame (an image) to a client id's socket, or to every socket."""
        targets = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
        for ws in targets:
            if ws is not None and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_bytes(data)

    async def queue_changed(self) -> None:
        """The ``status`` broadcast ComfyUI sends whenever its queue changes."""
        status = {"exec_info": {"queue_remaining": self.queue_remaining()}}
        await self.send("status", {"status": status}, None)

    def split(self, value: str) -> tuple[str, str, str]:
        """``(type, subfolder, name)`` of a LoadImage value (``sub/name``, ``name [output]``)."""
        value, kind = _annotated(value)
        subfolder, name = posixpath.split(value)
        return kind or "input", subfolder, name

    def input_files(self) -> list[str]:
        """The image files at the top of the input folder (LoadImage's list)."""
        return sorted(
            name
            for (kind, subfolder, name) in self.files
            if kind == "input"
            and not subfolder
            and (mimetypes.guess_type(name)[0] or "").startswith("image/")
        )


class ComfyStore:
    """Every machine's ComfyUI, plus the workers running their queues.

    Attributes:
        node_seconds: simulated time a node takes per megapixel it handles (at least once).
        step_seconds: simulated time one sampler step takes.
        machines: each machine's ComfyUI, by server id.
        servers: the Server API's machines (a prompt runs only while its machine is Ready).
    """

    def __init__(self, *, clock: Clock, machines: MachineStore) -> None:
        self.clock = clock
        self.servers = machines
        self.node_seconds = 1.0
        self.step_seconds = 0.25
        self.machines: dict[str, ComfyMachine] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def machine(self, server_id: str) -> ComfyMachine:
        """The ComfyUI of one machine (made on first use)."""
        return self.machines.setdefault(server_id, ComfyMachine())

    def start(self, server_id: str) -> None:
        """Make sure the machine's worker is taking prompts off its queue."""
        machine = self.machine(server_id)
        if machine.worker is None or machine.worker.done():
            task = asyncio.create_task(self._work(server_id))
            machine.worker = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drop_sockets(self, server_id: str) -> None:
        """Close every WebSocket of a machine (to test a client's fallback)."""
        for ws in list(self.machine(server_id).sockets.values()):
            await ws.close(code=WSCloseCode.GOING_AWAY)

    async def shutdown(self) -> None:
        """Cancel the workers and close the sockets, so the server stops promptly."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server_id in list(self.machines):
            await self.drop_sockets(server_id)

    def now_ms(self) -> int:
        """ComfyUI's event timestamps: epoch milliseconds, of the emulator's clock."""
        return int(self.clock.time() * 1000)

    async def _work(self, server_id: str) -> None:
        """ComfyUI's single worker: the lowest-numbered prompt first, one at a time."""
        machine = self.machine(server_id)
        while machine.pending:
            machine.pending.sort(key=lambda item: item.number)
            item = machine.running = machine.pending.pop(0)
            await machine.queue_changed()
            try:
                await _Run(self, server_id, machine, item).execute()
            finally:
                machine.running = None
            await machine.queue_changed()
            if item.extra.get("client_id") is not None:
                data = {"node": None, "prompt_id": item.prompt_id}
                await machine.send("executing", data, item.extra["client_id"])


class _Run:
    """One prompt's execution: ComfyUI's events, cache use, outputs and history entry."""

    def __init__(
        self, store: ComfyStore, server_id: str, machine: ComfyMachine, item: QueueItem
    ) -> None:
        self.store = store
        self.server_id = server_id
        self.machine = machine
        self.item = item
        self.prompt = item.prompt
        self.client: str | None = item.extra.get("client_id")
        self.messages: list[list[Any]] = []
        self.progress: dict[str, dict[str, Any]] = {}
        self.values: dict[str, tuple[Any, ...]] = {}
        self.ui: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []

    async def message(self, kind: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
        """An event that also goes into the history's ``status.messages``."""
        data = {**data, "timestamp": self.store.now_ms()}
        self.messages.append([kind, data])
        if self.client is not None or broadcast:
            await self.machine.send(kind, data, self.client)

    async def node_state(self, node_id: str, value: float, top: float, state: str) -> None:
        """Update a node's progress and send ``progress_state`` with every started node."""
        self.progress[node_id] = {
            "value": value,
            "max": top,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.item.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        nodes = {n: dict(s) for n, s in self.progress.items()}
        await self.machine.send(
            "progress_state", {"prompt_id": self.item.prompt_id, "nodes": nodes}, self.client
        )

    async def execute(self) -> None:
        """Run the prompt's outputs and record the history entry."""
        machine, prompt_id = self.machine, self.item.prompt_id
        machine.interrupt = False
        machine.client_id = self.client
        await self.message("execution_start", {"prompt_id": prompt_id})
        keys = signatures(self.prompt, self._changed)
        machine.cache = {k: v for k, v in machine.cache.items() if k in keys.values()}
        cached = {n for n, key in keys.items() if key in machine.cache}
        await self.message(
            "execution_cached",
            {"nodes": [n for n in self.prompt if n in cached], "prompt_id": prompt_id},
        )
        plan = Plan(self.prompt, self.item.outputs, cached)
        success = True
        while (node_id := plan.next()) is not None:
            if not self.store.servers.is_ready(self.server_id):
                return  # the machine stopped under the prompt
            if node_id in cached:
                await self._from_cache(node_id, machine.cache[keys[node_id]])
            else:
                try:
                    await self._run_node(node_id)
                except _Interrupted:
                    await self._failed(node_id, None)
                    success = False
                    break
                except _NodeFailed as exc:
                    await self._failed(node_id, exc)
                    success = False
                    break
                machine.cache[keys[node_id]] = self.ui.get(node_id)
            plan.done(node_id)
        if success:
            await self.message("execution_success", {"prompt_id": prompt_id})
        machine.last_node = None
        machine.history[prompt_id] = {
            "prompt": self.item.wire(),
            "outputs": dict(self.ui),
            "status": {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": self.messages,
            },
            "meta": {
                n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                for n in self.ui
            },
        }

    def _changed(self, class_type: str, inputs: Mapping[str, Any]) -> str:
        """What ComfyUI's IS_CHANGED says: a LoadImage's file hash; always new for
        SaveImageWebsocket."""
        if class_type == "SaveImageWebsocket":
            return uuid.uuid4().hex
        if class_type == "LoadImage" and isinstance(inputs.get("image"), str):
            data = self.machine.files.get(self.machine.split(inputs["image"]), b"")
            return hashlib.sha256(data).hexdigest()
        return ""

    async def _from_cache(self, node_id: str, ui: dict[str, Any] | None) -> None:
        """A cached output node: its output again, without running."""
        if self.client is not None:
            data = {"node": node_id, "display_node": node_id, "output": ui}
            await self.machine.send(
                "executed", {**data, "prompt_id": self.item.prompt_id}, self.client
            )
        if ui is not None:
            self.ui[node_id] = ui
        await self.node_state(node_id, 1, 1, "finished")

    async def _run_node(self, node_id: str) -> None:
        """One node: progress_state, executing, its work, executed, progress_state."""
        node = self.prompt[node_id]
        await self.node_state(node_id, 0.0, 1.0, "running")
        if self.client is not None:
            self.machine.last_node = node_id
            data = {"node": node_id, "display_node": node_id, "prompt_id": self.item.prompt_id}
            await self.machine.send("executing", data, self.client)
        if self.machine.interrupt:
            raise _Interrupted
        inputs = {
            name: self.values[str(v[0])][v[1]] if is_link(v) else v
            for name, v in node.get("inputs", {}).items()
        }
        self.values[node_id] = await self._perform(node_id, node["class_type"], inputs)
        self.executed.append(node_id)
        if node_id in self.ui and self.client is not None:
            output = {"node": node_id, "display_node": node_id, "output": self.ui[node_id]}
            await self.machine.send(
                "executed", {**output, "prompt_id": self.item.prompt_id}, self.client
            )
        await self.node_state(node_id, 1.0, 1.0, "finished")

    async def _sleep(self, simulated: float) -> None:
        await asyncio.sleep(self.store.clock.real(simulated))

    async def _perform(self, node_id: str, kind: str, inputs: dict[str, Any]) -> tuple[Any, ...]:
        """What the node does; returns its outputs (simulated)."""
        seconds = self.store.node_seconds
        images = next((v for v in inputs.values() if isinstance(v, _Images)), None)
        if kind == "EmptyImage":
            made = _Images(
                batch=int(inputs["batch_size"]),
                width=int(inputs["width"]),
                height=int(inputs["height"]),
            )
            await self._sleep(seconds * max(1.0, made.megapixels))
            return (made,)
        if kind == "ImageScale" and images is not None:
            made = _scaled(images, int(inputs["width"]), int(inputs["height"]))
            await self._sleep(seconds * max(1.0, made.megapixels))
            return (made,)
        if kind == "LoadImage":
            return self._load(str(inputs["image"]))
        if kind == "KSampler":
            steps = max(1, min(50, int(inputs.get("steps", 20))))
            for step in range(1, steps + 1):
                await self._sleep(self.store.step_seconds)
                await self._step(node_id, step, steps)
            return (inputs.get("latent_image"),)
        await self._sleep(seconds * max(1.0, images.megapixels if images else 1.0))
        if kind == "CLIPTextEncode" and FAIL_MARKER in str(inputs.get("text")):
            raise _NodeFailed("RuntimeError", f"{FAIL_MARKER} found in the prompt text")
        if kind == "EmptyLatentImage":
            batch = int(inputs.get("batch_size", 1))
            return (_Images(batch=batch, width=int(inputs["width"]), height=int(inputs["height"])),)
        if kind == "CheckpointLoaderSimple":
            return ("MODEL", "CLIP", "VAE")
        saves_to = NODES[kind].saves_to
        if saves_to == "websocket":
            await self._to_socket(node_id, images or _Images())
        elif saves_to is not None:
            self._save(
                node_id,
                saves_to,
                str(inputs.get("filename_prefix") or "ComfyUI"),
                images or _Images(),
            )
        return (images,)

    async def _step(self, node_id: str, value: int, top: int) -> None:
        """ComfyUI's progress hook: ``progress_state``, then ``progress``."""
        await self.node_state(node_id, float(value), float(top), "running")
        data = {"value": value, "max": top, "prompt_id": self.item.prompt_id, "node": node_id}
        await self.machine.send("progress", data, self.client)
        if self.machine.interrupt:
            raise _Interrupted

    def _load(self, value: str) -> tuple[Any, ...]:
        """LoadImage: the file must be an image (PNG sizes are read, others count as 8x8)."""
        data = self.machine.files.get(self.machine.split(value), b"")
        if not data.startswith(_IMAGE_MAGIC):
            raise _NodeFailed(
                "PIL.UnidentifiedImageError", f"cannot identify image file '{value}'\n"
            )
        width, height = 8, 8
        if data.startswith(b"\x89PNG") and len(data) >= 24:
            width, height = struct.unpack(">II", data[16:24])
        image = _Images(width=width, height=height)
        return (image, _Images(width=width, height=height))

    def _save(self, node_id: str, folder: str, prefix: str, images: _Images) -> None:
        """SaveImage / PreviewImage: ``<prefix>_<counter>_.png`` per image, counted per prefix
        in the prefix's subfolder (PreviewImage: a random ``_temp_`` prefix in temp)."""
        if folder == "temp":
            prefix += "_temp_" + "".join(
                random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5)
            )
        normal = posixpath.normpath(prefix)
        subfolder, base = posixpath.dirname(normal), posixpath.basename(normal)
        if subfolder.startswith(("..", "/")):
            raise _NodeFailed(
                "Exception", "**** ERROR: Saving image outside the output folder is not allowed."
            )
        counter = 1 + max(
            (
                _counter(name, base)
                for (kind, sub, name) in self.machine.files
                if kind == folder and sub == subfolder
            ),
            default=0,
        )
        saved = []
        for offset in range(images.batch):
            name = f"{base}_{counter + offset:05}_.png"
            self.machine.files[(folder, subfolder, name)] = tiny_png(counter + offset)
            saved.append({"filename": name, "subfolder": subfolder, "type": folder})
        self.ui[node_id] = {"images": saved}

    async def _to_socket(self, node_id: str, images: _Images) -> None:
        """SaveImageWebsocket: each image as a binary frame, with progress, and no file."""
        for step in range(images.batch):
            await self._step(node_id, step, images.batch)
            await self.machine.send_bytes(_PNG_FRAME + tiny_png(step), self.client)

    async def _failed(self, node_id: str, failure: _NodeFailed | None) -> None:
        """``execution_interrupted`` (failure None) or ``execution_error`` for a node."""
        data: dict[str, Any] = {
            "prompt_id": self.item.prompt_id,
            "node_id": node_id,
            "node_type": self.prompt[node_id]["class_type"],
            "executed": list(self.executed),
        }
        if failure is None:
            await self.message("execution_interrupted", data, broadcast=True)
            return
        inputs = self.prompt[node_id].get("inputs", {})
        data |= {
            "exception_message": str(failure),
            "exception_type": failure.kind,
            "traceback": ["(emulated)"],
            "current_inputs": {
                name: [value] for name, value in inputs.items() if not is_link(value)
            },
            "current_outputs": list(self.prompt),
        }
        await self.message("execution_error", data)


def _annotated(value: str) -> tuple[str, str | None]:
    """A file name without its `` [output]`` / `` [input]`` / `` [temp]`` folder suffix, and
    that folder (None without a suffix)."""
    for folder in ("output", "input", "temp"):
        if value.endswith(f" [{folder}]"):
            return value[: -len(folder) - 3], folder
    return value, None


def _scaled(images: _Images, width: int, height: int) -> _Images:
    """ImageScale's size: a 0 side keeps the aspect ratio; both 0 keep the image."""
    if width == 0 and height == 0:
        return images
    if width == 0:
        width = max(1, round(images.width * height / images.height))
    if height == 0:
        height = max(1, round(images.height * width / images.width))
    return _Images(batch=images.batch, width=width, height=height)


def _counter(name: str, base: str) -> int:
    """The counter of ``<base>_<NNNNN>_...`` (0 for other names)."""
    if not name.startswith(base + "_"):
        return 0
    digits = name[len(base) + 1 :].split("_")[0]
    return int(digits) if digits.isdigit() else 0


def comfy_store(state: EmulatorState) -> ComfyStore:
    """``state.comfy``, the ComfyUI store of one emulator (kept for earlier callers)."""
    return state.comfy


def _system_stats() -> dict[str, Any]:
    """``/system_stats``: an emulated CPU machine."""
    memory = 24 << 30
    return {
        "system": {
            "os": "linux",
            "ram_total": memory,
            "ram_free": memory // 2,
            "comfyui_version": "0.8.0",
            "required_frontend_version": "1.35.9",
            "installed_templates_version": "0.7.67",
            "required_templates_version": "0.7.67",
            "python_version": "3.11 (runcomfy-async emulator)",
            "pytorch_version": "none",
            "embedded_python": False,
            "argv": ["main.py", "--cpu"],
        },
        "devices": [
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": memory,
                "vram_free": memory // 2,
                "torch_vram_total": memory,
                "torch_vram_free": memory // 2,
            }
        ],
    }


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the ComfyUI routes, bare and under ComfyUI's ``/api`` alias."""
    store = state.comfy

    def available(request: web.Request) -> tuple[str, ComfyMachine]:
        """The machine's ComfyUI if it is Ready; 502 while it is not, 404 when unknown."""
        server_id = request.match_info["server_id"]
        ready = state.machines.is_ready(server_id)
        if ready is None:
            raise web.HTTPNotFound
        if not ready:
            raise web.HTTPBadGateway
        return server_id, store.machine(server_id)

    async def body_json(request: web.Request) -> dict[str, Any] | None:
        """The JSON object of the body; None when it is not one (ComfyUI's handler crashes)."""
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def crashed() -> web.Response:
        """The plain 500 aiohttp answers when a handler raises."""
        return web.Response(status=500, text=_CRASH)

    async def post_prompt(request: web.Request) -> web.Response:
        """POST /prompt: number, validate, queue; 200 also for a partly valid prompt."""
        server_id, machine = available(request)
        body = await body_json(request)
        if body is None:
            return crashed()
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = -machine.number if body.get("front") else machine.number
            machine.number += 1
        if "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        verdict = validate_prompt(
            prompt,
            input_files=machine.input_files(),
            exists=lambda value: machine.split(value) in machine.files,
        )
        if verdict.error is not None:
            return web.json_response(
                {"error": verdict.error, "node_errors": verdict.node_errors}, status=400
            )
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        extra["create_time"] = store.now_ms()
        machine.pending.append(
            QueueItem(
                number=number,
                prompt_id=prompt_id,
                prompt=prompt,
                extra=extra,
                outputs=verdict.outputs,
            )
        )
        await machine.queue_changed()
        store.start(server_id)
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": verdict.node_errors}
        )

    async def get_prompt(request: web.Request) -> web.Response:
        """GET /prompt: the queue size."""
        _, machine = available(request)
        return web.json_response({"exec_info": {"queue_remaining": machine.queue_remaining()}})

    async def get_queue(request: web.Request) -> web.Response:
        """GET /queue: the running prompt and the pending ones."""
        _, machine = available(request)
        running = [machine.running.wire()] if machine.running is not None else []
        return web.json_response(
            {"queue_running": running, "queue_pending": [i.wire() for i in machine.pending]}
        )

    async def post_queue(request: web.Request) -> web.Response:
        """POST /queue: ``{"clear": true}`` or ``{"delete": [prompt_id, ...]}`` of pending ones."""
        _, machine = available(request)
        body = await body_json(request)
        if body is None:
            return crashed()
        if body.get("clear"):
            machine.pending.clear()
        if isinstance(body.get("delete"), list):
            gone = set(map(str, body["delete"]))
            machine.pending[:] = [i for i in machine.pending if i.prompt_id not in gone]
        await machine.queue_changed()
        return web.Response()

    async def interrupt(request: web.Request) -> web.Response:
        """POST /interrupt: stop the running prompt (only it, when a prompt_id is given)."""
        _, machine = available(request)
        try:
            body = await request.json()
        except ValueError:
            body = {}
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        running = machine.running
        if not wanted or (running is not None and running.prompt_id == wanted):
            machine.interrupt = True
        return web.Response()

    async def history(request: web.Request) -> web.Response:
        """GET /history: finished prompts, oldest first, at most ``max_items`` (the newest)."""
        _, machine = available(request)
        items = list(machine.history.items())
        max_items = request.query.get("max_items", "")
        if max_items.isdigit():
            items = items[-int(max_items) :] if int(max_items) else []
        return web.json_response(dict(items))

    async def history_one(request: web.Request) -> web.Response:
        """GET /history/{prompt_id}: ``{}`` until the prompt finished."""
        _, machine = available(request)
        prompt_id = request.match_info["prompt_id"]
        entry = machine.history.get(prompt_id)
        return web.json_response({} if entry is None else {prompt_id: entry})

    async def post_history(request: web.Request) -> web.Response:
        """POST /history: ``{"clear": true}`` or ``{"delete": [prompt_id, ...]}``."""
        _, machine = available(request)
        body = await body_json(request)
        if body is None:
            return crashed()
        if body.get("clear"):
            machine.history.clear()
        if isinstance(body.get("delete"), list):
            for prompt_id in body["delete"]:
                machine.history.pop(str(prompt_id), None)
        return web.Response()

    async def view(request: web.Request) -> web.Response:
        """GET /view: a stored file; empty 400 (bad name or type), 403 (escaping subfolder)
        or 404 (missing) otherwise, as ComfyUI answers."""
        _, machine = available(request)
        raw = request.query.get("filename")
        if raw is None:
            return web.Response(status=404)
        filename, annotated = _annotated(raw)
        if not filename or filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        kind = annotated or request.query.get("type", "output")
        if kind not in ("input", "output", "temp"):
            return web.Response(status=400)
        filename = posixpath.basename(filename)
        subfolder = request.query.get("subfolder", "")
        normal = posixpath.normpath(posixpath.join("/root", subfolder))
        if normal != "/root" and not normal.startswith("/root/"):
            return web.Response(status=403)
        subfolder = posixpath.relpath(normal, "/root")
        data = machine.files.get((kind, "" if subfolder == "." else subfolder, filename))
        if data is None:
            return web.Response(status=404)
        return web.Response(
            body=data,
            content_type=mimetypes.guess_type(filename)[0] or "application/octet-stream",
            headers={"Content-Disposition": f'filename="{filename}"'},
        )

    async def upload_image(request: web.Request) -> web.Response:
        """POST /upload/image: multipart ``image`` (+ type, subfolder, overwrite); an
        existing name gets `` (1)``... unless the bytes are the same."""
        _, machine = available(request)
        if request.content_type != "multipart/form-data":
            return web.Response(status=400)
        reader = await request.multipart()
        fields: dict[str, str] = {}
        image: tuple[str, bytes] | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                return web.Response(status=400)
            if part.name == "image" and part.filename:
                received = bytearray()
                while chunk := await part.read_chunk():
                    received += chunk
                    if len(received) > MAX_UPLOAD:
                        return web.Response(status=413)
                image = (part.filename, bytes(received))
            elif part.name:
                fields[part.name] = await part.text()
        if image is None:
            return web.Response(status=400)
        name, data = image
        subfolder = fields.get("subfolder", "")
        kind = fields.get("type") or "input"
        stored_in = posixpath.normpath(posixpath.join("/root", subfolder, name))
        if kind not in ("input", "temp", "output") or not stored_in.startswith("/root/"):
            return web.Response(status=400)
        folder, name = posixpath.split(posixpath.relpath(stored_in, "/root"))
        stem, suffix = posixpath.splitext(name)
        if fields.get("overwrite") not in ("true", "1"):
            counter = 1
            while machine.files.get((kind, folder, name), data) != data:
                name = f"{stem} ({counter}){suffix}"
                counter += 1
        machine.files[(kind, folder, name)] = data
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def get_object_info(request: web.Request) -> web.Response:
        """GET /object_info[/{node_class}]: the node classes ({} for an unknown class)."""
        _, machine = available(request)
        wanted = request.match_info.get("node_class")
        files = machine.input_files()
        return web.json_response(
            {
                name: object_info(node, files)
                for name, node in NODES.items()
                if wanted is None or name == wanted
            }
        )

    async def system_stats(request: web.Request) -> web.Response:
        """GET /system_stats."""
        available(request)
        return web.json_response(_system_stats())

    async def websocket(request: web.Request) -> web.StreamResponse:
        """GET /ws?clientId=: ``status`` on connect (and the running node to the running
        prompt's client), then that client's events; a newer socket of the id replaces it."""
        _, machine = available(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        machine.sockets[sid] = ws
        machine.connections += 1
        try:
            status = {"exec_info": {"queue_remaining": machine.queue_remaining()}}
            await machine.send("status", {"status": status, "sid": sid}, sid)
            if machine.client_id == sid and machine.last_node is not None:
                await machine.send("executing", {"node": machine.last_node}, sid)
            async for _ in ws:
                pass  # what clients send is not needed here
        finally:
            # As in ComfyUI: a closing socket drops its id's entry, even if a newer one owns it.
            machine.sockets.pop(sid, None)
        return ws

    async def on_shutdown(_: web.Application) -> None:
        await store.shutdown()

    app.on_shutdown.append(on_shutdown)
    for base in (PREFIX, PREFIX + "/api"):
        app.router.add_post(base + "/prompt", post_prompt)
        app.router.add_get(base + "/prompt", get_prompt)
        app.router.add_get(base + "/queue", get_queue)
        app.router.add_post(base + "/queue", post_queue)
        app.router.add_post(base + "/interrupt", interrupt)
        app.router.add_get(base + "/history", history)
        app.router.add_post(base + "/history", post_history)
        app.router.add_get(base + "/history/{prompt_id}", history_one)
        app.router.add_get(base + "/view", view)
        app.router.add_post(base + "/upload/image", upload_image)
        app.router.add_get(base + "/object_info", get_object_info)
        app.router.add_get(base + "/object_info/{node_class}", get_object_info)
        app.router.add_get(base + "/system_stats", system_stats)
        app.router.add_get(base + "/ws", websocket)
