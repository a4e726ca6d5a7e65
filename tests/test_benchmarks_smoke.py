"""The benchmark scripts run end to end in their ``--smoke`` mode (seconds, small sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _smoke(module: str, results: Path) -> str:
    """Run ``python -m benchmarks.<module> --smoke`` with results sent to ``results``."""
    out = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--smoke"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
        env={**os.environ, "RUNCOMFY_BENCH_RESULTS": str(results)},
    )
    return out.stdout


def test_bench_uploads_smoke_writes_every_scenario(tmp_path: Path) -> None:
    """``bench_uploads --smoke`` prints the table and writes figures for each tool and scenario."""
    stdout = _smoke("bench_uploads", tmp_path)
    assert "| scenario | tool |" in stdout
    data = json.loads((tmp_path / "uploads-smoke.json").read_text())
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


def test_bench_pipeline_smoke() -> None:
    """``bench_pipeline --smoke`` measures client overhead beside raw aiohttp and budget use."""
    stdout = _smoke("bench_pipeline", REPO_ROOT / "unused")
    assert "client overhead (limiter off)" in stdout
    assert "rate budget use" in stdout


def test_bench_models_smoke() -> None:
    """``bench_models --smoke`` awaits a batch of model requests and reports the lag."""
    stdout = _smoke("bench_models", REPO_ROOT / "unused")
    assert "model requests awaited at once" in stdout
    assert "lag_median_s" in stdout


def test_bench_limiter_smoke() -> None:
    """``bench_limiter --smoke`` compares per-process and Redis buckets."""
    stdout = _smoke("bench_limiter", REPO_ROOT / "unused")
    assert "RedisTokenBucket" in stdout
