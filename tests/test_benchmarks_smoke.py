"""The benchmark scripts run end to end in their ``--smoke`` mode (seconds, small sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"


def test_bench_uploads_smoke_writes_every_scenario() -> None:
    """``bench_uploads --smoke`` prints the table and writes figures for each tool and scenario."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_uploads", "--smoke"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "| scenario | tool |" in out.stdout
    data = json.loads((RESULTS / "uploads-smoke.json").read_text())
    tools = {(row["scenario"], row["tool"].split()[0]) for row in data["rows"]}
    assert {scenario for scenario, _ in tools} == {
        "signed PUT",
        "direct multipart",
        "40-file folder",
    }
    assert ("signed PUT", "curl") in tools
    assert ("direct multipart", "curl") in tools
    assert ("40-file folder", "vendor") in tools
    ours = [row for row in data["rows"] if row["tool"].startswith("runcomfy-async")]
    assert all(row["seconds"] > 0 for row in ours)
    folder = next(row for row in ours if row["scenario"] == "40-file folder")
    assert folder["api_calls"] <= 5
