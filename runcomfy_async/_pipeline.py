"""The one retry loop: every HTTP exchange (API, storage, downloads, ComfyUI) runs through it.

Per attempt: take a rate-limit token (API calls only), send through the transport, turn the
answer into a value or an error, and ask :func:`~runcomfy_async._protocol.decide` what next. The
loop only carries decisions out; what may be retried, for how long and after which pause is the
decision function's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import attrs

from . import errors
from ._limiter import Limiter, Priority
from ._protocol import (
    Action,
    Failure,
    Outcome,
    Retry,
    decide,
    decode_response,
    error_from_response,
    may_have_reached,
    redact_url,
)
from ._retry import RetryPolicy
from ._transport import Answer, Consume, Exchange, Transport

__all__ = [
    "CallCounter",
    "CallTrace",
    "Pipeline",
    "counting_calls",
    "json_answer",
    "storage_answer",
]

logger = logging.getLogger("runcomfy_async")

R = TypeVar("R")
T = TypeVar("T")

#: Turns an answer into the caller's value, raising the APIError an error answer stands for.
Interpret = Callable[[Answer[R]], T]
#: Told of each retry: (attempt, seconds until the next, the failure).
OnRetry = Callable[[int, float, errors.RunComfyError], Awaitable[None] | None]


@attrs.define
class CallCounter:
    """Rate-limited API calls made by one operation (and the tasks it started)."""

    calls: int = 0


_OPERATION: contextvars.ContextVar[CallCounter | None] = contextvars.ContextVar(
    "runcomfy_operation", default=None
)


@contextlib.contextmanager
def counting_calls() -> Iterator[CallCounter]:
    """Count the API calls made inside the block, in this task and the tasks it starts.

    A context variable, not a client-wide difference: concurrent work on the same client does
    not inflate one operation's figure.
    """
    counter = CallCounter()
    token = _OPERATION.set(counter)
    try:
        yield counter
    finally:
        _OPERATION.reset(token)


@attrs.define
class CallTrace:
    """Whether a call may have reached the server yet (a cancelled launch needs to know).

    True while an attempt is in flight and after any attempt the server may have acted on; an
    attempt that provably never reached it (the connection never opened, a 429) leaves it as it
    was.
    """

    reached: bool = False


def json_answer(answer: Answer[Any], *, method: str, url: str) -> Any:
    """The decoded JSON of an API answer, or the APIError it stands for."""
    return decode_response(
        answer.status, answer.headers, answer.body, method=method, url=url, now=time.time()
    )


def storage_answer(answer: Answer[Any], *, method: str, url: str) -> Any:
    """The consumer's value of an object-storage answer, or the APIError an error status is."""
    if answer.status >= 400:
        raise error_from_response(
            answer.status, answer.headers, answer.body, method=method, url=url, now=time.time()
        )
    return answer.value


class Pipeline:
    """Carries out the retry decisions for one transport (and, for API calls, one limiter).

    Args:
        transport: where exchanges are sent.
        limiter: the rate limiter API calls take tokens from (None: no call is rate-limited).
        policy: the retry bounds.
        guard: called before every send; raises when the owner can no longer send.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        limiter: Limiter | None,
        policy: RetryPolicy,
        guard: Callable[[], object] | None = None,
    ) -> None:
        self.transport = transport
        self.limiter = limiter
        self.policy = policy
        self._guard = guard
        self._rng = random.Random()
        #: Rate-limited calls sent, over the pipeline's life.
        self.api_calls = 0

    async def call(
        self,
        request: Exchange | Callable[[], Awaitable[Exchange]],
        interpret: Interpret[R, T],
        *,
        kind: Retry,
        priority: Priority | None,
        consume: Consume[R] | None = None,
        trace: CallTrace | None = None,
        on_retry: OnRetry | None = None,
        policy: RetryPolicy | None = None,
    ) -> T | None:
        """Send ``request`` until the decision function says deliver or raise.

        Args:
            request: the exchange, or a coroutine function that builds one per attempt (a
                download's ``Range`` depends on what is on disk).
            interpret: the value of an answer, or raises the APIError it stands for.
            kind: what kind of request it is (decides what may be repeated).
            priority: the rate-limit priority; None for calls that take no token (storage).
            consume: reads a success while the connection is open (streamed downloads).
            trace: records whether the request may have reached the server.
            on_retry: told of each retry before its wait.
            policy: bounds for this call instead of the pipeline's.

        Returns:
            The interpreted value; None for a cleanup whose repeat found it already done.

        Raises:
            APIError: an error answer, after retries where allowed.
            TransportError: no answer, after retries where allowed; ``OutcomeUnknownError`` for
                an ``UNSENT`` request that may have run.
        """
        policy = policy or self.policy
        attempt = 0
        spent = 0.0  # on the wire and in decided waits; queueing for a token does not count
        reached = False
        while True:
            attempt += 1
            if priority is not None and self.limiter is not None:
                await self.limiter.acquire(priority)
            if self._guard is not None:
                self._guard()  # closed while waiting for a token: say so
            exchange = request if isinstance(request, Exchange) else await request()
            if priority is not None:
                self.api_calls += 1
                counter = _OPERATION.get()
                if counter is not None:
                    counter.calls += 1
            if trace is not None:
                trace.reached = True  # in flight: it may arrive
            sent_at = time.monotonic()
            failure: errors.RunComfyError
            try:
                answer = await self.transport.exchange(exchange, consume)
            except errors.UnsentTransportError as exc:
                failure, outcome = exc, Outcome(failure=Failure.UNSENT)
            except errors.TransportError as exc:
                failure, outcome = exc, Outcome(failure=Failure.SENT)
            else:
                try:
                    value = interpret(answer)
                except errors.UnexpectedResponseError as exc:
                    unreadable = answer.status < 400
                    failure = exc
                    outcome = Outcome(
                        status=answer.status,
                        headers=answer.headers,
                        failure=Failure.UNREADABLE if unreadable else None,
                    )
                except errors.APIError as exc:
                    failure, outcome = exc, Outcome(status=exc.status, headers=answer.headers)
                else:
                    if logger.isEnabledFor(logging.DEBUG):
                        _log(exchange, answer.status, attempt, None, None)
                    return value
            spent += time.monotonic() - sent_at
            decision = decide(
                kind,
                outcome,
                attempt=attempt,
                reached=reached,
                elapsed=spent,
                now=time.time(),
                policy=policy,
                jitter=self._rng.random(),
            )
            reached = reached or may_have_reached(outcome)
            if trace is not None:
                trace.reached = reached
            if logger.isEnabledFor(logging.DEBUG):
                _log(exchange, outcome.status, attempt, failure, decision.delay)
            if decision.action is Action.DELIVER:
                return None  # a cleanup's repeat found it done (404): an earlier try did it
            if decision.action is Action.RAISE:
                if kind is Retry.UNSENT and outcome.failure in (Failure.SENT, Failure.UNREADABLE):
                    unknown = _outcome_unknown(exchange, failure)
                    unknown.__cause__ = failure
                    failure = unknown
                if attempt > 1:
                    failure.add_note(f"gave up after {attempt} attempts")
                raise failure
            spent += decision.delay
            if on_retry is not None:
                notified = on_retry(attempt, decision.delay, failure)
                if notified is not None:
                    await notified
            if (
                decision.action is Action.PAUSE
                and priority is not None
                and self.limiter is not None
            ):
                # The whole bucket waits, not just this caller; the next acquire waits it out.
                await self.limiter.pause(decision.delay)
            else:
                await asyncio.sleep(decision.delay)


def _outcome_unknown(
    exchange: Exchange, failure: errors.RunComfyError
) -> errors.OutcomeUnknownError:
    """The error for a create that was sent but whose answer was lost."""
    url = redact_url(exchange.url)
    return errors.OutcomeUnknownError(
        f"{exchange.method} {url} was sent but its answer was lost ({failure.problem}); the "
        "server may "
        "have acted on it (queued, started or billed something), so it was not repeated",
        method=exchange.method,
        url=url,
    )


def _log(
    exchange: Exchange,
    status: int,
    attempt: int,
    failure: errors.RunComfyError | None,
    wait: float | None,
) -> None:
    """One debug line per attempt (URL secrets masked)."""
    safe_url = redact_url(exchange.url)
    what = status or (type(failure).__name__ if failure is not None else "?")
    extra = {"method": exchange.method, "url": safe_url, "status": status, "attempt": attempt}
    if failure is None:
        logger.debug("%s %s -> %s (attempt %d)", exchange.method, safe_url, what, attempt,
                     extra=extra)
        return
    logger.debug(
        "%s %s -> %s (attempt %d): %s; %s",
        exchange.method,
        safe_url,
        what,
        attempt,
        failure,
        f"next step in {wait:.2f}s" if wait else "no retry",
        extra={**extra, "wait": wait},
    )
