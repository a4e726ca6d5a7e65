"""Progress reporting shared by uploads, downloads and ComfyUI: one callback type.

:mod:`runcomfy_async.progress` has ready-made callbacks (text lines, or rich bars).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeAlias, TypeVar

import attrs

from .jobs import Artifact

__all__ = ["DownloadProgress", "ProgressCallback"]

E = TypeVar("E")

#: A plain or async function called with each progress event of an operation:
#: ``ProgressCallback[UploadEvent]``, ``ProgressCallback[DownloadProgress]``,
#: ``ProgressCallback[ComfyEvent]``. It runs outside the request, in a task of its own; if it
#: raises, the operation stops and its caller gets that exception as it is (also when it raises
#: for the last events of an operation that had already finished: its result is then lost).
ProgressCallback: TypeAlias = Callable[[E], Awaitable[None] | None]


@attrs.frozen(kw_only=True)
class DownloadProgress:
    """Progress of one downloaded file.

    Attributes:
        artifact: what is downloaded (a job artifact, or a model output wrapped as one).
        path: where it is written.
        done: bytes on disk so far (a resumed file starts at what it already had).
        total: the file's size, or None when the server does not say.
    """

    artifact: Artifact
    path: Path
    done: int
    total: int | None
