"""Request pipeline cost and rate-budget use.

1. Client overhead, limiter off: API calls/s through ``RunComfy.request`` beside raw aiohttp GETs
   to the same emulator endpoint, same concurrency, same run (target: >= 0.75x raw).
2. Rate budget: 200 concurrent callers for D seconds at the real 1 request/s limit; how many of the
   allowed requests were sent, and how many 429s came back (target: >= 95 %, zero 429s).

Run: ``python -m benchmarks.bench_pipeline [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp

from runcomfy_async import RunComfy
from runcomfy_async._protocol import API, RequestSpec

from ._common import emulator_process, print_table, write_results

LIST = RequestSpec(api=API.TRAINER, method="GET", path="/prod/v1/trainers/datasets")


async def _raw(env: dict[str, str], total: int, concurrency: int) -> float:
    """Requests/s of bare aiohttp GETs with the bearer header."""
    url = env["RUNCOMFY_TRAINER_URL"] + LIST.path
    headers = {"Authorization": f"Bearer {env['RUNCOMFY_API_TOKEN']}"}
    left = total

    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.get(url, headers=headers) as resp:
                    json.loads(await resp.read())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


async def _client(env: dict[str, str], total: int, concurrency: int) -> float:
    """Requests/s through the full pipeline with an effectively unlimited bucket."""
    left = total
    async with RunComfy(
        env["RUNCOMFY_API_TOKEN"], trainer_url=env["RUNCOMFY_TRAINER_URL"], rate=1e9, burst=10**6
    ) as rc:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await rc.request(LIST)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


async def overhead(total: int, rounds: int) -> dict[str, Any]:
    """Median requests/s of both, alternating rounds so drift hits both alike."""
    raw, ours = [], []
    with emulator_process("--rate-limit", "none") as env:
        await _raw(env, 200, 16)  # warm-up
        for _ in range(rounds):
            raw.append(await _raw(env, total, 16))
            ours.append(await _client(env, total, 16))
    r, c = statistics.median(raw), statistics.median(ours)
    return {
        "benchmark": "client overhead (limiter off)",
        "baseline": "raw aiohttp GET",
        "baseline_value": round(r, 1),
        "ours": round(c, 1),
        "unit": "req/s",
        "ratio": round(c / r, 3),
        "target": ">= 0.75",
        "met": c / r >= 0.75,
    }


async def budget(duration: float, callers: int) -> dict[str, Any]:
    """Share of the allowed requests sent by ``callers`` tasks in ``duration`` s, and 429s."""
    sent = 0
    rate_limited = 0
    with emulator_process("--rate-limit", "1", "--burst", "3") as env:
        async with RunComfy(
            env["RUNCOMFY_API_TOKEN"], trainer_url=env["RUNCOMFY_TRAINER_URL"], rate=1.0, burst=2
        ) as rc:
            stop = time.monotonic() + duration

            async def caller() -> None:
                nonlocal sent
                while time.monotonic() < stop:
                    await rc.request(LIST)
                    sent += 1

            start = time.monotonic()
            tasks = [asyncio.create_task(caller()) for _ in range(callers)]
            await asyncio.sleep(duration)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            elapsed = time.monotonic() - start
            rate_limited = rc.api_calls - sent - sum(1 for t in tasks if not t.cancelled())
    allowed = elapsed * 1.0 + 2  # the bucket's burst, then 1 per second
    return {
        "benchmark": f"rate budget use ({callers} callers, {duration:.0f}s)",
        "baseline": "allowed requests",
        "baseline_value": round(allowed, 1),
        "ours": sent,
        "unit": "requests",
        "ratio": round(sent / allowed, 3),
        "target": ">= 0.95, zero 429",
        "met": sent / allowed >= 0.95 and rate_limited <= 0,
        "extra_api_calls": rate_limited,
    }


async def run(smoke: bool) -> list[dict[str, Any]]:
    """Every benchmark of this module."""
    rows = [await overhead(total=200 if smoke else 3000, rounds=1 if smoke else 5)]
    rows.append(await budget(duration=4.0 if smoke else 60.0, callers=20 if smoke else 200))
    return rows


def main() -> None:
    """Run, print the table, write benchmarks/results/pipeline.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the tests")
    args = parser.parse_args()
    rows = asyncio.run(run(args.smoke))
    print_table(rows, ["benchmark", "baseline", "baseline_value", "ours", "unit", "ratio", "met"])
    if not args.smoke:
        write_results("pipeline", rows)


if __name__ == "__main__":
    main()
