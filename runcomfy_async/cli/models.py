"""``runcomfy models``: browse the catalog, read a model's schema, run requests and manage them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from runcomfy_async import (
    ModelInfo,
    RequestResult,
    RequestStatus,
    RunComfy,
    ServerlessStatus,
    errors,
    to_jsonable,
)

from ._app import (
    CliError,
    emit,
    fields_table,
    json_object_file,
    output_options,
    run_with_client,
    settings,
)
from .progress import Reporter

__all__ = ["group", "input_value", "parse_inputs", "requests_group", "status_notes"]


def input_value(text: str) -> Any:
    """An input value: JSON when it parses (numbers, booleans, lists, objects), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_inputs(pairs: tuple[str, ...], json_file: Path | None) -> dict[str, Any]:
    """The request's inputs from ``--json-file`` (an object) overlaid with ``--input k=v`` pairs.

    Raises:
        click.UsageError: neither was given, a pair has no ``=``, or the file is not a JSON object.
    """
    inputs: dict[str, Any] = {}
    if json_file is not None:
        inputs.update(json_object_file(json_file, '{"prompt": "a cat"}'))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(
                f"--input {pair!r} is not key=value; e.g. --input prompt='a cat' --input seed=42"
            )
        inputs[key.strip()] = input_value(raw)
    if not inputs:
        raise click.UsageError("no inputs: pass --input key=value (repeatable) or --json-file FILE")
    return inputs


def status_notes(
    reporter: Reporter, request_id: str
) -> Callable[[RequestStatus | ServerlessStatus], None]:
    """An ``on_status`` callback noting each change of status (and queue position), for model
    and serverless requests alike."""
    last: list[tuple[str, int | None]] = []

    def note(state: RequestStatus | ServerlessStatus) -> None:
        """Note the snapshot when it differs from the previous one."""
        key = (state.status.value, state.queue_position)
        if last and last[-1] == key:
            return
        last.append(key)
        where = f" (queue position {state.queue_position})" if state.queue_position else ""
        reporter.note(f"{request_id}: {state.status.value}{where}")

    return note


def _result_view(result: RequestResult, files: list[Path] | None = None) -> dict[str, Any]:
    """A result as the fields a reader wants."""
    view: dict[str, Any] = {
        "request_id": result.request_id,
        "model_id": result.model_id,
        "status": result.status,
        "output": result.output,
        "error": result.error,
        "created_at": result.created_at,
        "finished_at": result.finished_at,
    }
    if result.cost is not None:
        view["cost"] = result.cost
    if files is not None:
        view["files"] = [str(p) for p in files]
    return view


def _show(result: RequestResult, files: list[Path] | None = None) -> None:
    """Print a result: a table, or with ``--json`` the result as the Python type has it (plus
    ``files`` when outputs were downloaded)."""
    if not settings().json:
        fields_table(_result_view(result, files), title="model request")
    elif files is None:
        emit(result)
    else:
        emit({**to_jsonable(result), "files": [str(p) for p in files]})


def _schema_refusal(exc: errors.ModelInputError) -> CliError:
    """``--validate`` refused the inputs: every problem and valid input on one line."""
    return CliError(
        f"models run failed: the inputs do not match {exc.model_id}'s input schema, nothing "
        f"was sent: {'; '.join(exc.problems)}. Valid inputs: {'; '.join(exc.valid)}. Fix the "
        "--input values (or drop --validate to let the service decide)"
    )


@click.group("models")
def group() -> None:
    """Model API: the catalog (list, schema) and requests (run, watch, status, result, cancel)."""


@group.command("list")
@click.option("--search", help="Only models whose id or name contains this text.")
@click.option("--category", help="Only models in this category (e.g. text-to-image).")
@click.option("--kind", help="Only catalog entries of this kind.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many models.",
)
@output_options
def list_models(search: str | None, category: str | None, kind: str | None, limit: int) -> None:
    """List the models of the catalog, with their price."""

    async def work(rc: RunComfy) -> list[ModelInfo]:
        found: list[ModelInfo] = []
        pages = rc.models.catalog(
            search=search, category=category, kind=kind, page_size=min(limit, 100)
        )
        async for model in pages:
            found.append(model)
            if len(found) >= limit:
                break
        return found

    models = run_with_client(work)
    emit(
        models,
        columns=("model_id", "display_name", "categories", "price"),
        rows=[(m.model_id, m.display_name, ", ".join(m.categories), m.price) for m in models],
        title=f"{len(models)} model(s)",
    )


def _input_row(name: str, prop: Any, required: bool) -> tuple[Any, ...]:
    """One input of a schema as a table row: name, type, required, default, allowed values."""
    prop = prop if isinstance(prop, dict) else {}
    allowed = prop.get("enum")
    if allowed is None and ("minimum" in prop or "maximum" in prop):
        allowed = f"{prop.get('minimum', '')}..{prop.get('maximum', '')}"
    return (name, prop.get("type"), "yes" if required else "", prop.get("default"), allowed)


@group.command("schema")
@click.argument("model_id")
@output_options
def schema(model_id: str) -> None:
    """Show MODEL_ID's inputs (name, type, required, default, allowed values) and price."""
    info = run_with_client(lambda rc: rc.models.schema(model_id))
    required = set(info.required_inputs)
    emit(
        info,
        columns=("input", "type", "required", "default", "allowed"),
        rows=[_input_row(name, prop, name in required) for name, prop in info.inputs.items()],
        title=f"{info.model_id}: {info.display_name or ''} {info.price or 'price unknown'}",
    )


@group.command("run")
@click.argument("model_id")
@click.option(
    "--input",
    "-i",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="One input (repeatable); VALUE is parsed as JSON when it can be (42, true, [1,2]).",
)
@click.option(
    "--json-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON object of inputs (--input pairs override its keys).",
)
@click.option(
    "--download",
    "download_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Download the output's files into this folder.",
)
@click.option(
    "--validate",
    is_flag=True,
    help="Check the inputs against the model's input schema before submitting (needs the "
    "schema extra: jsonschema).",
)
@output_options
def run(
    model_id: str,
    pairs: tuple[str, ...],
    json_file: Path | None,
    download_dir: Path | None,
    validate: bool,
) -> None:
    """Run MODEL_ID (e.g. blackforestlabs/flux-1-kontext/pro/edit) and wait for its output."""
    inputs = parse_inputs(pairs, json_file)
    reporter = Reporter()
    opts = settings()

    async def work(rc: RunComfy) -> tuple[RequestResult, list[Path] | None]:
        try:
            request = await rc.models.submit(model_id, inputs, validate=validate)
        except errors.ModelInputError as exc:
            raise _schema_refusal(exc) from exc
        reporter.note(f"submitted request {request.id}")
        opts.interrupt_hint = (
            f"request {request.id} keeps running on the server: "
            f"`runcomfy models result {request.id}` shows it, "
            f"`runcomfy models cancel {request.id}` cancels it while queued"
        )
        result = await request.wait(on_status=status_notes(reporter, request.id))
        if download_dir is None:
            return result, None
        with reporter.download(f"outputs of {request.id}") as bars:
            return result, await rc.models.download_outputs(
                result.output, download_dir, progress=bars
            )

    result, files = run_with_client(work)
    _show(result, files)


@group.command("status")
@click.argument("request_id")
@output_options
def status(request_id: str) -> None:
    """Show where a request is (queued with its position, in progress, completed)."""
    state = run_with_client(lambda rc: rc.models.get(request_id).status())
    fields_table(state, title="model request")


@group.command("result")
@click.argument("request_id")
@output_options
def result(request_id: str) -> None:
    """Show a request's result (its output, or its current status while it runs)."""
    _show(run_with_client(lambda rc: rc.models.get(request_id).result()))


@group.command("cancel")
@click.argument("request_id")
@output_options
def cancel(request_id: str) -> None:
    """Cancel a queued request (one already running answers not_cancellable)."""
    outcome = run_with_client(lambda rc: rc.models.get(request_id).cancel())
    emit(
        {"request_id": request_id, "outcome": outcome},
        text=f"{request_id}: {outcome.value}",
    )


@group.command("watch")
@click.argument("request_id")
@output_options
def watch(request_id: str) -> None:
    """Follow a submitted request (queue position, status) until it finishes; print its result.

    Exits 1 when it failed or was cancelled.
    """
    reporter = Reporter()
    settings().interrupt_hint = (
        f"request {request_id} keeps running on the server: "
        f"`runcomfy requests watch {request_id}` follows it again"
    )

    async def work(rc: RunComfy) -> RequestResult:
        return await rc.models.get(request_id).wait(on_status=status_notes(reporter, request_id))

    _show(run_with_client(work))


@click.group("requests")
def requests_group() -> None:
    """Model API requests by id: watch, status, result, cancel (the same as under `models`)."""


for _command in (watch, status, result, cancel):
    requests_group.add_command(_command)
