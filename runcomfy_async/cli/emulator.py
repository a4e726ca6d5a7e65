"""``runcomfy emulator``: serve the local RunComfy emulator in the foreground.

The options are not spelled here: they come from the emulator's own table
(:data:`runcomfy_async.testing._cli.OPTIONS`), which ``python -m runcomfy_async.testing`` parses
with argparse, so both entry points take the same options with the same checks.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..testing._cli import (
    OPTIONS,
    Option,
    announce,
    emulator_from_options,
    serve_until_stopped,
)
from ._app import CliError, output_options, settings

__all__ = ["command"]

_F = TypeVar("_F", bound=Callable[..., Any])

if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]  # generic in the stubs of newer click only
else:
    _ParamType = click.ParamType  # click 8.1 (the extra's floor) cannot subscript it


class _OptionType(_ParamType):
    """A click type that parses with the shared :class:`Option` parser."""

    def __init__(self, option: Option) -> None:
        self.option = option
        self.name = option.metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse command-line text; defaults arrive already parsed and pass through."""
        if not isinstance(value, str):
            return value
        try:
            return self.option.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _emulator_options(func: _F) -> _F:
    """Add every option of the shared table, in its order."""
    for option in reversed(OPTIONS):
        func = click.option(
            option.flag,
            option.dest,
            type=_OptionType(option),
            default=option.default,
            show_default=option.default is not None,
            metavar=option.metavar,
            help=option.help,
        )(func)
    return func


@click.command("emulator")
@_emulator_options
@output_options
def command(**values: Any) -> None:
    """Run the local RunComfy emulator in the foreground and print the env vars for it.

    Prints `export RUNCOMFY_...=...` lines on stdout (or one JSON object with --json), then
    serves the Trainer, Model and Server APIs, object storage and ComfyUI on one port until
    Ctrl-C. Nothing listens beyond HOST.
    """
    emulator = emulator_from_options(values)
    show = functools.partial(announce, as_json=settings().json)
    try:
        asyncio.run(serve_until_stopped(emulator, show))
        click.echo("# emulator stopped", err=True)
    except OSError as exc:
        raise CliError(
            f"emulator failed: cannot listen on {values['host']}:{values['port']}: "
            f"{exc.strerror or exc} (pick another --port, or 0 for a free one)"
        ) from exc
