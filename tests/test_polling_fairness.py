"""Many awaited model requests on one client: fair polling within the rate budget (issue 5, item 4).

The mechanism under test is shared by every handle: ``poll_until`` backs each poller off, and the
limiter serves ``Priority.USER`` before ``Priority.BACKGROUND`` (FIFO within each), so hundreds of
pollers take turns and a user's own call gets one of the next tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import Any

import pytest

from runcomfy_async import PollPolicy, WaitTimeoutError
from runcomfy_async.testing import Emulator

SLOW = "acme/slow"


def _records_between(log: list[Any], issued: float, path: str) -> tuple[int, float]:
    """API requests that reached the server after ``issued`` and before ``path``, and its delay."""
    index = next(i for i, r in enumerate(log) if r.path == path)
    first_after = next(i for i, r in enumerate(log) if r.at >= issued)
    return index - first_after, log[index].at - issued


@pytest.mark.asyncio
async def test_200_concurrent_runs_finish_without_429_and_a_user_submit_overtakes() -> None:
    """200 awaited runs all finish with no 429; a submit made mid-way is sent within 3 tokens.

    The rate is 40/s on both sides instead of the account's 1/s: the schedule is the same
    (limiter order and per-poller backoff do not depend on the rate), but ~600 calls at 1/s
    would take ten minutes.
    """
    n, rate = 200, 40.0
    # The emulator tolerates 0.3 s of scheduling jitter (both share one loaded event loop,
    # where a delay bunches requests); the client sends evenly.
    async with Emulator(rate_limit=rate, burst=12, speed=1000.0) as emu, emu.client(
        rate=rate, burst=1
    ) as rc:
        store = emu.state.model_requests
        store.set_workers(8)
        emu.set_model_behavior("acme/model", duration=300.0)  # 0.3 s real: 7.5 s of queue
        emu.add_model("acme/probe")
        started = time.monotonic()
        runs = [asyncio.ensure_future(rc.models.run("acme/model", {"i": i})) for i in range(n)]
        for _ in range(2000):  # until every submit is in and polls are under way
            log = emu.log
            if sum(r.method == "POST" for r in log) >= n and len(log) >= n + 60:
                break
            await asyncio.sleep(0.02)
        issued = time.monotonic()
        probe = await rc.models.submit("acme/probe", {"prompt": "mine"})
        outputs = await asyncio.gather(*runs)
        elapsed = time.monotonic() - started
        await probe.cancel()
    log = emu.log
    between, delay = _records_between(log, issued, "/v1/models/acme/probe")
    assert between <= 3, f"{between} requests went before the user's submit"
    assert delay < 3 / rate + 0.5
    assert len(outputs) == n
    assert all(set(o) == {"image"} for o in outputs)
    statuses = [r.status for r in log if r.api == "model"]
    assert 429 not in statuses
    assert set(statuses) == {200, 202}
    # No starvation: every request's result was fetched within two rounds of the poll queue
    # (status poll + result fetch, each behind at most n others) plus one backoff interval.
    result_at = {r.path.split("/")[3]: r.at for r in log if r.path.endswith("/result")}
    wall_offset = time.time() - time.monotonic()
    bound = 2 * n / rate + 10.0 + 2.0
    late = [rid for rid, at in result_at.items() if at + wall_offset - store.get(rid).end > bound]
    assert late == []
    assert elapsed < 60


@pytest.mark.asyncio
async def test_user_call_overtakes_queued_polls_at_the_account_rate() -> None:
    """At the real 1 req/s, with 30 pollers queued, a user's submit goes out with one of the next
    two tokens: none of the polls is due, but the oldest run of a model whose run time is not
    known yet may probe first (at most every other token while user calls wait)."""
    async with Emulator(rate_limit=1.0, speed=1.0) as emu, emu.client() as rc:
        store = emu.state.model_requests
        emu.set_model_behavior(SLOW, duration=3600.0)
        ids = [store.submit(emu.state.new_id(), SLOW, {}).id for _ in range(30)]
        waits = [asyncio.ensure_future(rc.models.get(i).wait()) for i in ids]
        await asyncio.sleep(0.3)  # the burst went to two polls; 28 wait for tokens
        assert rc.limiter.waiting >= 25  # type: ignore[attr-defined]
        emu.add_model("acme/probe")
        issued = time.monotonic()
        await rc.models.submit("acme/probe", {})
        between, delay = _records_between(emu.log, issued, "/v1/models/acme/probe")
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    assert between <= 1
    assert delay < 2.5
    assert 429 not in {r.status for r in emu.log}


@pytest.mark.asyncio
async def test_deadline_holds_while_a_poll_waits_for_its_token() -> None:
    """A wait's timeout fires on time even when its poll is queued behind many others."""
    async with Emulator(rate_limit=None, speed=1.0) as emu, emu.client(rate=5.0, burst=1) as rc:
        store = emu.state.model_requests
        emu.set_model_behavior(SLOW, duration=3600.0)
        ids = [store.submit(emu.state.new_id(), SLOW, {}).id for _ in range(40)]
        waits = [asyncio.ensure_future(rc.models.get(i).wait()) for i in ids[1:]]
        await asyncio.sleep(0.1)  # 39 polls queue for tokens: ~8 s of work at 5/s
        start = time.monotonic()
        with pytest.raises(WaitTimeoutError):
            await rc.models.get(ids[0]).wait(timeout=0.5)
        elapsed = time.monotonic() - start
        polled_first = any(r.path == f"/v1/requests/{ids[0]}/status" for r in emu.log)
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    assert elapsed < 1.0
    assert not polled_first  # it never got a token: the deadline cut the queued poll


@pytest.mark.asyncio
async def test_each_poller_backs_off_to_its_cap() -> None:
    """Polls of one unfinished request get further apart, up to the policy's cap."""
    policy = PollPolicy(initial=0.05, factor=2.0, max_interval=0.4, jitter=0.0)
    async with Emulator(rate_limit=None, speed=1.0) as emu, emu.client(rate=100.0) as rc:
        emu.set_model_behavior(SLOW, duration=3600.0)
        req = await rc.models.submit(SLOW, {})
        with pytest.raises(WaitTimeoutError):
            await req.wait(timeout=1.6, poll=policy)
    times = [r.at for r in emu.log if r.path.endswith("/status")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 4
    assert gaps[0] < 0.1
    # Never earlier than the schedule (0.05, 0.1, 0.2, then the 0.4 cap); a wake-up made late by
    # a busy machine stretches one gap, not the schedule, so the cap is checked on the median.
    schedule = [min(0.4, 0.05 * 2**i) for i in range(len(gaps))]
    assert all(gap >= 0.9 * want for gap, want in zip(gaps, schedule, strict=True))
    assert 0.35 < statistics.median(gaps[3:]) < 0.5
