"""Many model requests awaited at once on one client.

N requests are submitted and awaited concurrently against an emulator in its own process. Figures:
peak RSS of the client process, wall time beside the budget's floor (every request needs at least
a submit, one status poll that sees it finished and one result fetch, at R requests/s), and the
time from each request's completion (the server's ``finished_at``) to its await returning.

Run: ``python -m benchmarks.bench_models [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from typing import Any

from runcomfy_async import RunComfy

from ._common import emulator_process, print_table, write_results


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(n: int, rate: float) -> dict[str, Any]:
    """Submit and await ``n`` requests at ``rate`` requests/s; return the figures."""
    rss_before = _peak_rss_mib()
    with emulator_process(
        "--rate-limit", str(rate), "--burst", str(int(rate) + 2), "--speed", "50"
    ) as env:
        async with RunComfy(
            env["RUNCOMFY_API_TOKEN"], model_url=env["RUNCOMFY_MODEL_URL"], rate=rate, burst=2
        ) as rc:
            lags: list[float] = []

            async def one(i: int) -> None:
                req = await rc.models.submit("bench/flux/dev", {"prompt": f"cat {i}", "seed": i})
                result = await req.wait()
                assert result.finished_at is not None
                lags.append(time.time() - result.finished_at.timestamp())

            start = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(n)))
            wall = time.monotonic() - start
            calls = rc.api_calls
    floor = 3 * n / rate
    lags.sort()
    return {
        "benchmark": f"{n} model requests awaited at once ({rate:g} req/s)",
        "wall_s": round(wall, 1),
        "budget_floor_s": round(floor, 1),
        "ratio_floor_over_wall": round(floor / wall, 3),
        "api_calls": calls,
        "min_api_calls": 3 * n,
        "lag_median_s": round(statistics.median(lags), 2),
        "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 2),
        "peak_rss_growth_mib": round(_peak_rss_mib() - rss_before, 1),
    }


def main() -> None:
    """Run, print the table, write benchmarks/results/models.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the tests")
    args = parser.parse_args()
    row = asyncio.run(run(n=40, rate=40.0) if args.smoke else run(n=1000, rate=20.0))
    print_table([row], list(row))
    if not args.smoke:
        write_results("models", [row])


if __name__ == "__main__":
    main()
