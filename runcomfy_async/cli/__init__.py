"""The ``runcomfy`` command (extra ``runcomfy-async[cli]``): every API from the shell, and the demo.

One module per command group; :mod:`._app` holds the root group, the global options, output and
exit codes. ``main`` is the console script's entry point.
"""

from __future__ import annotations

try:
    from . import account, datasets, demo, deployments, emulator, jobs, machines, models
    from ._app import cli
except ModuleNotFoundError as exc:  # click and rich come with the cli extra only
    if exc.name not in ("click", "rich"):
        raise
    raise ImportError(
        f"the runcomfy command needs {exc.name!r}, which comes with the cli extra: "
        "pip install 'runcomfy-async[cli]'"
    ) from exc

__all__ = ["cli", "main"]

cli.add_command(datasets.group)
cli.add_command(jobs.group)
cli.add_command(models.group)
cli.add_command(models.requests_group)
cli.add_command(machines.group)
cli.add_command(deployments.group)
cli.add_command(account.balance)
cli.add_command(emulator.command)
cli.add_command(demo.command)


def main() -> None:
    """Run ``runcomfy`` with the process arguments; exits with the command's exit code."""
    cli.main(prog_name="runcomfy")
