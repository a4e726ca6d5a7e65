"""``runcomfy models``: run Model API requests and manage them by request id."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from runcomfy_async import RequestResult, RequestStatus, RunComfy, ServerlessStatus

from ._app import (
    emit,
    fields_table,
    json_object_file,
    output_options,
    run_with_client,
    settings,
)
from .progress import Reporter

__all__ = ["group", "input_value", "parse_inputs", "status_notes"]


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
        raise click.UsageError(
            "no inputs: pass --input key=value (repeatable) or --json-file FILE"
        )
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


@click.group("models")
def group() -> None:
    """Model API requests: run, status, result, cancel."""


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
@output_options
def run(
    model_id: str, pairs: tuple[str, ...], json_file: Path | None, download_dir: Path | None
) -> None:
    """Run MODEL_ID (e.g. blackforestlabs/flux-1-kontext/pro/edit) and wait for its output."""
    inputs = parse_inputs(pairs, json_file)
    reporter = Reporter()
    opts = settings()

    async def work(rc: RunComfy) -> tuple[RequestResult, list[Path] | None]:
        request = await rc.models.submit(model_id, inputs)
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
    fields_table(_result_view(result, files), title="model request")


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
    res = run_with_client(lambda rc: rc.models.get(request_id).result())
    fields_table(_result_view(res), title="model request")


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
