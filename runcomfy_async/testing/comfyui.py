"""A small ComfyUI (docs/wire.md) behind each Ready emulated machine's ``main_service_url``.

Served under ``/comfyui/{server_id}`` (and ComfyUI's ``/api`` alias): ``POST /prompt`` with
ComfyUI's validation errors, ``GET /prompt``, ``GET /history[/{prompt_id}]``, ``GET /view``,
``POST /upload/image`` and ``GET /ws`` with the documented events. Queued prompts run one at a
time in a fake execution of scaled duration whose ``SaveImage`` / ``PreviewImage`` nodes produce
a tiny valid PNG. A ``CLIPTextEncode`` whose ``text`` contains ``EMULATOR_FAIL`` fails with an
``execution_error``, to exercise failure paths. A machine that is not Ready answers 502, an
unknown or stopped one 404. The store is ``emu.state.comfy``. Event timestamps come from the
emulator's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import attrs
from aiohttp import BodyPartReader, WSCloseCode, web

from ._wire import ApiError, read_json

if TYPE_CHECKING:
    from ._clock import Clock
    from ._state import EmulatorState
    from .server_api import MachineStore

__all__ = [
    "FAIL_MARKER",
    "NODE_INPUTS",
    "ComfyMachine",
    "ComfyStore",
    "add_routes",
    "comfy_store",
    "example_workflow",
    "tiny_png",
]

PREFIX: Final = "/comfyui/{server_id}"
FAIL_MARKER: Final = "EMULATOR_FAIL"
#: The node classes this ComfyUI knows, with their required inputs.
NODE_INPUTS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CLIPTextEncode": ("text", "clip"),
    "EmptyLatentImage": ("width", "height"),
    "KSampler": ("model", "positive", "negative", "latent_image"),
    "VAEDecode": ("samples", "vae"),
    "LoadImage": ("image",),
    "SaveImage": ("images",),
    "PreviewImage": ("images",),
})
#: Output nodes and the folder type their images go to.
OUTPUT_NODES: Final[Mapping[str, str]] = MappingProxyType(
    {"SaveImage": "output", "PreviewImage": "temp"}
)
MAX_UPLOAD: Final = 20 * 1024 * 1024


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


def _is_link(value: Any) -> bool:
    """A node input ``[node_id, output_index]`` refers to another node's output."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
    )


@attrs.define(kw_only=True)
class ComfyMachine:
    """The ComfyUI state of one machine: files, history, queue and open sockets."""

    files: dict[tuple[str, str, str], bytes] = attrs.Factory(dict)
    history: dict[str, dict[str, Any]] = attrs.Factory(dict)
    pending: list[str] = attrs.Factory(list)
    sockets: dict[str, set[web.WebSocketResponse]] = attrs.Factory(dict)
    number: int = 0
    image_counter: int = 0
    lock: asyncio.Lock = attrs.Factory(asyncio.Lock)

    async def send(self, client_id: str | None, kind: str, data: Mapping[str, Any]) -> None:
        """An event to the prompt's client's sockets (every socket when it has none)."""
        if client_id is None:
            targets = [ws for group in self.sockets.values() for ws in group]
        else:
            targets = list(self.sockets.get(client_id, ()))
        for ws in targets:
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_json({"type": kind, "data": dict(data)})

    async def send_status(self, client_id: str | None) -> None:
        """The queue-changed ``status`` event."""
        exec_info = {"queue_remaining": len(self.pending)}
        await self.send(client_id, "status", {"status": {"exec_info": exec_info}})


class ComfyStore:
    """Every machine's ComfyUI, plus the fake executions in flight.

    Attributes:
        node_seconds: simulated time one node takes.
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

    def start(
        self, server_id: str, prompt_id: str, prompt: dict[str, Any], extra: dict[str, Any]
    ) -> None:
        """Run a queued prompt in the background (tracked, cancelled on shutdown)."""
        task = asyncio.create_task(self._execute(server_id, prompt_id, prompt, extra))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drop_sockets(self, server_id: str) -> None:
        """Close every WebSocket of a machine (to test a client's fallback)."""
        for group in list(self.machine(server_id).sockets.values()):
            for ws in list(group):
                await ws.close(code=WSCloseCode.GOING_AWAY)

    async def shutdown(self) -> None:
        """Cancel the executions and close the sockets, so the server stops promptly."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server_id in list(self.machines):
            await self.drop_sockets(server_id)

    def now_ms(self) -> int:
        """ComfyUI's event timestamps: epoch milliseconds, of the emulator's clock."""
        return int(self.clock.time() * 1000)

    async def _sleep(self, simulated: float) -> None:
        """Wait out a simulated duration, scaled by the emulator's speed."""
        await asyncio.sleep(self.clock.real(simulated))

    async def _execute(
        self, server_id: str, prompt_id: str, prompt: dict[str, Any], extra: dict[str, Any]
    ) -> None:
        """The fake execution: the documented events in ComfyUI's order (docs/wire.md)."""
        machine = self.machine(server_id)
        client_id = extra.get("client_id")
        async with machine.lock:  # one prompt at a time, like ComfyUI's single worker
            machine.pending.remove(prompt_id)
            await machine.send_status(client_id)
            messages: list[list[Any]] = []

            async def event(kind: str, data: dict[str, Any], *, keep: bool = False) -> None:
                data = {**data, "prompt_id": prompt_id}
                if keep:
                    messages.append([kind, {**data, "timestamp": self.now_ms()}])
                stamp = {"timestamp": self.now_ms()} if keep else {}
                await machine.send(client_id, kind, data | stamp)

            await event("execution_start", {}, keep=True)
            await event("execution_cached", {"nodes": []}, keep=True)
            outputs: dict[str, Any] = {}
            failed: dict[str, Any] | None = None
            executed: list[str] = []
            for node_id in _order(prompt):
                if not self.servers.is_ready(server_id):
                    return  # the machine stopped under the prompt
                node = prompt[node_id]
                inputs = node.get("inputs", {})
                await event("executing", {"node": node_id, "display_node": node_id})
                if node["class_type"] == "KSampler":
                    steps = max(1, min(50, int(inputs.get("steps", 20))))
                    for step in range(1, steps + 1):
                        await self._sleep(self.step_seconds)
                        await event("progress", {"value": step, "max": steps, "node": node_id})
                else:
                    await self._sleep(self.node_seconds)
                fails = FAIL_MARKER in str(inputs.get("text"))
                if node["class_type"] == "CLIPTextEncode" and fails:
                    failed = {
                        "node_id": node_id,
                        "node_type": node["class_type"],
                        "executed": executed,
                        "exception_message": f"{FAIL_MARKER} found in the prompt text",
                        "exception_type": "RuntimeError",
                        "traceback": ["emulated failure"],
                        "current_inputs": {},
                        "current_outputs": {},
                    }
                    break
                executed.append(node_id)
                folder = OUTPUT_NODES.get(node["class_type"])
                if folder is not None:
                    machine.image_counter += 1
                    prefix = str(inputs.get("filename_prefix") or "ComfyUI").replace("/", "_")
                    name = f"{prefix}_{machine.image_counter:05}_.png"
                    machine.files[(folder, "", name)] = tiny_png(machine.image_counter)
                    images = {"images": [{"filename": name, "subfolder": "", "type": folder}]}
                    outputs[node_id] = images
                    await event(
                        "executed", {"node": node_id, "display_node": node_id, "output": images}
                    )
            if failed is not None:
                await event("execution_error", failed, keep=True)
            else:
                await event("execution_success", {}, keep=True)
            machine.history[prompt_id] = {
                "prompt": [extra["number"], prompt_id, prompt, extra, list(extra["outputs"])],
                "outputs": outputs,
                "status": {
                    "status_str": "error" if failed else "success",
                    "completed": failed is None,
                    "messages": messages,
                },
                "meta": {
                    n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                    for n in outputs
                },
            }
            await event("executing", {"node": None})
            await machine.send_status(client_id)


def _order(prompt: Mapping[str, Any]) -> list[str]:
    """Nodes in an order where every node comes after the nodes it takes input from."""
    done: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in done:
            return
        for value in prompt[node_id].get("inputs", {}).values():
            if _is_link(value) and str(value[0]) in prompt and str(value[0]) not in done:
                visit(str(value[0]))
        done.append(node_id)

    for node_id in prompt:
        visit(node_id)
    return done


def _upstream(prompt: Mapping[str, Any], node_id: str) -> set[str]:
    """A node and every node it takes input from, directly or not (for dependent_outputs)."""
    seen: set[str] = set()
    todo = [node_id]
    while todo:
        current = todo.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        inputs = prompt[current].get("inputs", {})
        todo.extend(str(v[0]) for v in inputs.values() if _is_link(v))
    return seen


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    """ComfyUI's error object (docs/wire.md)."""
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _validate(
    prompt: Any, inputs_available: list[str]
) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
    """ComfyUI's checks: ``(error, node_errors, output node ids)``; error None when valid."""
    if not isinstance(prompt, dict):
        return _error("invalid_prompt", "Prompt must be an object of nodes"), {}, []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return (
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
                {},
                [],
            )
        if node["class_type"] not in NODE_INPUTS:
            return (
                _error(
                    "missing_node_type",
                    f"Node '{node['class_type']}' not found. The custom node may not be installed.",
                    f"Node ID '#{node_id}'",
                    node_id=node_id,
                    class_type=node["class_type"],
                ),
                {},
                [],
            )
        if not isinstance(node.get("inputs"), dict):
            where = f"Node ID '#{node_id}'"
            return _error("invalid_prompt", "Node inputs must be an object", where), {}, []
    outputs = [n for n, node in prompt.items() if node["class_type"] in OUTPUT_NODES]
    if not outputs:
        return _error("prompt_no_outputs", "Prompt has no outputs"), {}, []
    node_errors: dict[str, Any] = {}
    for node_id, node in prompt.items():
        problems = []
        inputs = node["inputs"]
        for name in NODE_INPUTS[node["class_type"]]:
            if name not in inputs:
                problems.append(
                    _error(
                        "required_input_missing", "Required input is missing", name, input_name=name
                    )
                )
        for name, value in inputs.items():
            if _is_link(value) and str(value[0]) not in prompt:
                problems.append(
                    _error(
                        "exception_during_inner_validation",
                        "Exception when validating inner node",
                        f"{name}: linked node '{value[0]}' is not in the prompt",
                        input_name=name,
                        received_value=value,
                    )
                )
        image = inputs.get("image")
        if (
            node["class_type"] == "LoadImage"
            and isinstance(image, str)
            and image not in inputs_available
        ):
            problems.append(
                _error(
                    "value_not_in_list",
                    "Value not in list",
                    f"image: '{image}' not in {inputs_available}",
                    input_name="image",
                    received_value=image,
                )
            )
        if problems:
            node_errors[node_id] = {
                "errors": problems,
                "dependent_outputs": [o for o in outputs if node_id in _upstream(prompt, o)],
                "class_type": node["class_type"],
            }
    if node_errors:
        failed = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        return failed, node_errors, outputs
    return None, {}, outputs


def _safe_part(value: str) -> bool:
    """A file name or subfolder that stays inside its folder (no ``..``, not absolute)."""
    return not value.startswith(("/", "\\")) and ".." not in value.replace("\\", "/").split("/")


def comfy_store(state: EmulatorState) -> ComfyStore:
    """``state.comfy``, the ComfyUI store of one emulator (kept for earlier callers)."""
    return state.comfy


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

    def bad_request(
        error: dict[str, Any], node_errors: Mapping[str, Any] | None = None
    ) -> web.Response:
        """ComfyUI's 400 body: the error object and the per-node errors (docs/wire.md)."""
        body = {"error": error, "node_errors": dict(node_errors or {})}
        return web.json_response(body, status=400)

    async def post_prompt(request: web.Request) -> web.Response:
        """POST /prompt: validate, queue, and start the fake execution."""
        server_id, machine = available(request)
        try:
            body = await read_json(request)
        except ApiError:
            return bad_request(_error("invalid_prompt", "Invalid JSON body"))
        if not isinstance(body, dict) or "prompt" not in body:
            return bad_request(_error("no_prompt", "No prompt provided", "No prompt provided"))
        inputs_available = sorted(name for (kind, _, name) in machine.files if kind == "input")
        error, node_errors, outputs = _validate(body["prompt"], inputs_available)
        if error is not None:
            return bad_request(error, node_errors)
        prompt_id = body.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            prompt_id = str(uuid.uuid4())
        machine.number += 1
        client_id = body.get("client_id")
        extra = {
            "client_id": client_id if isinstance(client_id, str) else None,
            "create_time": store.now_ms(),
            "number": machine.number,
            "outputs": outputs,
        }
        machine.pending.append(prompt_id)
        store.start(server_id, prompt_id, body["prompt"], extra)
        return web.json_response(
            {"prompt_id": prompt_id, "number": machine.number, "node_errors": {}}
        )

    async def get_prompt(request: web.Request) -> web.Response:
        """GET /prompt: the queue size."""
        _, machine = available(request)
        return web.json_response({"exec_info": {"queue_remaining": len(machine.pending)}})

    async def history(request: web.Request) -> web.Response:
        """GET /history: finished prompts, newest last, at most ``max_items``."""
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

    async def view(request: web.Request) -> web.Response:
        """GET /view: a stored file's bytes; 400 on ``..`` or absolute names, 404 missing."""
        _, machine = available(request)
        filename = request.query.get("filename", "")
        subfolder = request.query.get("subfolder", "")
        kind = request.query.get("type", "output")
        if not filename or not _safe_part(filename) or not _safe_part(subfolder):
            return web.Response(status=400, text="invalid filename")
        data = machine.files.get((kind, subfolder, filename))
        if data is None:
            return web.Response(status=404, text="file not found")
        return web.Response(
            body=data,
            content_type="image/png" if filename.endswith(".png") else "application/octet-stream",
            headers={"Content-Disposition": f'filename="{filename}"'},
        )

    async def upload_image(request: web.Request) -> web.Response:
        """POST /upload/image: multipart ``image`` (+ type, subfolder, overwrite)."""
        _, machine = available(request)
        if request.content_type != "multipart/form-data":
            return web.Response(status=400, text="expected multipart/form-data")
        reader = await request.multipart()
        fields: dict[str, str] = {}
        image: tuple[str, bytes] | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                return web.Response(status=400, text="nested multipart is not supported")
            if part.name == "image" and part.filename:
                received = bytearray()
                while chunk := await part.read_chunk():
                    received += chunk
                    if len(received) > MAX_UPLOAD:
                        return web.Response(status=413, text="image too large")
                image = (part.filename, bytes(received))
            elif part.name:
                fields[part.name] = await part.text()
        if image is None:
            return web.Response(status=400, text="no 'image' file part")
        name, data = image
        subfolder = fields.get("subfolder", "")
        kind = fields.get("type") or "input"
        if kind not in ("input", "temp", "output") or not (
            _safe_part(name) and _safe_part(subfolder)
        ):
            return web.Response(status=400, text="invalid type, name or subfolder")
        name = name.replace("\\", "/").rsplit("/", 1)[-1]
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        stem, dot, suffix = name.rpartition(".")
        stem, suffix = (stem, dot + suffix) if dot else (name, "")
        counter = 1
        while not overwrite and machine.files.get((kind, subfolder, name), data) != data:
            name = f"{stem} ({counter}){suffix}"
            counter += 1
        machine.files[(kind, subfolder, name)] = data
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def websocket(request: web.Request) -> web.StreamResponse:
        """GET /ws?clientId=: ``status`` on connect, then the events of that client's prompts."""
        _, machine = available(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        group = machine.sockets.setdefault(client_id, set())
        group.add(ws)
        try:
            exec_info = {"queue_remaining": len(machine.pending)}
            await ws.send_json(
                {"type": "status", "data": {"status": {"exec_info": exec_info}, "sid": client_id}}
            )
            async for _ in ws:
                pass  # ComfyUI ignores what clients send
        finally:
            group.discard(ws)
        return ws

    async def on_shutdown(_: web.Application) -> None:
        await store.shutdown()

    app.on_shutdown.append(on_shutdown)
    for base in (PREFIX, PREFIX + "/api"):
        app.router.add_post(base + "/prompt", post_prompt)
        app.router.add_get(base + "/prompt", get_prompt)
        app.router.add_get(base + "/history", history)
        app.router.add_get(base + "/history/{prompt_id}", history_one)
        app.router.add_get(base + "/view", view)
        app.router.add_post(base + "/upload/image", upload_image)
        app.router.add_get(base + "/ws", websocket)
