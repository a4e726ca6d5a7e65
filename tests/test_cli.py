"""The ``runcomfy`` command driven through its entry point against a real emulator.

The emulator runs on its own event loop in a background thread (each CLI command runs its own
``asyncio.run``), or as a real ``runcomfy emulator`` process for the subprocess tests.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from click.testing import CliRunner, Result
from rich.console import Console

from runcomfy_async.cli import cli
from runcomfy_async.cli.demo import TEMPLATE, make_dataset
from runcomfy_async.cli.progress import Reporter
from runcomfy_async.testing import Emulator
from runcomfy_async.types.uploads import (
    BytesSent,
    FileDone,
    FileStarted,
    UploadMethod,
    UploadPlanned,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNCOMFY = REPO_ROOT / ".venv" / "bin" / "runcomfy"
T = TypeVar("T")


class ThreadedEmulator:
    """An :class:`Emulator` serving from its own event loop in a daemon thread."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emu: Emulator = self.call(Emulator(**kwargs).start())

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the emulator's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the emulator's loop (its state is not thread-safe)."""

        async def wrapped() -> T:
            return fn()

        return self.call(wrapped())  # type: ignore[no-any-return]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment that points ``runcomfy`` at this emulator."""
        emu = self.emu
        return {
            "RUNCOMFY_API_TOKEN": emu.token,
            "RUNCOMFY_USER_ID": emu.user_id,
            "RUNCOMFY_TRAINER_URL": emu.url,
            "RUNCOMFY_MODEL_URL": emu.url,
            "RUNCOMFY_SERVER_URL": emu.url,
            "RUNCOMFY_RATE": "200",
            **extra,
        }

    def close(self) -> None:
        """Stop the emulator, then the loop and its thread."""
        self.call(self.emu.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedEmulator]:
    """One fast emulator (no rate limit, time x1000) shared by this module's tests."""
    threaded = ThreadedEmulator(rate_limit=None, speed=1000.0)
    try:
        yield threaded
    finally:
        threaded.close()


@pytest.fixture
def invoke(server: ThreadedEmulator) -> Callable[..., Result]:
    """Run ``runcomfy ARGS`` in-process (CliRunner) against the emulator; check the exit code."""
    runner = CliRunner()

    def run(*args: str, code: int = 0, env: Mapping[str, str] | None = None) -> Result:
        # A wide, fixed terminal: tables and summaries never wrap, whoever runs the suite.
        wide = {"COLUMNS": "200"}
        result = runner.invoke(cli, list(args), env={**wide, **server.env(), **(env or {})})
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        return result

    return run


def one_error_line(result: Result) -> str:
    """The single ``runcomfy: error: ...`` line a failure prints on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("runcomfy: error: ")
    return lines[0]


def no_progress_drawn(text: str) -> None:
    """No bars, carriage returns or escape codes: what a pipe must receive."""
    assert "\r" not in text
    assert "\x1b[" not in text
    assert "━" not in text


def ready_dataset(invoke: Callable[..., Result], name: str, folder: Path) -> dict[str, Any]:
    """Upload a small captioned folder into ``name`` and wait for READY; the JSON answer."""
    make_dataset(folder, count=3)
    result = invoke("--json", "datasets", "upload", name, str(folder), "--wait")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


# -- framework -------------------------------------------------------------------------------


def test_help_lists_every_group_and_exit_codes(invoke: Callable[..., Result]) -> None:
    """`runcomfy --help` names each command group and documents the exit codes."""
    out = invoke("--help").stdout
    for name in ("datasets", "jobs", "models", "machines", "deployments", "emulator", "demo"):
        assert name in out
    assert "130 interrupted" in out


def test_unknown_command_is_a_usage_error(invoke: Callable[..., Result]) -> None:
    """A misspelt subcommand exits 2 (click's usage error) without a traceback."""
    result = invoke("datasets", "lst", code=2)
    assert "No such command" in result.stderr


def test_missing_token_is_a_setup_error(invoke: Callable[..., Result]) -> None:
    """No token at all exits 2 with one line saying where to set it."""
    result = invoke("datasets", "list", code=2, env={"RUNCOMFY_API_TOKEN": ""})
    assert "RUNCOMFY_API_TOKEN" in one_error_line(result)


def test_wrong_token_is_an_api_error(invoke: Callable[..., Result]) -> None:
    """A token the service refuses exits 3 with the cause, the fix, and no token in it."""
    result = invoke("datasets", "list", code=3, env={"RUNCOMFY_API_TOKEN": "rc_wrong_token"})
    line = one_error_line(result)
    assert "HTTP 401" in line
    assert "RUNCOMFY_API_TOKEN" in line
    assert "rc_wrong_token" not in result.output


# -- datasets --------------------------------------------------------------------------------


def test_datasets_create_list_status_delete(invoke: Callable[..., Result]) -> None:
    """The dataset lifecycle from the shell; --json works before and after the subcommand."""
    created = invoke("datasets", "create", "cli-cats")
    assert "cli-cats" in created.stdout
    assert "DRAFT" in created.stdout
    listed = json.loads(invoke("--json", "datasets", "list").stdout)
    (info,) = [d for d in listed if d["name"] == "cli-cats"]
    status = json.loads(invoke("datasets", "status", "cli-cats", "--json").stdout)
    assert status["id"] == info["id"]
    assert status["status"] == "DRAFT"
    by_id = invoke("datasets", "status", info["id"])
    assert info["id"] in by_id.stdout
    deleted = json.loads(invoke("--json", "datasets", "delete", "cli-cats").stdout)
    assert deleted == {"id": info["id"], "deleted": True}
    remaining = json.loads(invoke("--json", "datasets", "list").stdout)
    assert all(d["name"] != "cli-cats" for d in remaining)


def test_datasets_errors(invoke: Callable[..., Result]) -> None:
    """Unknown dataset -> exit 3 naming the fix; taken name -> 3; missing argument -> 2."""
    line = one_error_line(invoke("datasets", "status", "no-such-dataset", code=3))
    assert "datasets status failed: HTTP 404" in line
    assert "runcomfy datasets list" in line
    invoke("datasets", "create", "cli-dupe")
    assert "HTTP 409" in one_error_line(invoke("datasets", "create", "cli-dupe", code=3))
    assert "Missing argument" in invoke("datasets", "create", code=2).stderr


def test_datasets_upload_folder_resumes(
    invoke: Callable[..., Result], server: ThreadedEmulator, tmp_path: Path
) -> None:
    """A folder upload stores every file; running it again skips them all (resume)."""
    folder = tmp_path / "dogs"
    files = make_dataset(folder, count=4)
    first = invoke("--json", "datasets", "upload", "cli-dogs", str(folder), "--wait")
    answer = json.loads(first.stdout)
    assert sorted(f["filename"] for f in answer["upload"]["uploaded"]) == sorted(
        p.name for p in files
    )
    assert answer["dataset"]["status"] == "READY"
    stored = server.run(lambda: server.emu.stored_files(answer["upload"]["dataset_id"]))
    assert {name: size for name, (size, _) in stored.items()} == {
        p.name: p.stat().st_size for p in files
    }
    no_progress_drawn(first.stderr)
    again = json.loads(invoke("--json", "datasets", "upload", "cli-dogs", str(folder)).stdout)
    assert again["upload"]["uploaded"] == []
    assert len(again["upload"]["skipped"]) == len(files)
    table = invoke("datasets", "upload", "cli-dogs", str(folder))
    assert "0 uploaded, 8 skipped, 0 failed" in table.stdout


def test_datasets_upload_takes_urls(
    invoke: Callable[..., Result], server: ThreadedEmulator, tmp_path: Path
) -> None:
    """An http(s) argument is streamed from its host into the dataset beside local files."""
    image = os.urandom(1500)

    async def start() -> web.AppRunner:
        async def serve(request: web.Request) -> web.Response:
            return web.Response(body=image)

        app = web.Application()
        app.router.add_get("/pics/{name}", serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = server.call(start())
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/pics/cat.png"
        caption = tmp_path / "cat.txt"
        caption.write_text("a cat")
        result = invoke("--json", "datasets", "upload", "cli-urls", url, str(caption))
        answer = json.loads(result.stdout)
        uploaded = sorted(f["filename"] for f in answer["upload"]["uploaded"])
        assert uploaded == ["cat.png", "cat.txt"]
        stored = server.run(lambda: server.emu.stored_files(answer["upload"]["dataset_id"]))
        assert stored["cat.png"][0] == len(image)
    finally:
        server.call(runner.cleanup())


def test_datasets_upload_refuses_a_bad_folder(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    """An image without its caption fails before sending anything: exit 1, one line."""
    folder = tmp_path / "bad"
    make_dataset(folder, count=2)
    (folder / "dog_01.txt").unlink()
    line = one_error_line(invoke("datasets", "upload", "cli-bad", str(folder), code=1))
    assert "dog_01" in line
    assert "caption" in line


def test_datasets_upload_usage_error(invoke: Callable[..., Result], tmp_path: Path) -> None:
    """A path that does not exist, or a bad --concurrency, is a usage error (exit 2)."""
    assert "does not exist" in invoke(
        "datasets", "upload", "x", str(tmp_path / "missing"), code=2
    ).stderr
    invoke("datasets", "upload", "x", str(tmp_path), "--concurrency", "0", code=2)


# -- jobs ------------------------------------------------------------------------------------


def test_jobs_submit_watch_result_download(invoke: Callable[..., Result], tmp_path: Path) -> None:
    """Submit with --dataset and --watch follows the run to the end; result and download agree."""
    ready_dataset(invoke, "cli-train", tmp_path / "train")
    config = tmp_path / "job.yaml"
    config.write_text(TEMPLATE, encoding="utf-8")
    watched = json.loads(
        invoke(
            "--json", "jobs", "submit", str(config), "--dataset", "cli-train", "--gpu", "h200",
            "--watch",
        ).stdout
    )
    job = watched["job"]
    assert job["status"] == "STOPPED"
    assert job["progress"]["current_step"] == job["progress"]["total_steps"] == 60
    kinds = sorted({a["kind"] for a in watched["artifacts"]})
    assert kinds == ["checkpoints", "config", "samples"]
    status = json.loads(invoke("jobs", "status", job["id"], "--json").stdout)
    assert status["status"] == "STOPPED"
    result = json.loads(invoke("--json", "jobs", "result", job["id"]).stdout)
    assert len(result["artifacts"]) == len(watched["artifacts"])
    dest = tmp_path / "out"
    downloaded = invoke("jobs", "download", job["id"], "--dest", str(dest), "--kind", "checkpoints")
    no_progress_drawn(downloaded.stderr)
    files = sorted(p.name for p in (dest / "checkpoints").iterdir())
    assert files == sorted(a["name"] for a in watched["artifacts"] if a["kind"] == "checkpoints")
    table = invoke("jobs", "result", job["id"])
    assert "safetensors" in table.stdout
    again = json.loads(invoke("--json", "jobs", "download", job["id"], "--dest", str(dest)).stdout)
    assert len(again) == len(watched["artifacts"])
    assert all(Path(p).is_file() for p in again)


def test_jobs_cancel_resume_and_errors(invoke: Callable[..., Result], tmp_path: Path) -> None:
    """Cancel a queued job; cancel again after it ended -> 409 exit 3; bad --gpu -> exit 2."""
    ready_dataset(invoke, "cli-cancel", tmp_path / "train")
    config = tmp_path / "job.yaml"
    config.write_text(TEMPLATE.replace("steps: 60", "steps: 100000"), encoding="utf-8")
    submitted = json.loads(
        invoke("--json", "jobs", "submit", str(config), "--dataset", "cli-cancel").stdout
    )
    job_id = submitted["job"]["id"]
    cancelled = json.loads(invoke("--json", "jobs", "cancel", job_id).stdout)
    assert cancelled["status"] == "CANCELED"
    resumed = json.loads(invoke("--json", "jobs", "resume", job_id).stdout)
    assert resumed["status"] in ("IN_QUEUE", "RUNNING")
    invoke("jobs", "cancel", job_id)
    assert "HTTP 404" in one_error_line(invoke("jobs", "status", "no-such-job", code=3))
    invoke("jobs", "submit", str(config), "--gpu", "h300", code=2)


def test_jobs_submit_refuses_a_dataset_that_is_not_ready(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    """A config mounting an unknown dataset is refused before sending: exit 1, one line."""
    config = tmp_path / "job.yaml"
    config.write_text(TEMPLATE, encoding="utf-8")
    line = one_error_line(
        invoke("jobs", "submit", str(config), "--dataset", "cli-nowhere", code=1)
    )
    assert "cli-nowhere" in line and "runcomfy datasets upload NAME FOLDER" in line


# -- models ----------------------------------------------------------------------------------


def test_models_run_with_inputs_and_download(
    server: ThreadedEmulator, invoke: Callable[..., Result], tmp_path: Path
) -> None:
    """`models run` sends typed inputs, waits, prints the output and downloads its files."""
    server.run(lambda: server.emu.add_model("owner/model/v1"))
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"prompt": "from file", "seed": 1}), encoding="utf-8")
    result = invoke(
        "--json", "models", "run", "owner/model/v1", "--json-file", str(inputs),
        "-i", "seed=42", "-i", "prompt=a cat", "--download", str(tmp_path / "out"),
    )
    answer = json.loads(result.stdout)
    assert answer["status"] == "succeeded"
    assert answer["output"]["image"].startswith("http://127.0.0.1")
    (path,) = answer["files"]
    assert Path(path).read_bytes().startswith(b"\x89PNG")
    no_progress_drawn(result.stderr)
    request_id = answer["request_id"]
    status = json.loads(invoke("--json", "models", "status", request_id).stdout)
    assert status["status"] == "completed"
    assert "succeeded" in invoke("models", "result", request_id).stdout
    cancel = json.loads(invoke("--json", "models", "cancel", request_id).stdout)
    assert cancel == {"request_id": request_id, "outcome": "not_cancellable"}


def test_models_errors(invoke: Callable[..., Result], tmp_path: Path) -> None:
    """No inputs or a bad pair -> 2; unknown request -> 3; malformed model id -> 1."""
    assert "no inputs" in invoke("models", "run", "owner/model/v1", code=2).stderr
    assert "key=value" in invoke("models", "run", "owner/model/v1", "-i", "oops", code=2).stderr
    assert "HTTP 404" in one_error_line(invoke("models", "status", "nope", code=3))
    assert "malformed" in one_error_line(invoke("models", "run", "bad//id", "-i", "a=1", code=1))


# -- machines --------------------------------------------------------------------------------


def test_machines_lifecycle(invoke: Callable[..., Result]) -> None:
    """Workflows, launch (waits for Ready), list, status, extend and stop from the shell."""
    workflows = json.loads(invoke("--json", "machines", "workflows").stdout)
    version = workflows[0]["version_id"]
    assert version in invoke("machines", "workflows").stdout
    machine = json.loads(
        invoke("--json", "machines", "launch", version, "--server-type", "medium").stdout
    )
    assert machine["current_status"] == "Ready"
    assert machine["main_service_url"].startswith("http://127.0.0.1")
    server_id = machine["server_id"]
    listed = json.loads(invoke("--json", "machines", "list").stdout)
    assert server_id in [m["server_id"] for m in listed]
    assert "Ready" in invoke("machines", "status", server_id).stdout
    extended = json.loads(invoke("--json", "machines", "extend", server_id, "7200").stdout)
    assert extended["estimated_duration"] == 7200
    stopped = json.loads(invoke("--json", "machines", "stop", server_id).stdout)
    assert stopped["stopped"] is True
    assert server_id in invoke("machines", "stop", server_id).stdout


def test_machines_errors(invoke: Callable[..., Result]) -> None:
    """Unknown machine -> 3; bad duration or size -> 2; no user id -> 2 naming the variable."""
    assert "HTTP 404" in one_error_line(invoke("machines", "status", "nope", code=3))
    invoke("machines", "extend", "some-id", "soon", code=2)
    invoke("machines", "launch", "v1", "--server-type", "huge", code=2)
    line = one_error_line(invoke("machines", "launch", "no-such-version", code=3))
    assert "runcomfy machines workflows" in line
    line = one_error_line(invoke("machines", "list", code=2, env={"RUNCOMFY_USER_ID": ""}))
    assert "RUNCOMFY_USER_ID" in line
    line = one_error_line(invoke("machines", "list", code=3, env={"RUNCOMFY_USER_ID": "other"}))
    assert "RUNCOMFY_USER_ID (or --user-id) is the user id" in line


# -- deployments -----------------------------------------------------------------------------


def test_deployments_lifecycle_and_run(invoke: Callable[..., Result], tmp_path: Path) -> None:
    """create, list, get (with the workflow), run with overrides and a file, update, delete."""
    workflow_id = json.loads(invoke("--json", "machines", "workflows").stdout)[0]["workflow_id"]
    created = json.loads(invoke(
        "--json", "deployments", "create", "--name", "cli", "--workflow-id", workflow_id,
        "--workflow-version", "v1", "--hardware", "AMPERE_48", "--max-instances", "2",
    ).stdout)
    dep_id = created["id"]
    assert created["max_instances"] == 2 and created["hardware"] == ["AMPERE_48"]
    assert dep_id in invoke("deployments", "list").stdout
    shown = invoke("deployments", "get", dep_id, "--include", "payload").stdout
    assert "6 (CLIPTextEncode)" in shown
    image = tmp_path / "in.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    result = invoke(
        "--json", "deployments", "run", dep_id, "--set", "6.text=a red fox",
        "--set", "7.text=@" + str(image), "--download", str(tmp_path / "out"),
    )
    answer = json.loads(result.stdout)
    assert answer["status"] == "succeeded"
    assert answer["outputs"]["12"] == {"text": [["a red fox"]]}
    (path,) = answer["files"]
    assert Path(path).read_bytes().startswith(b"\x89PNG")
    no_progress_drawn(result.stderr)
    line = one_error_line(invoke("deployments", "run", dep_id, "--set", "6.txt=x", code=1))
    assert "its inputs are clip, text" in line
    missing = f"7.text=@{tmp_path / 'missing.png'}"
    line = one_error_line(invoke("deployments", "run", dep_id, "--set", missing, code=1))
    assert "path after `@`" in line and "its bytes" not in line  # shell words, not Python's
    updated = json.loads(invoke("--json", "deployments", "update", dep_id, "--disable").stdout)
    assert updated["is_enabled"] is False
    line = one_error_line(invoke("deployments", "run", dep_id, code=3))
    assert "--enable" in line
    assert "deleted" in invoke("deployments", "delete", dep_id).stdout
    assert "create" in one_error_line(invoke("deployments", "run", dep_id, code=3))


def test_deployments_usage_errors(invoke: Callable[..., Result]) -> None:
    """A bad --set pair or an update with nothing to change is a usage error (2)."""
    assert "NODE.INPUT=VALUE" in invoke("deployments", "run", "d", "--set", "6=x", code=2).stderr
    assert "nothing to change" in invoke("deployments", "update", "d", code=2).stderr
    line = one_error_line(invoke(
        "deployments", "create", "--name", "x", "--workflow-id", "w", "--workflow-version",
        "v1", "--hardware", "AMPERE_48", "--min-instances", "99", code=1,
    ))
    assert "0 to 30" in line


# -- progress --------------------------------------------------------------------------------


def _feed_upload(reporter: Reporter) -> None:
    """Send one small upload's events through a reporter's bars."""
    with reporter.upload("dogs") as bars:
        bars(UploadPlanned(files=1, total_bytes=100, skipped_files=0, skipped_bytes=0))
        signed = UploadMethod.SIGNED_URL
        bars(FileStarted(filename="dog_01.png", size=100, method=signed, attempt=1))
        bars(BytesSent(filename="dog_01.png", size=100, sent=100, delta=100))
        bars(FileDone(filename="dog_01.png", size=100, method=signed, attempts=1))


def test_progress_is_drawn_on_a_terminal() -> None:
    """On a terminal the upload bar shows files and bytes."""
    sink = io.StringIO()
    reporter = Reporter(Console(file=sink, force_terminal=True, width=120))
    assert reporter.enabled
    _feed_upload(reporter)
    drawn = sink.getvalue()
    assert "1/1 files" in drawn
    assert "uploading 1 file(s)" in drawn


def test_progress_is_not_drawn_off_a_terminal() -> None:
    """Off a terminal (a pipe, a file) nothing at all is written."""
    sink = io.StringIO()
    reporter = Reporter(Console(file=sink, force_terminal=False))
    assert not reporter.enabled
    _feed_upload(reporter)
    assert sink.getvalue() == ""


# -- real processes --------------------------------------------------------------------------


def _cli_command() -> list[str]:
    """The installed console script when present, else ``python -m runcomfy_async.cli``."""
    return [str(RUNCOMFY)] if RUNCOMFY.exists() else [sys.executable, "-m", "runcomfy_async.cli"]


def _run(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``runcomfy ARGS`` as a real process and capture its output."""
    return subprocess.run(
        [*_cli_command(), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_emulator_command_serves_the_console_script() -> None:
    """`runcomfy emulator` prints exports that a second real `runcomfy` process can use."""
    emulator = subprocess.Popen(
        [sys.executable, "-m", "runcomfy_async.cli", "emulator", "--rate-limit", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        exports = [emulator.stdout.readline().strip() for _ in range(5)]
        env = dict(line.removeprefix("export ").split("=", 1) for line in exports)
        assert set(env) == {
            "RUNCOMFY_API_TOKEN", "RUNCOMFY_USER_ID", "RUNCOMFY_TRAINER_URL",
            "RUNCOMFY_MODEL_URL", "RUNCOMFY_SERVER_URL",
        }
        assert env["RUNCOMFY_TRAINER_URL"].startswith("http://127.0.0.1:")
        child_env = {**os.environ, **env}
        created = _run(["--json", "datasets", "create", "proc-dogs"], child_env)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["name"] == "proc-dogs"
        missing = _run(["datasets", "status", "nope"], child_env)
        assert missing.returncode == 3
        assert missing.stderr.startswith("runcomfy: error: datasets status failed: HTTP 404")
    finally:
        emulator.send_signal(signal.SIGINT)
        _, err = emulator.communicate(timeout=20)
    assert emulator.returncode == 0
    assert "emulator stopped" in err


def test_emulator_command_json_and_usage_errors(invoke: Callable[..., Result]) -> None:
    """`runcomfy --json emulator` prints one JSON object; bad options exit 2 before serving."""
    invoke("emulator", "--rate-limit", "fast", code=2)
    invoke("emulator", "--speed", "0", code=2)
    invoke("demo", "--speed", "0", code=2)
    emulator = subprocess.Popen(
        [sys.executable, "-m", "runcomfy_async.cli", "--json", "emulator", "--speed", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        answer = json.loads(emulator.stdout.readline())
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.communicate(timeout=20)
    assert answer["url"].startswith("http://127.0.0.1:")
    assert answer["env"]["RUNCOMFY_SERVER_URL"] == answer["url"]
    assert emulator.returncode == 0


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_upload_exits_130_and_resumes(
    server: ThreadedEmulator, tmp_path: Path
) -> None:
    """Ctrl-C mid-upload stops with exit 130 and a resume hint; re-running skips what is stored."""
    folder = tmp_path / "slow"
    files = make_dataset(folder, count=6)
    rule = server.run(
        lambda: server.emu.inject("slow", api="storage", method="PUT", skip=2, delay=30.0)
    )
    env = {**os.environ, **server.env()}
    args = ["datasets", "upload", "cli-slow", str(folder), "--concurrency", "2"]
    # A shell starts background jobs with SIGINT ignored, and children inherit that: give the
    # CLI the default disposition, as a terminal's Ctrl-C would find it, whoever runs the suite.
    upload = subprocess.Popen(
        [*_cli_command(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 30
        while rule.fired == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rule.fired > 0
        upload.send_signal(signal.SIGINT)
        _, err = upload.communicate(timeout=30)
    finally:
        server.run(lambda: server.emu.remove_fault(rule))
        if upload.poll() is None:
            upload.kill()
            upload.communicate()
    assert upload.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "runcomfy: error: interrupted; the dataset keeps the files completed so far; run the "
        "same command again to resume (files already uploaded are skipped)"
    )
    again = _run(["--json", *args], env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)["upload"]
    assert len(report["skipped"]) >= 2
    names = [f["filename"] for f in report["skipped"] + report["uploaded"]]
    assert sorted(names) == sorted(p.name for p in files)


def test_unreachable_api_exits_4(invoke: Callable[..., Result]) -> None:
    """No server behind the URL: exit 4 with one line naming the URL variables to check."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = invoke("datasets", "list", code=4, env={"RUNCOMFY_TRAINER_URL": closed})
    line = one_error_line(result)
    assert "could not connect" in line
    assert "RUNCOMFY_*_URL" in line


def test_missing_cli_extra_names_the_install_command() -> None:
    """Without click installed, importing the CLI says which extra to install."""
    code = (
        "import sys; sys.modules['click'] = None\n"
        "try:\n    import runcomfy_async.cli\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'runcomfy-async[cli]'" in out.stdout


# -- no dead ends, --json errors, watch commands -----------------------------------------------


def test_bad_folder_creates_no_dataset_and_a_fixed_rerun_works(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    """A folder mistake is found before the dataset is created; fixing it and re-running works
    (no 409 from a dataset the failed run left behind)."""
    folder = tmp_path / "fixme"
    make_dataset(folder, count=2)
    caption = (folder / "dog_01.txt").read_text()
    (folder / "dog_01.txt").unlink()
    invoke("datasets", "upload", "cli-fixme", str(folder), code=1)
    listed = json.loads(invoke("--json", "datasets", "list").stdout)
    assert all(d["name"] != "cli-fixme" for d in listed)
    (folder / "dog_01.txt").write_text(caption)
    answer = json.loads(invoke("--json", "datasets", "upload", "cli-fixme", str(folder)).stdout)
    assert len(answer["upload"]["uploaded"]) == 4


def test_json_errors_are_json_on_stdout(invoke: Callable[..., Result]) -> None:
    """With --json a failure prints {"error": {...}} on stdout (type, status, code, hint) and
    exits non-zero; stderr stays free of the one-line message."""
    result = invoke("--json", "datasets", "status", "no-such-dataset", code=3)
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "NotFoundError"
    assert error["status"] == 404
    assert error["code"] is not None
    assert error["exit_code"] == 3
    assert "runcomfy datasets list" in error["hint"]
    assert "runcomfy: error" not in result.stderr
    usage = json.loads(invoke("models", "run", "owner/model/v1", "--json", code=2).stdout)
    assert usage["error"]["type"] == "UsageError"
    assert "no inputs" in usage["error"]["message"]
    for argv in (["jobs", "watch", "--no-such-option"], ["jobs", "watch"]):
        clicks = json.loads(invoke("--json", *argv, code=2).stdout)["error"]
        assert clicks["type"] == "UsageError", argv
    unset = json.loads(
        invoke("--json", "datasets", "list", code=2, env={"RUNCOMFY_API_TOKEN": ""}).stdout
    )
    assert unset["error"]["type"] == "ConfigurationError"
    assert "--token" in unset["error"]["hint"]


def test_errors_are_worded_for_the_shell(invoke: Callable[..., Result], tmp_path: Path) -> None:
    """A taken name, a wrong token and a config with wrong fixed paths give shell advice
    (commands and flags), never Python calls."""
    invoke("datasets", "create", "cli-taken")
    taken = one_error_line(invoke("datasets", "create", "cli-taken", code=3))
    assert "runcomfy datasets upload NAME FOLDER" in taken
    assert "--exist-ok" in taken
    first = json.loads(invoke("--json", "datasets", "create", "cli-taken", "--exist-ok").stdout)
    assert first["name"] == "cli-taken"
    shown = invoke("datasets", "create", "cli-taken", "--exist-ok").stdout
    assert "dataset created" not in shown and "filename" not in shown  # files as a count
    wrong = one_error_line(
        invoke("datasets", "list", code=3, env={"RUNCOMFY_API_TOKEN": "rc_wrong_token"})
    )
    config = tmp_path / "paths.yaml"
    config.write_text(
        "job: extension\nconfig:\n  name: x\n  process:\n  - type: sd_trainer\n"
        "    training_folder: /app/ai-toolkit/output\n    datasets:\n"
        "    - folder_path: /data/dogs\n",
        encoding="utf-8",
    )
    paths = one_error_line(invoke("jobs", "submit", str(config), code=1))
    assert "--dataset NAME" in paths
    for line in (taken, wrong, paths):
        assert "rc." not in line and "exist_ok" not in line and "RunComfy(" not in line, line


def test_datasets_list_shows_unknown_file_counts(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    """The list endpoint leaves files out: the table shows an en dash, not 0."""
    ready_dataset(invoke, "cli-counted", tmp_path / "counted")
    table = invoke("datasets", "list").stdout.splitlines()
    (row,) = [line for line in table if "cli-counted" in line]
    assert "\u2013" in row
    assert " 0 " not in row


def test_jobs_watch_follows_a_submitted_job(invoke: Callable[..., Result], tmp_path: Path) -> None:
    """`jobs watch ID` follows a job submitted earlier to its end; JSON as the Python type."""
    ready_dataset(invoke, "cli-watch", tmp_path / "train")
    config = tmp_path / "job.yaml"
    config.write_text(TEMPLATE, encoding="utf-8")
    submitted = json.loads(
        invoke("--json", "jobs", "submit", str(config), "--dataset", "cli-watch").stdout
    )
    job_id = submitted["job"]["id"]
    watched = json.loads(invoke("--json", "jobs", "watch", job_id).stdout)
    assert watched["job"]["id"] == job_id
    assert watched["job"]["status"] == "STOPPED"
    assert isinstance(watched["job"]["progress"]["current_step"], int)
    assert {a["kind"] for a in watched["artifacts"]} >= {"checkpoints"}
    assert "HTTP 404" in one_error_line(invoke("jobs", "watch", "no-such-job", code=3))


def test_requests_watch_follows_a_submitted_request(
    invoke: Callable[..., Result], server: ThreadedEmulator
) -> None:
    """`requests watch ID` waits for a request submitted elsewhere and prints its result."""

    async def submit() -> str:
        async with server.emu.client() as rc:
            return (await rc.models.submit("owner/model/v1", {"prompt": "a cat"})).id

    server.run(lambda: server.emu.add_model("owner/model/v1"))

    request_id = server.call(submit())
    answer = json.loads(invoke("--json", "requests", "watch", request_id).stdout)
    assert answer["request_id"] == request_id
    assert answer["status"] == "succeeded"
    assert "succeeded" in invoke("requests", "result", request_id).stdout
    assert "HTTP 404" in one_error_line(invoke("requests", "watch", "nope", code=3))
