"""The RunComfy session manager and its request pipeline, over real sockets to the emulator."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import pytest

from runcomfy_async import (
    AuthenticationError,
    ClientClosedError,
    ClientState,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PollPolicy,
    RateLimitError,
    RetryPolicy,
    RunComfy,
    ServerError,
    TokenBucket,
    TransportError,
    WrongEventLoopError,
)
from runcomfy_async._protocol import API, RequestSpec, Retry
from runcomfy_async._transport import map_error
from runcomfy_async.errors import UnsentTransportError
from runcomfy_async.testing import Emulator, FaultKind

LIST = RequestSpec(api=API.TRAINER, method="GET", path="/prod/v1/trainers/datasets")
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.05, max_delay=0.2)


def _api_records(emu: Emulator) -> list[Any]:
    return [r for r in emu.log if r.api == "trainer"]


@pytest.mark.asyncio
async def test_rate_is_kept_without_429() -> None:
    """N calls at 1/s take at least (N - burst) s and the emulator saw no 429."""
    async with Emulator(rate_limit=1.0, burst=3) as emu, emu.client(rate=1.0, burst=2) as rc:
        start = time.monotonic()
        await asyncio.gather(*(rc.request(LIST) for _ in range(5)))
        elapsed = time.monotonic() - start
    assert elapsed >= (5 - 2) - 0.05
    statuses = [r.status for r in _api_records(emu)]
    assert statuses == [200] * 5


@pytest.mark.asyncio
async def test_server_429_pauses_every_caller_then_succeeds() -> None:
    """A 429 with Retry-After pauses the whole bucket; every call then succeeds."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=5.0, burst=1) as rc:
        # One call first, so the connection is open: a first call slowed by its connect on a
        # busy machine could still be on its way when the next token is due, and that call
        # (sent before any 429 existed) would then arrive just after the 429.
        await rc.request(LIST)
        emu.inject("429", api="trainer", count=1, retry_after=1.0)
        start = time.monotonic()
        results = await asyncio.gather(*(rc.request(LIST) for _ in range(4)))
        elapsed = time.monotonic() - start
    assert all(isinstance(r, dict) for r in results)
    records = _api_records(emu)
    first_429 = next(r for r in records if r.status == 429)
    later = [r for r in records if r.at > first_429.at and r.status == 200]
    # The callers that were still waiting when the 429 arrived were held for its Retry-After.
    assert len(later) >= 1
    assert min(r.at for r in later) - first_429.at >= 0.95
    assert elapsed >= 0.95


@pytest.mark.parametrize("kind", ["500", "502", "503", "504", "reset", "html"])
@pytest.mark.asyncio
async def test_transient_failures_are_retried(kind: FaultKind) -> None:
    """5xx answers, HTML proxy pages and connection resets are retried to success."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=FAST_RETRY) as rc:
        emu.inject(kind, api="trainer", count=2)
        result = await rc.request(LIST)
    assert "datasets" in result
    assert len(_api_records(emu)) == 3


@pytest.mark.parametrize(
    ("spec", "exc"),
    [
        (RequestSpec(api=API.TRAINER, method="GET", path="/prod/v1/trainers/datasets/nope/status"),
         NotFoundError),
        (RequestSpec(api=API.TRAINER, method="POST", path="/prod/v1/trainers/datasets",
                     json={"name": "bad name!"}), Exception),
    ],
)
@pytest.mark.asyncio
async def test_client_errors_are_not_retried(spec: RequestSpec, exc: type[Exception]) -> None:
    """400/422 and 404 answers fail at once, after exactly one request."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=FAST_RETRY) as rc:
        with pytest.raises(exc):
            await rc.request(spec)
    assert len(_api_records(emu)) == 1


@pytest.mark.asyncio
async def test_bad_token_is_401_not_retried() -> None:
    """A wrong token gives AuthenticationError after one request, and its text hides the token."""
    async with Emulator(rate_limit=None) as emu, emu.client(
        token="rc_wrong_secret_token", rate=100.0, retry=FAST_RETRY
    ) as rc:
        with pytest.raises(AuthenticationError) as info:
            await rc.request(LIST)
    assert "rc_wrong_secret_token" not in str(info.value) + repr(info.value)
    assert len(_api_records(emu)) == 1


@pytest.mark.asyncio
async def test_unsent_post_not_retried_after_5xx() -> None:
    """A create POST that may have reached the server is not repeated on 5xx."""
    spec = RequestSpec(
        api=API.TRAINER, method="POST", path="/prod/v1/trainers/datasets",
        json={"name": "once"}, retry=Retry.UNSENT,
    )
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=FAST_RETRY) as rc:
        emu.inject("500", api="trainer", method="POST", count=1)
        with pytest.raises(ServerError):
            await rc.request(spec)
        emu.inject("429", api="trainer", method="POST", count=1, retry_after=0.1)
        created = await rc.request(spec)  # a 429 never ran, so it is repeated
    assert created["name"] == "once"


@pytest.mark.asyncio
async def test_connection_refused_is_transport_error() -> None:
    """Nothing listening gives a TransportError that names the URL but not the token."""
    async with Emulator() as emu:
        dead = emu.url
    async with RunComfy(
        token="tok_secret_123", trainer_url=dead, retry=RetryPolicy(max_attempts=2, base_delay=0.01)
    ) as rc:
        with pytest.raises(TransportError) as info:
            await rc.request(LIST)
    assert "tok_secret_123" not in str(info.value)


@pytest.mark.asyncio
async def test_token_never_logged_or_shown(caplog: pytest.LogCaptureFixture) -> None:
    """The token appears in no repr, no DEBUG log line and no exception text."""
    caplog.set_level(logging.DEBUG, logger="runcomfy_async")
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=FAST_RETRY) as rc:
        emu.inject("503", api="trainer", count=1)
        await rc.request(LIST)
        with pytest.raises(NotFoundError) as info:
            await rc.request(RequestSpec(api=API.TRAINER, method="DELETE",
                                         path="/prod/v1/trainers/datasets/missing"))
        shown = repr(rc) + str(rc) + str(info.value) + repr(info.value)
        token = emu.token
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert caplog.records, "the pipeline should log at DEBUG"
    assert token not in shown
    assert token not in logged
    assert all(token not in str(r.headers) for r in emu.log)


@pytest.mark.asyncio
async def test_cancelled_call_gives_token_place_back() -> None:
    """A call cancelled while waiting for a token leaves the queue; the next call goes first."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=2.0, burst=1) as rc:
        await rc.request(LIST)
        doomed = asyncio.create_task(rc.request(LIST))
        await asyncio.sleep(0.05)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        start = time.monotonic()
        await rc.request(LIST)
        waited = time.monotonic() - start
    assert waited < 0.6  # served at the next token (0.5 s), not the one after
    assert len(_api_records(emu)) == 2


@pytest.mark.asyncio
async def test_borrowed_session_stays_open_owned_closes() -> None:
    """A borrowed session survives aclose(); an owned one is closed; aclose is idempotent."""
    async with Emulator(rate_limit=None) as emu, aiohttp.ClientSession() as session:
        borrowed = emu.client(session=session)
        async with borrowed as rc:
            await rc.request(LIST)
        assert not session.closed
        async with emu.client() as rc2:
            owned = rc2.session
        assert owned.closed
        await rc2.aclose()
        assert rc2.state is ClientState.CLOSED


@pytest.mark.asyncio
async def test_closed_and_unopened_clients_refuse() -> None:
    """Using a closed or never-opened client raises ClientClosedError naming the fix."""
    async with Emulator() as emu:
        rc = emu.client()
        with pytest.raises(ClientClosedError, match="async with"):
            await rc.request(LIST)
        async with rc:
            pass
        with pytest.raises(ClientClosedError, match="closed"):
            await rc.request(LIST)
        with pytest.raises(ClientClosedError):
            await rc.open()


def test_client_from_another_loop_is_refused() -> None:
    """A client opened in one event loop raises WrongEventLoopError in another."""
    home = asyncio.new_event_loop()
    try:
        rc = RunComfy(token="t", trainer_url="http://127.0.0.1:9")
        home.run_until_complete(rc.open())

        async def use_elsewhere() -> None:
            with pytest.raises(WrongEventLoopError, match="event loop"):
                await rc.request(LIST)

        asyncio.run(use_elsewhere())
        home.run_until_complete(rc.aclose())
    finally:
        home.close()


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing or whitespace tokens and plain-http remote URLs are refused with the fix named."""
    monkeypatch.delenv("RUNCOMFY_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="RUNCOMFY_API_TOKEN"):
        RunComfy()
    with pytest.raises(ConfigurationError, match="whitespace"):
        RunComfy(token="abc\n")
    with pytest.raises(ConfigurationError, match="https"):
        RunComfy(token="abc", trainer_url="http://example.com")
    with pytest.raises(ConfigurationError, match="http"):
        RunComfy(token="abc", model_url="ftp://example.com")
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "from_env_token")
    rc = RunComfy(server_url="http://localhost:8080/")
    assert rc.base_url(API.SERVER) == "http://localhost:8080"
    assert "from_env_token" not in repr(rc)


def test_rate_comes_from_the_argument_then_runcomfy_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNCOMFY_RATE sets the built-in bucket's rate unless rate= is given; junk is refused."""
    monkeypatch.delenv("RUNCOMFY_RATE", raising=False)
    assert isinstance(limiter := RunComfy(token="t").limiter, TokenBucket)
    assert limiter.rate == 1.0
    monkeypatch.setenv("RUNCOMFY_RATE", "25")
    assert isinstance(limiter := RunComfy(token="t").limiter, TokenBucket)
    assert limiter.rate == 25.0
    assert isinstance(limiter := RunComfy(token="t", rate=3.0).limiter, TokenBucket)
    assert limiter.rate == 3.0
    for junk in ("fast", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("RUNCOMFY_RATE", junk)
        with pytest.raises(ConfigurationError, match="RUNCOMFY_RATE"):
            RunComfy(token="t")


@pytest.mark.asyncio
async def test_dataset_collection_round_trip() -> None:
    """create, get, status, list and delete work end to end; an empty DRAFT is not awaited."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0) as rc:
        ds = await rc.datasets.create("round-trip")
        info = await rc.datasets.get(ds.id).status()
        assert (info.id, info.name, info.status.value) == (ds.id, "round-trip", "DRAFT")
        assert info.created_at is not None and info.created_at.tzinfo is not None
        assert [d.id for d in await rc.datasets.list()] == [ds.id]
        with pytest.raises(ValueError, match="empty DRAFT"):
            await ds.wait_ready(draft_grace=0.0)
        await rc.datasets.delete(ds.id)
        with pytest.raises(NotFoundError):
            await ds.status()


@pytest.mark.asyncio
async def test_empty_draft_is_awaited_for_a_grace_period() -> None:
    """An empty DRAFT is tolerated for draft_grace seconds (files may be in flight), then not."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0) as rc:
        ds = await rc.datasets.create("slow-start")
        start = time.monotonic()
        with pytest.raises(ValueError, match=r"still an empty DRAFT after 0\.6s"):
            await ds.wait_ready(draft_grace=0.6, poll=PollPolicy(initial=0.1, max_interval=0.1))
    assert time.monotonic() - start >= 0.6


@pytest.mark.asyncio
async def test_named_create_answered_500_is_looked_up_before_a_second_try() -> None:
    """A named create answered 500 is resolved by name: found if it ran, else sent once more."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0) as rc:
        # It did not run (the fault answers before the handler): one more POST creates it.
        emu.inject("500", api="trainer", method="POST", path=r"datasets$", count=1)
        first = await rc.datasets.create("only-once")
        # It ran but the answer was lost: the dataset exists under the name, no second POST.
        emu.state.datasets.create("ds-made-before-the-500", "made-anyway")
        emu.inject("500", api="trainer", method="POST", path=r"datasets$", count=1)
        second = await rc.datasets.create("made-anyway")
        names = sorted(d.name or "" for d in await rc.datasets.list())
    assert first.name == "only-once"
    assert second.id == "ds-made-before-the-500"
    assert names == ["made-anyway", "only-once"]
    creates = [r for r in emu.log if r.method == "POST" and r.path.endswith("/datasets")]
    assert [r.status for r in creates] == [500, 200, 500]


@pytest.mark.asyncio
async def test_closing_the_client_fails_queued_calls() -> None:
    """Calls queued for a token when the client closes fail with ClientClosedError, not hang."""
    async with Emulator(rate_limit=None) as emu:
        rc = emu.client(rate=0.2, burst=1)
        await rc.open()
        await rc.request(LIST)
        queued = [asyncio.create_task(rc.request(LIST)) for _ in range(3)]
        await asyncio.sleep(0.05)
        await rc.aclose()
        results = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 2.0)
    assert all(isinstance(r, ClientClosedError) for r in results)


@pytest.mark.asyncio
async def test_huge_retry_after_is_capped_and_surfaces() -> None:
    """A Retry-After beyond the policy's cap is not waited out and does not freeze later calls."""
    policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_retry_after=0.5)
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0, retry=policy) as rc:
        emu.inject("429", api="trainer", count=1, retry_after=86400)
        start = time.monotonic()
        with pytest.raises(RateLimitError) as info:
            await rc.request(LIST)
        assert info.value.retry_after == 86400
        await rc.request(LIST)  # the bucket was paused for the cap, not for a day
    assert time.monotonic() - start < 2.0


def test_connect_timeout_counts_as_unsent() -> None:
    """A connect timeout maps to an unsent timeout, so even a create may be tried again."""
    exc = map_error(aiohttp.ConnectionTimeoutError("connect"), method="POST", url="https://x/y")
    assert isinstance(exc, UnsentTransportError)
    assert isinstance(exc, TimeoutError)


@pytest.mark.asyncio
async def test_named_create_answered_500_never_returns_an_older_dataset() -> None:
    """A name taken before the call is a ConflictError even when the create was answered 500."""
    async with Emulator(rate_limit=None) as emu, emu.client(rate=100.0) as rc:
        older = await rc.datasets.create("taken")
        emu.state.datasets.get(older.id).created_at -= 3600  # made an hour before this call
        emu.inject("500", api="trainer", method="POST", path=r"datasets$", count=1)
        with pytest.raises(ConflictError, match="already exists"):
            await rc.datasets.create("taken")
        assert [d.id for d in await rc.datasets.list()] == [older.id]
