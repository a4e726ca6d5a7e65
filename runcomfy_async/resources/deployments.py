"""Serverless API: the ``rc.deployments`` collection and the ``Deployment`` handle.

Deployments are managed under ``/prod/v2/deployments`` on the Server API host; inference goes
to ``/prod/v1/deployments/{id}/inference`` (or ``/prod/v2``, the same queue). Webhook options go
in the query string, as the service recommends. Requests are
:class:`~runcomfy_async.resources.serverless_requests.ServerlessRequest` handles.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, overload
from urllib.parse import urlsplit

import attrs
from multidict import MultiDict

from .. import errors
from .._awaitable import awaitable
from .._converter import structure
from .._downloads import DownloadProgress
from .._overrides import check_overrides, inline_media
from .._polling import PollPolicy
from .._protocol import API, RequestSpec, Retry
from ..types.deployments import DeploymentInfo, ServerlessResult
from ..types.downloads import DownloadReport
from ..types.progress import ProgressCallback
from ._common import unwrap_list
from ._deployment_args import check_id, check_includes, deployment_fields
from ._queued import download_outputs, run_or_cancel
from .model_requests import MAX_INPUT_BYTES
from .serverless_requests import QueueVersion, ServerlessRequest, output_files

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["Deployment", "Deployments"]

_DEPLOYMENTS: Final = "/prod/v2/deployments"
_QUEUE_VERSION: Final = re.compile(r"/prod/(v[12])/deployments/")


def _check_webhook(url: str | None) -> str | None:
    """A webhook URL the service can POST to: http(s) with a host."""
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.ValidationError(
            f"webhook must be an https URL your server receives POSTs at, got {url!r}"
        )
    return url


class Deployment:
    """A handle on one deployment: submit or run requests on it, read or change it.

    ``rc.deployments.get(id)`` builds one without a request; :meth:`fetch` reads the deployment.
    With the deployed workflow known (``fetch(includes="payload")``, or ``validate=True`` on
    submit), overrides are checked against it before anything is sent.

    Attributes:
        id: the deployment id.
        info: the last snapshot read or returned (None until one was).
        queue_version: the queue prefix inference uses (``"v1"`` or ``"v2"``).
    """

    def __init__(
        self,
        client: RunComfy,
        deployment_id: str,
        *,
        info: DeploymentInfo | None = None,
        queue_version: QueueVersion = "v1",
    ) -> None:
        self._client = client
        self._quoted = check_id(deployment_id, "deployment id")
        if queue_version not in ("v1", "v2"):
            raise errors.ValidationError(
                f"queue_version must be 'v1' or 'v2', got {queue_version!r}"
            )
        self.id = deployment_id
        self.info = info
        self.queue_version: QueueVersion = queue_version

    def __repr__(self) -> str:
        return f"Deployment(id={self.id!r})"

    @awaitable("deployment.fetch()")
    async def fetch(self, *, includes: str | Iterable[str] | None = None) -> DeploymentInfo:
        """Read the deployment (a fresh snapshot, kept as :attr:`info`).

        Args:
            includes: ``"payload"`` (the deployed workflow, enabling override checks) and/or
                ``"readme"``.

        Raises:
            ValidationError: an unknown ``includes`` value.
            NotFoundError: no such deployment (or it was deleted).
        """
        params = MultiDict(("includes", v) for v in check_includes(includes))
        payload = await self._client.request(
            RequestSpec(
                api=API.SERVER,
                method="GET",
                path=f"{_DEPLOYMENTS}/{self._quoted}",
                params=params or None,
            )
        )
        info = structure(payload, DeploymentInfo, what="deployment")
        if info.payload is None and self.info is not None and self.info.payload is not None:
            info = attrs.evolve(info, payload=self.info.payload)
        self.info = info
        return info

    def request(self, request_id: str) -> ServerlessRequest:
        """A handle on an existing request of this deployment (no request is sent)."""
        return ServerlessRequest(
            self._client, self.id, request_id, queue_version=self.queue_version
        )

    @awaitable("deployment.submit(...)")
    async def submit(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        workflow_api_json: Mapping[str, Any] | None = None,
        extra_data: Mapping[str, Any] | None = None,
        webhook: str | None = None,
        webhook_intermediate_status: bool = False,
        validate: bool | None = None,
    ) -> ServerlessRequest:
        """Queue one run of the deployment and return its handle at once.

        Args:
            overrides: changes to the deployed workflow's node inputs,
                ``{"6": {"inputs": {"text": "..."}}}``; a value may be a local ``Path`` or
                ``bytes`` (sent inline as a data URI, up to 20 MiB) or a URL string.
            workflow_api_json: a whole workflow (API format) to run instead of the deployed one.
            extra_data: passed through to ComfyUI with the prompt.
            webhook: a URL the service POSTs the final event to (and every status change with
                ``webhook_intermediate_status``). Add a secret to it: deliveries are unsigned.
            webhook_intermediate_status: also deliver ``in_queue`` and ``in_progress`` events.
            validate: check the overrides against the deployed workflow first. ``None``: when
                the workflow is known (``fetch(includes="payload")``); ``True``: fetch it once if
                needed; ``False``: never.

        Raises:
            ValidationError: both or malformed overrides and workflow, an override naming a
                node or input the workflow lacks, an unreadable or too large file, a bad
                webhook URL (nothing is sent).
            DeploymentDisabledError: the deployment is disabled.
            DeploymentDeletedError: the deployment was deleted.
            BadRequestError: the service refused the body (its ``detail`` says where).
            OutcomeUnknownError: the submit was sent but its answer was lost.
        """
        body = await self._body(overrides, workflow_api_json, extra_data, validate)
        params: MultiDict[str] = MultiDict()
        if _check_webhook(webhook) is not None:
            assert webhook is not None
            params.add("webhook", webhook)
            if webhook_intermediate_status:
                params.add("webhook_intermediate_status", "true")
        path = f"/prod/{self.queue_version}/deployments/{self._quoted}/inference"
        # Not retried blindly: a submit whose answer was lost may have been queued and would run
        # (and bill) twice. Only a 429 or a connection that never opened is repeated.
        try:
            payload = await self._client.request(
                RequestSpec(
                    api=API.SERVER,
                    method="POST",
                    path=path,
                    json=body,
                    params=params or None,
                    retry=Retry.UNSENT,
                )
            )
        except errors.OutcomeUnknownError as exc:
            exc.check = (
                f"the request history of deployment {self.id} on runcomfy.com for a request "
                "made just now before submitting again: it may have been queued and billed"
            )
            exc.add_note(f"check {exc.check}")
            raise
        request_id = payload.get("request_id") if isinstance(payload, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise errors.UnexpectedResponseError(
                "the submit answer has no request_id", status=200, method="POST", url=path
            )
        status_url = payload.get("status_url")
        found = _QUEUE_VERSION.search(status_url) if isinstance(status_url, str) else None
        version: QueueVersion = "v2" if found and found.group(1) == "v2" else self.queue_version
        request = ServerlessRequest(self._client, self.id, request_id, queue_version=version)
        request._submitted_at = asyncio.get_running_loop().time()
        return request

    async def _body(
        self,
        overrides: Mapping[str, Any] | None,
        workflow_api_json: Mapping[str, Any] | None,
        extra_data: Mapping[str, Any] | None,
        validate: bool | None,
    ) -> dict[str, Any]:
        """The inference body, checked and with inline media encoded."""
        if overrides is not None and workflow_api_json is not None:
            raise errors.ValidationError(
                "pass either overrides (changes to the deployed workflow) or workflow_api_json "
                "(a whole workflow to run instead), not both; edit the inline workflow directly"
            )
        body: dict[str, Any] = {}
        if workflow_api_json is not None:
            if not isinstance(workflow_api_json, Mapping) or not workflow_api_json:
                raise errors.ValidationError(
                    "workflow_api_json must be a non-empty mapping of node id to "
                    "{'class_type': ..., 'inputs': {...}} (ComfyUI's API format)"
                )
            body["workflow_api_json"] = dict(workflow_api_json)
        else:
            encoded = await inline_media(overrides or {})
            workflow = await self._workflow(validate)
            if workflow is not None:
                check_overrides(workflow, encoded)
            body["overrides"] = encoded
        if extra_data is not None:
            if not isinstance(extra_data, Mapping):
                raise errors.ValidationError(
                    f"extra_data must be a mapping, got {type(extra_data).__name__}"
                )
            body["extra_data"] = dict(extra_data)
        try:
            size = len(json.dumps(body, allow_nan=False).encode())
        except (TypeError, ValueError) as exc:
            raise errors.ValidationError(
                f"the request cannot be sent as JSON ({exc}); input values must be strings, "
                "numbers, booleans, None, lists, dicts, or a Path or bytes for media"
            ) from None
        if size > MAX_INPUT_BYTES:
            raise errors.ValidationError(
                f"the request body would be {size} bytes (at most {MAX_INPUT_BYTES}); pass "
                "large media by https URL instead of inline"
            )
        return body

    async def _workflow(self, validate: bool | None) -> Mapping[str, Any] | None:
        """The deployed workflow to check overrides against, per ``validate``."""
        if validate is False:
            return None
        known = self.info.payload if self.info is not None else None
        if known is None and validate:
            known = (await self.fetch(includes="payload")).payload
        return known.workflow_api_json if known is not None else None

    @awaitable("deployment.run(...)")
    async def run(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        workflow_api_json: Mapping[str, Any] | None = None,
        extra_data: Mapping[str, Any] | None = None,
        webhook: str | None = None,
        webhook_intermediate_status: bool = False,
        validate: bool | None = None,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
    ) -> Mapping[str, Any]:
        """Submit and wait; return the outputs keyed by node id.

        If the wait ends without a result (``timeout`` passes, the calling task is cancelled,
        polling fails) the request is cancelled on the service, since nobody holds its handle.

        Args:
            overrides: as for :meth:`submit`, like ``workflow_api_json``, ``extra_data``,
                ``webhook``, ``webhook_intermediate_status`` and ``validate``.
            timeout: client-side deadline in seconds for the wait.
            poll: the polling schedule.

        Raises:
            ValidationError, DeploymentDisabledError, DeploymentDeletedError: as for
                :meth:`submit`.
            RequestFailed: the run failed; ``error`` holds the service's reason.
            RequestCancelled: the request was cancelled.
            WaitTimeoutError: ``timeout`` passed first.
        """
        request = await self.submit(
            overrides,
            workflow_api_json=workflow_api_json,
            extra_data=extra_data,
            webhook=webhook,
            webhook_intermediate_status=webhook_intermediate_status,
            validate=validate,
        )
        wait = request.wait(timeout=timeout, poll=poll)
        result = await run_or_cancel(self._client, request, wait, what="serverless request")
        return result.outputs or {}


class Deployments:
    """``rc.deployments``: create, list, read, change and delete serverless deployments."""

    def __init__(self, client: RunComfy) -> None:
        self._client = client

    @awaitable("rc.deployments.create(...)")
    async def create(
        self,
        *,
        name: str,
        workflow_id: str,
        workflow_version: str,
        hardware: str | Sequence[str],
        min_instances: int | None = None,
        max_instances: int | None = None,
        queue_size: int | None = None,
        keep_warm_duration_in_seconds: int | None = None,
    ) -> Deployment:
        """Deploy a cloud-saved workflow version as a serverless endpoint.

        Arguments left out take the service's defaults (0 / 1 instances, queue size 1, 60 s
        keep-warm). Instance bounds are checked against the widest documented limits (0-30 and
        1-60; another vendor page says 0-3 and 1-10): the service decides what lies between.

        Args:
            name: a human-readable name.
            workflow_id: the cloud-saved workflow to deploy.
            workflow_version: its version label (e.g. ``"v1"``).
            hardware: one GPU SKU, e.g. ``"AMPERE_48"`` or ``Hardware.AMPERE_48``.
            min_instances: instances kept up with no traffic (billed while idle).
            max_instances: the autoscaling ceiling.
            queue_size: requests allowed to wait before another instance starts.
            keep_warm_duration_in_seconds: how long an idle instance stays up.

        Returns:
            A :class:`Deployment` handle whose ``info`` is the created deployment.

        Raises:
            ValidationError: a missing or malformed argument (nothing is sent).
            BadRequestError: the service refused the settings (``detail`` says which).
        """
        body = {
            "workflow_id": workflow_id,
            **deployment_fields(
                name=name,
                workflow_version=workflow_version,
                hardware=hardware,
                min_instances=min_instances,
                max_instances=max_instances,
                queue_size=queue_size,
                keep_warm_duration_in_seconds=keep_warm_duration_in_seconds,
            ),
        }
        if not isinstance(workflow_id, str) or not workflow_id.strip():
            raise errors.ValidationError(
                f"workflow_id must be the id of a cloud-saved workflow, got {workflow_id!r}; "
                "`await rc.machines.workflows()` lists them"
            )
        for key in ("name", "workflow_version"):
            if key not in body:
                raise errors.ValidationError(f"{key} is required to create a deployment")
        # Not retried blindly: a create whose answer was lost may exist (and a second would
        # be a second deployment); only a 429 or a connection that never opened is repeated.
        try:
            payload = await self._client.request(
                RequestSpec(
                    api=API.SERVER, method="POST", path=_DEPLOYMENTS, json=body, retry=Retry.UNSENT
                )
            )
        except errors.OutcomeUnknownError as exc:
            exc.check = (
                f"`runcomfy deployments list` (or rc.deployments.list()) for a deployment named "
                f"{name!r} before creating it again: it may exist"
            )
            exc.add_note(f"check {exc.check}")
            raise
        info = structure(payload, DeploymentInfo, what="deployment")
        return Deployment(self._client, info.id, info=info)

    def get(self, deployment_id: str, *, queue_version: QueueVersion = "v1") -> Deployment:
        """A handle on a deployment by id; no request is sent (``await ...fetch()`` reads it).

        Args:
            deployment_id: the deployment's id.
            queue_version: ``"v2"`` to send inference under ``/prod/v2`` (same queue).

        Raises:
            ValidationError: an empty or malformed id.
        """
        return Deployment(self._client, deployment_id, queue_version=queue_version)

    @awaitable("rc.deployments.info(...)")
    async def info(
        self, deployment_id: str, *, includes: str | Iterable[str] | None = None
    ) -> DeploymentInfo:
        """Read one deployment: ``await rc.deployments.info(id, includes="payload")``.

        Raises:
            ValidationError: a malformed id or ``includes``.
            NotFoundError: no such deployment (or it was deleted).
        """
        return await self.get(deployment_id).fetch(includes=includes)

    @awaitable("rc.deployments.list()")
    async def list(
        self,
        *,
        ids: Iterable[str] | None = None,
        includes: str | Iterable[str] | None = None,
    ) -> list[DeploymentInfo]:
        """The account's deployments (only those in ``ids`` when given).

        Raises:
            ValidationError: a malformed id or ``includes``.
        """
        params: MultiDict[str] = MultiDict()
        for deployment_id in [ids] if isinstance(ids, str) else ids or ():
            check_id(deployment_id, "deployment id")
            params.add("ids", deployment_id)
        for value in check_includes(includes):
            params.add("includes", value)
        payload = await self._client.request(
            RequestSpec(api=API.SERVER, method="GET", path=_DEPLOYMENTS, params=params or None)
        )
        return [
            structure(item, DeploymentInfo, what="deployment")
            for item in unwrap_list(payload, "deployments")
        ]

    @awaitable("rc.deployments.update(...)")
    async def update(
        self,
        deployment_id: str,
        *,
        name: str | None = None,
        workflow_version: str | None = None,
        hardware: str | Sequence[str] | None = None,
        min_instances: int | None = None,
        max_instances: int | None = None,
        queue_size: int | None = None,
        keep_warm_duration_in_seconds: int | None = None,
        is_enabled: bool | None = None,
    ) -> DeploymentInfo:
        """Change some settings (PATCH): only the arguments given are sent.

        ``is_enabled=False`` disables the deployment (inference is refused until it is enabled
        again). The checks are those of :meth:`create`; the workflow itself cannot change.

        Raises:
            ValidationError: nothing to change, or a malformed value (nothing is sent).
            NotFoundError: no such deployment.
            BadRequestError: the service refused the settings.
        """
        body = deployment_fields(
            name=name,
            workflow_version=workflow_version,
            hardware=hardware,
            min_instances=min_instances,
            max_instances=max_instances,
            queue_size=queue_size,
            keep_warm_duration_in_seconds=keep_warm_duration_in_seconds,
        )
        if is_enabled is not None:
            if not isinstance(is_enabled, bool):
                raise errors.ValidationError(
                    f"is_enabled must be True or False, got {is_enabled!r}"
                )
            body["is_enabled"] = is_enabled
        if not body:
            raise errors.ValidationError(
                "update needs at least one setting to change, e.g. is_enabled=False or "
                "max_instances=2"
            )
        path = f"{_DEPLOYMENTS}/{check_id(deployment_id, 'deployment id')}"
        # A PATCH that sets fields is idempotent: repeating it leaves the same settings.
        payload = await self._client.request(
            RequestSpec(api=API.SERVER, method="PATCH", path=path, json=body, retry=Retry.SAFE)
        )
        return structure(payload, DeploymentInfo, what="deployment")

    @awaitable("rc.deployments.delete(...)")
    async def delete(self, deployment_id: str) -> None:
        """Delete a deployment; inference on it is refused from then on.

        Raises:
            NotFoundError: no such deployment (a retry of a delete that went through is fine).
        """
        path = f"{_DEPLOYMENTS}/{check_id(deployment_id, 'deployment id')}"
        await self._client.request(
            RequestSpec(api=API.SERVER, method="DELETE", path=path, retry=Retry.CLEANUP)
        )

    @overload
    async def download_outputs(
        self,
        outputs: ServerlessResult | Mapping[str, Any],
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        concurrency: int = ...,
        check: Literal[True] = ...,
    ) -> builtins.list[Path]: ...

    @overload
    async def download_outputs(
        self,
        outputs: ServerlessResult | Mapping[str, Any],
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = ...,
        concurrency: int = ...,
        check: Literal[False],
    ) -> DownloadReport: ...

    async def download_outputs(
        self,
        outputs: ServerlessResult | Mapping[str, Any],
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback[DownloadProgress] | None = None,
        concurrency: int = 4,
        check: bool = True,
    ) -> builtins.list[Path] | DownloadReport:
        """Download every file in a serverless result (or its outputs) into ``dest/outputs/``.

        Args:
            outputs: ``await req``, ``await deployment.run(...)`` or a :class:`ServerlessResult`.
            dest: folder to write into (created if missing).
            progress: called with a :class:`DownloadProgress` as bytes land on disk.
            concurrency: files downloaded at once.
            check: raise :class:`~runcomfy_async.errors.DownloadError` when a file failed;
                False returns the :class:`DownloadReport` instead.

        Returns:
            The paths written, in the order the files appear; a report with ``check=False``.

        Raises:
            ValidationError: a bad ``concurrency``, or a name would leave ``dest``.
            DownloadError: ``check`` and a file could not be downloaded.
        """
        return await download_outputs(
            self._client,
            output_files(outputs),
            dest,
            progress=progress,
            concurrency=concurrency,
            check=check,
        )
