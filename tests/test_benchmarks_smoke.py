"""The benchmark suite runs end to end in its ``--smoke`` mode (seconds, small sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

#: One xdist worker runs this file, so the session fixture's smoke run happens once.
pytestmark = pytest.mark.xdist_group("heavy")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``python -m benchmarks --smoke`` once, results sent to a temporary folder."""
    results = tmp_path_factory.mktemp("bench-results")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "RUNCOMFY_BENCH_RESULTS": str(results)},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout, results


def _rows(results: Path, name: str) -> list[dict[str, Any]]:
    data = json.loads((results / f"{name}-smoke.json").read_text())
    assert data["machine"]["cores"] >= 1
    assert data["smoke"] is True
    rows: list[dict[str, Any]] = data["rows"]
    return rows


def test_uploads_smoke_writes_every_scenario_and_the_sweep(smoke_run: tuple[str, Path]) -> None:
    """Uploads: each scenario beside its baselines, and our memory flat across the size sweep."""
    stdout, results = smoke_run
    assert "| scenario | tool |" in stdout
    rows = _rows(results, "uploads")
    tools = {(row["scenario"], row["tool"].split()[0]) for row in rows}
    assert {scenario for scenario, _ in tools} == {
        "signed PUT",
        "direct multipart",
        "40-file folder",
    }
    assert {("signed PUT", "curl"), ("signed PUT", "naive"), ("direct multipart", "curl")} <= tools
    assert ("40-file folder", "vendor") in tools
    sweep = [r for r in rows if r["scenario"] == "signed PUT" and r["tool"] == "runcomfy-async"]
    assert len({r["bytes"] for r in sweep}) == 3
    assert all(r["seconds"] > 0 and r["peak_rss_growth_MiB"] < 64 for r in sweep)
    folder = next(r for r in rows if r["tool"] == "runcomfy-async upload_folder")
    assert folder["api_calls"] <= 5


def test_throughput_smoke_measures_every_transfer_beside_curl(
    smoke_run: tuple[str, Path],
) -> None:
    """Fast receiver: PUT, multipart and download over HTTP and verified HTTPS, ours beside curl
    and raw aiohttp, each with CPU per GiB, and a verdict against its target."""
    rows = _rows(smoke_run[1], "throughput")
    seen = {(r["scheme"], r["op"], r["tool"].split()[0]) for r in rows}
    for scheme in ("http", "https"):
        for op in ("put", "form", "get"):
            tools = {"runcomfy-async", "raw", "curl"}
            assert {(scheme, op, tool) for tool in tools} <= seen
    assert all(r["seconds"] > 0 and r["cpu_s_per_GiB"] > 0 for r in rows)
    verdicts = json.loads((smoke_run[1] / "throughput-smoke.json").read_text())["verdicts"]
    assert len(verdicts) == 6
    assert all(v["met"] in ("yes", "NO") and v["target"].startswith(">=") for v in verdicts)
    assert all(v["rss_growth_MiB"] < 64 for v in verdicts)


def test_uploads_smoke_plots_the_sweep(smoke_run: tuple[str, Path]) -> None:
    """The throughput/RSS plot is written as a PNG (matplotlib comes with the dev extra)."""
    png = smoke_run[1] / "uploads_sweep-smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_smoke_measures_overhead_and_budget(smoke_run: tuple[str, Path]) -> None:
    """Pipeline: client overhead beside raw aiohttp, and rate-budget use with the server's 429s."""
    rows = _rows(smoke_run[1], "pipeline")
    overhead, budget = rows
    assert overhead["baseline"] == "raw aiohttp GET"
    assert overhead["ours"] > 0 and overhead["baseline_value"] > 0
    assert budget["requests_429"] == 0
    assert budget["ours"] > 0


def test_models_smoke_reports_latency_beside_the_bound_and_the_old_order(
    smoke_run: tuple[str, Path],
) -> None:
    """Models: each scenario under both orders, beside the clairvoyant bound."""
    rows = _rows(smoke_run[1], "models")
    assert {row["order"] for row in rows} == {"latency", "arrival (before)"}
    for row in rows:
        assert row["api_calls"] >= row["min_api_calls"]
        assert row["first_s"] <= row["median_s"] <= row["p95_s"] <= row["total_s"]
        # Nobody beats the clairvoyant schedule (by more than scaled round trips).
        assert row["bound_median_s"] <= row["median_s"] + 1.0


def test_limiter_smoke_compares_the_buckets(smoke_run: tuple[str, Path]) -> None:
    """Limiter: per-process and Redis buckets are both measured."""
    limiters = {row["limiter"] for row in _rows(smoke_run[1], "limiter")}
    assert limiters == {"per-process TokenBucket", "shared RedisTokenBucket"}


def test_validate_smoke_compares_cached_and_compiled_checks(smoke_run: tuple[str, Path]) -> None:
    """Validate: a check with the cached validator beside one that compiles the schema."""
    (row,) = _rows(smoke_run[1], "validate")
    assert 0 < row["ours_us"] < row["baseline_us"]


def test_summary_table_names_every_target(smoke_run: tuple[str, Path]) -> None:
    """The summary puts each figure beside its baseline and target, and is written as JSON."""
    stdout, results = smoke_run
    assert "| figure | ours | baseline |" in stdout
    rows = json.loads((results / "summary-smoke.json").read_text())["rows"]
    figures = " ".join(row["figure"] for row in rows)
    for needle in ("HTTPS signed PUT", "HTTP download", "emulator (end to end)", "signed PUT",
                   "direct multipart", "folder", "client overhead",
                   "rate budget", "2 s model", "processes", "validate=True"):
        assert needle in figures
    assert all(row["target"] for row in rows)


def test_perfect_schedule_spends_each_token_closest_to_an_answer() -> None:
    """The bound: a result fetch, else a finished run's poll, else a submit; 3 tokens a run."""
    from benchmarks.bench_models import perfect_answers

    # 1 token/s, burst 2, 2 s runs: both submits at 0; the bucket refills while they run, so
    # the first run's poll and result go at 2, the second's at 3 and 4.
    assert perfect_answers(2, 2.0) == [2.0, 4.0]
    # Twenty: submits fill the idle tokens, then each answer costs two more.
    assert perfect_answers(20, 2.0)[:3] == [3.0, 5.0, 7.0]
    assert perfect_answers(1, 0.0) == [1.0]
    assert perfect_answers(3, 60.0) == [60.0, 62.0, 64.0]
