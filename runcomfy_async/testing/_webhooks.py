"""Webhook delivery for serverless requests: real HTTP POSTs, retries, and seeded misbehaviour.

The service POSTs a JSON event to the ``webhook`` URL a request was submitted with: the final
``succeeded`` / ``failed`` / ``cancelled`` event always, ``in_queue`` / ``in_progress`` too when
``webhook_intermediate_status`` was true. A receiver must answer 2xx within 10 s; otherwise the
delivery is retried with exponential backoff. Deliveries may repeat or arrive out of order, so
receivers deduplicate on (request id, status) -- and the emulator can be told to do exactly that
to them, through a :class:`WebhookPolicy`:

- ``duplicate_rate``: chance that an event is delivered a second time (a separate POST).
- ``reorder_rate``: chance that an intermediate event is held back and delivered after the
  request's next event (so ``in_progress`` can land after ``succeeded``).
- ``drop_rate``: chance that an event is never delivered at all (no attempt is made), which a
  receiver recovers from by polling.
- ``max_attempts``, ``backoff``, ``timeout``: the retry schedule of one delivery.

Set one for every deployment with ``Emulator(webhook_policy=...)`` or for one deployment with
``emu.set_webhook_policy(policy, deployment_id=...)``. The draws come from the emulator's
``seed``, so a run replays. Every attempt is recorded in ``emu.webhook_deliveries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import attrs

if TYPE_CHECKING:
    from ._clock import Clock

__all__ = ["WebhookDelivery", "WebhookDispatcher", "WebhookPolicy"]

logger = logging.getLogger("runcomfy_async.testing")

_FINAL: Final = frozenset({"succeeded", "failed", "cancelled"})


def _rate(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    """A probability: a number from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a probability from 0 to 1, got {value!r}")


@attrs.frozen(kw_only=True)
class WebhookPolicy:
    """How the emulator delivers webhook events (see the module docstring for each knob).

    Args:
        duplicate_rate: chance an event is POSTed twice.
        reorder_rate: chance an intermediate event is delivered after the request's next event.
        drop_rate: chance an event is never delivered.
        max_attempts: POSTs of one event before it is given up (the service keeps trying for
            24 hours; tests want it bounded).
        backoff: simulated seconds before the first retry, doubling after each failure
            (divided by the emulator's speed, like every simulated duration).
        timeout: real seconds the receiver has to answer before the attempt counts as failed.

    Raises:
        ValueError: a rate outside 0..1, fewer than one attempt, a negative backoff or a
            non-positive timeout.
    """

    duplicate_rate: float = attrs.field(default=0.0, validator=_rate)
    reorder_rate: float = attrs.field(default=0.0, validator=_rate)
    drop_rate: float = attrs.field(default=0.0, validator=_rate)
    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    backoff: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))


@attrs.frozen(kw_only=True)
class WebhookDelivery:
    """One POST attempt of one event.

    Attributes:
        url: where it was sent.
        payload: the JSON event.
        attempt: 1 for the first try of this copy, 2 for its first retry...
        status: the receiver's HTTP status; 0 when no answer came (refused, reset, timed out).
        duplicate: this is the extra copy a ``duplicate_rate`` draw asked for.
        at: ``time.monotonic()`` when the attempt ended.
    """

    url: str
    payload: Mapping[str, Any]
    attempt: int
    status: int
    duplicate: bool
    at: float

    @property
    def ok(self) -> bool:
        """The receiver acknowledged it (any 2xx)."""
        return 200 <= self.status < 300


class WebhookDispatcher:
    """Sends webhook events as background tasks; closed with the emulator's app.

    Attributes:
        policy: the policy of deployments without their own.
        deliveries: every attempt so far, in the order they ended.
    """

    def __init__(self, *, clock: Clock, seed: int, policy: WebhookPolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy or WebhookPolicy()
        self.deliveries: list[WebhookDelivery] = []
        self._policies: dict[str, WebhookPolicy] = {}
        self._rng = random.Random(seed)
        self._held: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: dict[asyncio.Task[None], Callable[[], bool]] = {}
        self._session: aiohttp.ClientSession | None = None

    def set_policy(self, policy: WebhookPolicy | None, deployment_id: str | None = None) -> None:
        """Use ``policy`` for one deployment, or (``deployment_id=None``) for every other one.

        ``None`` for a deployment drops its own policy (the default one applies again).
        """
        if deployment_id is None:
            self.policy = policy or WebhookPolicy()
        elif policy is None:
            self._policies.pop(deployment_id, None)
        else:
            self._policies[deployment_id] = policy

    def policy_for(self, deployment_id: str) -> WebhookPolicy:
        """The policy that applies to ``deployment_id``'s requests."""
        return self._policies.get(deployment_id, self.policy)

    def emit(self, url: str, payload: dict[str, Any], *, deployment_id: str) -> None:
        """Deliver one event of a request (its ``request_id`` and ``status`` are in ``payload``).

        Events of one request are emitted in order; the policy may hold an intermediate one back
        until the next, duplicate or drop it.
        """
        policy = self.policy_for(deployment_id)
        request_id = str(payload.get("request_id"))
        held = self._held.pop(request_id, [])
        final = payload.get("status") in _FINAL
        if not final and self._rng.random() < policy.reorder_rate:
            self._held[request_id] = [*held, (url, payload)]
            return
        for target, event in [(url, payload), *held]:
            self._send(target, event, policy)

    def _send(self, url: str, payload: dict[str, Any], policy: WebhookPolicy) -> None:
        """Start the delivery task(s) of one event, after the drop and duplicate draws."""
        if self._rng.random() < policy.drop_rate:
            logger.debug("webhook event %s dropped on purpose", payload.get("status"))
            return
        copies = [False, True] if self._rng.random() < policy.duplicate_rate else [False]
        for duplicate in copies:
            task = asyncio.create_task(self._deliver(url, payload, policy, duplicate=duplicate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, url: str, payload: dict[str, Any], policy: WebhookPolicy, *, duplicate: bool
    ) -> None:
        """POST until a 2xx answer or ``max_attempts`` failures, backing off in between."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        wait = self.clock.real(policy.backoff)
        for attempt in range(1, policy.max_attempts + 1):
            status = 0
            try:
                async with self._session.post(
                    url,
                    json=payload,
                    timeout=aiohttp.ClientTimeout(total=policy.timeout),
                    allow_redirects=False,
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.debug("webhook POST to %s failed: %s", _without_query(url), exc)
            self.deliveries.append(
                WebhookDelivery(
                    url=url,
                    payload=payload,
                    attempt=attempt,
                    status=status,
                    duplicate=duplicate,
                    at=time.monotonic(),
                )
            )
            if 200 <= status < 300:
                return
            if attempt < policy.max_attempts:
                await asyncio.sleep(wait)
                wait *= 2
        logger.warning(
            "webhook event %s to %s given up", payload.get("status"), _without_query(url)
        )

    def watch(self, watcher: Coroutine[Any, Any, None], finished: Callable[[], bool]) -> None:
        """Run the task that emits one request's events; ``finished`` says whether the request
        has reached its final state (so :meth:`idle` knows its last event is due)."""
        task = asyncio.create_task(watcher)
        self._watchers[task] = finished
        task.add_done_callback(lambda done: self._watchers.pop(done, None))

    async def idle(self) -> None:
        """Wait until every finished request's events are out (retries included).

        Requests still queued or running are not waited for.
        """
        while True:
            due = [task for task, finished in self._watchers.items() if finished()]
            pending = due + list(self._tasks)
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop every watcher and delivery still under way and close the HTTP session."""
        tasks = set(self._tasks) | set(self._watchers)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None


def _without_query(url: str) -> str:
    """The webhook URL for a log line: its query may hold the receiver's shared secret."""
    base, _, query = url.partition("?")
    return f"{base}?***" if query else base
