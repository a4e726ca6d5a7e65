"""Shared benchmark plumbing: the machine's description, an emulator in its own process, output."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Where results go; tests point it at a temporary folder so smoke runs leave the tree clean.
RESULTS = Path(os.environ.get("RUNCOMFY_BENCH_RESULTS") or Path(__file__).parent / "results")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextmanager
def emulator_process(
    *args: str, module: str = "runcomfy_async.testing"
) -> Iterator[dict[str, str]]:
    """Run ``python -m runcomfy_async.testing`` in a child process; yield its env settings.

    A separate process keeps the emulator's CPU use out of the measured client's. ``module``
    names another entry point that prints the same ``export`` lines (one that configures the
    emulator further before serving).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    env: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        while len(env) < 5:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the emulator exited before printing its settings")
            match = re.match(r"export (\w+)=(.*)", line.strip())
            if match:
                env[match.group(1)] = match.group(2).strip("'\"")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def write_results(name: str, rows: Sequence[dict[str, Any]], **extra: Any) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the machine description."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "rows": list(rows), **extra}, indent=2))
    return path


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A Markdown table of ``rows`` on stdout."""
    def fmt(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
