"""What every queued request handle shares (Model API requests, serverless requests).

Both APIs answer ``/status`` with in_queue -> in_progress -> completed | cancelled and only
``/result`` says whether a run succeeded. Waiting polls ``/status`` (cheap, carries the queue
position) through :func:`poll_until` at ``Priority.BACKGROUND``, then fetches ``/result`` once;
a run-and-wait that cannot hand its request to anybody cancels it (it would bill for nothing).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import aiohttp

from .. import errors
from .._downloads import DownloadProgress, download_artifacts
from .._limiter import Priority
from .._polling import PollPolicy, poll_until
from .._retry import RetryPolicy
from .._schedule import Claim, claiming
from ..types.downloads import DownloadReport
from ..types.models import ResultStatus
from ._common import check_concurrency

if TYPE_CHECKING:
    from .._client import RunComfy
    from ..types.jobs import Artifact
    from ..types.models import RequestState, ResultStatus
    from ..types.progress import ProgressCallback

__all__ = [
    "ABANDON_POLICY",
    "ABANDON_TIMEOUT",
    "DEFAULT_POLL",
    "QueuedRequest",
    "download_outputs",
    "run_or_cancel",
    "run_seconds",
    "wait_for_result",
]

logger = logging.getLogger("runcomfy_async")

#: Bounds of cancelling a request nobody can await any more (its deadline passed or its caller
#: was cancelled): this many seconds on the wire and in retry waits (not queued for a token),
#: each attempt cut off at the same bound.
_ABANDON_SECONDS: Final = 10.0
ABANDON_POLICY: Final = RetryPolicy(total_timeout=_ABANDON_SECONDS)
ABANDON_TIMEOUT: Final = aiohttp.ClientTimeout(total=_ABANDON_SECONDS)

DEFAULT_POLL: Final = PollPolicy(initial=1.0, factor=1.5, max_interval=10.0)


class _Status(Protocol):
    """A ``/status`` snapshot."""

    @property
    def status(self) -> RequestState: ...


class _Result(Protocol):
    """A ``/result`` snapshot."""

    @property
    def status(self) -> ResultStatus: ...

    @property
    def finished(self) -> bool: ...


S = TypeVar("S", bound=_Status)
R = TypeVar("R", bound=_Result)
S_co = TypeVar("S_co", bound=_Status, covariant=True)
R_co = TypeVar("R_co", bound=_Result, covariant=True)
T = TypeVar("T")


class QueuedRequest(Protocol[S_co, R_co]):
    """A handle whose ``/status``, ``/result`` and ``/cancel`` this module drives."""

    @property
    def id(self) -> str: ...

    async def status(self, *, priority: Priority = Priority.USER) -> S_co: ...

    async def result(self, *, priority: Priority = Priority.USER) -> R_co: ...

    async def cancel(self, *, priority: Priority = Priority.USER) -> Any: ...


def _settled(result: _Result) -> bool:
    """Final, or a value we do not know (only asked after /status said finished)."""
    return result.finished or not result.status.known


def run_seconds(
    status: ResultStatus, created_at: datetime | None, finished_at: datetime | None
) -> float | None:
    """How long a successful run took from submit to finish, by the server's clock (what the
    limiter learns run times from); None for any other outcome or a missing time."""
    if status is not ResultStatus.SUCCEEDED or created_at is None or finished_at is None:
        return None
    return (finished_at - created_at).total_seconds()


async def wait_for_result(
    request: QueuedRequest[S, R],
    *,
    what: str,
    timeout: float | None,
    poll: PollPolicy | None,
    on_status: Callable[[S], Awaitable[None] | None] | None,
    claim: Claim | None = None,
) -> R:
    """Poll ``/status`` until the request finished, then return its settled ``/result``.

    ``claim`` (what the polls wait for) lets the limiter put them ahead of new work once the
    run should be over, and the fetch of the result ahead of polls.

    Raises:
        WaitTimeoutError: ``timeout`` passed first.
    """
    policy = poll or DEFAULT_POLL
    deadline = None if timeout is None else time.monotonic() + timeout
    await poll_until(
        lambda: request.status(priority=Priority.BACKGROUND),
        lambda state: state.status.finished,
        policy=policy,
        timeout=timeout,
        key=lambda state: state.status,
        on_snapshot=on_status,
        what=what,
        claim=claim,
    )
    with claiming(claim):
        result = await request.result(priority=Priority.FOLLOW_UP)
    if not _settled(result):
        # /status said finished but /result still lags behind: ask /result until it agrees.
        remaining = None if deadline is None else deadline - time.monotonic()
        result = await poll_until(
            lambda: request.result(priority=Priority.BACKGROUND),
            _settled,
            policy=policy,
            timeout=remaining,
            key=lambda r: r.status,
            what=f"the result of {what}",
            claim=claim,
        )
    return result


async def _cancel_abandoned(request: QueuedRequest[Any, Any], what: str) -> None:
    """Best-effort cancel of a request that ``run`` can no longer hand to anyone (stops billing).

    A cleanup call: ahead of every queued call, its deadline counted from when it is sent.
    """
    try:
        outcome = await request.cancel(priority=Priority.CLEANUP)
    except errors.RunComfyError as exc:
        logger.warning("could not cancel abandoned %s %s: %s", what, request.id, exc)
    else:
        logger.info("abandoned %s %s: cancel answered %s", what, request.id, outcome.value)


async def run_or_cancel(
    client: RunComfy, request: QueuedRequest[Any, Any], wait: Awaitable[T], *, what: str
) -> T:
    """Await ``wait``; if it ends without a result, cancel ``request`` on the server.

    A run that failed or was cancelled is over and left alone; anything else (a passed
    deadline, a cancelled caller, a lost connection) leaves a request nobody holds, so it is
    cancelled as a task of the client's: cancelled again, the cancel still goes out.
    """
    try:
        return await wait
    except (errors.RequestFailed, errors.RequestCancelled):
        raise  # the run is over: nothing left to cancel
    except BaseException:
        # Cleanup that re-raises: the caller never gets the handle.
        await asyncio.shield(client.spawn_cleanup(_cancel_abandoned(request, what)))
        raise


async def download_outputs(
    client: RunComfy,
    files: Sequence[Artifact],
    dest: str | os.PathLike[str],
    *,
    progress: ProgressCallback[DownloadProgress] | None,
    concurrency: int,
    check: bool,
) -> list[Path] | DownloadReport:
    """Download a request's output files into ``dest/<kind>/<name>`` the way artifacts are:
    streamed, names made safe and unique, ``.part`` files resumed, no token sent.

    Returns:
        The paths written (``check``), else the :class:`DownloadReport`.

    Raises:
        ValidationError: a bad ``concurrency``, or a name would leave ``dest``.
        DownloadError: ``check`` and a file could not be downloaded.
    """
    check_concurrency(concurrency, "downloads")
    report = await download_artifacts(
        client.pipeline,
        files,
        Path(dest),
        timeout=client.timeouts.for_transfer(),
        concurrency=concurrency,
        progress=progress,
        check=check,
    )
    return list(report.paths) if check else report
