"""Latency of many ``rc.models.run`` calls sharing one rate budget, beside a perfect schedule.

N calls start at once on one client (a FastAPI app whose users all press the button together);
each needs a submit, status polls until its run is over, and a result fetch, all through the one
account budget of 1 request/s. Figures per scenario, in account seconds from the common start:
the first answer, the median and p95 answer, and the last (total), plus the API calls spent.

Each scenario runs in the same process under both orders, alternating, for a few rounds (each
figure is the median over the rounds): the client's default latency order, and
``TokenBucket(order="arrival")``, the order before it (user calls, submits included, before
every poll; first come first served within a priority), as the baseline.

**Time scale.** The emulator runs in its own process with every duration divided by a scale
factor S, and the client's rate, the emulator's account limit and the polling schedule are
multiplied by S, so the whole schedule plays S times faster; figures are multiplied back by S.
Round trips (about a millisecond) are not scaled: they count S times too much, a small error
at S <= 40 against a 1 s token. The emulator enforces no account limit here (the client paces
itself; a 429 from timing jitter would pause the client a real second, S seconds of schedule),
so figures differ between the orders only by the order, and by about 1 % of run-to-run noise.

**The bound** is the schedule of a clairvoyant client that knows when every run ends (it never
polls too early) and spends each token on the call closest to an answer: a result fetch, else
the status poll of a finished run, else the next submit (:func:`perfect_answers`). Every answer
needs three tokens, so no schedule beats it by much; ours near it means few wasted polls and
none late.

Run: ``python -m benchmarks.bench_models [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import resource
import statistics
import sys
import time
from typing import Any

import attrs

from runcomfy_async import PollPolicy, RunComfy, TokenBucket
from runcomfy_async.resources._queued import DEFAULT_POLL

from ._common import emulator_process, print_table, write_results

#: API calls a run needs at the least: a submit, a status that sees it over, its result.
CALLS_PER_RUN = 3
#: The account's budget and the client's default burst.
RATE, BURST = 1.0, 2
ORDERS = ("latency", "arrival")


@attrs.frozen(kw_only=True)
class Scenario:
    """``n`` runs of a model that takes ``duration`` s, played ``scale`` times faster, ``rounds``
    times per order."""

    name: str
    n: int
    duration: float
    scale: float
    rounds: int = 1


FULL = (
    Scenario(name="20 runs, 2 s model", n=20, duration=2.0, scale=10.0, rounds=3),
    Scenario(name="20 runs, 60 s model", n=20, duration=60.0, scale=10.0, rounds=5),
    Scenario(name="1,000-request batch, 4 s model", n=1000, duration=4.0, scale=25.0),
)
SMOKE = (
    Scenario(name="8 runs, 2 s model", n=8, duration=2.0, scale=40.0),
    Scenario(name="40-request batch, 4 s model", n=40, duration=4.0, scale=80.0),
)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def perfect_answers(n: int, duration: float, rate: float = RATE, burst: int = BURST) -> list[float]:
    """Answer times of ``n`` runs started at 0 under a clairvoyant schedule.

    Tokens come from a bucket of ``burst`` (full at 0) refilled at ``rate``. Each token goes
    to a pending result fetch, else to the status poll of a run already over, else to the next
    submit; with nothing to do the client waits for the next run to end.
    """
    now, tokens = 0.0, float(burst)
    submits, polled = n, 0
    ending: list[float] = []  # end times of submitted runs not yet seen over
    answers: list[float] = []
    while len(answers) < n:
        at = now if tokens >= 1.0 else now + (1.0 - tokens) / rate
        if not polled and not submits:
            at = max(at, ending[0])
        tokens = min(float(burst), tokens + (at - now) * rate) - 1.0
        now = at
        if polled:
            polled -= 1
            answers.append(now)
        elif ending and ending[0] <= now:
            heapq.heappop(ending)
            polled += 1
        else:
            submits -= 1
            heapq.heappush(ending, now + duration)
    return answers


def _figures(answers: list[float]) -> dict[str, float]:
    return {
        "first_s": round(min(answers), 1),
        "median_s": round(statistics.median(answers), 1),
        "p95_s": round(_quantile(answers, 0.95), 1),
        "total_s": round(max(answers), 1),
    }


MODEL = "blackforestlabs/flux-2/flash/text-to-image"  # in the emulator's catalog


async def _play(env: dict[str, str], scenario: Scenario, order: str) -> dict[str, Any]:
    """Run the scenario once with the limiter ``order``; answer times in account seconds."""
    s = scenario.scale
    poll = PollPolicy(
        initial=DEFAULT_POLL.initial / s,
        factor=DEFAULT_POLL.factor,
        max_interval=DEFAULT_POLL.max_interval / s,
        jitter=DEFAULT_POLL.jitter,
    )
    limiter = TokenBucket(RATE * s, BURST, order=order)  # type: ignore[arg-type]
    async with RunComfy(
        env["RUNCOMFY_API_TOKEN"], model_url=env["RUNCOMFY_MODEL_URL"], limiter=limiter
    ) as rc:
        answers: list[float] = []
        start = time.monotonic()

        async def one(i: int) -> None:
            await rc.models.run(MODEL, {"prompt": f"cat {i}", "seed": i}, poll=poll)
            answers.append((time.monotonic() - start) * s)

        await asyncio.gather(*(one(i) for i in range(scenario.n)))
        calls = rc.api_calls
    await limiter.aclose()
    return {"answers": answers, "api_calls": calls}


async def measure(scenario: Scenario) -> list[dict[str, Any]]:
    """Both orders on one emulator, alternating, ``rounds`` times; one row per order holding
    the median of each figure over the rounds."""
    s = scenario.scale
    rss_before = _peak_rss_mib()
    bound = _figures(perfect_answers(scenario.n, scenario.duration))
    played: dict[str, list[dict[str, Any]]] = {order: [] for order in ORDERS}
    # The emulator enforces no account limit: the client paces itself, and a 429 caused by
    # timing jitter would pause it a real second, S seconds of the scaled schedule.
    with emulator_process(
        "--speed", str(s), "--rate-limit", "0",
        "--model", f"{MODEL}={scenario.duration}", module="benchmarks._model_emulator",
    ) as env:
        for _ in range(scenario.rounds):
            for order in ORDERS:
                run = await _play(env, scenario, order)
                played[order].append({**_figures(run["answers"]), "api_calls": run["api_calls"]})
    rows = []
    for order, runs in played.items():
        rows.append({
            "scenario": scenario.name,
            "order": order if order == "latency" else "arrival (before)",
            **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
            **{f"bound_{k}": v for k, v in bound.items()},
            "min_api_calls": CALLS_PER_RUN * scenario.n,
            "rounds": scenario.rounds,
            "scale": s,
        })
    rows[0]["peak_rss_growth_mib"] = round(_peak_rss_mib() - rss_before, 1)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write benchmarks/results/models.json (``-smoke`` with --smoke)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the tests")
    args = parser.parse_args(argv)
    rows = []
    for scenario in SMOKE if args.smoke else FULL:
        rows.extend(asyncio.run(measure(scenario)))
    columns = ["scenario", "order", "first_s", "median_s", "p95_s", "total_s", "bound_first_s",
               "bound_median_s", "bound_p95_s", "bound_total_s", "api_calls", "min_api_calls"]
    print_table(rows, columns)
    path = write_results("models-smoke" if args.smoke else "models", rows, smoke=args.smoke)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
