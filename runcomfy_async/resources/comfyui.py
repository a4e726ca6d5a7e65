"""An async client for the ComfyUI a Ready machine serves at ``main_service_url`` (docs/wire.md).

ComfyUI is not one of RunComfy's API hosts: its calls go over the client's session without a
rate-limit token, and without the API token unless the caller opts in (it is not known whether
RunComfy's proxy in front of a machine wants it; by default the token never leaves the API
hosts). Prompts are followed over one WebSocket per client id (``_comfy_socket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import mimetypes
import random
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiofiles
import aiofiles.os
import aiohttp

from .. import errors
from .._pipeline import Pipeline, json_answer, storage_answer
from .._polling import PollPolicy, poll_until
from .._progress import ProgressRelay, with_progress
from .._protocol import Retry, is_loopback, redact_url
from .._retry import RetryPolicy
from .._transport import Answer, Credentials, Exchange, Timeouts, Transport
from ..types.comfyui import ComfyEvent, ComfyFile, ComfyPrompt, ComfyQueue, ComfyQueueItem
from ..types.progress import ProgressCallback
from ._comfy_socket import CONNECTED, EventSocket, Signal, Subscription

__all__ = ["ComfyUI", "ProgressCallback"]

_CHUNK = 1 << 20
#: Seconds of WebSocket silence after which the history is checked, in case the events go
#: elsewhere (another program connected with this client id and took them).
HISTORY_CHECK = 5.0
#: Largest WebSocket frame accepted: SaveImageWebsocket sends whole images as frames.
MAX_FRAME = 256 << 20
_rng = random.Random()


def _node_error_lines(node_errors: Mapping[str, Any]) -> list[str]:
    """One readable line per node error, e.g. ``node 4 (CheckpointLoaderSimple): ...``."""
    lines = []
    for node_id, entry in node_errors.items():
        entry = entry if isinstance(entry, Mapping) else {}
        for err in entry.get("errors") or [{}]:
            err = err if isinstance(err, Mapping) else {"message": str(err)}
            text = err.get("message") or err.get("type") or "invalid"
            if err.get("details"):
                text = f"{text}: {err['details']}"
            lines.append(f"node {node_id} ({entry.get('class_type', '?')}): {text}")
    return lines


def _prompt_refused(status: int, payload: Any) -> errors.ComfyUIError:
    """The exception for a 400 from ``/prompt`` (its ``error`` object and ``node_errors``)."""
    payload = payload if isinstance(payload, Mapping) else {}
    error = payload.get("error")
    node_errors = payload.get("node_errors")
    node_errors = node_errors if isinstance(node_errors, Mapping) else {}
    if isinstance(error, Mapping):
        summary = str(error.get("message") or error.get("type") or "invalid prompt")
    else:
        summary = str(error or "invalid prompt")
    lines = _node_error_lines(node_errors)
    detail = "".join(f"\n  - {line}" for line in lines)
    return errors.ComfyUIError(
        f"ComfyUI refused the prompt (HTTP {status}): {summary}{detail}",
        node_errors=node_errors,
        error=error,
        status=status,
    )


def _check_workflow(workflow: Any) -> dict[str, Any]:
    """Refuse what ComfyUI would refuse for its shape alone, naming the fix, before sending."""
    if isinstance(workflow, Mapping) and isinstance(workflow.get("nodes"), list):
        raise errors.ValidationError(
            "this is ComfyUI's UI workflow format (it has a 'nodes' list); export the workflow "
            "with 'Save (API Format)' and pass that JSON"
        )
    if not isinstance(workflow, Mapping) or not workflow:
        raise errors.ValidationError(
            "workflow must be a non-empty dict of {node_id: {'class_type': ..., 'inputs': {...}}} "
            "(ComfyUI's API format)"
        )
    problems = [
        f"node {node_id!r}"
        for node_id, node in workflow.items()
        if not isinstance(node, Mapping)
        or not isinstance(node.get("class_type"), str)
        or not isinstance(node.get("inputs", {}), Mapping)
    ]
    if problems:
        raise errors.ValidationError(
            f"{', '.join(problems[:10])}: each node must be a dict with a string 'class_type' "
            "and an 'inputs' dict (ComfyUI's API format)"
        )
    return {str(k): v for k, v in workflow.items()}


def _check_prompt_id(prompt_id: object) -> str:
    """Prompt ids go into URL paths; refuse anything that is not a plain id."""
    if not isinstance(prompt_id, str) or not prompt_id or "/" in prompt_id:
        raise errors.ValidationError(
            f"prompt_id must be the id queue_prompt returned, got {prompt_id!r}"
        )
    return prompt_id


def _files_of(entry: Mapping[str, Any]) -> list[ComfyFile]:
    """Every file a history entry's ``outputs`` names (images, gifs, videos, audio...)."""
    files = []
    outputs = entry.get("outputs")
    for node_id, produced in (outputs if isinstance(outputs, Mapping) else {}).items():
        for items in (produced if isinstance(produced, Mapping) else {}).values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                    files.append(
                        ComfyFile(
                            filename=item["filename"],
                            subfolder=str(item.get("subfolder") or ""),
                            type=str(item.get("type") or "output"),
                            node_id=str(node_id),
                        )
                    )
    return files


def _execution_failed(prompt_id: str, data: Mapping[str, Any], kind: str) -> errors.ComfyUIError:
    """The exception for an ``execution_error`` / ``execution_interrupted`` event."""
    where = f"node {data.get('node_id')} ({data.get('node_type')})" if data.get("node_id") else ""
    what = data.get("exception_message") or ("interrupted" if "interrupt" in kind else "failed")
    return errors.ComfyUIError(
        f"prompt {prompt_id} {kind.removeprefix('execution_')}: {where} {what}".replace("  ", " "),
        error=dict(data),
        prompt_id=prompt_id,
    )


def _history_failure(prompt_id: str, entry: Mapping[str, Any]) -> errors.ComfyUIError | None:
    """The failure a finished history entry records, or None if it succeeded."""
    status = entry.get("status")
    status = status if isinstance(status, Mapping) else {}
    if status.get("status_str") != "error":
        return None
    for message in status.get("messages") or []:
        if (
            isinstance(message, list)
            and len(message) == 2
            and message[0] in ("execution_error", "execution_interrupted")
            and isinstance(message[1], Mapping)
        ):
            return _execution_failed(prompt_id, message[1], message[0])
    return errors.ComfyUIError(
        f"prompt {prompt_id} failed", error=dict(status), prompt_id=prompt_id
    )


def _queue_items(items: Any) -> list[ComfyQueueItem]:
    """``/queue`` entries ``[number, prompt_id, prompt, extra_data, outputs]`` as data."""
    found = []
    for item in items if isinstance(items, list) else []:
        if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[1], str)):
            continue
        prompt, extra, outputs = [*item[2:5], None, None, None][:3]
        found.append(
            ComfyQueueItem(
                number=item[0] if isinstance(item[0], int | float) else 0,
                prompt_id=item[1],
                prompt=prompt if isinstance(prompt, Mapping) else {},
                extra_data=extra if isinstance(extra, Mapping) else {},
                outputs=tuple(str(o) for o in outputs) if isinstance(outputs, list) else (),
            )
        )
    return found


def _safe_filename(name: str) -> str:
    """A server-given file name reduced to its last part, so it cannot escape the target dir."""
    base = Path(name.replace("\\", "/")).name
    if base in ("", ".", ".."):
        raise errors.UnexpectedResponseError(f"unusable output file name {name!r}", status=200)
    return base


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in MiB chunks, read without blocking the loop."""
    async with aiofiles.open(path, "rb") as f:
        while chunk := await f.read(_CHUNK):
            yield chunk


class ComfyUI:
    """Async client for one ComfyUI server: queue prompts, follow them, fetch their outputs.

    Usually obtained from ``machine.comfyui()``.

    Args:
        session: the aiohttp session to use (the RunComfy client's).
        base_url: the ComfyUI URL (a machine's ``main_service_url``).
        timeouts: connect/read timeouts for calls and for transfers.
        token: a bearer token to send (opt-in; https or loopback URLs only).
        client_id: the ComfyUI client id prompts are queued under (default: a fresh UUID).
        retry: the retry bounds (default: :class:`RetryPolicy`'s); ComfyUI calls run through
            the same retry decision as API calls, without a rate-limit token.

    Raises:
        ConfigurationError: a token would go over plain http to a non-loopback host.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeouts: Timeouts | None = None,
        token: str | None = None,
        client_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.ConfigurationError(f"ComfyUI URL {redact_url(base_url)!r} is not http(s)")
        if token is not None and parts.scheme == "http" and not is_loopback(parts.hostname):
            raise errors.ConfigurationError(
                "refusing to send the API token over plain http to the ComfyUI URL; use https"
            )
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or str(uuid.uuid4())
        self.history_check = HISTORY_CHECK
        self._session = session
        self._timeouts = timeouts or Timeouts()
        self._retry = retry or RetryPolicy()
        self._transport = Transport(
            session, self._timeouts, token=token, token_bases=[self.base_url]
        )
        self._pipeline = Pipeline(self._transport, limiter=None, policy=self._retry)
        self._credentials = Credentials.NONE if token is None else Credentials.BEARER
        self._client_ids: dict[str, str] = {}
        self._sockets: dict[str, EventSocket] = {}

    def __repr__(self) -> str:
        return f"ComfyUI(base_url={self.base_url!r}, client_id={self.client_id!r})"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        kind: Retry,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: Callable[[], Any] | None = None,
        keep_400: bool = False,
    ) -> tuple[int, Any]:
        """One JSON call through the retry loop: ``(status, decoded body)``; an error status
        raises, a 400 only if not ``keep_400`` (``/prompt`` explains its 400s in ComfyUI's own
        shape)."""
        url = self.base_url + path

        def interpret(answer: Answer[Any]) -> tuple[int, Any]:
            """A kept 400's JSON as it is, anything else as an API answer."""
            if answer.status == 400 and keep_400:
                try:
                    return answer.status, json.loads(answer.body)
                except ValueError:
                    pass
            return answer.status, json_answer(answer, method=method, url=url)

        exchange = Exchange(
            method=method,
            url=url,
            params=params,
            json=json_body,
            data=data,
            credentials=self._credentials,
        )
        answer = await self._pipeline.call(exchange, interpret, kind=kind, priority=None)
        assert answer is not None  # only a cleanup call delivers None
        return answer

    async def submit(
        self, workflow: Mapping[str, Any], *, client_id: str | None = None
    ) -> ComfyPrompt:
        """Queue a workflow (ComfyUI API format); return the accepted prompt with any node errors.

        ComfyUI runs a partly valid prompt: it leaves out the output nodes that failed
        validation, runs the others, and says which it left out in ``node_errors``.

        Args:
            workflow: ``{node_id: {"class_type": ..., "inputs": {...}}}`` ("Save (API Format)").
            client_id: the ComfyUI client id to queue under (default: this client's); the
                WebSocket events of the prompt go to that id.

        Raises:
            ValidationError: the workflow is not in API format (nothing is sent).
            ComfyUIError: ComfyUI refused the whole prompt; ``node_errors`` names the nodes.
            APIError, TransportError: the server could not be reached or answered an error.
        """
        prompt = _check_workflow(workflow)
        cid = client_id or self.client_id
        # Retry.UNSENT: a repeat after a lost answer would run the prompt twice.
        status, payload = await self._call(
            "POST",
            "/prompt",
            kind=Retry.UNSENT,
            json_body={"prompt": prompt, "client_id": cid},
            keep_400=True,
        )
        if status == 400:
            raise _prompt_refused(status, payload)
        payload = payload if isinstance(payload, Mapping) else {}
        prompt_id = payload.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            raise errors.UnexpectedResponseError(
                "ComfyUI's /prompt answer has no prompt_id", status=status
            )
        number = payload.get("number")
        node_errors = payload.get("node_errors")
        self._client_ids[prompt_id] = cid
        return ComfyPrompt(
            prompt_id=prompt_id,
            number=number if isinstance(number, int | float) else 0,
            node_errors=node_errors if isinstance(node_errors, Mapping) else {},
        )

    async def queue_prompt(
        self, workflow: Mapping[str, Any], *, client_id: str | None = None
    ) -> str:
        """Queue a workflow (ComfyUI API format) and return its ``prompt_id``.

        A partly valid prompt runs its valid outputs; its id is returned and a
        :class:`~runcomfy_async.ComfyUIWarning` carrying the node errors is issued (use
        :meth:`submit` to get them as data).

        Args:
            workflow: ``{node_id: {"class_type": ..., "inputs": {...}}}`` ("Save (API Format)").
            client_id: the ComfyUI client id to queue under (default: this client's).

        Raises:
            ValidationError: the workflow is not in API format (nothing is sent).
            ComfyUIError: ComfyUI refused it; ``node_errors`` names the nodes and reasons.
            APIError, TransportError: the server could not be reached or answered an error.
        """
        accepted = await self.submit(workflow, client_id=client_id)
        if accepted.node_errors:
            lines = "".join(f"\n  - {line}" for line in _node_error_lines(accepted.node_errors))
            warnings.warn(
                errors.ComfyUIWarning(
                    f"ComfyUI runs prompt {accepted.prompt_id} without some of its outputs:"
                    f"{lines}",
                    prompt_id=accepted.prompt_id,
                    node_errors=accepted.node_errors,
                ),
                stacklevel=2,
            )
        return accepted.prompt_id

    async def _history_entry(self, prompt_id: str) -> Mapping[str, Any] | None:
        """The prompt's history entry, or None while it is unfinished."""
        _, payload = await self._call("GET", f"/history/{prompt_id}", kind=Retry.SAFE)
        entry = payload.get(prompt_id) if isinstance(payload, Mapping) else None
        return entry if isinstance(entry, Mapping) else None

    async def wait(
        self,
        prompt_id: str,
        *,
        timeout: float | None = None,
        progress: ProgressCallback[ComfyEvent] | None = None,
        poll: PollPolicy | None = None,
    ) -> list[ComfyFile]:
        """Wait until a prompt has run and return its output files.

        Follows the prompt over this client's one WebSocket (shared by every concurrent wait,
        since ComfyUI feeds only the newest socket of a client id). When the socket cannot be
        opened or drops, the wait asks ``/history`` at once and then on ``poll``'s schedule
        while the socket reconnects with backoff.

        Args:
            prompt_id: what :meth:`queue_prompt` returned.
            timeout: client-side deadline in seconds (None: as long as it takes).
            progress: called with each :class:`ComfyEvent` about this prompt (sync or async),
                and with the ``status`` broadcasts (queue length) until it starts; if it
                raises, the wait stops with that exception.
            poll: the schedule of the ``/history`` fallback.

        Raises:
            ComfyUIError: the prompt failed or was interrupted.
            WaitTimeoutError: ``timeout`` passed first.
        """
        prompt_id = _check_prompt_id(prompt_id)
        return await with_progress(
            progress, lambda relay: self._wait(prompt_id, timeout=timeout, relay=relay, poll=poll)
        )

    async def _wait(
        self,
        prompt_id: str,
        *,
        timeout: float | None,
        relay: ProgressRelay[ComfyEvent],
        poll: PollPolicy | None,
    ) -> list[ComfyFile]:
        """:meth:`wait` itself, its events going to ``relay``."""
        policy = poll or PollPolicy(initial=0.25, max_interval=5.0)
        socket = self._socket(self._client_ids.get(prompt_id, self.client_id))
        subscription = socket.subscribe(prompt_id)
        try:
            async with asyncio.timeout(timeout) as scope:
                entry = await self._follow(prompt_id, subscription, relay, policy)
                if entry is None:
                    # ComfyUI sends execution_success just before it records the history.
                    entry = await poll_until(
                        lambda: self._history_entry(prompt_id),
                        lambda found: found is not None,
                        policy=policy,
                        key=lambda found: found is not None,
                        what=f"ComfyUI prompt {prompt_id}",
                    )
        except TimeoutError as exc:
            if scope.expired():
                raise errors.WaitTimeoutError(
                    f"gave up waiting for ComfyUI prompt {prompt_id} after {timeout:g}s; "
                    "pass a larger timeout= or check ComfyUI's queue"
                ) from exc
            raise
        finally:
            socket.unsubscribe(subscription)
        self._client_ids.pop(prompt_id, None)
        assert entry is not None  # poll_until returned a snapshot that passed the check
        failure = _history_failure(prompt_id, entry)
        if failure is not None:
            raise failure
        return _files_of(entry)

    def _socket(self, client_id: str) -> EventSocket:
        """The one WebSocket of a client id (ComfyUI feeds only the newest socket of an id)."""
        socket = self._sockets.get(client_id)
        if socket is None:
            socket = EventSocket(
                functools.partial(self._open_socket, client_id), backoff=self._retry
            )
            self._sockets[client_id] = socket
        return socket

    async def _open_socket(self, client_id: str) -> aiohttp.ClientWebSocketResponse:
        """Open ``/ws`` for a client id, with the credentials of every other ComfyUI call."""
        return await self._transport.websocket(
            self.base_url + "/ws",
            params={"clientId": client_id},
            credentials=self._credentials,
            heartbeat=30.0,
            max_message=MAX_FRAME,
        )

    async def _follow(
        self,
        prompt_id: str,
        subscription: Subscription,
        relay: ProgressRelay[ComfyEvent],
        policy: PollPolicy,
    ) -> Mapping[str, Any] | None:
        """Follow the prompt's events until it is over: its history entry when the history
        said so first, None when an event did (the history has it then, or soon will).

        Whenever events may have been missed (the socket just opened, went away, or stayed
        silent long) the history is asked at once; while the socket is away it is asked on
        ``policy``'s schedule until the socket is back."""
        interval: float | None = None
        started = False
        while True:
            if subscription.connected:
                wait = self.history_check
            else:
                interval = policy.next_interval(interval)
                wait = policy.jittered(interval, _rng)
            item = await subscription.next(wait)
            if item is None or isinstance(item, Signal):
                if item is CONNECTED:
                    interval = None
                entry = await self._history_entry(prompt_id)
                if entry is not None:
                    return entry
                continue
            if item.type == "status":
                if not started:
                    relay.emit(item)  # the queue moves while the prompt waits its turn
                continue
            started = True
            relay.emit(item)
            if item.type in ("execution_error", "execution_interrupted"):
                raise _execution_failed(prompt_id, item.data, item.type)
            if item.type == "execution_success" or (
                item.type == "executing" and item.data.get("node") is None
            ):
                return None

    async def outputs(self, prompt_id: str) -> list[ComfyFile]:
        """The output files of a finished prompt, from ``/history/{prompt_id}``.

        Raises:
            ComfyUIError: the prompt is not in the history (unfinished or unknown).
        """
        prompt_id = _check_prompt_id(prompt_id)
        entry = await self._history_entry(prompt_id)
        if entry is None:
            raise errors.ComfyUIError(
                f"prompt {prompt_id} is not in ComfyUI's history: it has not finished (use "
                "wait()) or is unknown",
                prompt_id=prompt_id,
            )
        return _files_of(entry)

    async def download(self, output: ComfyFile, dest: str | Path) -> Path:
        """Stream one file from ``/view`` to disk; returns the path written.

        Args:
            output: a file from :meth:`outputs` or :meth:`wait`.
            dest: a directory (the file keeps its name) or a file path.

        Raises:
            APIError: ComfyUI answered an error (404: no such file).
            TransportError: the connection failed.
        """
        dest = Path(dest)
        target = dest / _safe_filename(output.filename) if dest.is_dir() else dest
        partial = target.with_name(target.name + ".part")
        url = self.base_url + "/view"
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}

        async def save(resp: aiohttp.ClientResponse) -> None:
            """Stream the file into ``partial`` (a retry writes it anew)."""
            async with aiofiles.open(partial, "wb") as f:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    await f.write(chunk)

        exchange = Exchange(
            method="GET",
            url=url,
            params=params,
            timeout=self._timeouts.for_transfer(),
            credentials=self._credentials,
        )
        try:
            await self._pipeline.call(
                exchange,
                functools.partial(_view_answer, url=url),
                kind=Retry.SAFE,
                priority=None,
                consume=save,
            )
        except BaseException:
            await _remove(partial)  # cleanup that re-raises, cancellation included
            raise
        await aiofiles.os.replace(partial, target)
        return target

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the prompt that is running (its wait raises ComfyUIError, "interrupted").

        Args:
            prompt_id: interrupt only if this prompt is the one running (None: whatever runs).
                A queued prompt that has not started is left alone.
        """
        body = {} if prompt_id is None else {"prompt_id": _check_prompt_id(prompt_id)}
        # Repeating an interrupt is harmless: at worst it stops the same prompt again.
        await self._call("POST", "/interrupt", kind=Retry.SAFE, json_body=body)

    async def queue(self) -> ComfyQueue:
        """ComfyUI's queue now: the prompt running and those pending, in the order they run."""
        _, payload = await self._call("GET", "/queue", kind=Retry.SAFE)
        payload = payload if isinstance(payload, Mapping) else {}
        pending = sorted(_queue_items(payload.get("queue_pending")), key=lambda i: i.number)
        return ComfyQueue(
            running=tuple(_queue_items(payload.get("queue_running"))), pending=tuple(pending)
        )

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """The node classes ComfyUI knows, with their inputs, outputs and categories.

        Args:
            node_class: only this class (the answer is empty when the server lacks it).

        Returns:
            ``{class_name: {"input": {...}, "output": [...], "output_node": bool, ...}}`` as
            ComfyUI describes its nodes.
        """
        if node_class is not None and (not node_class or "/" in node_class):
            raise errors.ValidationError(
                f"node_class must be a node class name such as 'SaveImage', got {node_class!r}"
            )
        path = "/object_info" if node_class is None else f"/object_info/{node_class}"
        _, payload = await self._call("GET", path, kind=Retry.SAFE)
        return dict(payload) if isinstance(payload, Mapping) else {}

    async def upload_image(
        self, path: str | Path, *, subfolder: str = "", overwrite: bool = False
    ) -> ComfyFile:
        """Upload an image to ComfyUI's input folder (``/upload/image``), streamed from disk.

        Args:
            path: the image file.
            subfolder: a subfolder of the input folder.
            overwrite: replace a file of the same name instead of getting a renamed copy.

        Returns:
            The stored file (its name may differ: ComfyUI renames on collision, or keeps the
            existing file when the bytes are the same). Give a LoadImage node's ``image``
            input its :attr:`~ComfyFile.input_value`: ``subfolder/filename``, or the bare
            name without a subfolder (ComfyUI refuses the bare name of a file in a subfolder).

        Raises:
            ValidationError: ``path`` is not a readable file (nothing is sent).
        """
        path = Path(path)
        if not await aiofiles.os.path.isfile(path):
            raise errors.ValidationError(f"{path} is not a file; pass the path of an image")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"

        def body() -> aiohttp.FormData:
            form = aiohttp.FormData()
            form.add_field(
                "image", _file_chunks(path), filename=path.name, content_type=content_type
            )
            form.add_field("type", "input")
            form.add_field("subfolder", subfolder)
            form.add_field("overwrite", "true" if overwrite else "false")
            return form

        # Each attempt reads the file anew. Without overwrite a repeat after a lost answer would
        # store a renamed second copy, so it is repeated only if it never left (Retry.UNSENT).
        _, payload = await self._call(
            "POST",
            "/upload/image",
            kind=Retry.SAFE if overwrite else Retry.UNSENT,
            data=body,
        )
        if not isinstance(payload, Mapping) or not isinstance(payload.get("name"), str):
            raise errors.UnexpectedResponseError("ComfyUI's upload answer has no name", status=200)
        return ComfyFile(
            filename=payload["name"],
            subfolder=str(payload.get("subfolder") or ""),
            type=str(payload.get("type") or "input"),
        )


def _view_answer(answer: Answer[None], *, url: str) -> None:
    """Raise the matching error unless ``/view`` answered 200 with the file."""
    if answer.status in (200, 206) or answer.status >= 400:
        storage_answer(answer, method="GET", url=url)
        return
    raise errors.UnexpectedResponseError(
        f"ComfyUI's /view answered {answer.status} instead of the file",
        status=502,
        method="GET",
        url=redact_url(url),
    )


async def _remove(path: Path) -> None:
    """Drop a partial download so a failed one leaves nothing behind."""
    with contextlib.suppress(FileNotFoundError):
        await aiofiles.os.remove(path)
