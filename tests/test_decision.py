"""The one retry decision, cell by cell: (kind of request, outcome) -> deliver/retry/pause/raise.

Pure: no event loop, no I/O. The policy's backoff ceiling for attempt 1 is 0.5 s and the jitter
sample is fixed at 0.5, so every delay below is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from runcomfy_async._protocol import (
    Action,
    Decision,
    Failure,
    Outcome,
    Retry,
    decide,
    may_have_reached,
)
from runcomfy_async._retry import RetryPolicy

POLICY = RetryPolicy(
    max_attempts=3, base_delay=0.5, max_delay=8.0, max_retry_after=60.0, total_timeout=100.0
)
NOW = 1_700_000_000.0
BACKOFF = 0.25  # 0.5 s ceiling for attempt 1, times the jitter 0.5
DATE_IN_30S = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)

SAFE, UNSENT, CLEANUP = Retry.SAFE, Retry.UNSENT, Retry.CLEANUP
DELIVER = Decision(action=Action.DELIVER)
RAISE = Decision(action=Action.RAISE)


def retry(delay: float) -> Decision:
    return Decision(action=Action.RETRY, delay=delay)


def pause(delay: float) -> Decision:
    return Decision(action=Action.PAUSE, delay=delay)


def status(code: int, retry_after: str | None = None) -> Outcome:
    return Outcome(status=code, headers={"Retry-After": retry_after} if retry_after else {})


#: (outcome name, outcome, {kind: decision on the first attempt})
TABLE = [
    ("200", status(200), {SAFE: DELIVER, UNSENT: DELIVER, CLEANUP: DELIVER}),
    ("204", status(204), {SAFE: DELIVER, UNSENT: DELIVER, CLEANUP: DELIVER}),
    ("400", status(400), {SAFE: RAISE, UNSENT: RAISE, CLEANUP: RAISE}),
    ("401", status(401), {SAFE: RAISE, UNSENT: RAISE, CLEANUP: RAISE}),
    ("403", status(403), {SAFE: RAISE, UNSENT: RAISE, CLEANUP: RAISE}),
    ("404", status(404), {SAFE: RAISE, UNSENT: RAISE, CLEANUP: RAISE}),
    ("409", status(409), {SAFE: RAISE, UNSENT: RAISE, CLEANUP: RAISE}),
    ("429 bare", status(429), {SAFE: pause(1.125), UNSENT: pause(1.125), CLEANUP: pause(1.125)}),
    ("429 2s", status(429, "2"), {SAFE: pause(2.125), UNSENT: pause(2.125), CLEANUP: pause(2.125)}),
    (
        "429 date",
        status(429, DATE_IN_30S),
        {SAFE: pause(30.125), UNSENT: pause(30.125), CLEANUP: pause(30.125)},
    ),
    ("429 past cap", status(429, "3600"), {SAFE: RAISE, UNSENT: RAISE, CLEANUP: pause(60.125)}),
    (
        "429 junk",
        status(429, "soon"),
        {SAFE: pause(1.125), UNSENT: pause(1.125), CLEANUP: pause(1.125)},
    ),
    ("500", status(500), {SAFE: retry(BACKOFF), UNSENT: RAISE, CLEANUP: retry(BACKOFF)}),
    ("502", status(502), {SAFE: retry(BACKOFF), UNSENT: RAISE, CLEANUP: retry(BACKOFF)}),
    ("503 bare", status(503), {SAFE: retry(BACKOFF), UNSENT: RAISE, CLEANUP: retry(BACKOFF)}),
    ("503 5s", status(503, "5"), {SAFE: retry(5.125), UNSENT: RAISE, CLEANUP: retry(5.125)}),
    (
        "503 date",
        status(503, DATE_IN_30S),
        {SAFE: retry(30.125), UNSENT: RAISE, CLEANUP: retry(30.125)},
    ),
    ("503 past cap", status(503, "3600"), {SAFE: RAISE, UNSENT: RAISE, CLEANUP: retry(60.125)}),
    ("504", status(504), {SAFE: retry(BACKOFF), UNSENT: RAISE, CLEANUP: retry(BACKOFF)}),
    (
        "never sent",
        Outcome(failure=Failure.UNSENT),
        {SAFE: retry(BACKOFF), UNSENT: retry(BACKOFF), CLEANUP: retry(BACKOFF)},
    ),
    (
        "lost after sending",
        Outcome(failure=Failure.SENT),
        {SAFE: retry(BACKOFF), UNSENT: RAISE, CLEANUP: retry(BACKOFF)},
    ),
    (
        "2xx unreadable",
        Outcome(status=200, failure=Failure.UNREADABLE),
        {SAFE: retry(BACKOFF), UNSENT: RAISE, CLEANUP: retry(BACKOFF)},
    ),
]
CELLS = [
    pytest.param(kind, outcome, expected, id=f"{name}-{kind.value}")
    for name, outcome, row in TABLE
    for kind, expected in row.items()
]


@pytest.mark.parametrize(("kind", "outcome", "expected"), CELLS)
def test_first_attempt(kind: Retry, outcome: Outcome, expected: Decision) -> None:
    """Each (kind, outcome) cell decides as the table says on a first attempt."""
    assert call(kind, outcome) == expected


def call(
    kind: Retry,
    outcome: Outcome,
    *,
    attempt: int = 1,
    reached: bool = False,
    elapsed: float = 0.0,
    policy: RetryPolicy = POLICY,
    jitter: float = 0.5,
) -> Decision:
    """``decide`` with this table's clock and defaults."""
    return decide(
        kind,
        outcome,
        attempt=attempt,
        reached=reached,
        elapsed=elapsed,
        now=NOW,
        policy=policy,
        jitter=jitter,
    )


@pytest.mark.parametrize(
    ("kind", "reached", "expected"),
    [(SAFE, True, RAISE), (UNSENT, True, RAISE), (CLEANUP, True, DELIVER), (CLEANUP, False, RAISE)],
)
def test_404_on_a_repeat(kind: Retry, reached: bool, expected: Decision) -> None:
    """A 404 after a try that may have reached the server means a cleanup's earlier try did it;
    after tries that provably did not (never sent, 429) it is an error, as for other kinds."""
    assert call(kind, status(404), attempt=2, reached=reached) == expected


@pytest.mark.parametrize("kind", [SAFE, UNSENT, CLEANUP])
def test_attempts_spent(kind: Retry) -> None:
    """The last allowed attempt raises, whatever the kind."""
    outcome = Outcome(failure=Failure.UNSENT)
    assert call(kind, outcome, attempt=POLICY.max_attempts, elapsed=1.0) == RAISE


@pytest.mark.parametrize(
    ("kind", "elapsed", "expected"),
    [
        (SAFE, 99.9, RAISE),
        (SAFE, 99.0, retry(BACKOFF)),
        (UNSENT, 99.9, RAISE),
        (CLEANUP, 99.0, retry(BACKOFF)),
        (CLEANUP, 99.9, RAISE),
    ],
)
def test_time_budget(kind: Retry, elapsed: float, expected: Decision) -> None:
    """A wait that would end past the total budget raises."""
    assert call(kind, Outcome(failure=Failure.UNSENT), elapsed=elapsed) == expected


def test_a_server_pause_counts_against_the_budget() -> None:
    """A Retry-After that would end past the total budget raises instead of waiting."""
    assert call(SAFE, status(429, "10"), elapsed=95.0, jitter=0.0) == RAISE


def test_no_budget_means_attempts_only() -> None:
    """With no total timeout only the attempt count bounds retries."""
    policy = RetryPolicy(max_attempts=3, total_timeout=None)
    got = call(SAFE, status(500), attempt=2, reached=True, elapsed=1e9, policy=policy, jitter=0.0)
    assert got == retry(0.0)


def test_the_decision_takes_no_clock_default() -> None:
    """``now`` is required: a date-form Retry-After is never measured from the epoch."""
    with pytest.raises(TypeError):
        decide(  # type: ignore[call-arg]
            SAFE,
            status(429, DATE_IN_30S),
            attempt=1,
            reached=False,
            elapsed=0.0,
            policy=POLICY,
            jitter=0.5,
        )


@pytest.mark.parametrize(
    ("outcome", "reached"),
    [
        (status(200), True),
        (status(500), True),
        (status(404), True),
        (status(429), False),
        (Outcome(failure=Failure.UNSENT), False),
        (Outcome(failure=Failure.SENT), True),
        (Outcome(status=200, failure=Failure.UNREADABLE), True),
    ],
)
def test_which_outcomes_may_have_reached_the_server(outcome: Outcome, reached: bool) -> None:
    """Only a connection that never opened and a 429 prove the server did not act."""
    assert may_have_reached(outcome) is reached
