"""runcomfy_async.webhooks: parsing deliveries, the dedupe rule, the stores, the receiver."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from runcomfy_async import (
    ConfigurationError,
    RequestFailed,
    ResultStatus,
    ServerlessResult,
    TransportError,
    ValidationError,
)
from runcomfy_async.testing import Emulator
from runcomfy_async.webhooks import (
    DeliveryStore,
    InvalidWebhookError,
    MemoryDeliveryStore,
    RedisDeliveryStore,
    WebhookEvent,
    WebhookReceiver,
    WebhookSecretError,
    WebhookStatus,
    api_lookup,
    check_secret,
    event_from_result,
    parse_event,
)
from tests._services import redis_url_fixture  # noqa: F401 (registers redis_url)
from tests._webhooks import Recorder, Truth, delivery

SUCCEEDED = {
    "request_id": "r1",
    "deployment_id": "d1",
    "status": "succeeded",
    "created_at": "2025-07-01T12:00:00.123456+00:00",
    "finished_at": "2025-07-01T12:00:21.654321+00:00",
    "outputs": {"9": {"images": [{"filename": "a.png", "url": "https://x/a.png"}]}},
    "something_new": [1, 2],
}


# -- parsing --------------------------------------------------------------------------------


def test_parse_reads_the_documented_fields_and_ignores_others() -> None:
    """request id, deployment id, status, outputs and timestamps; unknown fields ignored."""
    event = parse_event(json.dumps(SUCCEEDED).encode())
    assert event.request_id == "r1"
    assert event.deployment_id == "d1"
    assert event.status is WebhookStatus.SUCCEEDED
    assert event.final
    assert event.outputs == SUCCEEDED["outputs"]
    assert event.created_at == datetime(2025, 7, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert event.finished_at is not None
    assert event.verified is False


def test_parse_accepts_outcome_output_and_odd_spellings() -> None:
    """``outcome`` for status, ``output`` for outputs, ``canceled``, a bad timestamp dropped."""
    event = parse_event({"request_id": "r", "outcome": "canceled", "output": {"image": "u"}})
    assert (event.status, event.outputs) == (WebhookStatus.CANCELLED, {"image": "u"})
    odd = parse_event(delivery("r", "succeeded", created_at="yesterday", deployment_id=7))
    assert (odd.created_at, odd.deployment_id) == (None, None)
    failed = parse_event(delivery("r", "failed", error={"type": "oom", "message": "out of VRAM"}))
    assert failed.error == {"type": "oom", "message": "out of VRAM"}


def test_unknown_status_is_kept_without_a_rank() -> None:
    """A status this version does not know is kept, not final, and unordered."""
    event = parse_event(delivery("r", "warming_up"))
    assert event.status.value == "warming_up"
    assert not event.status.known
    assert event.status.rank is None
    assert not event.final


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"status": "succeeded"}', "request_id"),
        (b'{"request_id": "  ", "status": "succeeded"}', "request_id"),
        (b'{"request_id": "r"}', "status"),
        (b'{"request_id": "r", "status": 3}', "status"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(body: bytes, fragment: str) -> None:
    """Anything that is not a delivery raises InvalidWebhookError naming what is wrong."""
    with pytest.raises(InvalidWebhookError, match=fragment):
        parse_event(body)


def test_secret_check() -> None:
    """The right secret passes; a wrong, missing or prefix secret is refused."""
    check_secret("s3cret-value", "s3cret-value")
    for given in ("wrong", None, "s3cret", "s3cret-value2", ""):
        with pytest.raises(WebhookSecretError, match="secret"):
            check_secret(given, "s3cret-value")


# -- the stores -----------------------------------------------------------------------------


async def _check_store_rule(store: DeliveryStore) -> None:
    """The dedupe rule, as every store must apply it."""
    rid = f"req-{uuid.uuid4().hex}"
    assert await store.furthest(rid) is None
    assert await store.record(rid, "in_queue", 0)
    assert not await store.record(rid, "in_queue", 0)  # duplicate
    assert await store.record(rid, "succeeded", 2)
    assert not await store.record(rid, "in_progress", 1)  # late
    assert not await store.record(rid, "failed", 2)  # a second final
    assert await store.record(rid, "warming_up", None)  # unknown: once
    assert not await store.record(rid, "warming_up", None)
    assert await store.furthest(rid) == 2
    await store.forget(rid, "succeeded")
    assert await store.furthest(rid) == 2  # the late failed is still recorded
    await store.forget(rid, "failed")
    assert await store.furthest(rid) == 1
    assert await store.record(rid, "succeeded", 2)  # handed over again after a failed handler
    other = f"req-{uuid.uuid4().hex}"
    assert await store.record(other, "succeeded", 2)


@pytest.mark.asyncio
async def test_memory_store_rule() -> None:
    """MemoryDeliveryStore applies the rule."""
    await _check_store_rule(MemoryDeliveryStore())


@pytest.mark.asyncio
async def test_memory_store_is_bounded_in_size_and_age() -> None:
    """The least recently touched request goes past max_requests; any goes after its ttl."""
    now = [0.0]
    store = MemoryDeliveryStore(max_requests=2, ttl=10.0, clock=lambda: now[0])
    assert await store.record("a", "succeeded", 2)
    assert await store.record("b", "succeeded", 2)
    assert not await store.record("a", "succeeded", 2)  # touches a: b is now the oldest
    assert await store.record("c", "succeeded", 2)
    assert len(store) == 2
    assert await store.furthest("b") is None  # evicted
    now[0] = 25.0
    assert await store.furthest("a") is None  # expired
    assert len(store) == 1
    with pytest.raises(ValidationError, match="max_requests"):
        MemoryDeliveryStore(max_requests=0)
    with pytest.raises(ValidationError, match="ttl"):
        MemoryDeliveryStore(ttl=0)


@pytest_asyncio.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisDeliveryStore]:
    """A RedisDeliveryStore on the module's redis-server, with a prefix of its own."""
    store = RedisDeliveryStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:", ttl=60)
    yield store
    await store.aclose()


@pytest.mark.asyncio
async def test_redis_store_rule(redis_store: RedisDeliveryStore) -> None:
    """RedisDeliveryStore applies the rule, and its keys expire."""
    await _check_store_rule(redis_store)
    await redis_store.record("x", "in_queue", 0)
    ttl = await redis_store._redis.ttl(redis_store.prefix + "x")
    assert 0 < ttl <= 60


@pytest.mark.asyncio
async def test_redis_store_is_atomic_across_clients(redis_url: str) -> None:
    """Ten stores (ten workers) race on the same deliveries: each status is new exactly once."""
    prefix = f"race:{uuid.uuid4().hex}:"
    stores = [RedisDeliveryStore(redis_url, prefix=prefix) for _ in range(10)]
    try:
        statuses = [("in_queue", 0), ("in_progress", 1), ("succeeded", 2)] * 10
        random.Random(7).shuffle(statuses)
        results = await asyncio.gather(
            *(stores[i % 10].record("r", s, rank) for i, (s, rank) in enumerate(statuses))
        )
        assert results.count(True) <= 3
        assert [s for (s, _), new in zip(statuses, results, strict=True) if new].count(
            "succeeded"
        ) == 1
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.asyncio
async def test_redis_store_errors_name_the_fix() -> None:
    """A Redis that is not there fails with TransportError (no password shown); a bad URL too."""
    store = RedisDeliveryStore("redis://user:hunter2@127.0.0.1:1/0")
    try:
        with pytest.raises(TransportError, match="check that Redis is running") as caught:
            await store.record("r", "succeeded", 2)
        assert "hunter2" not in str(caught.value)
        assert "hunter2" not in repr(store)
    finally:
        await store.aclose()
    with pytest.raises(ConfigurationError, match="not a Redis URL") as bad:
        RedisDeliveryStore("http://user:hunter2@host/0")
    assert "hunter2" not in str(bad.value)
    with pytest.raises(ValidationError, match="prefix"):
        RedisDeliveryStore("redis://127.0.0.1:1/0", prefix="")


# -- the receiver ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_duplicates_and_reordering_give_each_status_once() -> None:
    """Shuffled, tripled deliveries of 20 requests: one final each, from the API, no regression."""
    truth, handler = Truth(), Recorder()
    bodies = []
    for n in range(20):
        rid = f"r{n}"
        truth.set(rid, "succeeded", outputs={"9": {"images": [{"url": f"https://x/{n}.png"}]}})
        bodies += [delivery(rid, s, deployment_id="d") for s in ("in_queue", "in_progress")] * 3
        bodies += [delivery(rid, "succeeded", deployment_id="d", outputs="forged")] * 3
    random.Random(1).shuffle(bodies)
    async with WebhookReceiver(handler, lookup=truth) as receiver:
        for body in bodies:
            receiver.submit(receiver.accept(body))
    finals = [e for e in handler.events if e.final]
    assert sorted(e.request_id for e in finals) == sorted(f"r{n}" for n in range(20))
    assert all(e.verified and e.outputs != "forged" for e in finals)
    assert len(truth.calls) <= 20 + 5  # duplicates of a handled final cost no API call
    seen: dict[str, list[str]] = {}
    for event in handler.events:
        seen.setdefault(event.request_id, []).append(event.status.value)
    for statuses in seen.values():
        ranks = [WebhookStatus(s).rank or 0 for s in statuses]
        assert ranks == sorted(ranks)  # never a step back
        assert len(statuses) == len(set(statuses))


@pytest.mark.asyncio
async def test_the_api_decides_a_final_delivery() -> None:
    """A final delivery the API contradicts hands over what the API says; the final comes later."""
    truth, handler = Truth(), Recorder()
    truth.set("r", "in_progress")
    receiver = WebhookReceiver(handler, lookup=truth)
    assert await receiver.handle(receiver.accept(delivery("r", "succeeded"))) == truth.states["r"]
    assert [e.status for e in handler.events] == [WebhookStatus.IN_PROGRESS]
    assert not await receiver.finished("r")
    truth.set("r", "failed", error={"type": "oom"})
    handed = await receiver.handle(receiver.accept(delivery("r", "succeeded")))
    assert handed is not None
    assert (handed.status, handed.error) == (WebhookStatus.FAILED, {"type": "oom"})
    assert await receiver.finished("r")


@pytest.mark.asyncio
async def test_poll_recovers_a_dropped_delivery_once() -> None:
    """No final delivery came: poll() hands the final over; a late delivery then changes nothing."""
    truth, handler = Truth(), Recorder()
    truth.set("r", "in_progress")
    receiver = WebhookReceiver(handler, lookup=truth)
    await receiver.handle(receiver.accept(delivery("r", "in_progress")))
    assert await receiver.poll("r", "d") is None  # nothing new yet
    truth.set("r", "succeeded", outputs={"9": {}})
    recovered = await receiver.poll("r", "d")
    assert recovered is not None
    assert recovered.status is WebhookStatus.SUCCEEDED
    calls = len(truth.calls)
    assert await receiver.poll("r") is None
    assert await receiver.handle(receiver.accept(delivery("r", "succeeded"))) is None
    assert len(truth.calls) == calls  # finished: no more API calls
    assert [e.status.value for e in handler.events] == ["in_progress", "succeeded"]


@pytest.mark.asyncio
async def test_a_failing_handler_gets_the_event_again() -> None:
    """The handler raised: the status is un-recorded, so the redelivery is handed over again."""
    truth, attempts = Truth(), []
    truth.set("r", "succeeded")

    async def flaky(event: WebhookEvent) -> None:
        attempts.append(event.status.value)
        if len(attempts) == 1:
            raise RuntimeError("database down")

    receiver = WebhookReceiver(flaky, lookup=truth)
    with pytest.raises(RuntimeError, match="database down"):
        await receiver.handle(receiver.accept(delivery("r", "succeeded")))
    assert not await receiver.finished("r")
    assert await receiver.handle(receiver.accept(delivery("r", "succeeded"))) is not None
    assert attempts == ["succeeded", "succeeded"]


@pytest.mark.asyncio
async def test_background_failures_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """submit(): a lookup that fails is logged with the request id; the receiver goes on."""
    handler = Recorder()

    async def down(request_id: str, deployment_id: str | None) -> WebhookEvent:
        raise TransportError("the API is unreachable")

    async with WebhookReceiver(handler, lookup=down) as receiver:
        receiver.submit(receiver.accept(delivery("r-down", "succeeded")))
        receiver.submit(receiver.accept(delivery("r-ok", "in_progress")))
    assert "r-down" in caplog.text
    assert "poll() retries it" in caplog.text
    assert [e.request_id for e in handler.events] == ["r-ok"]
    assert receiver.pending == 0


@pytest.mark.asyncio
async def test_receiver_secret_and_arguments() -> None:
    """With a secret, accept() wants it; bad settings are refused; the repr hides the secret."""
    truth, handler = Truth(), Recorder()
    receiver = WebhookReceiver(handler, lookup=truth, secret="xyz-long-secret")
    with pytest.raises(WebhookSecretError):
        receiver.accept(delivery("r", "in_queue"))
    with pytest.raises(WebhookSecretError):
        receiver.accept(delivery("r", "in_queue"), secret="nope")
    assert receiver.accept(delivery("r", "in_queue"), secret="xyz-long-secret").request_id == "r"
    assert "xyz-long-secret" not in repr(receiver)
    with pytest.raises(ValidationError, match="secret"):
        WebhookReceiver(handler, lookup=truth, secret="")
    with pytest.raises(ValidationError, match="concurrency"):
        WebhookReceiver(handler, lookup=truth, concurrency=0)


@pytest.mark.asyncio
async def test_two_workers_on_one_redis_store_hand_each_final_over_once(redis_url: str) -> None:
    """Two receivers (two workers) share a RedisDeliveryStore: each final reaches one handler."""
    truth, handlers = Truth(), [Recorder(), Recorder()]
    prefix = f"workers:{uuid.uuid4().hex}:"
    receivers = [
        WebhookReceiver(h, lookup=truth, store=RedisDeliveryStore(redis_url, prefix=prefix))
        for h in handlers
    ]
    bodies = []
    for n in range(10):
        truth.set(f"r{n}", "succeeded")
        bodies += [delivery(f"r{n}", "succeeded"), delivery(f"r{n}", "in_progress")] * 2
    random.Random(3).shuffle(bodies)
    for i, body in enumerate(bodies):
        receivers[i % 2].submit(receivers[i % 2].accept(body))
    for receiver in receivers:
        await receiver.aclose()
    finals = [e.request_id for h in handlers for e in h.events if e.final]
    assert sorted(finals) == sorted(f"r{n}" for n in range(10))


@pytest.mark.asyncio
async def test_aclose_cancels_what_outlasts_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """A handler stuck at shutdown is cancelled after the timeout and its status un-recorded."""
    truth, never = Truth(), asyncio.Event()
    truth.set("stuck", "succeeded")

    async def stuck(event: WebhookEvent) -> None:
        await never.wait()

    store = MemoryDeliveryStore()
    receiver = WebhookReceiver(stuck, lookup=truth, store=store)
    receiver.submit(receiver.accept(delivery("stuck", "succeeded")))
    await asyncio.sleep(0.01)
    await receiver.aclose(timeout=0.05)
    assert receiver.pending == 0
    assert "cancelled" in caplog.text
    assert await store.furthest("stuck") is None  # left to a redelivery or poll()


# -- the API as the source of truth ---------------------------------------------------------


@pytest.mark.asyncio
async def test_api_lookup_reads_the_result_through_the_client() -> None:
    """api_lookup: queued, then succeeded with outputs, failed with the error; verified events."""
    async with (
        Emulator(rate_limit=None, speed=1000.0) as emu,
        emu.client(rate=1000.0) as rc,
    ):
        deployment = await rc.deployments.create(
            name="lookup",
            workflow_id=emu.state.machines.workflows[0]["workflow_id"],
            workflow_version="v1",
            hardware="AMPERE_48",
        )
        lookup = api_lookup(rc)
        ok = await deployment.submit({"6": {"inputs": {"text": "a cat"}}})
        first = await lookup(ok.id, deployment.id)
        assert first.verified
        assert first.status.rank is not None
        await ok
        done = await lookup(ok.id, deployment.id)
        assert (done.status, done.deployment_id) == (WebhookStatus.SUCCEEDED, deployment.id)
        assert done.result is not None
        assert [f.node_id for f in done.result.files()] == ["9"]
        bad = await deployment.submit({"6": {"inputs": {"text": "EMULATOR_FAIL"}}})
        with pytest.raises(RequestFailed):
            await bad
        failed = await api_lookup(rc, deployment_id=deployment.id)(bad.id, None)
        assert failed.status is WebhookStatus.FAILED
        assert failed.error
        with pytest.raises(ValidationError, match="deployment_id="):
            await lookup(ok.id, None)


def test_event_from_result_maps_completed() -> None:
    """``completed`` becomes succeeded, or failed when the result carries an error."""
    plain = ServerlessResult(request_id="r", status=ResultStatus.COMPLETED, outputs={})
    assert event_from_result(plain, "d").status is WebhookStatus.SUCCEEDED
    broken = ServerlessResult(request_id="r", status=ResultStatus.COMPLETED, error=[{"e": 1}])
    assert event_from_result(broken, None).status is WebhookStatus.FAILED
    odd = ServerlessResult(request_id="r", status=ResultStatus("paused"))
    assert event_from_result(odd, None).status.value == "paused"
