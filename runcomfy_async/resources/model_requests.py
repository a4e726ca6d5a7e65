"""Model API (docs/wire.md): the ``rc.models`` collection and awaitable ``ModelRequest``s.

Waiting polls ``/status`` (cheap, carries the queue position) through :func:`poll_until` at
``Priority.BACKGROUND``, then fetches ``/result`` once: ``completed`` in ``/status`` does not say
whether the run succeeded, only the result does (docs/wire.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Literal, overload
from urllib.parse import quote, unquote, urlsplit

from .. import errors
from .._awaitable import awaitable
from .._converter import structure
from .._downloads import DownloadProgress
from .._limiter import Priority
from .._polling import PollPolicy
from .._protocol import API, RequestSpec, Retry
from .._schedule import RunTimes
from ..types.catalog import ModelInfo
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
from ._common import describe_error
from ._queued import (
    ABANDON_POLICY,
    ABANDON_TIMEOUT,
    download_outputs,
    run_or_cancel,
    run_seconds,
    wait_for_result,
)
from .model_catalog import ModelCatalog, model_path

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["ModelRequest", "Models", "model_path"]

logger = logging.getLogger("runcomfy_async")

_REQUESTS: Final = "/v1/requests"
#: The Model API's error code for a model id it does not know (InvalidResourceIdentifier).
_UNKNOWN_MODEL: Final = 400001
#: The official ComfyUI nodes refuse request bodies above 64 MiB (docs/wire.md); large media go
#: by URL instead.
MAX_INPUT_BYTES: Final = 64 * 1024 * 1024


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
    """The outcome of a cancel answer: ``outcome``, falling back to ``status`` (docs/wire.md).

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

    @awaitable("request.status()")
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

    @awaitable("request.result()")
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

    @awaitable("request.cancel()")
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
        # (RunComfy's docs call a cancel of a terminated request a no-op).
        payload = await self._client.request(
            RequestSpec(
                api=API.MODEL,
                method="POST",
                path=_request_path(self.id, "/cancel"),
                retry=Retry.SAFE,
            ),
            priority=priority,
            policy=ABANDON_POLICY if priority is Priority.CLEANUP else None,
            timeout=ABANDON_TIMEOUT if priority is Priority.CLEANUP else None,
        )
        return cancel_outcome(payload)

    @awaitable("request.wait()")
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
        # The client's record of this model's run times orders the polls (see _schedule).
        run_times: RunTimes = self._client._run_times
        claim = run_times.open(
            self.model_id, self._submitted_at or asyncio.get_running_loop().time()
        )
        ran = None
        try:
            result = await wait_for_result(
                self,
                what=f"model request {self.id}",
                timeout=timeout,
                poll=poll,
                on_status=on_status,
                claim=claim,
            )
            ran = run_seconds(result.status, result.created_at, result.finished_at)
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


class Models:
    """``rc.models``: the catalog, submit model requests, rebuild handles, or run and wait."""

    def __init__(self, client: RunComfy) -> None:
        self._client = client
        self._catalog = ModelCatalog(client)

    def catalog(
        self,
        *,
        search: str | None = None,
        category: str | None = None,
        kind: str | None = None,
        include_schema: bool = False,
        page_size: int = 50,
    ) -> AsyncIterator[ModelInfo]:
        """Every model of the catalog that matches, as an async iterator fetching page by page.

        ``async for model in rc.models.catalog(search="flux"): print(model.model_id)``. Each
        page is one API call; stop iterating early and no further page is asked for.

        Args:
            search: free text the service matches against model ids and names.
            category: only models in this category (e.g. ``"text-to-image"``).
            kind: only entries of this kind, as the catalog names kinds.
            include_schema: have each entry carry its ``input_schema`` (bigger pages).
            page_size: entries per page, 1 to 100.

        Raises:
            ValidationError: a blank filter or a bad ``page_size`` (raised at the call, before
                anything is sent).
        """
        return self._catalog.iterate(
            search=search,
            category=category,
            kind=kind,
            include_schema=include_schema,
            page_size=page_size,
        )

    async def schema(self, model_id: str) -> ModelInfo:
        """One model's catalog entry with its input schema and price.

        Args:
            model_id: the model's id, slashes included.

        Returns:
            A :class:`~runcomfy_async.types.catalog.ModelInfo` whose ``input_schema`` is set;
            ``price`` reads like ``"$0.04/output"``.

        Raises:
            ValidationError: a malformed model id (nothing is sent).
            BadRequestError: the service knows no model by that id.
        """
        return await self._catalog.schema(model_id)

    @awaitable("rc.models.submit(...)")
    async def submit(
        self,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        include_cost: bool = False,
        validate: bool = False,
    ) -> ModelRequest:
        """Submit a request to a model and return its handle at once (docs/wire.md).

        Args:
            model_id: the model's id, slashes included
                (``"blackforestlabs/flux-1-kontext/pro/edit"``).
            inputs: the model's inputs, as its Input schema names them; a :class:`Lora` may be a
                value (``{"lora": Lora("my_lora.safetensors")}``).
            include_cost: have the handle's :meth:`ModelRequest.result` report the cost.
            validate: check the inputs against the model's input schema first (its schema is
                fetched once per client); needs the ``schema`` extra (``jsonschema``). Names the
                schema does not list are refused too: the model would ignore a typo silently.

        Raises:
            ValidationError: a malformed model id or inputs JSON cannot carry (nothing is sent).
            ModelInputError: ``validate`` and the inputs fail the schema (nothing is submitted).
            ConfigurationError: ``validate`` without ``jsonschema`` installed.
            BadRequestError: the server rejected the model id or inputs.
            InsufficientBalanceError: the account balance is too low.
            OutcomeUnknownError: the submit was sent but its answer was lost; it may have been
                queued and billed (``check`` says where to look).
        """
        path = model_path(model_id)
        body = encode_inputs(inputs)
        if validate:
            await self._catalog.check(model_id, body)
        # Not retried blindly: a submit whose answer was lost may have been queued, and a second
        # one would run (and bill) twice. Only a 429 or a connection that never opened -- the
        # request provably never ran -- is repeated (Retry.UNSENT). The API has no way to find a
        # request by its inputs, so a lost answer is the caller's to check.
        try:
            payload = await self._client.request(
                RequestSpec(api=API.MODEL, method="POST", path=path, json=body, retry=Retry.UNSENT)
            )
        except errors.BadRequestError as exc:
            if exc.code == _UNKNOWN_MODEL:
                exc.add_note(
                    f"check the model id {model_id!r}: rc.models.catalog(search=...) lists the "
                    "models there are"
                )
            raise
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
        artifacts = [
            Artifact(kind="outputs", url=url, name=unquote(PurePosixPath(urlsplit(url).path).name))
            for url in output_urls(output)
        ]
        return await download_outputs(
            self._client,
            artifacts,
            dest,
            progress=progress,
            concurrency=concurrency,
            check=check,
        )

    @awaitable("rc.models.run(...)")
    async def run(
        self,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        validate: bool = False,
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
            validate: check the inputs against the model's input schema first (as for
                :meth:`submit`).

        Raises:
            ValidationError: a malformed model id or inputs (nothing is sent);
                ``ModelInputError`` when ``validate`` finds the inputs fail the schema.
            RequestFailed: the run failed; ``error`` holds the server's reason.
            RequestCancelled: the request was cancelled.
            WaitTimeoutError: ``timeout`` passed first.
        """
        request = await self.submit(model_id, inputs, validate=validate)
        wait = request.wait(timeout=timeout, poll=poll)
        result = await run_or_cancel(self._client, request, wait, what="model request")
        return result.output
