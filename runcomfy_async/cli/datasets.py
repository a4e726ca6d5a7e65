"""``runcomfy datasets``: create, list, inspect, delete and bulk-upload training datasets."""

from __future__ import annotations

from pathlib import Path

import click

from runcomfy_async import DatasetInfo, RunComfy, UploadReport, URLSource, errors, to_jsonable

from ._app import (
    EXIT_FAILED,
    CliError,
    emit,
    error_json,
    fields_table,
    output_options,
    run_with_client,
    settings,
)
from .progress import Reporter

__all__ = ["group"]

_COLUMNS = ("id", "name", "status", "files", "created")
#: The file count shown when the list endpoint does not say (an en dash).
_UNKNOWN = "\u2013"


def _row(info: DatasetInfo) -> tuple[object, ...]:
    """A dataset as one table row; the list endpoint leaves files out, so an empty list there
    is shown as unknown (an en dash), never as 0 (`datasets status` counts them)."""
    return (info.id, info.name, info.status, len(info.files) or _UNKNOWN, info.created_at)


async def _status(rc: RunComfy, ref: str) -> DatasetInfo:
    """The status of a dataset given by id, falling back to a name lookup on 404."""
    try:
        return await rc.datasets.get(ref).status()
    except errors.NotFoundError:
        found = await rc.datasets.find(ref)
        if found is None:
            raise
        return await found.status()


@click.group("datasets")
def group() -> None:
    """Training datasets: create, list, status, delete, upload."""


@group.command("create")
@click.argument("name")
@click.option(
    "--exist-ok", is_flag=True, help="Show the dataset already called NAME instead of failing."
)
@output_options
def create(name: str, exist_ok: bool) -> None:
    """Create an empty dataset called NAME (unique in the account)."""

    async def work(rc: RunComfy) -> DatasetInfo:
        return await (await rc.datasets.create(name, exist_ok=exist_ok)).status()

    fields_table(run_with_client(work), title="dataset created")


@group.command("list")
@output_options
def list_() -> None:
    """List the account's datasets."""
    infos = run_with_client(lambda rc: rc.datasets.list())
    emit(infos, columns=_COLUMNS, rows=[_row(i) for i in infos], title="datasets")


@group.command("status")
@click.argument("dataset")
@output_options
def status(dataset: str) -> None:
    """Show a dataset's status and files (DATASET: id or name)."""
    info = run_with_client(lambda rc: _status(rc, dataset))
    if settings().json:
        emit(info)
        return
    fields_table(_summary(info), title="dataset")
    if info.files:
        emit(info, columns=("file", "bytes"), rows=[(f.filename, f.size_bytes) for f in info.files])


def _summary(info: DatasetInfo) -> dict[str, object]:
    """A dataset's fields without the (long) file list, for the table view."""
    return {
        "id": info.id,
        "name": info.name,
        "status": info.status,
        "files": len(info.files),
        "error": info.error,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
    }


@group.command("delete")
@click.argument("dataset")
@output_options
def delete(dataset: str) -> None:
    """Delete a dataset (DATASET: id or name)."""

    async def work(rc: RunComfy) -> str:
        try:
            await rc.datasets.delete(dataset)
        except errors.NotFoundError:
            found = await rc.datasets.find(dataset)
            if found is None:
                raise
            await rc.datasets.delete(found.id)
            return found.id
        return dataset

    deleted = run_with_client(work)
    emit({"id": deleted, "deleted": True}, text=f"deleted dataset {deleted}")


def _paths_or_urls(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[Path | URLSource, ...]:
    """Each argument as an existing file or folder, or an ``http(s)://`` URL (a URL source)."""
    exists = click.Path(exists=True, path_type=Path)
    return tuple(
        URLSource(url=v)
        if v.lower().startswith(("http://", "https://"))
        else exists.convert(v, param, ctx)
        for v in values
    )


def _merge(reports: list[UploadReport], dataset_id: str) -> UploadReport:
    """The reports of one command (one per folder, one for loose files) as one report."""
    return UploadReport(
        dataset_id=dataset_id,
        uploaded=tuple(f for r in reports for f in r.uploaded),
        skipped=tuple(f for r in reports for f in r.skipped),
        failed=tuple(f for r in reports for f in r.failed),
        bytes_sent=sum(r.bytes_sent for r in reports),
        api_calls=sum(r.api_calls for r in reports),
        elapsed=sum(r.elapsed for r in reports),
    )


@group.command("upload")
@click.argument("dataset")
@click.argument("paths", nargs=-1, required=True, callback=_paths_or_urls)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Files in flight at once.",
)
@click.option("--wait", is_flag=True, help="Wait until the dataset is READY afterwards.")
@output_options
def upload(dataset: str, paths: tuple[Path | URLSource, ...], concurrency: int, wait: bool) -> None:
    """Upload files, folders and http(s) URLs into DATASET (id or name; a new name creates it).

    A folder is a training set: every image or video needs a .txt caption of the same name,
    and files the dataset already holds (same name and size) are skipped, so re-running the
    same command resumes an interrupted upload. Files given one by one are always sent. A URL
    is streamed from its host into the dataset under the last part of its path.
    """
    folders = [p for p in paths if isinstance(p, Path) and p.is_dir()]
    files = [p for p in paths if not (isinstance(p, Path) and p.is_dir())]
    reporter = Reporter()
    opts = settings()
    opts.interrupt_hint = (
        "the dataset keeps the files completed so far; run the same command again to resume "
        "(files already uploaded are skipped)"
        if not files
        else "the dataset keeps the files completed so far; run the same command again "
        "(folders resume, single files are sent again)"
    )

    async def work(rc: RunComfy) -> tuple[UploadReport, DatasetInfo | None]:
        # Every folder is checked before a dataset is created: a mistake leaves nothing behind.
        for folder in folders:
            await rc.datasets.check_folder(folder)
        ds = await rc.datasets.find(dataset)
        if ds is None:
            ds = await rc.datasets.create(dataset)
            reporter.note(f"created dataset {ds.id} ({dataset})")
        reports: list[UploadReport] = []
        # check=False: every file's outcome is printed, then the command exits non-zero below.
        with reporter.upload(f"{ds.name or ds.id}") as bars:
            for folder in folders:
                reports.append(
                    await ds.upload_folder(
                        folder, concurrency=concurrency, progress=bars, verify=False, check=False
                    )
                )
            if files:
                reports.append(
                    await ds.upload(*files, concurrency=concurrency, progress=bars, check=False)
                )
        report = _merge(reports, ds.id)
        info = await ds.wait_ready() if wait and report.ok else None
        return report, info

    report, info = run_with_client(work)
    failure = (
        f"{len(report.failed)} file(s) failed to upload (first: {report.failed[0].filename}: "
        f"{report.failed[0].message}); run the same command again to retry them"
        if report.failed
        else None
    )
    if opts.json:
        answer = {"upload": to_jsonable(report), "dataset": to_jsonable(info)}
        if failure is None:
            emit(answer)
            return
        # One JSON document: the report and the error together, then a non-zero exit.
        error = CliError(failure, exit_code=EXIT_FAILED)
        emit({**answer, **error_json(error)})
        raise click.exceptions.Exit(EXIT_FAILED)
    ready = f"; {info.status.value} with {len(info.files)} files" if info else ""
    emit(report, text=f"dataset {report.dataset_id}: {report.summary()}{ready}")
    if failure is not None:
        raise CliError(failure, exit_code=EXIT_FAILED)
