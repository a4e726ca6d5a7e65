"""Model API (API.md section 3): the ``rc.models`` collection and awaitable ``ModelRequest``s.

Waiting polls ``/status`` (cheap, carries the queue position) through :func:`poll_until` at
``Priority.BACKGROUND``, then fetches ``/result`` once: ``completed`` in ``/status`` does not say
whether the run succeeded, only the result does (API.md 3.2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Literal, overload
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from .. import errors
from .._converter import structure
from .._downloads import DownloadProgress, download_artifacts
from .._limiter import Priority
from .._polling import PollPolicy, poll_until
from .._protocol import API, RequestSpec, Retry
from .._retry import RetryPolicy
from .._rules import is_model_id
from .._schedule import claiming
from ..types.downloads import DownloadReport
from ..types.jobs import Artifact
from ..types.models import (
    CancelOutcome,
    Lora,
    RequestResult,
    RequestState,
    RequestStatus,
    ResultStatus,
)
from ..types.progress import ProgressCallback
from ._common import check_concurrency, describe_error

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["ModelRequest", "Models"]

logger = logging.getLogger("runcomfy_async")

_MODELS: Final = "/v1/models"
_REQUESTS: Final = "/v1/requests"
_EXAMPLE_ID: Final = "blackforestlabs/flux-1-kontext/pro/edit"
#: The official ComfyUI nodes refuse request bodies above 64 MiB (API.md 3.1); large media go
#: by URL instead.
MAX_INPUT_BYTES: Final = 64 * 1024 * 1024
#: Bounds of cancelling a request nobody can await any more (its deadline passed or its caller
#: was cancelled): this many seconds on the wire and in retry waits (not queued for a token),
#: each attempt cut off at the same bound.
_ABANDON_SECONDS: Final = 10.0
_ABANDON_POLICY: Final = RetryPolicy(total_timeout=_ABANDON_SECONDS)
_ABANDON_TIMEOUT: Final = aiohttp.ClientTimeout(total=_ABANDON_SECONDS)

DEFAULT_POLL: Final = PollPolicy(initial=1.0, factor=1.5, max_interval=10.0)


def model_path(model_id: str) -> str:
    """``/v1/models/{model_id}`` with each segment quoted, after checking the id's shape.

    Raises:
        ValidationError: an empty or malformed model id.
    """
    if not isinstance(model_id, str) or not model_id:
        raise errors.ValidationError(
            f"model_id must be a non-empty string such as {_EXAMPLE_ID!r} (copy it from the "
            "model's API page)"
        )
    if not is_model_id(model_id):
        raise errors.ValidationError(
            f"model_id {model_id!r} is malformed: it must be segments of letters, digits, '.', "
            f"'_' and '-' joined by single slashes, without a leading or trailing slash or "
            f"'..', e.g. {_EXAMPLE_ID!r}"
        )
    return _MODELS + "/" + "/".join(quote(s, safe="") for s in model_id.split("/"))


def _request_path(request_id: str, suffix: str) -> str:
    """``/v1/requests/{request_id}{suffix}``; the id becomes one quoted segment."""
    if not isinstance(request_id, str) or not request_id or request_id != request_id.strip():
        raise errors.ValidationError(
            f"request id {request_id!r} must be a non-empty string without surrounding "
            "whitespace (the request_id that submit returned)"
        )
    return f"{_REQUESTS}/{quote(request_id, safe='')}{suffix}"


def _json_default(value: object) -> Any:
    """Lets a :class:`Lora` stand anywhere in the inputs; anything else unknown is an error."""
    if isinstance(value, Lora):
        return value.as_value()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs as plain JSON data, checked before anything is sent.

    Raises:
        ValidationError: not a mapping with string keys, a value JSON cannot carry (NaN, a
            set, an object...), or a body over 64 MiB.
    """
    if not isinstance(inputs, Mapping):
        raise errors.ValidationError(
            f"inputs must be a mapping of the model's input names to values (e.g. "
            f"{{'prompt': '...'}}), got {type(inputs).__name__}"
        )
    for key in inputs:
        if not isinstance(key, str):
            raise errors.ValidationError(f"input names must be strings, got {key!r}")
    try:
        encoded = json.dumps(inputs, default=_json_default, allow_nan=False)
    except (TypeError, ValueError):
        raise _unencodable(inputs) from None
    if len(encoded.encode()) > MAX_INPUT_BYTES:
        raise errors.ValidationError(
            f"the inputs encode to more than {MAX_INPUT_BYTES} bytes; pass images, video and "
            "audio as https URLs instead of inline data"
        )
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def _unencodable(inputs: Mapping[str, Any]) -> errors.ValidationError:
    """The error naming the first input JSON cannot carry (found only once encoding failed)."""
    for key, value in inputs.items():
        try:
            json.dumps(value, default=_json_default, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return errors.ValidationError(
                f"input {key!r} cannot be sent as JSON ({exc}); pass strings, numbers, "
                "booleans, None, lists and dicts (files go by https URL)"
            )
    return errors.ValidationError("the inputs cannot be sent as JSON")


def _with_id(payload: Any, request_id: str) -> Any:
    """The payload with ``request_id`` filled in when the server left it out."""
    if isinstance(payload, dict) and "request_id" not in payload:
        return {**payload, "request_id": request_id}
    return payload


def cancel_outcome(payload: Any) -> CancelOutcome:
    """The outcome of a cancel answer: ``outcome``, falling back to ``status`` (API.md 3.4).

    ``cancelled`` in either field wins: a repeated cancel of a cancelled request may be answered
    as a no-op, and the request is cancelled all the same.

    Raises:
        UnexpectedResponseError: the answer has neither field.
    """
    outcome = payload.get("outcome") if isinstance(payload, dict) else None
    status = payload.get("status") if isinstance(payload, dict) else None
    parsed = CancelOutcome(outcome) if isinstance(outcome, str) and outcome else None
    if parsed is CancelOutcome.CANCELLED or (
        isinstance(status, str) and RequestState(status) is RequestState.CANCELLED
    ):
        return CancelOutcome.CANCELLED
    if parsed is not None:
        return parsed
    if isinstance(status, str) and status:
        return CancelOutcome.NOT_CANCELLABLE
    raise errors.UnexpectedResponseError(
        "the cancel answer has neither 'outcome' nor 'status'", status=202
    )


def output_urls(output: Any) -> Iterator[str]:
    """Every http(s) URL in a model output, in order (outputs are often ``{"image": url}``)."""
    if isinstance(output, str):
        if output.startswith(("http://", "https://")):
            yield output
    elif isinstance(output, Mapping):
        for value in output.values():
            yield from output_urls(value)
    elif isinstance(output, list | tuple):
        for value in output:
            yield from output_urls(value)


def _run_seconds(result: RequestResult) -> float | None:
    """How long a successful run took from submit to finish, by the server's clock."""
    start, end = result.created_at, result.finished_at
    if result.status is not ResultStatus.SUCCEEDED or start is None or end is None:
        return None
    return (end - start).total_seconds()


def _result_settled(result: RequestResult) -> bool:
    """Final, or a value we do not know (only asked after /status said finished)."""
    return result.finished or not result.status.known


class ModelRequest:
    """An awaitable handle on one Model API request: ``output = await req``.

    Rebuild one from its id with ``rc.models.get(request_id)``.

    Attributes:
        id: the request id.
        model_id: the model it runs, when known (``None`` for a handle rebuilt from an id).
        include_cost: whether :meth:`result` asks for the run's cost.
    """

    def __init__(
        self,
        client: RunComfy,
        request_id: str,
        *,
        model_id: str | None = None,
        include_cost: bool = False,
    ) -> None:
        self._client = client
        self.id = request_id
        self.model_id = model_id
        self.include_cost = include_cost
        # Event-loop time the submit was answered (None for a handle rebuilt from an id).
        self._submitted_at: float | None = None

    def __repr__(self) -> str:
        return f"ModelRequest(id={self.id!r}, model_id={self.model_id!r})"

    async def status(self, *, priority: Priority = Priority.USER) -> RequestStatus:
        """Ask the server where the request is (never a cached answer).

        Args:
            priority: ``Priority.BACKGROUND`` for polls (used by :meth:`wait`).

        Raises:
            NotFoundError: unknown or expired request id.
            APIError: any other error answer.
        """
        payload = await self._client.request(
            RequestSpec(api=API.MODEL, method="GET", path=_request_path(self.id, "/status")),
            priority=priority,
        )
        return structure(_with_id(payload, self.id), RequestStatus, what="request status")

    async def result(self, *, priority: Priority = Priority.USER) -> RequestResult:
        """Fetch the request's result; while it runs, the result carries the current status.

        Args:
            priority: ``Priority.BACKGROUND`` for polls (used by :meth:`wait`).

        Raises:
            NotFoundError: unknown or expired request id.
            APIError: any other error answer.
        """
        params = {"include_cost": "true"} if self.include_cost else None
        payload = await self._client.request(
            RequestSpec(
                api=API.MODEL,
                method="GET",
                path=_request_path(self.id, "/result"),
                params=params,
            ),
            priority=priority,
        )
        result = structure(_with_id(payload, self.id), RequestResult, what="request result")
        if self.model_id is None and result.model_id:
            self.model_id = result.model_id
        return result

    async def cancel(self, *, priority: Priority = Priority.USER) -> CancelOutcome:
        """Ask the server to cancel the request; only a queued request can be cancelled.

        Args:
            priority: ``Priority.CLEANUP`` to go ahead of every queued call.

        Returns:
            ``CancelOutcome.CANCELLED``, or ``CancelOutcome.NOT_CANCELLABLE`` once the run has
            started or finished (not an error).

        Raises:
            NotFoundError: unknown or expired request id.
            APIError: any other error answer.
        """
        # Retried like an idempotent call: cancelling twice has the effect of cancelling once
        # (the docs call a cancel of a terminated request a no-op, API.md 3.4).
        payload = await self._client.request(
            RequestSpec(
                api=API.MODEL,
                method="POST",
                path=_request_path(self.id, "/cancel"),
                retry=Retry.SAFE,
            ),
            priority=priority,
            policy=_ABANDON_POLICY if priority is Priority.CLEANUP else None,
            timeout=_ABANDON_TIMEOUT if priority is Priority.CLEANUP else None,
        )
        return cancel_outcome(payload)

    async def wait(
        self,
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        on_status: Callable[[RequestStatus], Awaitable[None] | None] | None = None,
    ) -> RequestResult:
        """Wait until the request finishes and return its successful result.

        Polls take tokens at ``Priority.BACKGROUND``, so any number of requests can be awaited
        at once on one client while its own calls (a submit, a cancel) go first.

        Args:
            timeout: client-side deadline in seconds (None: as long as it takes). The request
                keeps running on the server when it passes; call :meth:`cancel` if needed.
            poll: the polling schedule (default: 1 s, backing off to 10 s).
            on_status: called with every status snapshot (queue position, progress).

        Raises:
            RequestFailed: the run failed; ``error`` holds the server's reason.
            RequestCancelled: the request was cancelled.
            WaitTimeoutError: ``timeout`` passed first.
        """
        policy = poll or DEFAULT_POLL
        deadline = None if timeout is None else time.monotonic() + timeout
        what = f"model request {self.id}"
        # The client's record of this model's run times orders the polls (see _schedule).
        run_times = self._client._run_times
        since = self._submitted_at or asyncio.get_running_loop().time()
        claim = run_times.open(self.model_id, since)
        ran = None
        try:
            await poll_until(
                lambda: self.status(priority=Priority.BACKGROUND),
                lambda state: state.status.finished,
                policy=policy,
                timeout=timeout,
                key=lambda state: state.status,
                on_snapshot=on_status,
                what=what,
                claim=claim,
            )
            with claiming(claim):
                result = await self.result(priority=Priority.FOLLOW_UP)
            if not _result_settled(result):
                # /status said finished but /result still lags: ask /result until it agrees.
                remaining = None if deadline is None else deadline - time.monotonic()
                result = await poll_until(
                    lambda: self.result(priority=Priority.BACKGROUND),
                    _result_settled,
                    policy=policy,
                    timeout=remaining,
                    key=lambda r: r.status,
                    what=f"the result of {what}",
                    claim=claim,
                )
            ran = _run_seconds(result)
        finally:
            run_times.close(claim, ran)
        label = f"model request {self.id} ({result.model_id or self.model_id or 'model unknown'})"
        if result.failed or (not result.status.known and result.error is not None):
            raise errors.RequestFailed(
                f"{label} failed: {describe_error(result.error)}",
                error=result.error,
                snapshot=result,
            )
        if result.status is ResultStatus.CANCELLED:
            raise errors.RequestCancelled(
                f"{label} was cancelled before it produced output", snapshot=result
            )
        return result

    def __await__(self) -> Generator[Any, None, Any]:
        """``await req``: wait with the default schedule and return the output."""
        return self._output().__await__()

    async def _output(self) -> Any:
        """What ``await req`` returns: the finished run's output."""
        return (await self.wait()).output


async def _cancel_abandoned(request: ModelRequest) -> None:
    """Best-effort cancel of a request that ``run`` can no longer hand to anyone (stops billing).

    A cleanup call: ahead of every queued call, its deadline counted from when it is sent.
    """
    try:
        outcome = await request.cancel(priority=Priority.CLEANUP)
    except errors.RunComfyError as exc:
        logger.warning("could not cancel abandoned model request %s: %s", request.id, exc)
    else:
        logger.info("abandoned model request %s: cancel answered %s", request.id, outcome.value)


class Models:
    """``rc.models``: submit model requests, rebuild handles, or run and wait in one call."""

    def __init__(self, client: RunComfy) -> None:
        self._client = client

    async def submit(
        self, model_id: str, inputs: Mapping[str, Any], *, include_cost: bool = False
    ) -> ModelRequest:
        """Submit a request to a model and return its handle at once (API.md 3.1).

        Args:
            model_id: the model's id, slashes included
                (``"blackforestlabs/flux-1-kontext/pro/edit"``).
            inputs: the model's inputs, as its Input schema names them; a :class:`Lora` may be a
                value (``{"lora": Lora("my_lora.safetensors")}``).
            include_cost: have the handle's :meth:`ModelRequest.result` report the cost.

        Raises:
            ValidationError: a malformed model id or inputs JSON cannot carry (nothing is sent).
            BadRequestError: the server rejected the model id or inputs.
            InsufficientBalanceError: the account balance is too low.
            OutcomeUnknownError: the submit was sent but its answer was lost; it may have been
                queued and billed (``check`` says where to look).
        """
        path = model_path(model_id)
        body = encode_inputs(inputs)
        # Not retried blindly: a submit whose answer was lost may have been queued, and a second
        # one would run (and bill) twice. Only a 429 or a connection that never opened -- the
        # request provably never ran -- is repeated (Retry.UNSENT). The API has no way to find a
        # request by its inputs, so a lost answer is the caller's to check.
        try:
            payload = await self._client.request(
                RequestSpec(api=API.MODEL, method="POST", path=path, json=body, retry=Retry.UNSENT)
            )
        except errors.OutcomeUnknownError as exc:
            exc.check = (
                f"your request history on runcomfy.com for a {model_id} request made just now "
                "before submitting again: it may have been queued and billed"
            )
            exc.add_note(f"check {exc.check}")
            raise
        request_id = payload.get("request_id") if isinstance(payload, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise errors.UnexpectedResponseError(
                "the submit answer has no request_id", status=200, method="POST", url=path
            )
        request = ModelRequest(
            self._client, request_id, model_id=model_id, include_cost=include_cost
        )
        request._submitted_at = asyncio.get_running_loop().time()
        return request

    def get(self, request_id: str, *, include_cost: bool = False) -> ModelRequest:
        """A handle on an existing request by id (no request is sent).

        Raises:
            ValidationError: an empty request id.
        """
        _request_path(request_id, "")
        return ModelRequest(self._client, request_id, include_cost=include_cost)

    @overload
    async def download_outputs(
        self,
        output: Any,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        concurrency: int = ...,
        check: Literal[True] = ...,
    ) -> list[Path]: ...

    @overload
    async def download_outputs(
        self,
        output: Any,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        concurrency: int = ...,
        check: Literal[False],
    ) -> DownloadReport: ...

    @overload
    async def download_outputs(
        self,
        output: Any,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        concurrency: int = ...,
        check: bool = ...,
    ) -> list[Path] | DownloadReport: ...

    async def download_outputs(
        self,
        output: Any,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = None,
        concurrency: int = 4,
        check: bool = True,
    ) -> list[Path] | DownloadReport:
        """Download every file a model output points to into ``dest/outputs/<name>``.

        Every http(s) URL found in ``output`` (strings, nested dicts and lists) is fetched the
        way :meth:`TrainingJob.download` fetches artifacts: streamed to disk, names sanitised
        and made unique, an interrupted ``.part`` resumed, no API token sent, no rate-limit
        token taken.

        Args:
            output: a model's output, e.g. ``await req`` or ``RequestResult.output``.
            dest: folder to write into (created if missing).
            progress: called with a :class:`DownloadProgress` as bytes land on disk.
            concurrency: files downloaded at once.
            check: raise :class:`~runcomfy_async.errors.DownloadError` when any file could not
                be downloaded (like ``subprocess.run(check=True)``); False returns a
                :class:`~runcomfy_async.types.downloads.DownloadReport` instead, its failures
                in ``failed``.

        Returns:
            The paths written, in the order the URLs appear in ``output`` (empty if none); a
            ``DownloadReport`` with ``check=False``.

        Raises:
            ValidationError: a bad ``concurrency``, or a name would leave ``dest``.
            DownloadError: ``check`` and a file could not be downloaded (storage refused it,
                or it could not be fetched after retries). Every file is attempted;
                ``.report`` lists each outcome, the first file's error is the ``__cause__``,
                and each failed file's ``.part`` is kept.
        """
        check_concurrency(concurrency, "downloads")
        artifacts = [
            Artifact(kind="outputs", url=url, name=unquote(PurePosixPath(urlsplit(url).path).name))
            for url in output_urls(output)
        ]
        client = self._client
        report = await download_artifacts(
            client.pipeline,
            artifacts,
            Path(dest),
            timeout=client.timeouts.for_transfer(),
            concurrency=concurrency,
            progress=progress,
            check=check,
        )
        return list(report.paths) if check else report

    async def run(
        self,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
    ) -> Any:
        """Submit and wait; return the output.

        If the wait ends without a result -- ``timeout`` passes, the calling task is cancelled,
        polling fails -- the request is cancelled on the server (best effort: only a queued
        request can be), since nobody else holds its handle.

        Args:
            model_id: as for :meth:`submit`.
            inputs: as for :meth:`submit`.
            timeout: client-side deadline in seconds for the wait.
            poll: the polling schedule.

        Raises:
            ValidationError: a malformed model id or inputs (nothing is sent).
            RequestFailed: the run failed; ``error`` holds the server's reason.
            RequestCancelled: the request was cancelled.
            WaitTimeoutError: ``timeout`` passed first.
        """
        request = await self.submit(model_id, inputs)
        try:
            result = await request.wait(timeout=timeout, poll=poll)
        except (errors.RequestFailed, errors.RequestCancelled):
            raise  # the run is over: nothing left to cancel
        except BaseException:
            # Cleanup that re-raises (a passed deadline, a cancelled caller, a lost connection):
            # the caller never gets the handle, so stop the request from running and billing.
            # A task of the client's: cancelled again, the cancel still goes out.
            await asyncio.shield(self._client.spawn_cleanup(_cancel_abandoned(request)))
            raise
        return result.output
