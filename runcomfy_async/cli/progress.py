"""The CLI's live progress: the library's rich bars (``runcomfy_async._bars``), drawn on stderr
only when it is a terminal."""

from __future__ import annotations

from .._bars import DownloadBars, JobBar, PromptBar, Reporter, UploadBars

__all__ = ["DownloadBars", "JobBar", "PromptBar", "Reporter", "UploadBars"]
