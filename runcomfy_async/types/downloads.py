"""Artifact and output downloads: the report of which files were written and which failed."""

from __future__ import annotations

from pathlib import Path

import attrs

__all__ = ["DownloadReport", "FailedDownload"]


@attrs.frozen(kw_only=True)
class FailedDownload:
    """One file that could not be downloaded.

    Attributes:
        path: where it was to be written (its partial bytes stay at ``<path>.part``).
        message: the failure in words.
    """

    path: Path
    message: str


@attrs.frozen(kw_only=True)
class DownloadReport:
    """The outcome of ``TrainingJob.download`` / ``Models.download_outputs`` with ``check=False``.

    Attributes:
        paths: the files written, in the server's order.
        failed: the files not written, each with its reason.
    """

    paths: tuple[Path, ...] = ()
    failed: tuple[FailedDownload, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def summary(self) -> str:
        """One line for logs and CLIs."""
        return f"{len(self.paths)} downloaded, {len(self.failed)} failed"
