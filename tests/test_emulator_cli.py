"""The emulator's command line is defined once: ``python -m runcomfy_async.testing`` (argparse,
no click needed) and ``runcomfy emulator`` (click) take the same options with the same checks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
from click.testing import CliRunner

from runcomfy_async.cli.emulator import command
from runcomfy_async.testing import WebhookPolicy
from runcomfy_async.testing._cli import OPTIONS, argparser, emulator_from_options, main

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Runs ``python -m runcomfy_async.testing`` in a process where ``import click`` fails.
WITHOUT_CLICK = (
    "import runpy, sys; sys.modules['click'] = None; sys.argv[0] = 'runcomfy_async.testing'; "
    "runpy.run_module('runcomfy_async.testing', run_name='__main__', alter_sys=True)"
)
FULL_ARGS = [
    "--host", "127.0.0.1", "--port", "0", "--token", "rc_same", "--user-id", "u-1",
    "--rate-limit", "2.5", "--burst", "7", "--speed", "300", "--seed", "11",
]  # fmt: skip


def _env() -> dict[str, str]:
    """The environment of a child process that imports this worktree's package."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}


def _click_params(args: list[str]) -> dict[str, Any]:
    """What ``runcomfy emulator ARGS`` parses to, without serving."""
    with command.make_context("emulator", list(args)) as ctx:
        return dict(ctx.params)


def test_both_entry_points_list_the_same_options() -> None:
    """argparse and click expose exactly the flags of the one OPTIONS table, in its order."""
    table = [option.flag for option in OPTIONS]
    parsed = [
        a.option_strings[0] for a in argparser()._actions if a.option_strings[0] != "-h"
    ]
    clicked = [
        p.opts[0]
        for p in command.params
        if isinstance(p, click.Option) and p.opts[0] not in ("--json", "--help")
    ]
    assert parsed == clicked == table
    assert {"--host", "--port", "--token", "--user-id", "--rate-limit", "--speed"} <= set(table)
    assert {"--burst", "--seed"} <= set(table)


def test_same_arguments_build_the_same_emulator() -> None:
    """The same command line gives an Emulator with the same config through either parser."""
    from_argparse = emulator_from_options(vars(argparser().parse_args(FULL_ARGS)))
    from_click = emulator_from_options(_click_params(FULL_ARGS))
    assert from_argparse.config == from_click.config
    assert from_click.config.rate_limit == 2.5
    assert from_click.config.speed == 300.0
    assert from_click.config.burst == 7
    defaults_a = emulator_from_options(vars(argparser().parse_args([]))).config
    defaults_c = emulator_from_options(_click_params([])).config
    assert (defaults_a.rate_limit, defaults_a.speed, defaults_a.burst, defaults_a.port) == (
        defaults_c.rate_limit, defaults_c.speed, defaults_c.burst, defaults_c.port
    ) == (1.0, 50.0, 3, 0)  # fmt: skip


@pytest.mark.parametrize("word", ["none", "off", "0", "NONE"])
def test_rate_limit_off_words(word: str) -> None:
    """--rate-limit none/off/0 switches the limit off in both parsers."""
    assert vars(argparser().parse_args(["--rate-limit", word]))["rate_limit"] is None
    assert _click_params(["--rate-limit", word])["rate_limit"] is None


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--port", "70000", "0 to 65535"),
        ("--port", "http", "0 to 65535"),
        ("--speed", "0", "number > 0"),
        ("--speed", "nan", "number > 0"),
        ("--speed", "inf", "number > 0"),
        ("--burst", "0", ">= 1"),
        ("--rate-limit", "fast", "'none'"),
        ("--rate-limit", "-1", "'none'"),
        ("--seed", "x", "whole number"),
        ("--token", "", "empty"),
        ("--webhooks", "dup=0.5", "knob=value"),
        ("--webhooks", "drop=2", "rates are 0..1"),
        ("--webhooks", "attempts=x", "not a number"),
        ("--webhooks", ",", "at least one knob"),
    ],
)
def test_bad_values_are_usage_errors_in_both(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value exits 2 before serving, with the same explanation from either entry point."""
    with pytest.raises(SystemExit) as info:
        main([flag, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    result = CliRunner().invoke(command, [flag, value])
    assert result.exit_code == 2
    assert message in result.output


def test_module_entry_point_needs_no_click() -> None:
    """`python -m runcomfy_async.testing --help` works where click cannot be imported."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_CLICK, "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--rate-limit R|none" in done.stdout
    assert "--user-id U" in done.stdout


@pytest.mark.asyncio
async def test_module_entry_point_serves_without_click() -> None:
    """Without click the module still prints the five export lines and serves the APIs."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WITHOUT_CLICK,
        "--token",
        "rc_no_click",
        "--rate-limit",
        "none",
        "--speed",
        "1000",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        lines = [
            (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip() for _ in range(5)
        ]
        exports = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        assert exports["RUNCOMFY_API_TOKEN"] == "rc_no_click"
        url = exports["RUNCOMFY_TRAINER_URL"]
        headers = {"Authorization": "Bearer rc_no_click"}
        async with aiohttp.ClientSession() as http, http.get(
            url + "/prod/v1/trainers/datasets", headers=headers
        ) as resp:
            assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    banner = err.decode()  # the banner: URL, token, user id, rate limit, speed
    assert f"serving on {url}" in banner
    assert "token:      rc_no_click" in banner
    assert "user id:    " in banner
    assert "rate limit: off" in banner
    assert "speed:      1000x" in banner


@pytest.mark.asyncio
async def test_webhooks_option_sets_the_delivery_policy_in_both() -> None:
    """--webhooks knob=value pairs become the emulator-wide WebhookPolicy, from either parser."""
    args = ["--webhooks", "duplicate=0.2, reorder=0.1,drop=0.05,attempts=3,backoff=0.5"]
    wanted = WebhookPolicy(
        duplicate_rate=0.2, reorder_rate=0.1, drop_rate=0.05, max_attempts=3, backoff=0.5
    )
    assert vars(argparser().parse_args(args))["webhook_policy"] == wanted
    assert _click_params(args)["webhook_policy"] == wanted
    async with emulator_from_options(vars(argparser().parse_args(args))) as emu:
        assert emu.state.webhooks.policy_for("any-deployment") == wanted
    async with emulator_from_options(vars(argparser().parse_args([]))) as emu:
        assert emu.state.webhooks.policy_for("any-deployment") == WebhookPolicy()

