"""Live progress for long work: rich bars on stderr, drawn only when stderr is a terminal.

Needs ``rich`` (the ``progress`` or ``cli`` extra): import it through
:func:`runcomfy_async.progress.progress_bars`, which names the extra when it is missing.

The library reports progress as typed events (upload events, :class:`DownloadProgress`, job
status snapshots, ComfyUI events); this module turns them into bars. When stderr is not a
terminal (a pipe, a log file, CI) nothing is drawn at all: no bars, no carriage returns, no
escape codes, so scripted output stays clean.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .types.deployments import ServerlessStatus
from .types.jobs import Artifact, JobStatus
from .types.machines import ComfyEvent
from .types.models import RequestStatus
from .types.progress import DownloadProgress
from .types.uploads import (
    BytesSent,
    FileDone,
    FileFailed,
    FileRetrying,
    FileStarted,
    UploadEvent,
    UploadPlanned,
)

__all__ = ["AnyBars", "DownloadBars", "JobBar", "PromptBar", "Reporter", "UploadBars"]

#: Longest file name shown next to a bar; longer ones are shortened in the middle.
_NAME_WIDTH = 28


def _short(name: str, width: int = _NAME_WIDTH) -> str:
    """A file name fitted to ``width`` characters, keeping its start and its extension."""
    if len(name) <= width:
        return name.ljust(width)
    keep = width - 1
    return name[: keep - keep // 3] + "…" + name[-(keep // 3):]


class Reporter:
    """Where a command's live progress goes.

    Args:
        console: the console to draw on; default stderr.
        notes_to_stdout: print notes (new artifacts, retries) on stdout when no bars are drawn,
            as the demo does; commands leave it off so stdout holds only their result.
    """

    def __init__(self, console: Console | None = None, *, notes_to_stdout: bool = False) -> None:
        self.console = console or Console(stderr=True)
        #: Whether anything is drawn: only on a terminal (or in Jupyter).
        self.enabled = self.console.is_terminal or self.console.is_jupyter
        self._notes_to_stdout = notes_to_stdout

    def note(self, text: str) -> None:
        """A line about progress (above any live bars); dropped when nothing is drawn."""
        if self.enabled:
            self.console.print(text, markup=False, highlight=False)
        elif self._notes_to_stdout:
            print(text, file=sys.stdout, flush=True)

    def new_progress(self, *columns: str | ProgressColumn) -> Progress:
        """A rich progress display on this reporter's console (disabled off a terminal)."""
        return Progress(*columns, console=self.console, transient=False, disable=not self.enabled)

    @contextlib.contextmanager
    def upload(self, label: str) -> Iterator[UploadBars]:
        """Bars for a bulk upload: overall bytes, files, rate and ETA, plus the files in flight."""
        bars = UploadBars(self, label)
        with bars.progress:
            yield bars

    @contextlib.contextmanager
    def download(self, label: str) -> Iterator[DownloadBars]:
        """Bars for artifact or output downloads: bytes so far, per file and overall."""
        bars = DownloadBars(self, label)
        with bars.progress:
            yield bars

    @contextlib.contextmanager
    def job(self, label: str) -> Iterator[JobBar]:
        """A bar for a training run's steps, with a line per new artifact."""
        bar = JobBar(self, label)
        with bar.progress:
            yield bar

    @contextlib.contextmanager
    def prompt(self, label: str) -> Iterator[PromptBar]:
        """A bar for one ComfyUI prompt's execution (node progress events)."""
        bar = PromptBar(self, label)
        with bar.progress:
            yield bar


class UploadBars:
    """Turns upload events into an overall bar and one bar per file in flight."""

    def __init__(self, reporter: Reporter, label: str) -> None:
        self._reporter = reporter
        self.progress = reporter.new_progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        self._overall = self.progress.add_task(label, total=None, files="")
        self._files_total = 0
        self._bytes_total = 0
        self._files_done = 0
        self._bytes_done = 0
        self._sent: dict[str, int] = {}
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, event: UploadEvent) -> None:
        """Update the bars for one upload event (the library's ``progress=`` callback)."""
        if isinstance(event, UploadPlanned):
            # Each folder (and the loose files) of one command is planned on its own: add up.
            self._files_total += event.files
            self._bytes_total += event.total_bytes
            skipped = (
                f" ({event.skipped_files} already uploaded, skipped)" if event.skipped_files else ""
            )
            self.progress.update(self._overall, total=self._bytes_total)
            self._reporter.note(
                f"uploading {event.files} file(s), {event.total_bytes:,} bytes{skipped}"
            )
        elif isinstance(event, FileStarted):
            self._sent[event.filename] = 0
            if event.filename not in self._tasks:
                self._tasks[event.filename] = self.progress.add_task(
                    f"  {escape(_short(event.filename))}", total=event.size, files=""
                )
            else:
                self.progress.reset(self._tasks[event.filename], total=event.size)
        elif isinstance(event, BytesSent):
            self._sent[event.filename] = event.sent
            task = self._tasks.get(event.filename)
            if task is not None:
                self.progress.update(task, completed=event.sent)
        elif isinstance(event, FileRetrying):
            self._sent[event.filename] = 0
            self._reporter.note(
                f"retrying {event.filename} in {event.delay:.1f}s (attempt {event.attempt + 1}): "
                f"{event.message}"
            )
        elif isinstance(event, FileDone):
            self._sent.pop(event.filename, None)
            self._bytes_done += event.size
            self._files_done += 1
            self._drop(event.filename)
        elif isinstance(event, FileFailed):
            self._sent.pop(event.filename, None)
            self._drop(event.filename)
            self._reporter.note(f"failed: {event.filename}: {event.message}")
        self.progress.update(
            self._overall,
            completed=self._bytes_done + sum(self._sent.values()),
            files=f"{self._files_done}/{self._files_total} files",
        )

    def _drop(self, filename: str) -> None:
        """Remove a finished file's bar, so only files in flight are listed."""
        task = self._tasks.pop(filename, None)
        if task is not None:
            self.progress.remove_task(task)


class DownloadBars:
    """Turns :class:`DownloadProgress` events into an overall bar and per-file bars."""

    def __init__(self, reporter: Reporter, label: str) -> None:
        self._reporter = reporter
        self.progress = reporter.new_progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(binary_units=True),
            TimeElapsedColumn(),
        )
        self._overall = self.progress.add_task(label, total=None, files="")
        self._files: dict[Path, tuple[int, int | None]] = {}
        self._tasks: dict[Path, TaskID] = {}

    def __call__(self, event: DownloadProgress) -> None:
        """Update the bars for one download event (the library's ``progress=`` callback)."""
        self._files[event.path] = (event.done, event.total)
        finished = event.total is not None and event.done >= event.total
        task = self._tasks.get(event.path)
        if finished:
            if task is not None:
                self.progress.remove_task(self._tasks.pop(event.path))
        elif task is None:
            self._tasks[event.path] = self.progress.add_task(
                f"  {escape(_short(event.path.name))}",
                total=event.total,
                completed=event.done,
                files="",
            )
        else:
            self.progress.update(task, completed=event.done)
        totals = [t for _, t in self._files.values()]
        done_files = sum(1 for d, t in self._files.values() if t is not None and d >= t)
        self.progress.update(
            self._overall,
            completed=sum(d for d, _ in self._files.values()),
            total=sum(t for t in totals if t is not None)
            if all(t is not None for t in totals)
            else None,
            files=f"{done_files} file(s)",
        )


class JobBar:
    """A training run's step bar; new artifacts are listed above it as they appear."""

    def __init__(self, reporter: Reporter, label: str) -> None:
        self._reporter = reporter
        self._label = label
        self.progress = reporter.new_progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
        )
        self._task = self.progress.add_task(f"{label} [dim]IN_QUEUE", total=None)
        self.last: JobStatus | None = None

    def status(self, info: JobStatus) -> None:
        """Show a status snapshot (status word and step count); notes each status change."""
        if self.last is None or self.last.status != info.status:
            self._reporter.note(f"{info.id}: {info.status.value}")
        self.last = info
        progress = info.progress
        total = progress.total_steps if progress else None
        current = progress.current_step if progress and progress.current_step else 0
        self.progress.update(
            self._task,
            description=f"{escape(self._label)} [dim]{escape(info.status.value)}",
            total=total,
            completed=current,
        )

    def artifact(self, artifact: Artifact) -> None:
        """Note a new artifact (kind, step, name)."""
        step = f" (step {artifact.step})" if artifact.step is not None else ""
        self._reporter.note(f"  new {artifact.kind.rstrip('s')}: {artifact.name}{step}")


class PromptBar:
    """A ComfyUI prompt's progress: which node runs, and its step fraction."""

    def __init__(self, reporter: Reporter, label: str) -> None:
        self._label = label
        self.progress = reporter.new_progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self._task = self.progress.add_task(label, total=None)

    def __call__(self, event: ComfyEvent) -> None:
        """Update the bar for one ComfyUI event (the ``progress=`` callback of ``wait``)."""
        node = event.node
        if event.type == "progress":
            value, top = event.data.get("value"), event.data.get("max")
            if isinstance(value, int) and isinstance(top, int) and top > 0:
                self.progress.update(
                    self._task,
                    total=top,
                    completed=value,
                    description=f"{escape(self._label)} [dim]node {escape(node or '?')}",
                )
        elif event.type == "executing" and node is not None:
            self.progress.update(
                self._task, description=f"{escape(self._label)} [dim]node {escape(node)}"
            )
        elif event.type == "execution_success":
            task = self.progress.tasks[0]
            self.progress.update(
                self._task,
                total=task.total or 1,
                completed=task.total or 1,
                description=f"{escape(self._label)} [dim]done",
            )



class AnyBars:
    """One callback for every kind of event: each kind gets its bars when its first event
    comes, and the bars of the kind before are closed (rich draws one live display at a time).
    """

    def __init__(self, reporter: Reporter, label: str) -> None:
        self._reporter = reporter
        self._label = label
        self._kind: type | None = None
        self._bars: UploadBars | DownloadBars | JobBar | PromptBar | None = None
        self._requests: dict[str, tuple[str, int | None]] = {}

    def __call__(
        self,
        event: (
            UploadEvent
            | DownloadProgress
            | JobStatus
            | Artifact
            | ComfyEvent
            | RequestStatus
            | ServerlessStatus
        ),
    ) -> None:
        """Draw one event (the ``progress=`` / ``on_status=`` callback)."""
        if isinstance(event, RequestStatus | ServerlessStatus):
            key = (event.status.value, event.queue_position)
            if self._requests.get(event.request_id) != key:
                self._requests[event.request_id] = key
                where = f" (queue position {event.queue_position})" if event.queue_position else ""
                self._reporter.note(f"{event.request_id}: {event.status.value}{where}")
        elif isinstance(event, JobStatus | Artifact):
            job = self._switch(JobBar)
            assert isinstance(job, JobBar)
            if isinstance(event, JobStatus):
                job.status(event)
            else:
                job.artifact(event)
        elif isinstance(event, ComfyEvent):
            prompt = self._switch(PromptBar)
            assert isinstance(prompt, PromptBar)
            prompt(event)
        elif isinstance(event, DownloadProgress):
            download = self._switch(DownloadBars)
            assert isinstance(download, DownloadBars)
            download(event)
        else:
            upload = self._switch(UploadBars)
            assert isinstance(upload, UploadBars)
            upload(event)

    def _switch(
        self, kind: type[UploadBars | DownloadBars | JobBar | PromptBar]
    ) -> UploadBars | DownloadBars | JobBar | PromptBar:
        """The bars of ``kind``, started now if another kind (or none) was showing."""
        if self._bars is None or self._kind is not kind:
            self.close()
            self._kind = kind
            self._bars = kind(self._reporter, self._label)
            self._bars.progress.start()
        return self._bars

    def close(self) -> None:
        """Stop the bars showing (they stay on screen as last drawn)."""
        if self._bars is not None:
            self._bars.progress.stop()
            self._bars = None
            self._kind = None
