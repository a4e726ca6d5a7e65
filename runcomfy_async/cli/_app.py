"""The ``runcomfy`` click group: global options, running work on a client, output, exit codes.

Exit codes (also in ``runcomfy --help``):

====  ==========================================================================
0     success
1     a remote operation failed or input was refused (job FAILED, bad files...)
2     usage error: bad options or arguments, or missing setup (token, user id)
3     the API answered with an error (404, 401, 409, 429 after retries, 5xx...)
4     the API could not be reached (connection refused, reset, timed out)
130   interrupted (Ctrl-C)
====  ==========================================================================

Every failure prints one line on stderr: what failed, why, and what to do (worded for the
shell: flags, commands and environment variables). With ``--json`` it prints instead, on stdout,
``{"error": {"type", "message", "hint", "status", "code", "exit_code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import attrs
import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from runcomfy_async import RunComfy, errors, to_jsonable

__all__ = [
    "EXIT_API",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_TRANSPORT",
    "EXIT_USAGE",
    "CliError",
    "Settings",
    "cli",
    "cli_error",
    "emit",
    "error_json",
    "fields_table",
    "interrupted",
    "output_options",
    "run_with_client",
    "settings",
    "stdout_console",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 3
EXIT_TRANSPORT = 4
EXIT_INTERRUPTED = 130

T = TypeVar("T")

_EPILOG = (
    "Exit codes: 0 ok, 1 operation failed or input refused, 2 usage or setup error, "
    "3 API error, 4 API unreachable, 130 interrupted. "
    "Environment: RUNCOMFY_API_TOKEN, RUNCOMFY_USER_ID, RUNCOMFY_TRAINER_URL, "
    "RUNCOMFY_MODEL_URL, RUNCOMFY_SERVER_URL (`runcomfy emulator` prints them for a local one)."
)


@attrs.define(kw_only=True)
class Settings:
    """What the global options chose; commands read it through :func:`settings`.

    Attributes:
        json: print machine-readable JSON on stdout instead of tables.
        token: API token from ``--token`` (None: the client reads ``RUNCOMFY_API_TOKEN``).
        user_id: account user id from ``--user-id`` (None: ``RUNCOMFY_USER_ID``).
        rate: API requests per second this command may send (``--rate``).
        interrupt_hint: what to tell the user when Ctrl-C stops the running command.
    """

    json: bool = False
    token: str | None = attrs.field(default=None, repr=False)
    user_id: str | None = None
    rate: float = 1.0
    interrupt_hint: str = ""


class CliError(click.ClickException):
    """A failure shown as one line on stderr with a chosen exit code.

    Args:
        message: the line (what failed, why, what to do).
        exit_code: the process exit code.
        error: the library error behind it (its type, status and code go into ``--json``).
        hint: the shell advice in ``message``, kept apart for ``--json``.
    """

    def __init__(
        self,
        message: str,
        *,
        exit_code: int = EXIT_FAILED,
        error: errors.RunComfyError | None = None,
        hint: str = "",
    ) -> None:
        super().__init__(message)
        # click declares exit_code a ClassVar, yet reads it per instance; one class serves all.
        self.exit_code = exit_code  # type: ignore[misc]
        self.error = error
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        """Print ``runcomfy: error: <message>`` on stderr."""
        click.echo(f"runcomfy: error: {self.format_message()}", file=file or sys.stderr)


def error_json(exc: click.ClickException) -> dict[str, Any]:
    """A failure as the ``{"error": {...}}`` object ``--json`` prints on stdout."""
    cause = exc.error if isinstance(exc, CliError) else None
    return {
        "error": {
            "type": type(cause).__name__ if cause is not None else type(exc).__name__,
            "message": exc.format_message(),
            "hint": exc.hint if isinstance(exc, CliError) else "",
            "status": getattr(cause, "status", None),
            "code": getattr(cause, "code", None),
            "exit_code": exc.exit_code,
        }
    }


def settings() -> Settings:
    """The :class:`Settings` of the running command."""
    return click.get_current_context().ensure_object(Settings)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--json`` after a subcommand means the same as before it."""
    if value:
        ctx.ensure_object(Settings).json = True


_F = TypeVar("_F", bound=Callable[..., Any])


def output_options(func: _F) -> _F:
    """Add ``--json`` to a leaf command, so it may follow the subcommand too."""
    return click.option(
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_json,
        help="Print machine-readable JSON on stdout instead of tables.",
    )(func)


# -- output -------------------------------------------------------------------------------------


def stdout_console() -> Console:
    """The console for results: stdout, plain and wide enough for ids when not a terminal."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, 160)
    return console


def _cell(value: Any) -> str:
    """A table cell: empty for None, ISO times, enum values, JSON for nested data."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(to_jsonable(value), separators=(",", ":"))
    return str(value)


def emit(
    data: Any,
    *,
    columns: Sequence[str] | None = None,
    rows: Iterable[Sequence[Any]] | None = None,
    title: str | None = None,
    text: str | None = None,
) -> None:
    """Print a command's result: JSON of ``data`` with ``--json``, else a table or a line.

    Args:
        data: the result, printed as JSON with ``--json``.
        columns: table headers; with ``rows``, printed as a table otherwise.
        rows: the table rows.
        title: the table's title.
        text: a line printed instead of a table (when no columns are given).
    """
    if settings().json:
        click.echo(json.dumps(to_jsonable(data), indent=2, sort_keys=False))
        return
    console = stdout_console()
    if columns is not None:
        shown = None if title is None else Text(title)
        table = Table(title=shown, show_lines=False, title_justify="left")
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in rows or ():
            table.add_row(*(Text(_cell(v)) for v in row))  # values are not markup
        console.print(table)
    elif text is not None:
        console.print(text, markup=False)


def fields_table(data: Any, *, title: str | None = None) -> None:
    """Print one data snapshot as a two-column table of its fields (or its JSON with --json)."""
    plain = to_jsonable(data)
    rows = plain.items() if isinstance(plain, dict) else [("value", plain)]
    emit(data, columns=("field", "value"), rows=rows, title=title)


def json_object_file(path: Path, example: str) -> dict[str, Any]:
    """The JSON object a ``--json-file`` holds.

    Raises:
        click.UsageError: unreadable, not JSON, or not an object (``example`` shows one).
    """
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"--json-file {path}: not readable JSON: {exc}") from exc
    if not isinstance(loaded, dict):
        raise click.UsageError(f"--json-file {path}: must hold a JSON object, like {example}")
    return loaded


# -- running work and mapping errors -----------------------------------------------------------


def _hint(exc: errors.RunComfyError, group: str) -> str:
    """What the user can do about an error, worded for the shell (the library's ``fix`` is
    worded for Python code)."""
    if isinstance(exc, errors.AuthenticationError):
        return "check RUNCOMFY_API_TOKEN or --token; the token is on your runcomfy.com Profile page"
    if isinstance(exc, errors.ConfigurationError):
        if exc.problem.startswith("no API token"):
            return (
                "set RUNCOMFY_API_TOKEN (or pass --token); it is on your runcomfy.com Profile page"
            )
        if "user id" in exc.problem:
            return "set RUNCOMFY_USER_ID (or pass --user-id)"
        return "fix the setting named above (see the environment variables in `runcomfy --help`)"
    if isinstance(exc, errors.DeploymentDisabledError):
        return "enable it first: `runcomfy deployments update DEPLOYMENT_ID --enable`"
    if isinstance(exc, errors.DeploymentDeletedError):
        return "it is gone: `runcomfy deployments create` makes a new one"
    if isinstance(exc, errors.NotFoundError):
        if group in ("datasets", "machines", "deployments"):
            return f"check the id; `runcomfy {group} list` shows what exists"
        return "check the id (ids of finished work may have expired)"
    if isinstance(exc, errors.ConflictError):
        if group == "datasets":
            return (
                "pick another name, or use the existing dataset: `runcomfy datasets upload NAME "
                "FOLDER` adds to it, `runcomfy datasets create NAME --exist-ok` shows it"
            )
        return "check its state with the matching `status` command"
    if isinstance(exc, errors.ConfigError):
        if "folder_path" in exc.problem or "training_folder" in exc.problem:
            return "`runcomfy jobs submit CONFIG --dataset NAME` fills in the fixed paths"
        if "not READY" in exc.problem or "no dataset named" in exc.problem:
            return (
                "`runcomfy datasets upload NAME FOLDER --wait` uploads and waits for READY; "
                "`runcomfy datasets list` shows the datasets"
            )
        return "fix the config file as the message says"
    if isinstance(exc, errors.JobFailed):
        return (
            "fix the cause, then `runcomfy jobs resume ID`, or submit the config again "
            "(`runcomfy jobs result ID` lists what it made)"
        )
    if isinstance(exc, errors.APITimeoutError):
        return "check the network and try again"
    if isinstance(exc, errors.InsufficientBalanceError):
        return "top up the account balance on runcomfy.com"
    if isinstance(exc, errors.RateLimitError):
        return "the account's request rate was exceeded; wait a moment and try again"
    if isinstance(exc, errors.ServerError | errors.UnexpectedResponseError):
        return "the service failed; try again later"
    if isinstance(exc, errors.BadRequestError) and exc.code == 400001 and group == "models":
        return "check the model id; `runcomfy models list --search TEXT` shows the ones there are"
    if isinstance(exc, errors.BadRequestError | errors.PermissionDeniedError):
        return "fix the request as the message says"
    if isinstance(exc, errors.TransportError):
        return "check the network and the RUNCOMFY_*_URL variables, then try again"
    return ""


def _one_line(text: str) -> str:
    """A message folded onto one line (multi-line messages list details)."""
    lines = [line.strip(" -") for line in text.splitlines() if line.strip()]
    if not lines:
        return "no details given"
    if len(lines) == 1:
        return lines[0]
    shown = "; ".join(lines[1:4])
    more = f"; ... ({len(lines) - 4} more)" if len(lines) > 4 else ""
    return f"{lines[0]} {shown}{more}"


def cli_error(exc: errors.RunComfyError, what: str) -> CliError:
    """The :class:`CliError` for a library error raised while doing ``what`` (a command path):
    the error's problem, and advice for the shell instead of its Python ``fix``."""
    error = exc
    message = f"{what} failed: {_one_line(exc.problem)}"
    cause = exc.__cause__
    if isinstance(exc, errors.DownloadError) and isinstance(cause, errors.RunComfyError):
        exc = cause  # the exit code and hint of the first file's own failure
    if isinstance(exc, errors.APIError):
        code = EXIT_API
    elif isinstance(exc, errors.TransportError):
        code = EXIT_TRANSPORT
    elif isinstance(exc, errors.ConfigurationError):
        code = EXIT_USAGE
    else:
        code = EXIT_FAILED
    group = what.split()[0] if " " in what else ""
    groups = ("datasets", "jobs", "models", "machines", "deployments")
    hint = _hint(exc, group if group in groups else "")
    return CliError(message + (f"; {hint}" if hint else ""), exit_code=code, error=error, hint=hint)


def _what() -> str:
    """The running command, e.g. ``datasets status``, for error messages."""
    ctx = click.get_current_context()
    return ctx.command_path.removeprefix(ctx.find_root().info_name or "").strip() or "runcomfy"


def run_with_client(work: Callable[[RunComfy], Awaitable[T]]) -> T:
    """Open a client from the global options, run ``work`` on it in a fresh event loop.

    Raises:
        CliError: a library error, mapped to its exit code and one-line message.
    """
    opts = settings()
    what = _what()

    async def main() -> T:
        async with RunComfy(token=opts.token, user_id=opts.user_id, rate=opts.rate) as rc:
            return await work(rc)

    try:
        return asyncio.run(main())
    except errors.RunComfyError as exc:
        raise cli_error(exc, what) from exc


def interrupted(hint: str = "") -> NoReturn:
    """Leave with exit code 130 after Ctrl-C, saying what state things were left in."""
    message = "interrupted" + (f"; {hint}" if hint else "")
    raise CliError(message, exit_code=EXIT_INTERRUPTED)


class _Group(click.Group):
    """The root group: turns Ctrl-C into exit code 130 with the command's resume hint."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; Ctrl-C (KeyboardInterrupt) becomes a clean exit 130; with ``--json``
        a failure is printed as JSON on stdout (see :func:`error_json`)."""
        opts = ctx.ensure_object(Settings)
        try:
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                interrupted(opts.interrupt_hint)
        except click.ClickException as exc:
            if not opts.json:
                raise
            click.echo(json.dumps(error_json(exc), indent=2))
            raise click.exceptions.Exit(exc.exit_code) from exc


@click.group(cls=_Group, epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Print machine-readable JSON on stdout instead of tables.",
)
@click.option(
    "--token",
    envvar="RUNCOMFY_API_TOKEN",
    show_envvar=True,
    default=None,
    metavar="TOKEN",
    help="API token (prefer the environment variable: arguments show up in `ps`).",
)
@click.option(
    "--user-id",
    envvar="RUNCOMFY_USER_ID",
    show_envvar=True,
    default=None,
    help="Account user id, needed by the machine commands.",
)
@click.option(
    "--rate",
    envvar="RUNCOMFY_RATE",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="API requests per second to send at most (the account allows 1; lower it when "
    "other programs share the account).",
)
@click.version_option(package_name="runcomfy-async", prog_name="runcomfy")
@click.pass_context
def cli(
    ctx: click.Context, json_output: bool, token: str | None, user_id: str | None, rate: float
) -> None:
    """Work with RunComfy's datasets, training jobs, models and machines from the shell."""
    opts = ctx.ensure_object(Settings)
    opts.json = opts.json or json_output
    opts.token = token or None
    opts.user_id = user_id or None
    opts.rate = rate
