"""Request pipeline cost and rate-budget use.

1. Client overhead, limiter off: ``rc.models.get(id).status()`` calls/s (the whole pipeline down
   to a typed snapshot) beside raw aiohttp GETs of the same ``/status`` URL decoded with
   ``json.loads``, 16 concurrent callers each, alternating rounds in the same run, median quoted
   (target: >= 0.75x raw).
2. Rate budget: 200 concurrent callers for D seconds at the real 1 request/s limit; how many of the
   allowed requests were sent, and how many 429s came back (target: >= 95 %, zero 429s).

Run: ``python -m benchmarks.bench_pipeline [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import aiohttp

from runcomfy_async import RunComfy
from runcomfy_async._protocol import API, RequestSpec

from ._common import emulator_process, print_table, write_results

LIST = RequestSpec(api=API.TRAINER, method="GET", path="/prod/v1/trainers/datasets")
CONCURRENCY = 16
RATE = 1.0


async def _raw(env: dict[str, str], path: str, total: int, concurrency: int) -> float:
    """Requests/s of bare aiohttp GETs with the bearer header, each answer decoded as JSON."""
    url = env["RUNCOMFY_MODEL_URL"] + path
    headers = {"Authorization": f"Bearer {env['RUNCOMFY_API_TOKEN']}"}
    left = total

    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.get(url, headers=headers) as resp:
                    resp.raise_for_status()
                    json.loads(await resp.read())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


async def _client(rc: RunComfy, request_id: str, total: int, concurrency: int) -> float:
    """Requests/s of ``rc.models.get(id).status()`` through the pipeline (bucket wide open)."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await rc.models.get(request_id).status()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


async def overhead(total: int, rounds: int) -> dict[str, Any]:
    """Median requests/s of both, alternating rounds so drift hits both alike.

    Both sides ask the same model request's ``/status`` at 16 concurrent callers; ours goes
    through limiter (wide open), retries, error mapping and the converter to a typed snapshot.
    """
    raw, ours = [], []
    with emulator_process("--rate-limit", "none", "--speed", "1000") as env:
        async with RunComfy(
            env["RUNCOMFY_API_TOKEN"], model_url=env["RUNCOMFY_MODEL_URL"], rate=1e9, burst=10**6
        ) as rc:
            req = await rc.models.submit(
                "blackforestlabs/flux-2/flash/text-to-image", {"prompt": "a cat"}
            )
            path = f"/v1/requests/{req.id}/status"
            await _raw(env, path, 200, CONCURRENCY)  # warm-up
            await _client(rc, req.id, 200, CONCURRENCY)
            for _ in range(rounds):
                raw.append(await _raw(env, path, total, CONCURRENCY))
                ours.append(await _client(rc, req.id, total, CONCURRENCY))
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
        "rounds": rounds,
        "requests_per_round": total,
        "concurrency": CONCURRENCY,
        "raw_runs": [round(x, 1) for x in raw],
        "ours_runs": [round(x, 1) for x in ours],
    }


async def _server_log(env: dict[str, str]) -> list[dict[str, Any]]:
    """What reached the emulator, from its own log (``GET /_emulator/log``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(env["RUNCOMFY_TRAINER_URL"] + "/_emulator/log?api=trainer") as resp,
    ):
        resp.raise_for_status()
        records: list[dict[str, Any]] = await resp.json()
        return records


async def budget(duration: float, callers: int) -> dict[str, Any]:
    """Share of the allowed requests sent by ``callers`` tasks in ``duration`` s, and 429s.

    "Allowed" is what the account limit admits in the measured window: 1 request/s times the
    window, plus the 2 our bucket may send at once when it starts (its burst). Sent requests
    and 429s are counted by the emulator (its request log), not by the client.
    """
    with emulator_process("--rate-limit", str(RATE), "--burst", "3") as env:
        async with RunComfy(
            env["RUNCOMFY_API_TOKEN"], trainer_url=env["RUNCOMFY_TRAINER_URL"], rate=RATE, burst=2
        ) as rc:
            stop = time.monotonic() + duration

            async def caller() -> None:
                while time.monotonic() < stop:
                    await rc.request(LIST)

            start = time.monotonic()
            tasks = [asyncio.create_task(caller()) for _ in range(callers)]
            await asyncio.sleep(duration)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            elapsed = time.monotonic() - start
        log = [r for r in await _server_log(env) if r["path"] == LIST.path]
    ok = sum(1 for r in log if 200 <= r["status"] < 300)
    rejected = sum(1 for r in log if r["status"] == 429)
    allowed = elapsed * RATE + 2
    return {
        "benchmark": f"rate budget use ({callers} callers, {duration:.0f}s)",
        "baseline": "allowed requests",
        "baseline_value": round(allowed, 1),
        "ours": ok,
        "unit": "requests",
        "ratio": round(ok / allowed, 3),
        "target": ">= 0.95, zero 429",
        "met": ok / allowed >= 0.95 and rejected == 0,
        "requests_429": rejected,
        "seconds": round(elapsed, 2),
    }


async def run(smoke: bool, only: str | None = None) -> list[dict[str, Any]]:
    """Every benchmark of this module (or the ``only`` one)."""
    rows = []
    if only in (None, "overhead"):
        rows.append(await overhead(total=200 if smoke else 3000, rounds=1 if smoke else 7))
    if only in (None, "budget"):
        rows.append(await budget(duration=4.0 if smoke else 60.0, callers=20 if smoke else 200))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write benchmarks/results/pipeline.json (``-smoke`` with --smoke)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the tests")
    parser.add_argument("--only", choices=("overhead", "budget"), help="run one benchmark")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.smoke, args.only))
    print_table(
        rows, ["benchmark", "baseline", "baseline_value", "ours", "unit", "ratio", "target", "met"]
    )
    if args.only is None:
        path = write_results("pipeline-smoke" if args.smoke else "pipeline", rows, smoke=args.smoke)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
