"""ComfyUI scenarios driven over raw HTTP and WebSockets, against a real server or the emulator.

``scripts/record_comfyui.py`` runs them against a real ComfyUI and stores each transcript under
``tests/fixtures/comfyui/``; ``tests/test_comfyui_conformance.py`` runs them against the emulator
and compares the shapes (statuses, content types, JSON keys, WebSocket message types and their
order, and the values of a few keys such as error types and messages). Ids the server makes up
(prompt ids, client ids) are replaced by placeholders, so two runs compare.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

__all__ = ["SCENARIOS", "Driver", "shape", "tiny_png"]

#: Keys whose values must be equal, not just of the same kind.
EXACT = frozenset(
    {
        "type",
        "message",
        "input_name",
        "class_type",
        "status_str",
        "completed",
        "node_type",
        "exception_type",
        "node",
        "display_node",
        "state",
        "subfolder",
        "received_type",
    }
)
#: Seconds a scenario waits for one WebSocket message before giving up.
PATIENCE = 120.0


def tiny_png(width: int = 4, height: int = 4, colour: int = 0x336699) -> bytes:
    """A valid RGB PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    pixel = colour.to_bytes(3, "big")
    rows = b"".join(b"\x00" + pixel * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class Socket:
    """A WebSocket of one client id whose messages are collected in the background."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, name: str) -> None:
        self.ws = ws
        self.name = name
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))
            elif message.type is aiohttp.WSMsgType.BINARY:
                head = message.data[:8]
                kinds = list(struct.unpack(">II", head)) if len(head) == 8 else []
                self.messages.append({"type": "<binary>", "data": {"header": kinds}})
            self._changed.set()

    async def until(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait for a message (already received or coming) that passes ``check``."""
        seen = 0
        async with asyncio.timeout(PATIENCE):
            while True:
                for message in self.messages[seen:]:
                    if check(message):
                        return message
                seen = len(self.messages)
                self._changed.clear()
                await self._changed.wait()

    async def done(self, prompt_id: str) -> None:
        """Wait for the ``executing`` with no node that ends a prompt."""
        await self.until(
            lambda m: (
                m["type"] == "executing"
                and m["data"].get("node") is None
                and m["data"].get("prompt_id") == prompt_id
            )
        )

    async def close(self) -> list[dict[str, Any]]:
        """Close the socket and return what it received."""
        await self.ws.close()
        await self._task
        return self.messages


class Driver:
    """Sends a scenario's requests to one ComfyUI and keeps the transcript.

    Args:
        session: the HTTP session.
        base_url: the ComfyUI URL (a real server, or an emulated machine's).
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.steps: list[dict[str, Any]] = []
        self.ids: dict[str, str] = {}
        self.sockets: list[Socket] = []
        self.rng = random.Random()

    def name(self, value: str, kind: str) -> str:
        """Remember a server-made id so the transcript shows a placeholder for it."""
        return self.ids.setdefault(
            value, f"<{kind}{sum(k.startswith(f'<{kind}') for k in self.ids.values()) + 1}>"
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        label: str,
        body: Any = None,
        raw: bytes | None = None,
        form: aiohttp.FormData | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; its status, content type and body go into the transcript."""
        data: Any = raw if raw is not None else form
        async with self.session.request(
            method, self.base_url + path, json=body, data=data, params=params
        ) as resp:
            content = await resp.read()
            decoded: Any
            try:
                decoded = json.loads(content) if content else None
            except ValueError:
                decoded = {"<text>": bool(content.strip())}
            step = {
                "label": label,
                "request": {"method": method, "path": path},
                "status": resp.status,
                "content_type": resp.content_type if content else None,
                "body": decoded,
            }
        self.steps.append(step)
        if isinstance(decoded, dict) and isinstance(decoded.get("prompt_id"), str):
            self.name(decoded["prompt_id"], "prompt")
        return decoded

    async def socket(self, client_id: str, name: str) -> Socket:
        """Open ``/ws`` for a client id; wait for its first (``status``) message."""
        self.name(client_id, "client")
        ws = await self.session.ws_connect(
            self.base_url + "/ws", params={"clientId": client_id}, max_msg_size=0
        )
        socket = Socket(ws, name)
        await socket.until(lambda m: m["type"] == "status")
        self.sockets.append(socket)
        return socket

    async def prompt(self, label: str, prompt: dict[str, Any], client_id: str) -> Any:
        """POST /prompt."""
        return await self.call(
            "POST", "/prompt", label=label, body={"prompt": prompt, "client_id": client_id}
        )

    async def finish(self) -> dict[str, Any]:
        """Close the sockets and return the transcript with placeholders for the ids."""
        streams = {}
        for socket in self.sockets:
            streams[socket.name] = await socket.close()
        recorded = {"steps": self.steps, "sockets": streams}
        transcript: dict[str, Any] = _placeholders(recorded, self.ids)
        return transcript


def _placeholders(value: Any, ids: Mapping[str, str]) -> Any:
    """``value`` with every known id, as a value or a key, replaced by its placeholder."""
    if isinstance(value, dict):
        return {ids.get(k, k): _placeholders(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, ids) for v in value]
    if isinstance(value, str):
        return ids.get(value, value)
    return value


def shape(value: Any, key: str | None = None) -> Any:
    """What two servers must agree on: keys and kinds of values, exact values for EXACT keys.

    Lists compare as the set of their items' shapes (lengths vary: tracebacks, file lists).
    """
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        shapes = {json.dumps(shape(v), sort_keys=True) for v in value}
        return ["list", *sorted(shapes)]
    if key in EXACT and (value is None or isinstance(value, str | bool | int)):
        return value
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


# --- workflows ------------------------------------------------------------------------------


def _image_chain(colour: int, prefix: str, *, batch: int = 1) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> SaveImage, and a PreviewImage of the EmptyImage.

    The two outputs never become ready together: ComfyUI orders such outputs by the order of
    a Python set, which differs from run to run.
    """
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": batch, "color": colour},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def _slow(colour: int) -> dict[str, Any]:
    """A prompt whose ImageScale takes a while (to queue behind it and interrupt it)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": colour},
        },
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "lanczos",
                "width": 8192,
                "height": 8192,
                "crop": "disabled",
            },
        },
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "rec"}},
    }


# --- scenarios ------------------------------------------------------------------------------


async def run_and_cache(d: Driver) -> None:
    """A prompt run over the socket, its history and a file; the same nodes again are cached."""
    cid = str(uuid.uuid4())
    ws = await d.socket(cid, "client")
    colour = d.rng.randrange(1 << 24)
    first = await d.prompt("valid prompt", _image_chain(colour, "rec/sub", batch=2), cid)
    await ws.done(first["prompt_id"])
    history = await d.call("GET", f"/history/{first['prompt_id']}", label="history")
    saved = history[first["prompt_id"]]["outputs"]["3"]["images"][0]
    await d.call("GET", "/view", label="view an output", params=saved)
    repeat = _image_chain(colour, "rec/sub", batch=2)
    del repeat["4"]  # one cached output: two would come in a Python set's order
    again = await d.prompt("same prompt again", repeat, cid)
    await ws.done(again["prompt_id"])
    await d.call("GET", f"/history/{again['prompt_id']}", label="history of the cached run")


async def partly_valid(d: Driver) -> None:
    """One valid output and one refused: 200 with node_errors, and the valid output runs."""
    cid = str(uuid.uuid4())
    ws = await d.socket(cid, "client")
    prompt = _image_chain(d.rng.randrange(1 << 24), "rec")
    del prompt["4"]
    prompt["5"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 0, "height": 16, "batch_size": 1, "color": 0},
    }
    prompt["6"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["5", 0], "filename_prefix": "x"},
    }
    accepted = await d.prompt("partly valid prompt", prompt, cid)
    await ws.done(accepted["prompt_id"])
    await d.call("GET", f"/history/{accepted['prompt_id']}", label="history")


def _invalid_prompts() -> list[tuple[str, Any]]:
    """Prompts the server refuses as a whole, each with its label."""
    base = _image_chain(1, "rec")
    del base["4"]

    def variant(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
        prompt: dict[str, Any] = json.loads(json.dumps(base))
        change(prompt)
        return prompt

    loader = {"class_type": "LoadImage", "inputs": {"image": "no-such-file.png"}}
    return [
        ("unknown node", variant(lambda p: p["2"].update(class_type="NoSuchNode"))),
        ("missing class_type", variant(lambda p: p["2"].pop("class_type"))),
        ("no outputs", variant(lambda p: p.pop("3"))),
        (
            "output links a missing node",
            variant(lambda p: p["3"]["inputs"].update(images=["99", 0])),
        ),
        (
            "inner node links a missing node",
            variant(lambda p: p["2"]["inputs"].update(image=["99", 0])),
        ),
        ("output index out of range", variant(lambda p: p["2"]["inputs"].update(image=["1", 5]))),
        (
            "return type mismatch",
            variant(
                lambda p: (
                    p.update({"7": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}),
                    p["2"]["inputs"].update(image=["7", 1]),
                )
            ),
        ),
        ("value below min", variant(lambda p: p["1"]["inputs"].update(width=0))),
        ("value above max", variant(lambda p: p["1"]["inputs"].update(height=99999))),
        (
            "value not in list",
            variant(
                lambda p: (
                    p.update(
                        {
                            "8": {
                                "class_type": "ImageScale",
                                "inputs": {
                                    "image": ["1", 0],
                                    "upscale_method": "nope",
                                    "width": 8,
                                    "height": 8,
                                    "crop": "disabled",
                                },
                            }
                        }
                    )
                    or p["2"]["inputs"].update(image=["8", 0])
                )
            ),
        ),
        ("required input missing", variant(lambda p: p["1"]["inputs"].pop("width"))),
        ("input of the wrong type", variant(lambda p: p["1"]["inputs"].update(width="wide"))),
        (
            "LoadImage of a missing file",
            variant(lambda p: (p.update({"7": loader}), p["2"]["inputs"].update(image=["7", 0]))),
        ),
    ]


async def invalid_prompts(d: Driver) -> None:
    """Every kind of refused prompt, the body without a prompt, and a body that is not JSON."""
    for label, prompt in _invalid_prompts():
        await d.prompt(label, prompt, "validation")
    await d.call("POST", "/prompt", label="no prompt", body={"client_id": "x"})
    await d.call("POST", "/prompt", label="not JSON", raw=b"{not json")


async def uploads_and_loadimage(d: Driver) -> None:
    """Uploads (rename on clash, same bytes kept, subfolder) and LoadImage's value for them."""
    cid = str(uuid.uuid4())
    ws = await d.socket(cid, "client")
    name = f"rec_{uuid.uuid4().hex[:8]}.png"

    def form(data: bytes, subfolder: str = "", filename: str = name) -> aiohttp.FormData:
        f = aiohttp.FormData()
        f.add_field("image", data, filename=filename, content_type="image/png")
        if subfolder:
            f.add_field("subfolder", subfolder)
        return f

    first = tiny_png(colour=0x112233)
    await d.call("POST", "/upload/image", label="upload", form=form(first))
    await d.call("POST", "/upload/image", label="same bytes again", form=form(first))
    await d.call("POST", "/upload/image", label="other bytes, same name", form=form(tiny_png()))
    only_in_sub = f"sub_{name}"
    stored = await d.call(
        "POST", "/upload/image", label="into a subfolder", form=form(first, "recsub", only_in_sub)
    )
    load: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": stored["name"]}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    await d.prompt("LoadImage with the bare name of a file in a subfolder", load, cid)
    load["1"]["inputs"]["image"] = f"{stored['subfolder']}/{stored['name']}"
    accepted = await d.prompt("LoadImage with subfolder/filename", load, cid)
    await ws.done(accepted["prompt_id"])
    await d.call("GET", f"/history/{accepted['prompt_id']}", label="history")


async def view_errors(d: Driver) -> None:
    """/view of missing and unsafe paths: empty bodies."""
    await d.call("GET", "/view", label="missing file", params={"filename": "nope.png"})
    await d.call("GET", "/view", label="dot-dot name", params={"filename": "../x.png"})
    await d.call(
        "GET",
        "/view",
        label="escaping subfolder",
        params={"filename": "x.png", "subfolder": "../.."},
    )
    await d.call("GET", "/view", label="no filename")


async def runtime_error(d: Driver) -> None:
    """A LoadImage of bytes that are no image fails at run time: execution_error."""
    cid = str(uuid.uuid4())
    ws = await d.socket(cid, "client")
    f = aiohttp.FormData()
    f.add_field("image", b"not an image", filename=f"bad_{uuid.uuid4().hex[:8]}.png")
    stored = await d.call("POST", "/upload/image", label="upload bytes that are no image", form=f)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": stored["name"]}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    accepted = await d.prompt("prompt that fails", prompt, cid)
    await ws.done(accepted["prompt_id"])
    await d.call("GET", f"/history/{accepted['prompt_id']}", label="history of the failure")


async def queue_and_interrupt(d: Driver) -> None:
    """A slow prompt with another behind it: /queue, status broadcasts to another client, a
    second socket of the same client id (it alone gets the events from then on, starting with
    an ``executing`` without prompt id), /interrupt, and the prompt behind running after."""
    cid = str(uuid.uuid4())
    first = await d.socket(cid, "client")
    other = await d.socket(str(uuid.uuid4()), "other client")
    slow = await d.prompt("slow prompt", _slow(d.rng.randrange(1 << 24)), cid)
    behind = await d.prompt("prompt behind it", _image_chain(d.rng.randrange(1 << 24), "rec"), cid)
    await first.until(lambda m: m["type"] == "executing" and m["data"].get("node") == "2")
    await d.call("GET", "/queue", label="queue with one running, one pending")
    await d.call("GET", "/prompt", label="queue length")
    newest = await d.socket(cid, "same client id again")
    await newest.until(lambda m: m["type"] == "executing")
    await d.call("POST", "/interrupt", label="interrupt", body={})
    await newest.until(
        lambda m: (
            m["type"] == "execution_interrupted" and m["data"].get("prompt_id") == slow["prompt_id"]
        )
    )
    await newest.done(behind["prompt_id"])
    await d.call("GET", f"/history/{slow['prompt_id']}", label="history of the interrupted")
    await d.call("GET", "/queue", label="empty queue")
    await other.until(
        lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0
    )


async def websocket_images(d: Driver) -> None:
    """SaveImageWebsocket sends each image as a binary frame, with progress, and saves none."""
    cid = str(uuid.uuid4())
    ws = await d.socket(cid, "client")
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": d.rng.randrange(1 << 24)},
        },
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    accepted = await d.prompt("images over the socket", prompt, cid)
    await ws.done(accepted["prompt_id"])
    await d.call("GET", f"/history/{accepted['prompt_id']}", label="history")


async def server_info(d: Driver) -> None:
    """/system_stats, /object_info for one class and an unknown one, GET /prompt, the /api alias."""
    await d.call("GET", "/system_stats", label="system stats")
    await d.call("GET", "/object_info/SaveImage", label="object_info of SaveImage")
    await d.call("GET", "/object_info/EmptyImage", label="object_info of EmptyImage")
    await d.call("GET", "/object_info/NoSuchNode", label="object_info of an unknown class")
    await d.call("GET", "/api/prompt", label="queue length under /api")
    await d.call("POST", "/interrupt", label="interrupt with nothing running")


#: Every scenario by name (the fixture file names).
SCENARIOS: dict[str, Callable[[Driver], Awaitable[None]]] = {
    "run_and_cache": run_and_cache,
    "partly_valid": partly_valid,
    "invalid_prompts": invalid_prompts,
    "uploads_and_loadimage": uploads_and_loadimage,
    "view_errors": view_errors,
    "runtime_error": runtime_error,
    "queue_and_interrupt": queue_and_interrupt,
    "websocket_images": websocket_images,
    "server_info": server_info,
}
