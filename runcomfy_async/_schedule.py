"""Who gets the next rate-limit token: answers first, without starving new work.

Under one budget (1 request/s per account) a burst of ``rc.models.run`` calls competes for
tokens: each run needs a submit, polls until its status is final, and a result fetch. Serving
every submit before any poll (the order of priority classes alone) makes everybody wait until
the last submit has gone out. This module orders the waiters of a limiter so that the calls that
finish somebody's answer go first, the way shortest-remaining-work-first scheduling does:

1. ``Priority.CLEANUP`` (calls that stop billing);
2. ``Priority.FOLLOW_UP`` (the result fetch of a finished run: one call from an answer), oldest
   request first;
3. *due polls*: polls whose request is expected to have finished by now (its submit time plus
   the shortest run time recently seen for the same model), oldest request first;
4. ``Priority.USER`` calls (submits and every call the application makes itself), in order;
5. polls not due yet (``Priority.BACKGROUND``), in order.

Nothing starves: while user calls wait, at most :data:`ANSWER_SHARE` tokens in a row go to
classes 2 and 3 before the oldest user call gets one, so new work keeps at least a third of the
budget even when every poll is due. Before a model's run time is known, the oldest unfinished
request of that model polls as due (it probes the run time for the others).

A poll tells the limiter what it waits for through a :class:`Claim` set in a context variable
around the call (:func:`claiming`), so the :class:`~runcomfy_async.Limiter` protocol stays
``acquire(priority)``: a limiter of the application's own simply sees the priority. A claim's
class is worked out when a token is handed out, not when the call queued, so a poll that waited
behind submits becomes due in the queue the moment its run is expected to be over.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Final, Literal

__all__ = [
    "ANSWER_SHARE",
    "Claim",
    "Order",
    "Priority",
    "RunTimes",
    "WaitQueue",
    "claiming",
    "current_claim",
]


class Priority(enum.IntEnum):
    """Who is asking for a token.

    The default (latency) order serves CLEANUP, then FOLLOW_UP and polls whose run should be
    over, then USER, then the other BACKGROUND polls; the arrival order serves lower values first.
    """

    #: Calls that stop billing (a machine's stop, cancelling an abandoned request): ahead of
    #: every queued caller, after any server-set pause.
    CLEANUP = -1
    USER = 0
    #: The last call of a wait that already saw the final state (e.g. fetching a finished model
    #: request's result): it completes somebody's ``await``, so it goes before fresh polls.
    FOLLOW_UP = 1
    BACKGROUND = 2


#: Tokens in a row that may go to follow-ups and due polls while a user call waits.
ANSWER_SHARE: Final = 2
#: While user calls wait, a probe (a poll of a model whose run time is unknown) takes at most
#: one token in PROBE_GAP + 1: it is a guess, and each miss delays every queued call.
PROBE_GAP: Final = 1
#: Run times remembered per model; the shortest of them predicts the next run.
_WINDOW: Final = 8

#: ``"latency"``: the order above. ``"arrival"``: priority classes, then arrival order (no
#: claims, no share): the order before latency-aware scheduling, kept for comparison.
Order = Literal["latency", "arrival"]

_CLAIM: contextvars.ContextVar[Claim | None] = contextvars.ContextVar(
    "runcomfy_claim", default=None
)


class RunTimes:
    """What one client has seen of how long runs take, per model, and which runs are open."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, deque[float]] = {}
        self._open: dict[Hashable, list[Claim]] = {}
        # Per model, the longest a run was seen unfinished: a lower bound on its run time.
        self._floor: dict[Hashable, float] = {}
        # Set when a model's run time is learned: wakes its sleeping pollers (see Claim.nap).
        self._learned: dict[Hashable, asyncio.Event] = {}

    def expected(self, key: Hashable) -> float | None:
        """Seconds a run of ``key`` is expected to take (the shortest seen lately), or None."""
        seen = self._seen.get(key)
        return min(seen) if seen else None

    def open(self, key: Hashable, since: float) -> Claim:
        """Start tracking a run of ``key`` submitted at ``since`` (event-loop time)."""
        claim = Claim(self, key, since)
        runs = self._open.setdefault(key, [])
        runs.append(claim)
        runs.sort(key=lambda c: c.since)
        return claim

    def close(self, claim: Claim, ran: float | None = None) -> None:
        """Stop tracking ``claim``; ``ran`` is how long its run took, when known."""
        runs = self._open.get(claim.key)
        if runs is not None and claim in runs:
            runs.remove(claim)
            if not runs:
                del self._open[claim.key]
        if ran is not None and ran >= 0:
            self._seen.setdefault(claim.key, deque(maxlen=_WINDOW)).append(ran)
            self._floor.pop(claim.key, None)
            learned = self._learned.pop(claim.key, None)
            if learned is not None:
                learned.set()

    def _unknown_due(self, claim: Claim, now: float) -> bool:
        """Due before the run time is known: the oldest open run probes it, and so does every
        run at least as old as the longest any run of the model was seen unfinished."""
        runs = self._open.get(claim.key)
        if runs is not None and runs[0] is claim:
            return True
        floor = self._floor.get(claim.key)
        return floor is not None and now - claim.since >= floor


class Claim:
    """What a poll waits for: a run submitted at ``since`` (event-loop time) of model ``key``."""

    __slots__ = ("_book", "key", "since")

    def __init__(self, book: RunTimes, key: Hashable, since: float) -> None:
        self._book = book
        self.key = key
        self.since = since

    def __repr__(self) -> str:
        return f"Claim(key={self.key!r}, since={self.since:.3f})"

    def due_at(self) -> float | None:
        """When the run is expected to be over; None while its model's run time is unknown."""
        expected = self._book.expected(self.key)
        return None if expected is None else self.since + expected

    def urgency(self, now: float) -> int:
        """2: the run should be over by ``now``; 1: worth a probe (its model's run time is
        unknown); 0: not yet."""
        at = self.due_at()
        if at is None:
            return 1 if self._book._unknown_due(self, now) else 0
        return 2 if now >= at else 0

    async def nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less: until the run should be over, learning when that is
        from other runs of the model that finish meanwhile."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + seconds
        overdue = self.due_at()
        overdue = overdue is not None and overdue <= start  # then a full back-off step
        while True:
            now = loop.time()
            at = self.due_at()
            if at is not None and at <= now and not overdue:
                return  # the run's end came, or a finished run showed it has passed
            wake = end if at is None or at <= now else min(end, at)
            if wake <= now:
                return
            learned = self._book._learned.setdefault(self.key, asyncio.Event())
            try:
                await asyncio.wait_for(learned.wait(), wake - now)
            except TimeoutError:
                return

    def unfinished(self, now: float) -> None:
        """A poll at ``now`` saw the run still going (raises the model's run-time floor)."""
        floors = self._book._floor
        floors[self.key] = max(floors.get(self.key, 0.0), now - self.since)


def current_claim() -> Claim | None:
    """The claim of the call being made in this task, if a poller set one."""
    return _CLAIM.get()


@contextlib.contextmanager
def claiming(claim: Claim | None) -> Iterator[None]:
    """Let the limiter see ``claim`` for the calls made inside the block (in this task)."""
    token = _CLAIM.set(claim)
    try:
        yield
    finally:
        _CLAIM.reset(token)


class _Waiter:
    """One queued caller."""

    __slots__ = ("claim", "fut", "priority", "seq")

    def __init__(
        self, priority: Priority, seq: int, fut: asyncio.Future[None], claim: Claim | None
    ) -> None:
        self.priority = priority
        self.seq = seq
        self.fut = fut
        self.claim = claim

    def __lt__(self, other: _Waiter) -> bool:
        """Heap order: priority, then the claimed run's age (oldest first), then arrival."""
        return self._rank() < other._rank()

    def _rank(self) -> tuple[int, float, int]:
        since = self.claim.since if self.claim is not None else -math.inf
        return (self.priority, since, self.seq)


# Classes of the latency order, lower first; the answer classes may go ahead of user calls.
_CLEANUP, _FOLLOW_UP, _DUE, _PROBE, _USER, _LATER = range(6)
_ANSWERS: Final = (_FOLLOW_UP, _DUE, _PROBE)


class WaitQueue:
    """The callers waiting for a token, and the choice of who gets the next one.

    Cleanup calls, user calls and unclaimed polls wait in arrival order, result fetches by the
    age of their run; only claimed polls, whose class changes with time, are looked at one by
    one when a token is handed out (a few per run in flight).

    Args:
        order: ``"latency"`` (answers first, see the module) or ``"arrival"`` (priority, then
            arrival order).
    """

    def __init__(self, order: Order = "latency") -> None:
        if order not in ("latency", "arrival"):
            raise ValueError(f"order must be 'latency' or 'arrival', got {order!r}")
        self.order: Order = order
        self._seq = itertools.count()
        self._heap: list[_Waiter] = []  # arrival order: everybody; latency: result fetches
        self._cleanup: deque[_Waiter] = deque()
        self._user: deque[_Waiter] = deque()
        self._later: deque[_Waiter] = deque()  # polls without a claim
        self._claimed: list[_Waiter] = []  # polls with a claim
        self._streak = 0  # tokens in a row to answer classes while a user call waited
        self._since_probe = PROBE_GAP  # tokens handed out since the last probe

    def __len__(self) -> int:
        """Queued callers still waiting (cancelled ones are dropped lazily)."""
        everyone = itertools.chain(
            self._heap, self._cleanup, self._user, self._later, self._claimed
        )
        return sum(1 for w in everyone if not w.fut.done())

    def __bool__(self) -> bool:
        """Whether anyone still waits (cheap: drops cancelled waiters at the heads)."""
        self._trim()
        return bool(
            self._heap or self._cleanup or self._user or self._later or self._claimed
        )

    def push(self, priority: Priority, fut: asyncio.Future[None]) -> None:
        """Queue ``fut`` at ``priority``, with the claim of the current task if any."""
        if self.order == "arrival":
            heapq.heappush(self._heap, _Waiter(priority, next(self._seq), fut, None))
            return
        waiter = _Waiter(priority, next(self._seq), fut, current_claim())
        if priority <= Priority.CLEANUP:
            self._cleanup.append(waiter)
        elif priority == Priority.USER:
            self._user.append(waiter)
        elif priority == Priority.FOLLOW_UP:
            heapq.heappush(self._heap, waiter)
        elif waiter.claim is not None:
            self._claimed.append(waiter)
        else:
            self._later.append(waiter)

    def pop(self, now: float) -> asyncio.Future[None] | None:
        """Take the best waiter at ``now`` (event-loop time) off the queue; None if empty."""
        if not self:
            return None
        if self.order == "arrival":
            return heapq.heappop(self._heap).fut
        return self._pick(now).fut

    def _trim(self) -> None:
        """Drop cancelled waiters from the heads of the queues and from the claimed polls."""
        for queue in (self._cleanup, self._user, self._later):
            while queue and queue[0].fut.done():
                queue.popleft()
        while self._heap and self._heap[0].fut.done():
            heapq.heappop(self._heap)
        if any(w.fut.done() for w in self._claimed):
            self._claimed = [w for w in self._claimed if not w.fut.done()]

    def _pick(self, now: float) -> _Waiter:
        """The latency order with the user share and probe ration (see the module)."""
        if self._cleanup:
            return self._cleanup.popleft()
        answer: tuple[int, float, int] | None = None
        chosen: _Waiter | None = None
        if self._heap:
            chosen = self._heap[0]
            answer = (_FOLLOW_UP, *chosen._rank()[1:])
        later: _Waiter | None = self._later[0] if self._later else None
        for waiter in self._claimed:
            assert waiter.claim is not None
            urgency = waiter.claim.urgency(now)
            if urgency:
                rank = (_DUE if urgency == 2 else _PROBE, waiter.claim.since, waiter.seq)
                if answer is None or rank < answer:
                    answer, chosen = rank, waiter
            elif later is None or waiter.seq < later.seq:
                later = waiter
        if answer is not None and self._user:
            rationed = answer[0] == _PROBE and self._since_probe < PROBE_GAP
            if rationed or self._streak >= ANSWER_SHARE:
                answer = None  # this token goes to the oldest user call
        if answer is not None:
            assert chosen is not None
            if self._user:
                self._streak += 1
            self._since_probe = 0 if answer[0] == _PROBE else self._since_probe + 1
            self._remove(chosen)
            return chosen
        self._since_probe += 1
        if self._user:
            self._streak = 0
            return self._user.popleft()
        assert later is not None
        self._remove(later)
        return later

    def _remove(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of whichever queue holds it."""
        if self._heap and self._heap[0] is waiter:
            heapq.heappop(self._heap)
        elif self._later and self._later[0] is waiter:
            self._later.popleft()
        else:
            self._claimed.remove(waiter)

    def take(self, match: Callable[[Priority], bool]) -> list[asyncio.Future[None]]:
        """Remove and return the waiting futures whose priority ``match``es, in arrival order."""
        taken: list[_Waiter] = []
        for name in ("_heap", "_cleanup", "_user", "_later", "_claimed"):
            queue = getattr(self, name)
            keep = [w for w in queue if not w.fut.done() and not match(w.priority)]
            taken += [w for w in queue if not w.fut.done() and match(w.priority)]
            if name == "_heap":
                heapq.heapify(keep)
                setattr(self, name, keep)
            else:
                setattr(self, name, deque(keep) if isinstance(queue, deque) else keep)
        return [w.fut for w in sorted(taken, key=lambda w: w.seq)]

    def drain(self) -> list[asyncio.Future[None]]:
        """Remove and return every waiting future."""
        return self.take(lambda _: True)
