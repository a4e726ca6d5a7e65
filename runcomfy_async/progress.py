"""Progress for scripts and notebooks: one callable for every ``progress=`` and ``on_status=``.

Both helpers take every event the library reports (upload events, :class:`DownloadProgress`,
:class:`JobStatus` snapshots, :class:`Artifact`, :class:`ComfyEvent`, :class:`RequestStatus`,
:class:`ServerlessStatus`),
so one of them serves an upload, a download, a training job and a ComfyUI prompt alike:

- :class:`ProgressLog` prints plain lines and needs nothing: at most one line per operation
  every ``every`` seconds, plus the lines that matter at once (a plan, a failure, a status
  change, the end). 600 files make a handful of lines, not one per event.
- :func:`progress_bars` draws live bars with ``rich`` (the ``progress`` extra) on a terminal or
  in Jupyter, and falls back to a :class:`ProgressLog` anywhere else (a pipe, a log file, CI).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self, TypeAlias

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

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["AnyProgressEvent", "ProgressLog", "progress_bars"]

#: Every event a ``progress=`` or ``on_status=`` callback of the library can receive.
AnyProgressEvent: TypeAlias = (
    UploadEvent
    | DownloadProgress
    | JobStatus
    | Artifact
    | ComfyEvent
    | RequestStatus
    | ServerlessStatus
)

_MB = 1_000_000


class ProgressLog:
    """Progress as plain text lines, coalesced so they never flood.

    Use it as ``progress=`` (uploads, downloads, ComfyUI) or ``on_status=`` (jobs, model
    requests); as a context manager it also prints, on exit, the last line it held back::

        with ProgressLog() as progress:
            await ds.upload_folder("./dogs", progress=progress)

    Args:
        every: seconds between two progress lines of one operation (lines that matter are
            printed at once: a plan, a failure, a status change, the end).
        file: where lines go (default stderr).
        clock: the monotonic clock (a test may pass its own).
    """

    def __init__(
        self,
        *,
        every: float = 2.0,
        file: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every = every
        self._file = file
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, str] = {}
        # uploads: totals planned, files finished, bytes of finished files and of files in flight
        self._up_files = self._up_done = self._up_failed = 0
        self._up_bytes = self._up_done_bytes = 0
        self._up_sent: dict[str, int] = {}
        self._downloads: dict[Path, tuple[int, int | None]] = {}
        self._seen: dict[str, tuple[Any, ...]] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()

    def flush(self) -> None:
        """Print the lines held back by the ``every`` limit."""
        held, self._held = self._held, {}
        for line in held.values():
            self._write(line)

    def __call__(self, event: AnyProgressEvent) -> None:
        """Take one event of any operation (the ``progress=`` / ``on_status=`` callback)."""
        if isinstance(event, JobStatus):
            self._job(event)
        elif isinstance(event, Artifact):
            step = f" (step {event.step})" if event.step is not None else ""
            self._line("job", f"job: new {event.kind.rstrip('s')} {event.name}{step}", now=True)
        elif isinstance(event, RequestStatus | ServerlessStatus):
            self._request(event)
        elif isinstance(event, ComfyEvent):
            self._comfy(event)
        elif isinstance(event, DownloadProgress):
            self._download(event)
        else:
            self._upload(event)

    # -- one method per kind of operation ---------------------------------------------------

    def _upload(self, event: UploadEvent) -> None:
        if isinstance(event, UploadPlanned):
            self._up_files += event.files
            self._up_bytes += event.total_bytes
            skipped = f", {event.skipped_files} already there" if event.skipped_files else ""
            self._line(
                "upload",
                f"upload: {event.files} file(s), {event.total_bytes / _MB:.1f} MB to send"
                + skipped,
                now=True,
            )
            return
        if isinstance(event, FileStarted | FileRetrying):
            self._up_sent[event.filename] = 0
        elif isinstance(event, BytesSent):
            self._up_sent[event.filename] = event.sent
        elif isinstance(event, FileDone):
            self._up_sent.pop(event.filename, None)
            self._up_done += 1
            self._up_done_bytes += event.size
        elif isinstance(event, FileFailed):
            self._up_sent.pop(event.filename, None)
            self._up_failed += 1
            failure = f"upload: {event.filename} failed: {event.message}"
            self._line("upload-failed", failure, now=True)
        finished = self._up_done + self._up_failed >= self._up_files
        sent = self._up_done_bytes + sum(self._up_sent.values())
        failed = f", {self._up_failed} failed" if self._up_failed else ""
        self._line(
            "upload",
            f"upload: {self._up_done}/{self._up_files} files{failed}, "
            f"{sent / _MB:.1f}/{self._up_bytes / _MB:.1f} MB" + (" (done)" if finished else ""),
            now=finished,
        )

    def _download(self, event: DownloadProgress) -> None:
        self._downloads[event.path] = (event.done, event.total)
        done = sum(1 for d, t in self._downloads.values() if t is not None and d >= t)
        got = sum(d for d, _ in self._downloads.values())
        self._line("download", f"download: {done}/{len(self._downloads)} file(s) complete, "
                   f"{got / _MB:.1f} MB")

    def _job(self, info: JobStatus) -> None:
        progress = info.progress
        step = (
            f" step {progress.current_step}/{progress.total_steps}"
            if progress and progress.total_steps
            else ""
        )
        changed = self._changed(f"job {info.id}", (info.status,))
        self._line("job", f"job {info.id}: {info.status.value}{step}", now=changed)

    def _request(self, state: RequestStatus | ServerlessStatus) -> None:
        where = f" (queue position {state.queue_position})" if state.queue_position else ""
        changed = self._changed(f"request {state.request_id}", (state.status,))
        self._line(
            f"request {state.request_id}",
            f"request {state.request_id}: {state.status.value}{where}",
            now=changed,
        )

    def _comfy(self, event: ComfyEvent) -> None:
        node = event.node or "?"
        if event.type == "progress" and event.fraction is not None:
            self._line(
                "comfyui", f"comfyui: node {node} {event.data.get('value')}/{event.data.get('max')}"
            )
        elif event.type == "executing" and event.node is not None:
            self._line("comfyui", f"comfyui: node {node}")
        elif event.type in ("execution_success", "execution_error", "execution_interrupted"):
            self._line("comfyui", f"comfyui: {event.type.removeprefix('execution_')}", now=True)

    # -- coalescing -------------------------------------------------------------------------

    def _changed(self, key: str, value: tuple[Any, ...]) -> bool:
        """Whether ``value`` differs from the last one seen under ``key`` (and remember it)."""
        before = self._seen.get(key)
        self._seen[key] = value
        return before != value

    def _line(self, key: str, line: str, *, now: bool = False) -> None:
        """Print ``line`` if ``now`` or ``every`` seconds passed for ``key``; else hold it."""
        at = self._clock()
        if now or at - self._last.get(key, -self.every) >= self.every:
            self._held.pop(key, None)
            self._last[key] = at
            self._write(line)
        else:
            self._held[key] = line

    def _write(self, line: str) -> None:
        print(line, file=self._file or sys.stderr, flush=True)


@contextlib.contextmanager
def progress_bars(
    label: str = "", *, console: Console | None = None
) -> Iterator[Callable[[AnyProgressEvent], None]]:
    """Live rich bars for whatever operations run inside the block (extra ``progress``).

    ::

        with progress_bars("dogs") as progress:
            await ds.upload_folder("./dogs", progress=progress)
            await job.wait(on_status=progress)

    Off a terminal (and outside Jupyter) it yields a :class:`ProgressLog` instead, so logs get
    a few lines rather than escape codes.

    Args:
        label: the name shown before the bars.
        console: the ``rich.console.Console`` to draw on (default: stderr).

    Raises:
        ImportError: ``rich`` is not installed; the message names the extra to install.
    """
    try:
        from . import _bars
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("rich"):
            raise
        raise ImportError(
            "progress_bars needs rich, which comes with the progress extra: "
            "pip install 'runcomfy-async[progress]' (ProgressLog needs nothing)"
        ) from exc
    reporter = _bars.Reporter(console)
    if not reporter.enabled:
        with ProgressLog() as log:
            yield log
        return
    bars = _bars.AnyBars(reporter, label)
    try:
        yield bars
    finally:
        bars.close()
