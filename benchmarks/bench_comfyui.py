"""Concurrent waits on one ComfyUI client id: one shared socket against a socket per wait.

N prompts (EmptyImage -> ImageInvert -> SaveImage, model-free) are queued under one client id
and N waits follow them at once. Ours: one ``ComfyUI`` instance, whose waits share its one
WebSocket. Baseline: N instances with the same client id, a socket each, which is how waits
behaved before; ComfyUI sends a client id's events only to its newest socket, so all but one
baseline wait hear nothing and finish at the history check after 5 s of silence. Figures: the
wall time of all N waits and the longest single wait, beside one prompt waited alone.

Run against a real ComfyUI with ``python -m benchmarks.bench_comfyui --url http://127.0.0.1:8188``
or, without ``--url``, against the emulator in its own process (speed 10, so a prompt takes
about as long as on a CPU ComfyUI).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

import aiohttp

from runcomfy_async import ComfyUI, PollPolicy, RunComfy

from ._common import emulator_process, print_table, write_results

POLL = PollPolicy(initial=0.25, max_interval=5.0)


def _workflow(size: int) -> dict[str, Any]:
    """A model-free prompt with a fresh colour (so ComfyUI's cache cannot answer it)."""
    colour = uuid.uuid4().int % (1 << 24)
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": colour},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "bench"},
        },
    }


async def _waits(clients: list[ComfyUI], n: int, size: int) -> dict[str, float]:
    """Queue ``n`` prompts with the first client, wait for prompt i with client i % len."""
    ids = [await clients[0].queue_prompt(_workflow(size)) for _ in range(n)]
    began = time.monotonic()
    took: list[float] = []

    async def one(i: int) -> None:
        await clients[i % len(clients)].wait(ids[i], timeout=300, poll=POLL)
        took.append(time.monotonic() - began)

    await asyncio.gather(*(one(i) for i in range(n)))
    return {"wall_s": round(time.monotonic() - began, 3), "longest_s": round(max(took), 3)}


async def run(url: str, session: aiohttp.ClientSession, n: int, size: int) -> list[dict[str, Any]]:
    """The three measurements against one ComfyUI URL."""
    shared = ComfyUI(session, url)
    alone_began = time.monotonic()
    await shared.wait(await shared.queue_prompt(_workflow(size)), timeout=300, poll=POLL)
    alone = round(time.monotonic() - alone_began, 3)
    ours = await _waits([shared], n, size)
    same_id = [ComfyUI(session, url, client_id=shared.client_id) for _ in range(n)]
    baseline = await _waits(same_id, n, size)
    return [
        {"figure": "one prompt, waited alone", "wall_s": alone, "longest_s": alone},
        {"figure": f"{n} waits, one shared socket (ours)", **ours},
        {"figure": f"{n} waits, a socket each, one client id (before)", **baseline},
    ]


async def main(url: str | None, n: int, size: int) -> list[dict[str, Any]]:
    """Measure against ``url``, or against an emulated machine."""
    if url:
        async with aiohttp.ClientSession() as session:
            return await run(url, session, n, size)
    with emulator_process("--rate-limit", "none", "--speed", "10") as env:
        async with RunComfy(
            env["RUNCOMFY_API_TOKEN"],
            user_id=env["RUNCOMFY_USER_ID"],
            server_url=env["RUNCOMFY_SERVER_URL"],
        ) as rc:
            version = (await rc.machines.workflows())[0].version_id or ""
            async with await rc.machines.launch(version) as machine:
                await machine.wait_ready(poll=PollPolicy(initial=0.1, max_interval=0.5))
                return await run(machine.main_service_url or "", rc.session, n, size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a real ComfyUI (default: the emulator)")
    parser.add_argument("--waits", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024, help="EmptyImage side in pixels")
    args = parser.parse_args()
    rows = asyncio.run(main(args.url, args.waits, args.size))
    print_table(rows, ["figure", "wall_s", "longest_s"])
    target = "real ComfyUI at " + args.url if args.url else "emulator (speed 10)"
    print(f"wrote {write_results('comfyui', rows, target=target)}", file=sys.stderr)
