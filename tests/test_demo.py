"""`runcomfy demo` and `python -m runcomfy_async.demo`: the whole flow runs to completion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from runcomfy_async.cli import cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_flow(tmp_path: Path) -> None:
    """The demo uploads, trains, downloads, runs a model and a machine; --json sums it up."""
    result = CliRunner().invoke(
        cli,
        ["--json", "demo", "--no-rate-limit", "--speed", "500", "--keep", str(tmp_path)],
        env={"RUNCOMFY_API_TOKEN": "", "RUNCOMFY_TRAINER_URL": "https://unused.invalid"},
    )
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.stdout)
    assert summary["emulator_url"].startswith("http://127.0.0.1:")
    assert summary["uploaded"] == 24
    assert len(summary["artifacts"]) == 7
    assert len(summary["model_outputs"]) == 1
    assert len(summary["comfy_outputs"]) == 1
    assert summary["rate_limited"] == 0
    assert summary["api_calls"] == sum(step["api_calls"] for step in summary["steps"])
    for path in [*summary["artifacts"], *summary["model_outputs"], *summary["comfy_outputs"]]:
        assert Path(path).is_file()
        assert Path(path).is_relative_to(tmp_path)
    assert "8/8 Clean up" in result.stderr
    assert "\x1b[" not in result.stderr


def test_demo_module_runs_as_the_readme_says(tmp_path: Path) -> None:
    """`python -m runcomfy_async.demo` (./scripts/demo) prints every step and a summary."""
    done = subprocess.run(
        [sys.executable, "-m", "runcomfy_async.demo", "--no-rate-limit", "--speed", "500"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr
    for n in range(1, 9):
        assert f"{n}/8 " in done.stdout
    assert "API calls in" in done.stdout
    assert done.stderr == ""
