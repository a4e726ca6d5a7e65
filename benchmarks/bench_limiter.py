"""One account limit across processes: per-process TokenBucket vs the shared RedisTokenBucket.

For 1, 2, 4 and 8 client processes hammering one emulator (1 request/s, burst 3, in its own
process), each process running several concurrent ``rc.datasets.list()`` loops, the figures are
what reached the emulator during the measured window: requests sent and successful requests per
second (aggregate over the processes) and 429 answers. Per-process buckets each allow the full
rate, so N processes send N times too much and collect 429s; the Redis bucket keeps all of
them together at the limit.
Processes start, open their client, then wait for a common "go" so start-up is not measured.
A ``redis-server`` on a free port is started for the run (or ``RUNCOMFY_REDIS_URL`` is used).

Run: ``python -m benchmarks.bench_limiter [--smoke]`` (full: ~12 s per configuration).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from runcomfy_async import RunComfy, RunComfyError
from runcomfy_async._redis_limiter import RedisTokenBucket

from ._common import emulator_process, print_table, write_results

RATE = 1.0
SERVER_BURST = 3
PROCESSES = (1, 2, 4, 8)
CONCURRENCY = 4  # request loops per process
LIMITERS = {"token": "per-process TokenBucket", "redis": "shared RedisTokenBucket"}


# -- one client process ---------------------------------------------------------------------


async def _worker(kind: str, redis_url: str, key: str, seconds: float) -> None:
    """Open a client, say ready, wait for go, then loop list calls for ``seconds``."""
    limiter = RedisTokenBucket(redis_url, key=key, rate=RATE, burst=2) if kind == "redis" else None
    try:
        async with RunComfy(rate=RATE, burst=2, limiter=limiter) as rc:

            async def loop() -> None:
                while True:
                    with contextlib.suppress(RunComfyError):  # 429 after retries: go on
                        await rc.datasets.list()

            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            tasks = [asyncio.create_task(loop()) for _ in range(CONCURRENCY)]
            await asyncio.sleep(seconds)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if limiter is not None:
            await limiter.aclose()


# -- the run --------------------------------------------------------------------------------


@contextlib.contextmanager
def _redis() -> Iterator[str | None]:
    """RUNCOMFY_REDIS_URL, or a throwaway redis-server; None when neither is available."""
    if url := os.environ.get("RUNCOMFY_REDIS_URL"):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _log(emulator_url: str) -> list[dict[str, Any]]:
    """The emulator's Trainer API request log (its emulator-only endpoint)."""
    with urllib.request.urlopen(f"{emulator_url}/_emulator/log?api=trainer") as response:  # noqa: S310 - loopback
        records: list[dict[str, Any]] = json.load(response)
        return records


def measure(
    env: dict[str, str], kind: str, processes: int, seconds: float, redis_url: str
) -> dict[str, Any]:
    """Run ``processes`` clients for ``seconds``; count what the emulator got in that window."""
    key = f"runcomfy:ratelimit:bench-{uuid.uuid4().hex}"
    child_env = os.environ | env
    command = [sys.executable, "-m", "benchmarks.bench_limiter", "--worker", kind]
    command += ["--redis-url", redis_url, "--key", key, "--seconds", str(seconds)]
    procs = [
        subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env,
        )
        for _ in range(processes)
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a benchmark worker failed to start")
    start = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.close()
    for proc in procs:
        proc.wait(timeout=seconds + 30)
        assert proc.stdout is not None
        proc.stdout.close()
    end = start + seconds
    window = [r for r in _log(env["RUNCOMFY_TRAINER_URL"]) if start <= r["at"] <= end]
    ok = sum(1 for r in window if r["status"] == 200)
    return {
        "processes": processes,
        "limiter": LIMITERS[kind],
        "ok_per_s": ok / seconds,
        "sent_per_s": len(window) / seconds,
        "limit_per_s": RATE,
        "requests_429": sum(1 for r in window if r["status"] == 429),
        "ok": ok,
        "seconds": seconds,
    }


def main() -> None:
    """Parse the command line; run the benchmark (or one worker process)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_limiter")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the tests")
    parser.add_argument("--worker", choices=sorted(LIMITERS), help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--key", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=12.0, help="per configuration")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker(args.worker, args.redis_url, args.key, args.seconds))
        return
    seconds = 1.5 if args.smoke else args.seconds
    counts = (2,) if args.smoke else PROCESSES  # smoke: the shared case only
    rows = []
    with _redis() as redis_url:
        if redis_url is None:
            print("redis-server not found: install it (apt-get install redis-server)")
            sys.exit(2)
        for kind in LIMITERS:
            for n in counts:
                # a fresh emulator per configuration: its account bucket starts full every time
                with emulator_process(
                    "--rate-limit", str(RATE), "--burst", str(SERVER_BURST), "--speed", "1000"
                ) as env:
                    rows.append(measure(env, kind, n, seconds, redis_url))
                print(f"  {rows[-1]['limiter']}, {n} process(es): done", file=sys.stderr)
    columns = ["processes", "limiter", "sent_per_s", "ok_per_s", "limit_per_s", "requests_429"]
    print_table(rows, columns)
    path = write_results(
        "limiter-smoke" if args.smoke else "limiter",
        rows,
        emulator={"rate_limit": RATE, "burst": SERVER_BURST},
        concurrency_per_process=CONCURRENCY,
        smoke=args.smoke,
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
