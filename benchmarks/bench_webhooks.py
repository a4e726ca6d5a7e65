"""Webhook receiving: how fast deliveries are acknowledged, and what deduplication costs.

1. Acknowledgement latency. uvicorn serves the library's router; a burst of deliveries (three
   statuses per request, a third of them sent twice, shuffled) arrives 16 at a time. Handling a
   final event takes a lookup through the API, which waits for the account's rate limit (a
   ``TokenBucket`` at ``RATE`` requests/s) and 50 ms of round trip, then a handler (100 ms). The
   baseline is the endpoint a user writes first: the same work done before answering. The service
   waits 10 s for an answer and retries after that, so the figures that matter are the tail and
   the deliveries answered too late.
2. Deduplication cost: ``record()`` calls per second of ``MemoryDeliveryStore`` and of
   ``RedisDeliveryStore`` on a local ``redis-server`` (skipped when none is installed).

Run: ``python -m benchmarks.bench_webhooks [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import statistics
import sys
import time
from typing import Any

import aiohttp
import uvicorn
from fastapi import FastAPI, Request

from runcomfy_async import TokenBucket
from runcomfy_async.webhooks import (
    DeliveryStore,
    MemoryDeliveryStore,
    RedisDeliveryStore,
    RequestLookup,
    WebhookEvent,
    WebhookReceiver,
    WebhookStatus,
    parse_event,
)
from runcomfy_async.webhooks.fastapi import webhook_router

from ._common import print_table, write_results

LOOKUP_S = 0.05
HANDLER_S = 0.1
RATE = 1.0  # the account's limit, requests/s
DEADLINE_S = 10.0


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bodies(requests: int) -> list[bytes]:
    """Three statuses per request, a third of the deliveries twice, shuffled (seeded)."""
    rng = random.Random(11)
    bodies = []
    for n in range(requests):
        for status in ("in_queue", "in_progress", "succeeded"):
            body = json.dumps({"request_id": f"r{n}", "deployment_id": "d", "status": status})
            bodies += [body.encode()] * (2 if rng.random() < 1 / 3 else 1)
    rng.shuffle(bodies)
    return bodies


def _lookup_through(bucket: TokenBucket) -> RequestLookup:
    """A simulated API lookup: a token of the account's rate limit, then a round trip."""

    async def lookup(request_id: str, deployment_id: str | None) -> WebhookEvent:
        await bucket.acquire()
        await asyncio.sleep(LOOKUP_S)
        return WebhookEvent(
            request_id=request_id,
            status=WebhookStatus.SUCCEEDED,
            deployment_id=deployment_id,
            verified=True,
        )

    return lookup


async def _ack_latency(app: FastAPI, bodies: list[bytes]) -> list[float]:
    """Serve ``app``; POST every body, 16 at a time; each answer's latency in seconds."""
    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    latencies: list[float] = []
    gate = asyncio.Semaphore(16)
    url = f"http://127.0.0.1:{port}/runcomfy/webhook"
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes) -> None:
            async with gate:
                start = time.perf_counter()
                async with session.post(url, data=body) as response:
                    await response.read()
                    assert response.status < 300, response.status
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one(b) for b in bodies))
    server.should_exit = True
    await serving
    return latencies


async def _router_app(handled: list[str]) -> tuple[FastAPI, WebhookReceiver]:
    async def handler(event: WebhookEvent) -> None:
        if event.final:
            await asyncio.sleep(HANDLER_S)
            handled.append(event.request_id)

    lookup = _lookup_through(TokenBucket(RATE, burst=2))
    receiver = WebhookReceiver(handler, lookup=lookup, concurrency=256)
    app = FastAPI()
    app.include_router(webhook_router(receiver))
    return app, receiver


def _inline_app(handled: list[str]) -> FastAPI:
    """The first endpoint people write: parse, look up, handle, then answer."""
    app = FastAPI()
    lookup = _lookup_through(TokenBucket(RATE, burst=2))

    @app.post("/runcomfy/webhook")
    async def hook(request: Request) -> dict[str, str]:
        event = parse_event(await request.body())
        if event.final:
            await lookup(event.request_id, event.deployment_id)
            await asyncio.sleep(HANDLER_S)
            handled.append(event.request_id)
        return {"ok": "yes"}

    return app


def _summary(name: str, latencies: list[float], handled: int, requests: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "endpoint": name,
        "deliveries": len(latencies),
        "requests": requests,
        "finals_handled": handled,
        "ack_p50_ms": round(statistics.median(ordered) * 1000, 1),
        "ack_p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1),
        "ack_max_ms": round(ordered[-1] * 1000, 1),
        "late_acks": sum(1 for t in ordered if t > DEADLINE_S),
    }


async def acknowledgements(requests: int) -> list[dict[str, Any]]:
    """Ack latency of the router and of the inline baseline on the same burst."""
    bodies = _bodies(requests)
    handled: list[str] = []
    app, receiver = await _router_app(handled)
    routed = await _ack_latency(app, bodies)
    await receiver.aclose(timeout=None)
    inline_handled: list[str] = []
    inline = await _ack_latency(_inline_app(inline_handled), bodies)
    return [
        _summary("webhook_router (background)", routed, len(handled), requests),
        _summary("inline (baseline)", inline, len(inline_handled), requests),
    ]


async def _record_rate(store: DeliveryStore, count: int) -> float:
    """record() calls per second, 32 at a time, on a mix of new, duplicate and late statuses."""
    statuses = [("in_queue", 0), ("in_progress", 1), ("succeeded", 2), ("in_progress", 1)]
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        status, rank = statuses[i % 4]
        async with gate:
            await store.record(f"r{i // 4}", status, rank)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - start)


async def dedupe(count: int) -> list[dict[str, Any]]:
    """record() throughput of the memory store and, when redis-server exists, the Redis one."""
    rows = [
        {
            "store": "MemoryDeliveryStore",
            "records_per_s": round(await _record_rate(MemoryDeliveryStore(), count)),
        }
    ]
    binary = shutil.which("redis-server")
    if binary is None:
        rows.append({"store": "RedisDeliveryStore", "records_per_s": "no redis-server"})
        return rows
    port = _port()
    redis = await asyncio.create_subprocess_exec(
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.02)
        store = RedisDeliveryStore(f"redis://127.0.0.1:{port}/0")
        rate = await _record_rate(store, count)
        await store.aclose()
    finally:
        redis.terminate()
        await redis.wait()
    rows.append({"store": "RedisDeliveryStore (local redis-server)", "records_per_s": round(rate)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both parts, print the tables, write benchmarks/results/webhooks.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, seconds long")
    args = parser.parse_args(argv)
    acks = asyncio.run(acknowledgements(6 if args.smoke else 30))
    print_table(acks, list(acks[0]))
    stores = asyncio.run(dedupe(2_000 if args.smoke else 40_000))
    print()
    print_table(stores, ["store", "records_per_s"])
    path = write_results(
        "webhooks-smoke" if args.smoke else "webhooks",
        acks,
        stores=stores,
        simulated={"lookup_s": LOOKUP_S, "handler_s": HANDLER_S, "rate": RATE},
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
