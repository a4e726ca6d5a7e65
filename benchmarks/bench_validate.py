"""What ``validate=True`` costs per submit on the client: one input check against a model schema.

Ours checks with the validator compiled once per model (what ``ModelCatalog.check`` keeps for a
client's life); the baseline compiles the schema for every check (meta-schema check included),
which is what checking without that cache costs. Medians of alternating rounds, the built-in
FLUX Kontext schema, valid inputs (the common case: a check that finds nothing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from runcomfy_async._input_schema import check_inputs, compile_schema
from runcomfy_async.testing._catalog_data import DEFAULT_MODELS
from runcomfy_async.types.catalog import ModelInfo

from ._common import print_table, write_results

_INPUTS = {"prompt": "a dog", "image_url": "https://example.com/d.png", "seed": 5}


def _per_check_us(model: ModelInfo, validator: Any, n: int) -> float:
    """Microseconds per check over ``n`` checks (``validator`` None: compile each time)."""
    started = time.perf_counter()
    for _ in range(n):
        check_inputs(model, _INPUTS, validator)
    return (time.perf_counter() - started) / n * 1e6


def run(n: int, rounds: int) -> dict[str, Any]:
    """Alternate cached and uncached rounds; the medians and their ratio."""
    model = ModelInfo(model_id="bench/flux", input_schema=DEFAULT_MODELS[0]["input_schema"])
    validator = compile_schema(model.input_schema)
    cached, uncached = [], []
    for _ in range(rounds):
        cached.append(_per_check_us(model, validator, n))
        uncached.append(_per_check_us(model, None, max(n // 20, 1)))
    ours, base = statistics.median(cached), statistics.median(uncached)
    return {
        "benchmark": "validate=True input check",
        "ours_us": round(ours, 1),
        "baseline": "schema compiled per check",
        "baseline_us": round(base, 1),
        "ratio": round(base / ours, 1),
        "target": "<= 1000 us (1/1000 of the 1 req/s budget)",
        "met": ours <= 1000,
        "checks_per_round": n,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write benchmarks/results/validate.json (``-smoke`` with --smoke)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the tests")
    args = parser.parse_args(argv)
    row = run(n=200, rounds=3) if args.smoke else run(n=5000, rounds=7)
    print_table([row], list(row))
    path = write_results("validate-smoke" if args.smoke else "validate", [row], smoke=args.smoke)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
