"""The documentation site (docs/ and the reference built from the docstrings) builds strictly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.xdist_group("heavy")
def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds: no broken link, no docstring griffe cannot read."""
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (site / "reference" / "client" / "index.html").read_text(encoding="utf-8")
    # The reference is generated from the package, not written by hand: a few names prove it.
    for name in ("RunComfy", "TrainingJob", "RunComfyError", "UploadReport"):
        assert f'id="runcomfy_async.{name}"' in reference, name
    assert 'id="runcomfy_async.testing.Emulator"' in (
        site / "reference" / "testing" / "index.html"
    ).read_text(encoding="utf-8")
