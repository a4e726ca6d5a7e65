"""Serverless runs at the account's real rate: N concurrent runs with overrides at 1 request/s.

The acceptance scenario at full strictness: the emulator (in its own process) enforces 1 req/s
with a burst of 3, the client paces itself at 1 req/s, and N ``deployment.run`` calls with
overrides run at once; every output is downloaded. Figures: wall time beside the budget's floor
(each run needs at least 3 rate-limited calls: the submit, one ``/status`` that sees it
finished, one ``/result``; so N runs need 3N/R seconds), API calls beside that minimum, and the
429 answers the client provoked (the target is none).

Run: ``python -m benchmarks.bench_serverless [--smoke] [--runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runcomfy_async import PollPolicy, RunComfy, RunComfyError

from ._common import emulator_process, print_table, write_results


async def run(n: int, rate: float) -> dict[str, Any]:
    """Create a deployment and run it ``n`` times at once at ``rate`` requests/s."""
    with (
        emulator_process("--rate-limit", str(rate), "--burst", "3", "--speed", "200") as env,
        tempfile.TemporaryDirectory() as tmp,
    ):
        async with RunComfy(
            env["RUNCOMFY_API_TOKEN"],
            user_id=env["RUNCOMFY_USER_ID"],
            server_url=env["RUNCOMFY_SERVER_URL"],
            rate=rate,
            burst=2,
            max_retries=0,  # a 429 would surface as an error instead of being absorbed
        ) as rc:
            workflow_id = (await rc.machines.workflows())[0].workflow_id
            dep = await rc.deployments.create(
                name="bench", workflow_id=workflow_id, workflow_version="v1",
                hardware="AMPERE_48", max_instances=10, queue_size=2,
            )
            poll = PollPolicy(initial=2.0, factor=1.5, max_interval=10.0)
            errors: list[str] = []

            async def one(i: int) -> int:
                try:
                    outputs = await dep.run({"6": {"inputs": {"text": f"cat {i}"}}}, poll=poll)
                except RunComfyError as exc:
                    errors.append(type(exc).__name__)
                    return 0
                paths = await rc.deployments.download_outputs(outputs, Path(tmp) / str(i))
                return len(paths)

            start = time.monotonic()
            files = await asyncio.gather(*(one(i) for i in range(n)))
            wall = time.monotonic() - start
            calls = rc.api_calls - 2  # minus the workflow list and the create
    return {
        "benchmark": f"{n} serverless runs at once ({rate:g} req/s)",
        "wall_s": round(wall, 1),
        "budget_floor_s": round(3 * n / rate, 1),
        "api_calls": calls,
        "min_api_calls": 3 * n,
        "files_downloaded": sum(files),
        "errors": len(errors),
        "rate_limited": errors.count("RateLimitError"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write benchmarks/results/serverless.json (``-smoke`` with --smoke)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="5 runs, seconds long")
    parser.add_argument("--runs", type=int, default=50, help="concurrent runs (default 50)")
    args = parser.parse_args(argv)
    row = asyncio.run(run(n=5 if args.smoke else args.runs, rate=1.0))
    print_table([row], list(row))
    path = write_results("serverless-smoke" if args.smoke else "serverless", [row])
    print(f"\nwrote {path}")
    return 0 if row["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
