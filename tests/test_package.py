"""The package as it would be published: built, checked, installed in a clean venv, exercised.

`python -m build` makes the sdist and, from it, the wheel; `twine check --strict` accepts both.
The wheel is installed into a fresh venv that has no access to the repository. Its dependencies
are not downloaded: the venv sees this environment's site-packages through a ``.pth`` line
(appended after its own, so the installed wheel wins, and without running that directory's
``.pth`` files, so an editable install of the checkout stays invisible). There the package
imports from the venv, the emulator runs as ``python -m runcomfy_async.testing`` and answers the
installed client, and pytest finds the ``runcomfy_emulator`` fixture through the entry point.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

import runcomfy_async

REPO_ROOT = Path(__file__).resolve().parents[1]
#: What the emulator must announce for a client to reach it.
REQUIRED_VARIABLES = {
    "RUNCOMFY_API_TOKEN",
    "RUNCOMFY_USER_ID",
    "RUNCOMFY_TRAINER_URL",
    "RUNCOMFY_MODEL_URL",
    "RUNCOMFY_SERVER_URL",
}
#: Seconds any one step may take.
STEP_TIMEOUT = 180

CLIENT_SCRIPT = """
import asyncio, json, sys
from pathlib import Path

import runcomfy_async
from runcomfy_async import RunComfy


async def main() -> None:
    async with RunComfy() as rc:
        ds = await rc.datasets.create("packaged")
        info = await ds.status()
    print(json.dumps({"file": runcomfy_async.__file__, "version": runcomfy_async.__version__,
                      "status": info.status.value, "typed": (Path(runcomfy_async.__file__).parent
                      / "py.typed").is_file()}))


asyncio.run(main())
"""

PLUGIN_TEST = """
import pytest


@pytest.mark.asyncio
@pytest.mark.runcomfy_emulator(rate_limit=None, speed=1000)
async def test_the_fixture_serves_a_client(runcomfy_emulator):
    async with runcomfy_emulator.client() as rc:
        ds = await rc.datasets.create("from-the-fixture")
        assert (await ds.status()).name == "from-the-fixture"
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or a failure showing everything it printed."""
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
        env=env,
    )
    assert done.returncode == 0, (
        f"{args}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    )
    return done.stdout


def _stderr(process: subprocess.Popen[str]) -> str:
    return process.stderr.read() if process.stderr is not None else ""


def exported(emulator: subprocess.Popen[str]) -> dict[str, str]:
    """The variables the emulator's ``export NAME=value`` lines set, read until all are there."""
    assert emulator.stdout is not None
    found: dict[str, str] = {}
    while not found.keys() >= REQUIRED_VARIABLES:
        line = emulator.stdout.readline()
        assert line, f"the emulator stopped before announcing itself: {_stderr(emulator)}"
        words = shlex.split(line)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            found[name] = value
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """An environment without PYTHONPATH or the suite's own settings: only what a user has."""
    keep = {"PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT"}
    return {**{k: v for k, v in os.environ.items() if k in keep}, **extra}


@pytest.mark.xdist_group("heavy")
def test_the_built_wheel_installs_and_works_without_the_repository(tmp_path: Path) -> None:
    """Wheel and sdist pass twine; installed alone, the package imports, emulates and plugs in."""
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, REPO_ROOT, cwd=tmp_path)
    version = runcomfy_async.__version__
    wheel = dist / f"runcomfy_async-{version}-py3-none-any.whl"
    sdist = dist / f"runcomfy_async-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist, cwd=tmp_path)

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"runcomfy_async-{version}.dist-info/METADATA").decode()
        entry_points = zf.read(f"runcomfy_async-{version}.dist-info/entry_points.txt").decode()
    assert "runcomfy_async/py.typed" in names
    assert "runcomfy_async/testing/plugin.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    assert re.search(rf"^Version: {re.escape(version)}$", metadata, re.MULTILINE)
    assert "runcomfy_emulator = runcomfy_async.testing.plugin" in entry_points

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own_site = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
        ).strip()
    )
    (own_site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-deps",
        "--disable-pip-version-check", "-q", wheel, cwd=tmp_path,
    )  # fmt: skip

    # The emulator as a process, and the installed client talking to it.
    work = tmp_path / "work"
    work.mkdir()
    with subprocess.Popen(
        [str(python), "-m", "runcomfy_async.testing", "--rate-limit", "none"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as emulator:
        try:
            out = run(python, "-c", CLIENT_SCRIPT, cwd=work, env=clean_env(**exported(emulator)))
        finally:
            emulator.terminate()
    seen = json.loads(out)
    assert Path(seen["file"]).is_relative_to(own_site), seen["file"]
    assert seen["version"] == version
    assert seen["typed"] is True
    assert seen["status"] == "DRAFT"

    # The pytest plugin, found through the installed entry point.
    (work / "test_uses_fixture.py").write_text(textwrap.dedent(PLUGIN_TEST))
    out = run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-o", "asyncio_default_fixture_loop_scope=function", "test_uses_fixture.py",
        cwd=work, env=clean_env(),
    )  # fmt: skip
    assert "1 passed" in out
