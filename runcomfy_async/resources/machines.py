"""Server API machines (docs/wire.md): the ``rc.machines`` collection and ``Machine`` handles.

A machine bills from ``Ready`` until it is stopped, so a :class:`Machine` is both awaitable (wait
until Ready) and an async context manager whose exit sends the stop request, also when the block
raises or its task is cancelled (DESIGN rule 8).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, Self
from urllib.parse import quote

import attrs

from .. import errors
from .._awaitable import awaitable
from .._converter import structure
from .._limiter import Priority
from .._pipeline import CallTrace
from .._polling import PollPolicy, poll_until
from .._protocol import API, RequestSpec, Retry
from .._retry import RetryPolicy
from ..types.machines import MachineInfo, MachineStatus, ServerType, Workflow
from ._common import unwrap_list
from .comfyui import ComfyUI

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["Machine", "Machines"]

logger = logging.getLogger("runcomfy_async")

#: Seconds a launched machine may answer 404 before we stop calling it "not registered yet"
#: (docs/wire.md: the status GET may 404 right after launch).
NOT_FOUND_GRACE = 60.0
#: Seconds the stop on leaving ``async with machine`` keeps trying, counted from when it is first
#: sent (not while it waits for a rate-limit token or a server-set pause).
STOP_TIMEOUT = 300.0
#: Clock difference tolerated between this machine and the server when matching a launch.
_CLOCK_SKEW = 120.0
#: A cleanup is bounded by time, not by a count of tries.
_UNLIMITED_ATTEMPTS = 1_000_000


def _users_path(user_id: str, suffix: str) -> str:
    return f"/prod/api/users/{quote(user_id, safe='')}{suffix}"


def _server_path(user_id: str, server_id: str, suffix: str = "") -> str:
    return _users_path(user_id, f"/servers/{quote(server_id, safe='')}{suffix}")


def _check_id(value: object, what: str) -> str:
    """Ids are path segments: refuse what cannot be one before anything is sent."""
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise errors.ValidationError(
            f"{what} must be a non-empty string without surrounding whitespace, got {value!r}"
        )
    return value


def _check_seconds(value: object, what: str) -> int:
    """The API takes whole seconds; a bool, float or non-positive number is a caller's mistake."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise errors.ValidationError(
            f"{what} must be a positive whole number of seconds (e.g. 3600 for an hour), "
            f"got {value!r}"
        )
    return value


def _server_type(value: object) -> ServerType:
    """A known server type, from the enum or its exact wire string (docs/wire.md)."""
    valid = ", ".join(repr(t.value) for t in ServerType)
    if isinstance(value, str):
        try:
            return ServerType(value)
        except ValueError:
            pass
    raise errors.ValidationError(f"unknown server_type {value!r}; use one of {valid}")


def _workflow(item: Any) -> Workflow:
    """The API names the field ``workflow_name`` (docs/wire.md); ours is ``name``."""
    if isinstance(item, dict) and "workflow_name" in item:
        item = {k: v for k, v in item.items() if k != "workflow_name"} | {
            "name": item["workflow_name"]
        }
    return structure(item, Workflow, what="workflow list")


class Machine:
    """An awaitable handle on one machine: ``await machine`` waits until Ready.

    ``async with machine:`` stops the machine when the block is left, however it is left.

    Attributes:
        id: the ``server_id``.
        main_service_url: the ComfyUI URL, set once a wait or status call saw the machine Ready.
        stop_timeout: seconds the stop on leaving ``async with`` keeps trying, counted on the
            wire and in retry waits (not while it is queued for a rate-limit token).
    """

    def __init__(self, client: RunComfy, server_id: str) -> None:
        self._client = client
        self.id = server_id
        self.main_service_url: str | None = None
        self._stop_timeout = STOP_TIMEOUT
        # A 404 is "not registered yet" only until the machine was seen once (docs/wire.md).
        self._seen = False

    def __repr__(self) -> str:
        return f"Machine(id={self.id!r}, main_service_url={self.main_service_url!r})"

    @property
    def stop_timeout(self) -> float:
        """Seconds the stop on leaving ``async with`` keeps trying (300 by default)."""
        return self._stop_timeout

    @stop_timeout.setter
    def stop_timeout(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise errors.ValidationError(
                f"stop_timeout must be a positive number of seconds, got {value!r}"
            )
        self._stop_timeout = float(value)

    @awaitable("machine.status()")
    async def status(self, *, priority: Priority = Priority.USER) -> MachineInfo:
        """Ask the server for the machine's current state (never a cached one).

        Raises:
            ConfigurationError: the client has no user id.
            NotFoundError: no such machine (not registered yet, or stopped and gone).
        """
        user_id = self._client.require_user_id()
        payload = await self._client.request(
            RequestSpec(api=API.SERVER, method="GET", path=_server_path(user_id, self.id)),
            priority=priority,
        )
        info = structure(payload, MachineInfo, what="machine status")
        self._seen = True
        if info.current_status is MachineStatus.READY and info.main_service_url:
            self.main_service_url = info.main_service_url
        elif info.current_status.ended:
            self.main_service_url = None
        return info

    @awaitable("machine.wait_ready()")
    async def wait_ready(
        self,
        *,
        timeout: float | None = None,
        poll: PollPolicy | None = None,
        not_found_grace: float = NOT_FOUND_GRACE,
    ) -> MachineInfo:
        """Poll until the machine is Ready with its ComfyUI URL, and return that snapshot.

        Args:
            timeout: client-side deadline in seconds (None: as long as it takes).
            poll: the polling schedule (default: 0.5 s, backing off to 10 s).
            not_found_grace: seconds a machine never seen yet may answer 404 (not registered).

        Raises:
            MachineFailed: the machine stopped or errored while starting, or was never found.
            WaitTimeoutError: ``timeout`` passed first.
        """
        first_404: float | None = None

        async def fetch() -> MachineInfo | None:
            nonlocal first_404
            try:
                return await self.status(priority=Priority.BACKGROUND)
            except errors.NotFoundError as exc:
                now = time.monotonic()
                first_404 = now if first_404 is None else first_404
                if self._seen:
                    raise errors.MachineFailed(
                        f"machine {self.id} disappeared (404) while starting: it was stopped",
                        error=exc.message,
                    ) from exc
                if now - first_404 > not_found_grace:
                    raise errors.MachineFailed(
                        f"machine {self.id} was still not found {not_found_grace:g}s after the "
                        "first 404; check the server id, or launch again",
                        error=exc.message,
                    ) from exc
                return None

        info = await poll_until(
            fetch,
            _settled,
            policy=poll or PollPolicy(initial=0.5, max_interval=10.0),
            timeout=timeout,
            key=lambda i: None if i is None else i.current_status,
            what=f"machine {self.id} to become Ready",
        )
        assert info is not None  # _settled is False for None
        if info.current_status is not MachineStatus.READY:
            raise errors.MachineFailed(
                f"machine {self.id} went {info.current_status.value} before becoming Ready; "
                "launch a new one (nothing is billed before Ready)",
                error=info.current_status.value,
                snapshot=info,
            )
        return info

    def __await__(self) -> Generator[Any, None, MachineInfo]:
        return self.wait_ready().__await__()

    @awaitable("machine.extend(...)")
    async def extend(self, seconds: int) -> MachineInfo:
        """Set the machine's estimated running duration to ``seconds`` (docs/wire.md).

        The value is the machine's whole running time, as the API takes it, not an increment.

        Raises:
            ValidationError: ``seconds`` is not a positive whole number (nothing is sent).
            ConfigurationError: the client has no user id.
        """
        seconds = _check_seconds(seconds, "seconds")
        user_id = self._client.require_user_id()
        # Retry.SAFE: setting the duration to a value is idempotent, a repeat changes nothing.
        payload = await self._client.request(
            RequestSpec(
                api=API.SERVER,
                method="POST",
                path=_server_path(user_id, self.id, "/update-estimated-duration"),
                json={"update_estimated_duration": seconds},
                retry=Retry.SAFE,
            )
        )
        return structure(payload, MachineInfo, what="machine after the duration change")

    @awaitable("machine.stop()")
    async def stop(self, *, priority: Priority = Priority.USER) -> MachineInfo | None:
        """Stop the machine (billing stops when this returns, docs/wire.md).

        Repeated after a lost answer or a 5xx (a stop is idempotent); a 404, at once or on a
        repeat, means the machine is already gone, which is what was asked.

        Args:
            priority: ``Priority.CLEANUP`` to go ahead of every queued call.

        Returns:
            The machine as the server described it (e.g. ``Stopping``), or None when it sent no
            machine, or the machine was already gone.

        Raises:
            ConfigurationError: the client has no user id.
        """
        return await self._stop(priority=priority, policy=None)

    async def _stop(
        self, *, priority: Priority, policy: RetryPolicy | None
    ) -> MachineInfo | None:
        """The DELETE, as a cleanup call."""
        user_id = self._client.require_user_id()
        try:
            payload = await self._client.request(
                RequestSpec(
                    api=API.SERVER,
                    method="DELETE",
                    path=_server_path(user_id, self.id),
                    retry=Retry.CLEANUP,
                ),
                priority=priority,
                policy=policy,
            )
        except errors.NotFoundError:
            logger.debug("machine %s was already stopped (404 on DELETE)", self.id)
            payload = None
        self.main_service_url = None
        if isinstance(payload, dict) and "server_id" in payload:
            return structure(payload, MachineInfo, what="stopped machine")
        return None

    def __enter__(self) -> NoReturn:
        """Refuse a plain ``with``; inside a running loop, stop the machine as leaving
        ``async with`` would, so a mistyped block leaves nothing running and billed."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            outcome = f"machine {self.id} runs (and bills) until `await machine.stop()`"
        else:
            self._client.spawn_cleanup(
                self._stop(priority=Priority.CLEANUP, policy=_cleanup_policy(self._client, self))
            )
            outcome = f"machine {self.id} is being stopped now, as leaving the block would"
        raise errors.AsyncUsageError(
            "a Machine is entered with `async with` (leaving it stops the machine): write "
            f"`async with await rc.machines.launch(...) as machine:`; {outcome}"
        )

    def __exit__(self, *exc_info: object) -> None:
        """Never reached: :meth:`__enter__` refuses; present so ``with`` reaches that message."""

    async def __aenter__(self) -> Self:
        """The machine itself; leaving the block stops it (it does not wait for Ready)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the machine, shielded from cancellation, ahead of every queued call.

        The stop waits out a server-set pause, then goes first; it keeps trying for
        ``stop_timeout`` seconds from when it is first sent, and returns only once the server
        confirmed it (or said the machine is gone).
        """
        stopping = self._client.spawn_cleanup(
            self._stop(priority=Priority.CLEANUP, policy=_cleanup_policy(self._client, self))
        )
        cancelled = False
        failure: Exception | None = None
        while True:
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                if stopping.cancelled():
                    raise
                # Cancelled again while stopping: a forgotten machine bills, so the stop still
                # finishes (bounded by stop_timeout) before the cancellation goes on.
                cancelled = True
                continue
            except Exception as stop_error:  # noqa: BLE001 - reported below, never swallowed
                failure = stop_error
            break
        if cancelled:
            raise asyncio.CancelledError
        if failure is None:
            return
        message = _stop_by_hand(self.id, f"could not stop machine {self.id} ({failure!r})")
        if exc is not None:
            logger.warning("%s", message)
            return
        if isinstance(failure, errors.RunComfyError):
            failure.add_note(message)
            raise failure
        raise errors.WaitTimeoutError(message) from failure

    def comfyui(self, *, send_token: bool = False) -> ComfyUI:
        """A ComfyUI client for this machine's ``main_service_url`` (docs/wire.md).

        Args:
            send_token: also send the API bearer token to the ComfyUI URL. Off by default: it is
                not known whether RunComfy's proxy needs it, and the token otherwise never
                leaves the API hosts.

        Raises:
            ValidationError: the machine has not been seen Ready yet (``await machine`` first).
        """
        if not self.main_service_url:
            raise errors.ValidationError(
                f"machine {self.id} has no ComfyUI URL yet: `await machine` until it is Ready"
            )
        return ComfyUI(
            self._client.session,
            self.main_service_url,
            timeouts=self._client.timeouts,
            token=self._client._token if send_token else None,
            retry=self._client.retry,
        )


def _settled(info: MachineInfo | None) -> bool:
    if info is None:
        return False
    ready = info.current_status is MachineStatus.READY and bool(info.main_service_url)
    return ready or info.current_status.ended


class Machines:
    """``rc.machines``: workflows, running machines, launch and look up machines."""

    def __init__(self, client: RunComfy) -> None:
        self._client = client
        #: Launches of each workflow version in flight: a lost answer is ambiguous beside another.
        self._in_flight: Counter[str] = Counter()
        #: Machines this client's launches returned: never taken for another lost answer.
        self._claimed: set[str] = set()

    @awaitable("rc.machines.workflows()")
    async def workflows(self) -> list[Workflow]:
        """The account's workflows; launch a machine with a workflow's ``version_id``.

        Raises:
            ConfigurationError: the client has no user id (nothing is sent).
        """
        user_id = self._client.require_user_id()
        payload = await self._client.request(
            RequestSpec(api=API.SERVER, method="GET", path=_users_path(user_id, "/workflows"))
        )
        return [_workflow(item) for item in unwrap_list(payload, "workflows")]

    @awaitable("rc.machines.list()")
    async def list(self) -> list[MachineInfo]:
        """The account's running machines.

        Raises:
            ConfigurationError: the client has no user id (nothing is sent).
        """
        user_id = self._client.require_user_id()
        payload = await self._client.request(
            RequestSpec(api=API.SERVER, method="GET", path=_users_path(user_id, "/servers"))
        )
        return [
            structure(item, MachineInfo, what="machine list")
            for item in unwrap_list(payload, "servers")
        ]

    def get(self, server_id: str) -> Machine:
        """A handle on an existing machine by ``server_id`` (no request is sent).

        Raises:
            ValidationError: an empty or malformed id.
        """
        return Machine(self._client, _check_id(server_id, "server_id"))

    @awaitable("rc.machines.launch(...)")
    async def launch(
        self,
        version_id: str,
        *,
        server_type: ServerType | str = ServerType.LARGE,
        estimated_duration: int = 3600,
    ) -> Machine:
        """Launch a machine running a workflow version; returns at once (status Initializing).

        Billing starts when the machine is Ready; use ``async with`` so it is stopped::

            async with await rc.machines.launch(version_id) as machine:
                await machine

        Cancelled before the request left (waiting for a rate-limit token), nothing is sent and
        the cancellation is immediate; cancelled after, the machine it starts is stopped by a
        cleanup task that closing the client waits for. An answer lost after sending (or a 5xx)
        is resolved from the machine list: the one new machine of this workflow version comes
        back as if the launch had answered. (The API gives no launch time before a machine is
        Ready: a machine of the same version, type and duration that another program launched
        moments earlier and that is still booting cannot be told apart from it; with two such
        machines nothing is adopted and the error says what to check.)

        Args:
            version_id: a workflow's ``version_id`` (see :meth:`workflows`).
            server_type: a :class:`ServerType` or its string (``"large"``, ``"2x-large"``, ...).
            estimated_duration: seconds the machine should run (e.g. 86400 for a day).

        Raises:
            ConfigurationError: the client has no user id (nothing is sent).
            ValidationError: an unknown server type or a bad duration (nothing is sent).
            OutcomeUnknownError: the answer was lost and the machine list does not show one
                machine it started; ``check`` says what to look for.
        """
        version_id = _check_id(version_id, "version_id")
        kind = _server_type(server_type)
        duration = _check_seconds(estimated_duration, "estimated_duration")
        user_id = self._client.require_user_id()
        # Retry.UNSENT: a launch creates a machine that bills; if an answer were lost after the
        # server acted, a repeat would start a second one. Only a 429 or a refused or timed-out
        # connect (the request never ran) is repeated.
        spec = RequestSpec(
            api=API.SERVER,
            method="POST",
            path=_users_path(user_id, "/servers"),
            json={
                "workflow_version_id": version_id,
                "server_type": kind.value,
                "estimated_duration": duration,
            },
            retry=Retry.UNSENT,
        )
        # The POST runs as its own task, shielded: if the caller is cancelled after it may have
        # reached the server, the machine may exist and bill, and no handle would reach anyone
        # to stop it, so a cleanup task stops it once the answer (or the look-up) comes.
        # Cancelled before that (queued for a token, refused with 429, its connection never
        # opened), the task is dropped: nothing was started.
        trace = CallTrace()
        launching = asyncio.ensure_future(self._launch(spec, trace, version_id, kind, duration))
        try:
            server_id = await asyncio.shield(launching)
        except asyncio.CancelledError:
            if launching.done() or trace.reached:
                self._client.spawn_cleanup(_stop_launched(self._client, launching))
            else:
                launching.cancel()
            raise
        except errors.BadRequestError as exc:
            # The server's own words name its wire fields; say it in this library's terms.
            exc.fix = (
                "pass a version_id that `await rc.machines.workflows()` lists "
                "(Workflow.version_id) and a ServerType such as ServerType.LARGE"
            )
            raise
        return Machine(self._client, server_id)

    async def _launch(
        self, spec: RequestSpec, trace: CallTrace, version_id: str, kind: ServerType, duration: int
    ) -> str:
        """The launch POST, and the machine list look-up when its answer was lost."""
        began = time.time()
        self._in_flight[version_id] += 1
        try:
            payload = await self._client.request(spec, trace=trace)
        except errors.OutcomeUnknownError as exc:
            # The answer was lost after the POST left: the machine list says whether it started
            # a machine (docs/wire.md).
            found = await self._launched_since(version_id, kind, duration, began)
            if found is None:
                exc.check = (
                    "rc.machines.list() (or the dashboard) for a machine of workflow version "
                    f"{version_id} launched at {time.strftime('%H:%M:%S', time.gmtime(began))} "
                    "UTC; stop it if you do not want it"
                )
                exc.add_note(f"check {exc.check}")
                raise
            logger.info("launch answer lost; found the machine it started: %s", found)
            server_id: object = found
        else:
            server_id = payload.get("server_id") if isinstance(payload, dict) else None
        finally:
            self._in_flight[version_id] -= 1
        if not isinstance(server_id, str) or not server_id:
            raise errors.UnexpectedResponseError(
                "the launch answer has no server_id; check rc.machines.list() for the machine",
                status=200,
            )
        self._claimed.add(server_id)
        return server_id

    async def _launched_since(
        self, version_id: str, kind: ServerType, duration: int, began: float
    ) -> str | None:
        """The id of the one machine a launch with a lost answer started, if it can be told
        apart.

        Matched by workflow version, server type and duration, and by launch time: a machine
        started by this launch is not Ready yet, or became Ready after the launch began (within
        a clock skew). Machines this client already handed out are not candidates; another
        launch of the same version in flight here, or two candidates, make it ambiguous: None.
        """
        if self._in_flight[version_id] > 1:
            return None
        candidates = [
            info.server_id
            for info in await self.list()
            if info.workflow_version_id == version_id
            and info.server_id not in self._claimed
            and info.server_type in (None, kind.value)
            and info.estimated_duration in (None, duration)
            and not info.current_status.ended
            and (
                info.service_ready_at is None
                or info.service_ready_at.timestamp() >= began - _CLOCK_SKEW
            )
        ]
        return candidates[0] if len(candidates) == 1 else None


def _cleanup_policy(client: RunComfy, machine: Machine) -> RetryPolicy:
    """Bounds for a stop that must get through: tried until ``stop_timeout``, not an attempt
    count."""
    return attrs.evolve(
        client.retry, max_attempts=_UNLIMITED_ATTEMPTS, total_timeout=machine.stop_timeout
    )


def _stop_by_hand(server_id: str, what: str) -> str:
    """A failed stop's message: the machine id and how to stop it by hand."""
    return (
        f"{what}; it may still be billing: stop it with `runcomfy machines stop {server_id}`, "
        f"`await rc.machines.get({server_id!r}).stop()`, or the dashboard"
    )


async def _stop_launched(client: RunComfy, launching: asyncio.Future[str]) -> None:
    """Stop the machine a launch started after its caller was cancelled (a cleanup task).

    The launch is never cut off (a POST already sent may still start a machine): this waits for
    its answer, or its look-up of a lost answer, then stops the machine ahead of every queued
    call.
    """
    try:
        server_id = await launching
    except errors.OutcomeUnknownError as exc:
        logger.warning("%s", _stop_by_hand("?", f"a cancelled launch may have started a machine "
                                           f"that could not be identified ({exc})"))
        return
    except Exception as exc:  # noqa: BLE001 - the launch failed: no machine to stop
        logger.info("a cancelled launch failed (%r); no machine was started", exc)
        return
    logger.warning("launch of machine %s was cancelled; stopping it so it does not bill", server_id)
    machine = Machine(client, server_id)
    try:
        await machine._stop(priority=Priority.CLEANUP, policy=_cleanup_policy(client, machine))
    except Exception as exc:  # noqa: BLE001 - logged: nobody awaits this task
        logger.warning("%s", _stop_by_hand(server_id, f"could not stop machine {server_id} "
                                           f"after its launch was cancelled ({exc!r})"))
