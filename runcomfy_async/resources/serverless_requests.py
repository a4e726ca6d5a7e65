"""Serverless inference requests: the awaitable ``ServerlessRequest`` handle and its outputs.

A request is awaited like a Model API request (the shared machinery of ``_queued``): ``/status``
is polled, then ``/result`` read once. Its calls use the queue prefix (``/prod/v1`` or
``/prod/v2``) its submit answer named; the service serves the same queue under both.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import attrs

from .. import errors
from .._awaitable import awaitable
from .._converter import structure
from .._downloads import DownloadProgress
from .._limiter import Priority
from .._polling import PollPolicy
from .._protocol import API, RequestSpec, Retry
from ..types.deployments import ServerlessCancelOutcome, ServerlessResult, ServerlessStatus
from ..types.downloads import DownloadReport
from ..types.jobs import Artifact
from ..types.models import ResultStatus
from ..types.progress import ProgressCallback
from ._common import describe_error
from ._deployment_args import check_id
from ._queued import (
    ABANDON_POLICY,
    ABANDON_TIMEOUT,
    download_outputs,
    run_seconds,
    wait_for_result,
)

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["QueueVersion", "ServerlessRequest", "output_files"]

QueueVersion = Literal["v1", "v2"]


def _serverless_cancel_outcome(payload: Any) -> ServerlessCancelOutcome:
    """The outcome of a cancel answer, from ``outcome`` or else ``status``."""
    for key in ("outcome", "status"):
        value = payload.get(key) if isinstance(payload, dict) else None
        if isinstance(value, str) and value:
            return ServerlessCancelOutcome(value)
    raise errors.UnexpectedResponseError(
        "the cancel answer has neither 'outcome' nor 'status'", status=200
    )


class ServerlessRequest:
    """An awaitable handle on one serverless inference request: ``outputs = await req``.

    Rebuild one from ids with ``rc.deployments.get(deployment_id).request(request_id)``.

    Attributes:
        id: the request id.
        deployment_id: the deployment it runs on.
        queue_version: ``"v1"`` or ``"v2"``: the queue prefix its calls use.
    """

    def __init__(
        self,
        client: RunComfy,
        deployment_id: str,
        request_id: str,
        *,
        queue_version: QueueVersion = "v1",
    ) -> None:
        self._client = client
        self.id = request_id
        self.deployment_id = deployment_id
        self.queue_version = queue_version
        self._submitted_at: float | None = None
        self._path = (
            f"/prod/{queue_version}/deployments/{check_id(deployment_id, 'deployment id')}"
            f"/requests/{check_id(request_id, 'request id')}"
        )

    def __repr__(self) -> str:
        return f"ServerlessRequest(id={self.id!r}, deployment_id={self.deployment_id!r})"

    @awaitable("request.status()")
    async def status(self, *, priority: Priority = Priority.USER) -> ServerlessStatus:
        """Ask where the request is: queue position while queued, instance id once running.

        Raises:
            NotFoundError: unknown or expired request id.
            APIError: any other error answer.
        """
        payload = await self._client.request(
            RequestSpec(api=API.SERVER, method="GET", path=self._path + "/status"),
            priority=priority,
        )
        if isinstance(payload, dict) and "request_id" not in payload:
            payload = {**payload, "request_id": self.id}
        status = structure(payload, ServerlessStatus, what="serverless request status")
        if status.queue_position == 0 and status.status.value != "in_queue":
            status = attrs.evolve(status, queue_position=None)
        return status

    @awaitable("request.result()")
    async def result(self, *, priority: Priority = Priority.USER) -> ServerlessResult:
        """Fetch the result: outputs keyed by node id once succeeded, the status while running.

        Raises:
            NotFoundError: unknown or expired request id (results are kept 7 days).
            APIError: any other error answer.
        """
        payload = await self._client.request(
            RequestSpec(api=API.SERVER, method="GET", path=self._path + "/result"),
            priority=priority,
        )
        if isinstance(payload, dict) and "request_id" not in payload:
            payload = {**payload, "request_id": self.id}
        return structure(payload, ServerlessResult, what="serverless request result")

    @awaitable("request.cancel()")
    async def cancel(self, *, priority: Priority = Priority.USER) -> ServerlessCancelOutcome:
        """Ask the service to stop the request.

        Returns:
            ``CANCELLATION_REQUESTED``, or ``NOT_CANCELLABLE`` once it has finished (not an
            error).

        Raises:
            NotFoundError: unknown or expired request id.
            APIError: any other error answer.
        """
        # Retried like an idempotent call: cancelling twice has the effect of cancelling once.
        payload = await self._client.request(
            RequestSpec(
                api=API.SERVER, method="POST", path=self._path + "/cancel", retry=Retry.SAFE
            ),
            priority=priority,
            policy=ABANDON_POLICY if priority is Priority.CLEANUP else None,
            timeout=ABANDON_TIMEOUT if priority is Priority.CLEANUP else None,
        )
        return _serverless_cancel_outcome(payload)

    @awaitable("request.wait()")
    async def wait(
        self,
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        on_status: Callable[[ServerlessStatus], Awaitable[None] | None] | None = None,
    ) -> ServerlessResult:
        """Wait until the request finishes and return its successful result.

        Args:
            timeout: client-side deadline in seconds (None: as long as it takes). The request
                keeps running on the service when it passes; call :meth:`cancel` if needed.
            poll: the polling schedule (default: 1 s, backing off to 10 s).
            on_status: called with every status snapshot (queue position, instance id).

        Raises:
            RequestFailed: the run failed; ``error`` holds the service's reason.
            RequestCancelled: the request was cancelled.
            WaitTimeoutError: ``timeout`` passed first.
        """
        what = f"serverless request {self.id} (deployment {self.deployment_id})"
        # The deployment's run times order the polls, as a model's do for model requests.
        run_times = self._client._run_times
        claim = run_times.open(
            ("deployment", self.deployment_id),
            self._submitted_at or asyncio.get_running_loop().time(),
        )
        ran = None
        try:
            result = await wait_for_result(
                self, what=what, timeout=timeout, poll=poll, on_status=on_status, claim=claim
            )
            ran = run_seconds(result.status, result.created_at, result.finished_at)
        finally:
            run_times.close(claim, ran)
        if result.failed or (not result.status.known and result.error):
            raise errors.RequestFailed(
                f"{what} failed: {_describe_failure(result.error)}",
                error=result.error,
                snapshot=result,
            )
        if result.status is ResultStatus.CANCELLED:
            raise errors.RequestCancelled(
                f"{what} was cancelled before it produced outputs", snapshot=result
            )
        return result

    def __await__(self) -> Generator[Any, None, Mapping[str, Any]]:
        """``await req``: wait with the default schedule and return the outputs by node id."""
        return self._outputs().__await__()

    async def _outputs(self) -> Mapping[str, Any]:
        """What ``await req`` returns: the finished run's outputs."""
        return (await self.wait()).outputs or {}

    @overload
    async def download_outputs(
        self,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        concurrency: int = ...,
        check: Literal[True] = ...,
    ) -> list[Path]: ...

    @overload
    async def download_outputs(
        self,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        concurrency: int = ...,
        check: Literal[False],
    ) -> DownloadReport: ...

    async def download_outputs(
        self,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = None,
        concurrency: int = 4,
        check: bool = True,
    ) -> list[Path] | DownloadReport:
        """Fetch the result and download every output file into ``dest/outputs/<name>``.

        Files are streamed to disk with safe, unique names, an interrupted ``.part`` is resumed,
        and no API token is sent to storage.

        Args:
            dest: folder to write into (created if missing).
            progress: called with a :class:`DownloadProgress` as bytes land on disk.
            concurrency: files downloaded at once.
            check: raise :class:`~runcomfy_async.errors.DownloadError` when a file failed;
                False returns the :class:`DownloadReport` instead.

        Raises:
            ValidationError: a bad ``concurrency``, or a name would leave ``dest``.
            DownloadError: ``check`` and a file could not be downloaded.
            APIError: the result could not be read.
        """
        result = await self.result()
        return await download_outputs(
            self._client,
            output_files(result),
            dest,
            progress=progress,
            concurrency=concurrency,
            check=check,
        )


def _describe_failure(error: Any) -> str:
    """The service's failure reason in one line: a list of ``{"error", "debugInfo"}`` or one."""
    if isinstance(error, list) and error:
        return "; ".join(
            " ".join(str(e.get(k)) for k in ("error", "debugInfo") if e.get(k))
            if isinstance(e, Mapping)
            else str(e)
            for e in error
        )
    return describe_error(error)


def output_files(outputs: ServerlessResult | Mapping[str, Any]) -> list[Artifact]:
    """The downloadable files of a result (or of its ``outputs``), in node order."""
    if not isinstance(outputs, ServerlessResult):
        outputs = ServerlessResult(request_id="", status=ResultStatus.SUCCEEDED, outputs=outputs)
    return [Artifact(kind="outputs", url=f.url, name=f.filename) for f in outputs.files()]


