"""Many model requests awaited at once on one client.

N requests are submitted and awaited concurrently (``asyncio.gather`` of submit-then-wait) against
an emulator in its own process, with the client's bucket at R requests/s. Figures:

- peak RSS growth of the client process (``ru_maxrss`` after minus before);
- wall time beside the budget's floor: every request needs at least 3 API calls (a submit, one
  ``/status`` that sees it finished, one ``/result``), so N requests need at least 3N/R seconds;
- the lag from each request's completion (the server's ``finished_at``) to its await returning,
  median and p95, beside two lower bounds computed from the same run:

  * **submit-first bound**: all N submits are user calls queued at once, and user calls overtake
    background polls (DESIGN, polling), so no poll can take a token before the last submit has
    gone out at T_s. From T_s on, tokens come at R/s; a finished request needs 2 more (status,
    result). The best any poller can do is to spend them in completion order, exactly when due
    (a clairvoyant poller that never wastes a poll). Replaying the run's own completion times
    through that schedule gives the smallest possible lag of every request; its median and p95
    are quoted. Our lag at or near this bound means no token was wasted and none went out late.
  * **any-schedule bound**: 2/R, two calls after completion with nothing else queued; reachable
    only by a client that lets a finished request's polls overtake new submits.

Run: ``python -m benchmarks.bench_models [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from typing import Any

from runcomfy_async import RunComfy

from ._common import emulator_process, print_table, write_results

#: API calls a request needs once it has finished: a status that sees it, then its result.
FOLLOW_UPS = 2


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def submit_first_lags(completions: list[float], submits_done: float, rate: float) -> list[float]:
    """The smallest lag of each request when polls may start only after the last submit.

    Args:
        completions: each request's completion time (the client's monotonic clock).
        submits_done: when the last submit took its token.
        rate: tokens per second.
    """
    lags = []
    slot = submits_done  # the last token handed out so far
    for done in sorted(completions):
        for _ in range(FOLLOW_UPS):
            slot = max(slot + 1.0 / rate, done)
        lags.append(slot - done)
    return lags


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
            completions: list[float] = []
            submitted: list[float] = []
            # finished_at is wall time; the bound is computed on the monotonic clock.
            offset = time.time() - time.monotonic()

            async def one(i: int) -> None:
                req = await rc.models.submit(
                    "blackforestlabs/flux-2/flash/text-to-image", {"prompt": f"cat {i}", "seed": i}
                )
                submitted.append(time.monotonic())
                result = await req.wait()
                assert result.finished_at is not None
                lags.append(time.time() - result.finished_at.timestamp())
                completions.append(result.finished_at.timestamp() - offset)

            start = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(n)))
            wall = time.monotonic() - start
            calls = rc.api_calls
    floor = 3 * n / rate
    bound = submit_first_lags(completions, max(submitted), rate)
    return {
        "benchmark": f"{n} model requests awaited at once ({rate:g} req/s)",
        "wall_s": round(wall, 1),
        "budget_floor_s": round(floor, 1),
        "ratio_floor_over_wall": round(floor / wall, 3),
        "api_calls": calls,
        "min_api_calls": 3 * n,
        "lag_median_s": round(statistics.median(lags), 2),
        "lag_p95_s": round(_quantile(lags, 0.95), 2),
        "bound_median_s": round(statistics.median(bound), 2),
        "bound_p95_s": round(_quantile(bound, 0.95), 2),
        "any_schedule_bound_s": round(FOLLOW_UPS / rate, 2),
        "peak_rss_growth_mib": round(_peak_rss_mib() - rss_before, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write benchmarks/results/models.json (``-smoke`` with --smoke)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the tests")
    args = parser.parse_args(argv)
    row = asyncio.run(run(n=40, rate=40.0) if args.smoke else run(n=1000, rate=20.0))
    print_table([row], list(row))
    path = write_results("models-smoke" if args.smoke else "models", [row], smoke=args.smoke)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
