"""``runcomfy jobs``: submit AI Toolkit training jobs, follow them, fetch their artifacts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from runcomfy_async import (
    ARTIFACT_KINDS,
    Artifact,
    GPUType,
    JobFailed,
    JobResult,
    JobState,
    JobStatus,
    RunComfy,
    TrainingJob,
)

from ._app import (
    EXIT_FAILED,
    CliError,
    emit,
    fields_table,
    output_options,
    run_with_client,
    settings,
)
from .progress import JobBar, Reporter

__all__ = ["artifact_rows", "group", "watch_job"]

_GPUS = {"h100": GPUType.H100, "h200": GPUType.H200}
_ARTIFACT_COLUMNS = ("kind", "step", "name", "url")


def artifact_rows(artifacts: tuple[Artifact, ...] | list[Artifact]) -> list[tuple[Any, ...]]:
    """Artifacts as table rows."""
    return [(a.kind, a.step, a.name, a.url) for a in artifacts]


def _job_view(info: JobStatus) -> dict[str, Any]:
    """A job snapshot with the derived verdicts a reader wants (completed, preempted)."""
    progress = info.progress
    return {
        "id": info.id,
        "name": info.name,
        "status": info.status,
        "step": (
            f"{progress.current_step}/{progress.total_steps}"
            if progress and progress.total_steps
            else None
        ),
        "percent": progress.percent if progress else None,
        "completed": info.completed,
        "preempted": info.preempted,
        "error": info.error,
        "created_at": info.created_at,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
    }


async def watch_job(job: TrainingJob, bar: JobBar) -> tuple[JobStatus, list[Artifact]]:
    """Follow a job to its end: step progress on ``bar`` and each new artifact as it appears.

    Returns:
        The final status snapshot and every artifact seen, in order of appearance.

    Raises:
        JobFailed: the job went FAILED.
    """
    seen: list[Artifact] = []

    async def collect() -> None:
        """Note artifacts as ``watch_artifacts`` yields them (it ends with the job)."""
        async for artifact in job.watch_artifacts():
            seen.append(artifact)
            bar.artifact(artifact)

    failed: JobFailed | None = None
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(collect())
            try:
                final = await job.wait(on_status=bar.status)
            except JobFailed as exc:
                failed = exc  # raised once the watcher has noted the final artifacts
    except BaseExceptionGroup as group:
        # Both sides fail alike (an unknown id, a wrong token): report the first as itself.
        raise group.exceptions[0] from None
    if failed is not None:
        raise failed
    return final, seen


def _show(info: JobStatus, artifacts: list[Artifact] | None = None) -> None:
    """Print a job snapshot: a table of the fields a reader wants, or with ``--json`` the
    snapshot as the Python type has it (numeric step fields), plus the artifacts seen."""
    if settings().json:
        emit(info if artifacts is None else {"job": info, "artifacts": artifacts})
        return
    fields_table(_job_view(info), title="training job")
    if artifacts:
        emit(None, columns=_ARTIFACT_COLUMNS, rows=artifact_rows(artifacts), title="artifacts")


def _verdict(info: JobStatus) -> None:
    """Fail the command (exit 1) for a run that did not complete, saying what to do."""
    if info.completed:
        return
    if info.preempted:
        progress = info.progress
        at = (
            f" at step {progress.current_step}/{progress.total_steps}"
            if progress and progress.total_steps
            else ""
        )
        raise CliError(
            f"training job {info.id} was stopped early by the platform{at}; "
            f"`runcomfy jobs resume {info.id}` continues it from its latest checkpoint",
            exit_code=EXIT_FAILED,
        )
    if info.status is JobState.CANCELED:
        raise CliError(
            f"training job {info.id} was canceled; its artifacts so far stay available "
            f"(`runcomfy jobs result {info.id}`)",
            exit_code=EXIT_FAILED,
        )


@click.group("jobs")
def group() -> None:
    """AI Toolkit training jobs: submit, watch, status, result, cancel, resume, download."""


@group.command("submit")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dataset",
    metavar="NAME",
    help="Train on this dataset: fills in the config's fixed paths for it.",
)
@click.option(
    "--gpu",
    type=click.Choice(sorted(_GPUS), case_sensitive=False),
    default="h100",
    show_default=True,
    help="GPU to train on.",
)
@click.option("--watch", is_flag=True, help="Follow the job to its end (steps, new artifacts).")
@output_options
def submit(config: Path, dataset: str | None, gpu: str, watch: bool) -> None:
    """Submit the AI Toolkit CONFIG (a YAML file) as a training job.

    The config is checked before anything is sent (fixed paths, dataset READY). With --watch,
    exits 0 only when the run completed every step.
    """
    reporter = Reporter()
    opts = settings()

    async def work(rc: RunComfy) -> tuple[JobStatus, list[Artifact]]:
        doc = await rc.jobs.config_for(dataset, config) if dataset else config
        job = await rc.jobs.submit(doc, gpu_type=_GPUS[gpu.lower()])
        opts.interrupt_hint = (
            f"training job {job.id} keeps running on the server: `runcomfy jobs status {job.id}` "
            f"follows it, `runcomfy jobs cancel {job.id}` stops it"
        )
        if not watch:
            return await job.status(), []
        reporter.note(f"submitted training job {job.id} ({job.name}); following it")
        with reporter.job(f"training {job.name or job.id}") as bar:
            return await watch_job(job, bar)

    info, artifacts = run_with_client(work)
    _show(info, artifacts)
    if watch:
        _verdict(info)


@group.command("watch")
@click.argument("job_id")
@output_options
def watch(job_id: str) -> None:
    """Follow a submitted job to its end (steps, new artifacts); exits 0 only when it
    completed every step."""
    reporter = Reporter()
    settings().interrupt_hint = (
        f"training job {job_id} keeps running on the server: `runcomfy jobs watch {job_id}` "
        f"follows it again, `runcomfy jobs cancel {job_id}` stops it"
    )

    async def work(rc: RunComfy) -> tuple[JobStatus, list[Artifact]]:
        job = rc.jobs.get(job_id)
        with reporter.job(f"training {job_id}") as bar:
            return await watch_job(job, bar)

    info, artifacts = run_with_client(work)
    _show(info, artifacts)
    _verdict(info)


@group.command("status")
@click.argument("job_id")
@output_options
def status(job_id: str) -> None:
    """Show a job's status and step progress."""
    _show(run_with_client(lambda rc: rc.jobs.get(job_id).status()))


@group.command("result")
@click.argument("job_id")
@output_options
def result(job_id: str) -> None:
    """List a job's artifacts so far (checkpoints, samples, config) with their URLs."""
    res: JobResult = run_with_client(lambda rc: rc.jobs.get(job_id).result())
    emit(
        res,
        columns=_ARTIFACT_COLUMNS,
        rows=artifact_rows(res.artifacts),
        title=f"job {job_id}: {res.status.value if res.status else '?'}"
        + (f", error: {res.error}" if res.error else ""),
    )


@group.command("cancel")
@click.argument("job_id")
@output_options
def cancel(job_id: str) -> None:
    """Cancel a queued or running job (its artifacts so far stay available)."""
    _show(run_with_client(lambda rc: rc.jobs.get(job_id).cancel()))


@group.command("resume")
@click.argument("job_id")
@output_options
def resume(job_id: str) -> None:
    """Queue a stopped job again; it continues from its latest checkpoint."""
    _show(run_with_client(lambda rc: rc.jobs.get(job_id).resume()))


@group.command("download")
@click.argument("job_id")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write into (default: ./<job_id>).",
)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(ARTIFACT_KINDS),
    multiple=True,
    help="Only these artifact groups (repeatable; default all).",
)
@output_options
def download(job_id: str, dest: Path | None, kinds: tuple[str, ...]) -> None:
    """Download a job's artifacts as DEST/<kind>/<name> (interrupted files resume)."""
    target = dest or Path(job_id)
    reporter = Reporter()
    settings().interrupt_hint = "run the same command again: partial files resume"

    async def work(rc: RunComfy) -> list[Path]:
        with reporter.download(f"job {job_id}") as bars:
            return await rc.jobs.get(job_id).download(
                target, kinds=kinds or ARTIFACT_KINDS, progress=bars
            )

    paths = run_with_client(work)
    emit(
        [str(p) for p in paths],
        columns=("file", "bytes"),
        rows=[(p, p.stat().st_size) for p in paths],
        title=f"{len(paths)} file(s) in {target}",
    )
