"""The emulator's command line, defined once for ``python -m runcomfy_async.testing`` and ``runcomfy
emulator``.

:data:`OPTIONS` is the one table of options: flags, parser, default and help. :func:`argparser`
builds the standard-library parser from it (``python -m runcomfy_async.testing`` works without
click, which only the ``[cli]`` extra installs); ``runcomfy_async.cli.emulator`` builds its click
options from the same table. Both hand the parsed values to :func:`emulator_from_options` and
serve with :func:`serve_until_stopped`, announcing themselves with :func:`announce`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Final, TypeVar

import attrs

from ._emulator import Emulator
from ._webhooks import WebhookPolicy
from .model_catalog import load_models_file

N = TypeVar("N", int, float)

__all__ = [
    "OPTIONS",
    "Option",
    "announce",
    "argparser",
    "banner_lines",
    "client_env",
    "emulator_from_options",
    "export_lines",
    "main",
    "parse_rate_limit",
    "serve_until_stopped",
]


# -- value parsers: str -> value, ValueError with a message naming what is allowed ---------------


def _number(value: str, cast: Callable[[str], N], ok: Callable[[N], bool], allowed: str) -> N:
    """``value`` as a number that passes ``ok``; otherwise ValueError saying what is allowed."""
    try:
        number = cast(value)
    except ValueError:
        raise ValueError(allowed) from None
    if not ok(number):
        raise ValueError(allowed)
    return number


def _positive(number: float) -> bool:
    return math.isfinite(number) and number > 0


def parse_rate_limit(value: str) -> float | None:
    """``--rate-limit``: requests per second, or ``none``/``off``/``0`` to switch it off.

    Raises:
        ValueError: neither a positive number nor one of the off words.
    """
    if value.strip().lower() in ("none", "off", "0"):
        return None
    return _number(
        value, float, _positive, "must be a number > 0, or 'none' (or 0) to switch the limit off"
    )


def _parse_port(value: str) -> int:
    """``--port``: 0..65535, 0 for any free port."""
    return _number(
        value,
        int,
        lambda port: 0 <= port <= 65535,
        "must be a whole number from 0 to 65535 (0 picks a free port)",
    )


def _parse_burst(value: str) -> int:
    """``--burst``: a whole number of requests >= 1."""
    return _number(value, int, lambda burst: burst >= 1, "must be a whole number >= 1")


def _parse_speed(value: str) -> float:
    """``--speed``: a finite factor > 0."""
    return _number(
        value, float, _positive, "must be a number > 0 (50 runs simulated time 50 times faster)"
    )


def _parse_positive(value: str) -> float:
    """A finite number of seconds > 0."""
    return _number(value, float, _positive, "must be a number of seconds > 0")


def _parse_seed(value: str) -> int:
    """``--seed``: any whole number."""
    return _number(value, int, lambda _: True, "must be a whole number")


def _parse_balance(value: str) -> float:
    """``--balance``: US dollars >= 0."""
    return _number(
        value,
        float,
        lambda usd: math.isfinite(usd) and usd >= 0,
        "must be a number of US dollars >= 0 (0 makes every paid call fail with 402)",
    )


def _parse_models(value: str) -> tuple[dict[str, Any], ...]:
    """``--models``: a JSON file of model entries, read and checked now."""
    return load_models_file(value)


#: ``--webhooks`` knobs and the :class:`WebhookPolicy` fields they set, with their parsers.
_WEBHOOK_KNOBS: Final[Mapping[str, tuple[str, Callable[[str], float | int]]]] = MappingProxyType(
    {
        "duplicate": ("duplicate_rate", float),
        "reorder": ("reorder_rate", float),
        "drop": ("drop_rate", float),
        "attempts": ("max_attempts", int),
        "backoff": ("backoff", float),
        "timeout": ("timeout", float),
    }
)


def _parse_webhooks(value: str) -> WebhookPolicy:
    """``--webhooks``: ``knob=value`` pairs, comma-separated, into a :class:`WebhookPolicy`."""
    known = ", ".join(_WEBHOOK_KNOBS)
    fields: dict[str, float | int] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        knob, sep, text = pair.partition("=")
        if not sep or knob.strip() not in _WEBHOOK_KNOBS:
            raise ValueError(
                f"{pair!r} is not knob=value with a knob among {known} "
                "(e.g. duplicate=0.2,reorder=0.2,drop=0.1)"
            )
        field, cast = _WEBHOOK_KNOBS[knob.strip()]
        try:
            fields[field] = cast(text.strip())
        except ValueError:
            raise ValueError(f"{knob.strip()}={text.strip()!r} is not a number") from None
    if not fields:
        raise ValueError(f"must name at least one knob among {known}")
    try:
        return WebhookPolicy(**fields)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{exc}: rates are 0..1, attempts >= 1, backoff >= 0, timeout > 0"
        ) from None


def _parse_text(value: str) -> str:
    """A non-empty string."""
    if not value:
        raise ValueError("must not be empty")
    return value


@attrs.frozen(kw_only=True)
class Option:
    """One command-line option of the emulator.

    Attributes:
        flag: the long flag, e.g. ``"--rate-limit"``.
        dest: the :class:`Emulator` keyword it sets.
        parse: turns the command-line text into the value; ValueError says what is allowed.
        default: the value when the option is absent (already parsed).
        help: one line for ``--help``.
        metavar: the placeholder shown in usage lines.
    """

    flag: str
    dest: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str


#: The options both entry points take, in ``--help`` order (the emulator's documented surface).
OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        flag="--host",
        dest="host",
        parse=_parse_text,
        default="127.0.0.1",
        help="Interface to listen on.",
        metavar="HOST",
    ),
    Option(
        flag="--port",
        dest="port",
        parse=_parse_port,
        default=0,
        help="Port to listen on; 0 picks a free one.",
        metavar="N",
    ),
    Option(
        flag="--token",
        dest="token",
        parse=_parse_text,
        default=None,
        help="Bearer token to accept (default: a random one).",
        metavar="T",
    ),
    Option(
        flag="--user-id",
        dest="user_id",
        parse=_parse_text,
        default=None,
        help="Account user id (default: a random UUID).",
        metavar="U",
    ),
    Option(
        flag="--rate-limit",
        dest="rate_limit",
        parse=parse_rate_limit,
        default=1.0,
        help="Requests per second per token, or 'none' (or 0) to switch the limit off.",
        metavar="R|none",
    ),
    Option(
        flag="--burst",
        dest="burst",
        parse=_parse_burst,
        default=3,
        help="Rate-limit burst: requests allowed back to back.",
        metavar="N",
    ),
    Option(
        flag="--speed",
        dest="speed",
        parse=_parse_speed,
        default=50.0,
        help="How many times faster than real time simulated work runs.",
        metavar="S",
    ),
    Option(
        flag="--url-ttl",
        dest="url_ttl",
        parse=_parse_positive,
        default=900.0,
        help="Simulated seconds a signed URL stays valid (real seconds: this / speed).",
        metavar="S",
    ),
    Option(
        flag="--seed",
        dest="seed",
        parse=_parse_seed,
        default=0,
        help="Fault injection seed, so injected faults replay.",
        metavar="N",
    ),
    Option(
        flag="--models",
        dest="models",
        parse=_parse_models,
        default=None,
        help="A JSON file of Model API models to add to the built-in catalog: a list of "
        'entries like {"model_id": "acme/my-model/v1", "base_price_usd": 0.01, '
        '"input_schema": {...}}. Submits to other ids are refused, as the service does.',
        metavar="FILE",
    ),
    Option(
        flag="--balance",
        dest="balance",
        parse=_parse_balance,
        default=100.0,
        help="The account's starting balance in US dollars; paid calls draw it down.",
        metavar="USD",
    ),
    Option(
        flag="--webhooks",
        dest="webhook_policy",
        parse=_parse_webhooks,
        default=None,
        help=(
            "How serverless webhooks are delivered: comma-separated knob=value among duplicate, "
            "reorder, drop (chances 0..1), attempts, backoff, timeout; e.g. "
            "duplicate=0.2,reorder=0.2,drop=0.1."
        ),
        metavar="SPEC",
    ),
    Option(
        flag="--storage-dir",
        dest="storage_dir",
        parse=Path,
        default=None,
        help="Keep uploaded files here (default: a temporary directory).",
        metavar="DIR",
    ),
)


def _argparse_type(option: Option) -> Callable[[str], Any]:
    """argparse's view of an option's parser: ValueError becomes a usage error (exit 2)."""

    def convert(value: str) -> Any:
        try:
            return option.parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.dest  # argparse names the type in some messages
    return convert


def argparser(prog: str = "python -m runcomfy_async.testing") -> argparse.ArgumentParser:
    """The standard-library parser of :data:`OPTIONS`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local RunComfy emulator (Trainer, Model and Server APIs, object "
        "storage and ComfyUI on one port) and print the lines that point a client at it.",
    )
    for option in OPTIONS:
        shown = "" if option.default is None else f" (default: {option.default})"
        parser.add_argument(
            option.flag,
            dest=option.dest,
            type=_argparse_type(option),
            default=option.default,
            metavar=option.metavar,
            help=option.help + shown,
        )
    return parser


def emulator_from_options(values: Mapping[str, Any]) -> Emulator:
    """An :class:`Emulator` built from parsed option values (keyed by :attr:`Option.dest`)."""
    return Emulator(**{option.dest: values[option.dest] for option in OPTIONS})


# -- announcing and serving ---------------------------------------------------------------------


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


def _rate_text(emu: Emulator) -> str:
    """The rate limit as the banner says it."""
    rate = emu.config.rate_limit
    if rate is None:
        return "off"
    return f"{rate:g} request/s per token (burst {emu.config.burst}), then 429 rate_limited"


def banner_lines(emu: Emulator) -> list[str]:
    """What the emulator is: URL, token, user id, rate limit, speed, catalog and balance."""
    speed = emu.config.speed
    return [
        f"RunComfy emulator serving on {emu.url}",
        f"  token:      {emu.token}",
        f"  user id:    {emu.user_id}",
        f"  rate limit: {_rate_text(emu)}",
        f"  speed:      {speed:g}x (a simulated minute takes {60 / speed:.3g} s)",
        f"  models:     {len(emu.state.catalog)} in the catalog; balance ${emu.balance:.2f}",
    ]


def announce(
    emu: Emulator,
    *,
    as_json: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> None:
    """Print how to reach ``emu``: export lines (or one JSON object) on stdout, a banner on stderr.

    The banner (:func:`banner_lines`) says the URL, token, user id, rate limit and speed; stdout
    keeps only what a shell or a program reads.

    Args:
        emu: the running emulator.
        as_json: print ``{"url", "env", "user_id", "rate_limit", "burst", "speed"}`` instead
            of export lines.
        out: where the lines go (default ``sys.stdout``).
        err: where the banner goes (default ``sys.stderr``).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if as_json:
        facts = {
            "url": emu.url,
            "env": client_env(emu),
            "user_id": emu.user_id,
            "rate_limit": emu.config.rate_limit,
            "burst": emu.config.burst,
            "speed": emu.config.speed,
        }
        print(json.dumps(facts), file=out, flush=True)
        note = "Ctrl-C stops it."
    else:
        for line in export_lines(emu):
            print(line, file=out, flush=True)
        note = "Paste the export lines into another shell to point a client at it; Ctrl-C stops it."
    for line in [*banner_lines(emu), note]:
        print(f"# {line}", file=err, flush=True)


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m runcomfy_async.testing``; returns the exit status (usage errors exit 2)."""
    parser = argparser()
    values = vars(parser.parse_args(argv))
    emulator = emulator_from_options(values)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_until_stopped(emulator, announce))
    except OSError as exc:
        where = f"{values['host']}:{values['port']}"
        parser.exit(1, f"{parser.prog}: error: cannot listen on {where}: {exc.strerror or exc}\n")
    return 0
