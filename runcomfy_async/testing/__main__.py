"""``python -m runcomfy_async.testing``: serve the emulator until SIGINT/SIGTERM.

First prints the shell lines that point a client at it, one per line, e.g.
``eval "$(python -m runcomfy_async.testing | head -5)"`` in another shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ._emulator import Emulator

__all__ = ["client_env", "export_lines", "main", "parse_rate_limit", "serve_until_stopped"]


def parse_rate_limit(value: str) -> float | None:
    """``--rate-limit``: requests per second, or ``none``/``off``/``0`` to switch it off.

    Raises:
        ValueError: neither a positive number nor one of the off words.
    """
    if value.strip().lower() in ("none", "off", "0"):
        return None
    rate = float(value)
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError("must be a number > 0, or 'none' (or 0) to switch the limit off")
    return rate


def _burst(value: str) -> int:
    """``--burst``: a whole number of requests >= 1."""
    burst = int(value)
    if burst < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return burst


def _rate(value: str) -> float | None:
    """argparse's view of :func:`parse_rate_limit`."""
    try:
        return parse_rate_limit(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m runcomfy_async.testing",
        description="Serve a local RunComfy emulator (Trainer, Model, Server APIs and storage).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--token", default=None, help="bearer token to accept (default: random)")
    parser.add_argument("--user-id", default=None, help="account user id (default: random UUID)")
    parser.add_argument(
        "--rate-limit", type=_rate, default=1.0, help="requests/s per token, or 'none' (or 0)"
    )
    parser.add_argument("--burst", type=_burst, default=3, help="rate-limit burst (default 3)")
    parser.add_argument("--speed", type=float, default=50.0, help="time speed-up (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="fault injection seed")
    parser.add_argument(
        "--storage-dir", type=Path, default=None, help="keep uploads here (default: temporary)"
    )
    return parser


def client_env(emu: Emulator) -> dict[str, str]:
    """The environment variables that point a client (or the CLI) at ``emu``."""
    return {
        "RUNCOMFY_API_TOKEN": emu.token,
        "RUNCOMFY_USER_ID": emu.user_id,
        "RUNCOMFY_TRAINER_URL": emu.url,
        "RUNCOMFY_MODEL_URL": emu.url,
        "RUNCOMFY_SERVER_URL": emu.url,
    }


def export_lines(emu: Emulator) -> list[str]:
    """The ``export`` lines that configure a client for ``emu``."""
    return [f"export {name}={shlex.quote(value)}" for name, value in client_env(emu).items()]


async def serve_until_stopped(emulator: Emulator, announce: Callable[[Emulator], None]) -> None:
    """Start ``emulator``, call ``announce`` once it listens, serve until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
            loop.add_signal_handler(sig, stop.set)
    async with emulator as emu:
        announce(emu)
        await stop.wait()


def _announce(emu: Emulator) -> None:
    """Print the export lines on stdout, then where it serves on stderr."""
    for line in export_lines(emu):
        print(line, flush=True)
    print(f"# RunComfy emulator serving on {emu.url}; Ctrl-C stops it", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    emulator = Emulator(
        host=args.host,
        port=args.port,
        token=args.token,
        user_id=args.user_id,
        rate_limit=args.rate_limit,
        burst=args.burst,
        speed=args.speed,
        seed=args.seed,
        storage_dir=args.storage_dir,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_until_stopped(emulator, _announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
