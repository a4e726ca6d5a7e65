"""``runcomfy deployments``: manage serverless deployments and run requests on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from runcomfy_async import DeploymentInfo, Hardware, RunComfy, ServerlessResult

from ._app import (
    emit,
    fields_table,
    json_object_file,
    output_options,
    run_with_client,
    settings,
)
from .models import input_value, status_notes
from .progress import Reporter

__all__ = ["group", "parse_overrides"]

_SETTINGS = (
    ("min_instances", "Instances kept up with no traffic (billed while idle)."),
    ("max_instances", "The autoscaling ceiling."),
    ("queue_size", "Requests that may wait before another instance starts."),
    ("keep_warm_duration_in_seconds", "Seconds an idle instance stays up."),
)


def _settings_options(func: Any) -> Any:
    """The numeric deployment settings as ``--min-instances`` etc."""
    for name, text in reversed(_SETTINGS):
        func = click.option(f"--{name.replace('_', '-')}", name, type=int, help=text)(func)
    return func


def _value(text: str) -> Any:
    """An override value: ``@path`` is a local file (sent inline), else JSON or the text."""
    return Path(text[1:]) if text.startswith("@") else input_value(text)


def parse_overrides(pairs: tuple[str, ...], json_file: Path | None) -> dict[str, Any]:
    """Overrides from ``--json-file`` (``{node: {"inputs": {...}}}``) and ``NODE.INPUT=VALUE``.

    Raises:
        click.UsageError: a pair not shaped ``NODE.INPUT=VALUE``, or a file that is not a JSON
            object.
    """
    overrides: dict[str, Any] = {}
    if json_file is not None:
        overrides.update(json_object_file(json_file, '{"6": {"inputs": {"text": "a cat"}}}'))
    for pair in pairs:
        target, sep, raw = pair.partition("=")
        node, dot, name = target.partition(".")
        if not sep or not dot or not node.strip() or not name.strip():
            raise click.UsageError(
                f"--set {pair!r} is not NODE.INPUT=VALUE; e.g. --set 6.text='a cat' "
                "--set 3.seed=42 --set 10.image=@photo.png"
            )
        change = overrides.setdefault(node.strip(), {"inputs": {}})
        change.setdefault("inputs", {})[name.strip()] = _value(raw)
    return overrides


def _row(info: DeploymentInfo) -> tuple[Any, ...]:
    """One deployment as a table row."""
    return (
        info.id,
        info.name,
        ",".join(h.value for h in info.hardware),
        f"{info.min_instances}-{info.max_instances}",
        info.status,
        "yes" if info.enabled else "no",
    )


def _view(info: DeploymentInfo) -> dict[str, Any]:
    """A deployment's fields for the table view, without the (long) workflow."""
    view = {
        "id": info.id,
        "name": info.name,
        "workflow_id": info.workflow_id,
        "workflow_version": info.workflow_version,
        "hardware": [h.value for h in info.hardware],
        "min_instances": info.min_instances,
        "max_instances": info.max_instances,
        "queue_size": info.queue_size,
        "keep_warm_duration_in_seconds": info.keep_warm_duration_in_seconds,
        "status": info.status,
        "is_enabled": info.is_enabled,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
    }
    if info.payload is not None:
        view["nodes"] = ", ".join(
            f"{node_id} ({node.get('class_type', '?')})"
            for node_id, node in info.payload.workflow_api_json.items()
        )
    if info.readme is not None:
        view["readme"] = info.readme
    return view


def _show(info: DeploymentInfo) -> None:
    """Print one deployment (all of it with --json)."""
    if settings().json:
        emit(info)
    else:
        fields_table(_view(info), title="deployment")


@click.group("deployments")
def group() -> None:
    """Serverless deployments: list, get, create, update, delete, run."""


@group.command("list")
@click.option("--id", "ids", multiple=True, help="Only this deployment (repeatable).")
@output_options
def list_(ids: tuple[str, ...]) -> None:
    """List the account's deployments."""
    infos = run_with_client(lambda rc: rc.deployments.list(ids=ids or None))
    emit(
        infos,
        columns=("id", "name", "hardware", "instances", "status", "enabled"),
        rows=[_row(i) for i in infos],
        title="deployments",
    )


@group.command("get")
@click.argument("deployment_id")
@click.option(
    "--include",
    "includes",
    multiple=True,
    type=click.Choice(["payload", "readme"]),
    help="Also show the deployed workflow (payload) and/or the README.",
)
@output_options
def get(deployment_id: str, includes: tuple[str, ...]) -> None:
    """Show one deployment."""
    _show(run_with_client(lambda rc: rc.deployments.info(deployment_id, includes=includes)))


@group.command("create")
@click.option("--name", required=True, help="A human-readable name.")
@click.option("--workflow-id", required=True, help="The cloud-saved workflow to deploy.")
@click.option("--workflow-version", required=True, help="Its version label, e.g. v1.")
@click.option(
    "--hardware",
    required=True,
    metavar="SKU",
    help=f"One GPU SKU: {', '.join(h.value for h in Hardware)}.",
)
@_settings_options
@output_options
def create(
    name: str, workflow_id: str, workflow_version: str, hardware: str, **numbers: int | None
) -> None:
    """Deploy a workflow version as a serverless endpoint."""

    async def work(rc: RunComfy) -> DeploymentInfo:
        dep = await rc.deployments.create(
            name=name,
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            hardware=hardware,
            **numbers,
        )
        assert dep.info is not None
        return dep.info

    _show(run_with_client(work))


@group.command("update")
@click.argument("deployment_id")
@click.option("--name", help="A new name.")
@click.option("--workflow-version", help="Pin another version of the same workflow.")
@click.option("--hardware", metavar="SKU", help="Move to another GPU SKU.")
@_settings_options
@click.option("--enable/--disable", "is_enabled", default=None, help="Allow or refuse runs.")
@output_options
def update(deployment_id: str, **changes: Any) -> None:
    """Change some settings of a deployment (only the options given are sent)."""
    sent = {key: value for key, value in changes.items() if value is not None}
    if not sent:
        raise click.UsageError(
            "nothing to change: pass e.g. --disable, --enable or --max-instances 2"
        )
    _show(run_with_client(lambda rc: rc.deployments.update(deployment_id, **sent)))


@group.command("delete")
@click.argument("deployment_id")
@output_options
def delete(deployment_id: str) -> None:
    """Delete a deployment (runs on it are refused from then on)."""
    run_with_client(lambda rc: rc.deployments.delete(deployment_id))
    emit({"id": deployment_id, "deleted": True}, text=f"deleted deployment {deployment_id}")


def _result_view(result: ServerlessResult, files: list[Path] | None) -> dict[str, Any]:
    """A result as the fields a reader wants."""
    view: dict[str, Any] = {
        "request_id": result.request_id,
        "status": result.status,
        "outputs": result.outputs,
        "created_at": result.created_at,
        "finished_at": result.finished_at,
    }
    if files is not None:
        view["files"] = [str(p) for p in files]
    return view


@group.command("run")
@click.argument("deployment_id")
@click.option(
    "--set",
    "pairs",
    multiple=True,
    metavar="NODE.INPUT=VALUE",
    help="One override (repeatable); VALUE is JSON when it parses, @FILE sends a local file.",
)
@click.option(
    "--json-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Overrides as JSON: {"6": {"inputs": {"text": "..."}}} (--set pairs add to it).',
)
@click.option("--webhook", metavar="URL", help="Also POST status events to this URL.")
@click.option(
    "--download",
    "download_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Download the output files into this folder.",
)
@output_options
def run(
    deployment_id: str,
    pairs: tuple[str, ...],
    json_file: Path | None,
    webhook: str | None,
    download_dir: Path | None,
) -> None:
    """Run DEPLOYMENT_ID with overrides (checked against its workflow) and wait."""
    overrides = parse_overrides(pairs, json_file)
    reporter = Reporter()
    opts = settings()

    async def work(rc: RunComfy) -> tuple[ServerlessResult, list[Path] | None]:
        dep = rc.deployments.get(deployment_id)
        request = await dep.submit(overrides, webhook=webhook, validate=bool(overrides))
        reporter.note(f"submitted request {request.id}")
        opts.interrupt_hint = (
            f"request {request.id} keeps running on deployment {deployment_id}; cancel it "
            f"with the API (rc.deployments.get({deployment_id!r}).request({request.id!r})"
            ".cancel())"
        )
        result = await request.wait(on_status=status_notes(reporter, request.id))
        if download_dir is None:
            return result, None
        with reporter.download(f"outputs of {request.id}") as bars:
            return result, await rc.deployments.download_outputs(
                result, download_dir, progress=bars
            )

    result, files = run_with_client(work)
    fields_table(_result_view(result, files), title="serverless request")
