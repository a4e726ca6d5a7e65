"""``runcomfy machines``: workflows, launching ComfyUI machines, extending and stopping them."""

from __future__ import annotations

from typing import Any

import click

from runcomfy_async import MachineInfo, RunComfy, ServerType

from ._app import emit, fields_table, output_options, run_with_client, settings
from .progress import Reporter

__all__ = ["group"]

#: Named like the fields of ``MachineInfo``, as ``--json`` prints them.
_COLUMNS = (
    "server_id", "current_status", "server_type", "main_service_url", "estimated_stopping_at"
)


def _row(info: MachineInfo) -> tuple[Any, ...]:
    """A machine as one table row."""
    return (
        info.server_id,
        info.current_status,
        info.server_type,
        info.main_service_url,
        info.estimated_stopping_at,
    )


@click.group("machines")
def group() -> None:
    """ComfyUI machines (Server API): workflows, list, launch, status, extend, stop."""


@group.command("workflows")
@output_options
def workflows() -> None:
    """List the account's workflows (launch a machine with a VERSION_ID)."""
    items = run_with_client(lambda rc: rc.machines.workflows())
    emit(
        items,
        columns=("workflow_id", "name", "version_id", "updated"),
        rows=[(w.workflow_id, w.name, w.version_id, w.updated_at) for w in items],
        title="workflows",
    )


@group.command("list")
@output_options
def list_() -> None:
    """List the account's running machines."""
    items = run_with_client(lambda rc: rc.machines.list())
    emit(items, columns=_COLUMNS, rows=[_row(m) for m in items], title="machines")


@group.command("launch")
@click.argument("version_id")
@click.option(
    "--server-type",
    type=click.Choice([t.value for t in ServerType]),
    default=ServerType.LARGE.value,
    show_default=True,
    help="Machine size.",
)
@click.option(
    "--duration",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    help="Seconds the machine should run (it stops itself after that).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the machine is Ready and print its ComfyUI URL.",
)
@output_options
def launch(version_id: str, server_type: str, duration: int, wait: bool) -> None:
    """Launch a machine running the workflow version VERSION_ID (it bills until stopped)."""
    reporter = Reporter()
    opts = settings()

    async def work(rc: RunComfy) -> MachineInfo:
        machine = await rc.machines.launch(
            version_id, server_type=server_type, estimated_duration=duration
        )
        opts.interrupt_hint = (
            f"machine {machine.id} was launched and bills until it stops: "
            f"`runcomfy machines stop {machine.id}`"
        )
        if not wait:
            return await machine.status()
        reporter.note(f"launched machine {machine.id}; waiting until it is Ready")
        return await machine

    info = run_with_client(work)
    fields_table(info, title="machine")
    if not opts.json:
        click.echo(f"stop it with: runcomfy machines stop {info.server_id}", err=True)


@group.command("status")
@click.argument("server_id")
@output_options
def status(server_id: str) -> None:
    """Show a machine's status and ComfyUI URL."""
    info = run_with_client(lambda rc: rc.machines.get(server_id).status())
    fields_table(info, title="machine")


@group.command("extend")
@click.argument("server_id")
@click.argument("seconds", type=click.IntRange(min=1))
@output_options
def extend(server_id: str, seconds: int) -> None:
    """Set a machine's whole running time to SECONDS (not an increment)."""
    info = run_with_client(lambda rc: rc.machines.get(server_id).extend(seconds))
    fields_table(info, title="machine")


@group.command("stop")
@click.argument("server_id")
@output_options
def stop(server_id: str) -> None:
    """Stop a machine (billing stops); an already stopped one is not an error."""
    info = run_with_client(lambda rc: rc.machines.get(server_id).stop())
    status = info.current_status.value if info is not None else "already stopped"
    emit(
        {"server_id": server_id, "stopped": True, "status": status},
        text=f"machine {server_id}: {status}",
    )
