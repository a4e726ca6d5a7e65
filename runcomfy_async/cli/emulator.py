"""``runcomfy emulator``: serve the local RunComfy emulator in the foreground."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from ..testing import Emulator
from ..testing.__main__ import client_env, export_lines, parse_rate_limit, serve_until_stopped
from ._app import CliError, output_options, settings

__all__ = ["command"]


def _rate(_ctx: click.Context, _param: click.Parameter, value: str) -> float | None:
    """``--rate-limit``: requests per second, or ``none`` to switch the limit off."""
    try:
        return parse_rate_limit(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (a number of requests per second, or 'none')") from None


def _announcer(as_json: bool) -> Callable[[Emulator], None]:
    """Print how to point a client at the emulator: export lines, or one JSON object."""

    def announce(emu: Emulator) -> None:
        if as_json:
            click.echo(json.dumps({"url": emu.url, "env": client_env(emu)}))
        else:
            for line in export_lines(emu):
                click.echo(line)
        sys.stdout.flush()
        click.echo(
            f"# RunComfy emulator serving on {emu.url}; paste the lines above into another "
            "shell to point `runcomfy` at it. Ctrl-C stops it.",
            err=True,
        )

    return announce


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port (default: any free).")
@click.option(
    "--token", "emulator_token", default=None, help="Bearer token to accept (default: random)."
)
@click.option(
    "--user-id", "emulator_user_id", default=None, help="Account user id (default: random UUID)."
)
@click.option(
    "--rate-limit",
    default="1.0",
    callback=_rate,
    show_default=True,
    help="Requests per second per token, or 'none'.",
)
@click.option("--burst", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rate-limit burst: requests allowed back to back.")
@click.option("--seed", type=int, default=0, show_default=True, help="Fault injection seed.")
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="How many times faster than real time simulated work runs.",
)
@click.option(
    "--storage-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep uploaded files here (default: a temporary directory).",
)
@output_options
def command(
    host: str,
    port: int,
    emulator_token: str | None,
    emulator_user_id: str | None,
    rate_limit: float | None,
    burst: int,
    seed: int,
    speed: float,
    storage_dir: Path | None,
) -> None:
    """Run the local RunComfy emulator in the foreground and print the env vars for it.

    Prints `export RUNCOMFY_...=...` lines on stdout (or one JSON object with --json), then
    serves the Trainer, Model and Server APIs, object storage and ComfyUI on one port until
    Ctrl-C. Nothing listens beyond HOST.
    """
    emulator = Emulator(
        host=host,
        port=port,
        token=emulator_token,
        user_id=emulator_user_id,
        rate_limit=rate_limit,
        burst=burst,
        seed=seed,
        speed=speed,
        storage_dir=storage_dir,
    )
    try:
        asyncio.run(serve_until_stopped(emulator, _announcer(settings().json)))
        click.echo("# emulator stopped", err=True)
    except OSError as exc:
        raise CliError(
            f"emulator failed: cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(pick another --port, or 0 for a free one)"
        ) from exc
