"""Dataset uploads: planning, routes (direct vs signed URL), retries, progress, cancellation."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import pytest_asyncio

from runcomfy_async import errors
from runcomfy_async._client import RunComfy
from runcomfy_async._retry import RetryPolicy
from runcomfy_async._upload_body import CHUNK_SIZE
from runcomfy_async._upload_engine import run_uploads
from runcomfy_async._upload_plan import (
    DIRECT_UPLOAD_LIMIT,
    ScannedFile,
    UploadSource,
    content_type_for,
    plan_uploads,
    set_problems,
)
from runcomfy_async.resources.datasets import Dataset
from runcomfy_async.testing import Emulator
from runcomfy_async.types.uploads import (
    BytesSent,
    FailureReason,
    FileDone,
    FileFailed,
    FileRetrying,
    FileStarted,
    UploadEvent,
    UploadMethod,
    UploadPlanned,
    UploadTarget,
)

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit, fast clock, 1,000-byte direct limit."""
    async with Emulator(rate_limit=None, speed=1000.0, max_direct_upload=1000) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client with a generous rate and quick retries (the rate is not the subject here)."""
    async with emu.client(rate=200.0, burst=50, retry=FAST_RETRY) as client:
        yield client


@pytest_asyncio.fixture
async def ds(rc: RunComfy, emu: Emulator) -> Dataset:
    """A fresh dataset; the log is cleared after its creation."""
    dataset = await rc.datasets.create("uploads")
    emu.clear_log()
    return dataset


def make(path: Path, size: int) -> Path:
    """Write ``size`` random bytes to ``path``."""
    path.write_bytes(os.urandom(size))
    return path


def sha(path: Path) -> str:
    """The sha256 hex digest of a local file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_stored(emu: Emulator, dataset_id: str, *paths: Path) -> None:
    """Every path is stored in the dataset with its exact size and hash."""
    stored = emu.stored_files(dataset_id)
    for p in paths:
        assert stored[p.name] == (p.stat().st_size, sha(p)), p.name


# -- planning (pure) --------------------------------------------------------------------------


def scanned(name: str, size: int | None = 10, error: str | None = None) -> ScannedFile:
    """A scan result without touching the disk."""
    return ScannedFile(path=Path("/data") / name, filename=name, size=size, error=error)


def test_content_types_follow_the_extension_case_insensitively() -> None:
    """Images, videos and captions get their MIME type; anything else is unsupported."""
    assert content_type_for("a.JPG") == "image/jpeg"
    assert content_type_for("clip.mp4") == "video/mp4"
    assert content_type_for("a.txt") == "text/plain"
    assert content_type_for("notes.json") is None
    assert content_type_for("README") is None


def test_set_problems_lists_every_problem_at_once() -> None:
    """Missing captions, orphan captions, bad types, empty files and case clashes all appear."""
    files = [
        scanned("a.jpg"),
        scanned("b.txt"),
        scanned("c.json"),
        scanned("d.png", size=0),
        scanned("d.txt"),
        scanned("E.jpg"),
        scanned("e.jpg"),
        scanned("e.txt"),
        scanned("E.txt"),
        scanned("gone.jpg", size=None, error="Permission denied"),
    ]
    text = "\n".join(set_problems(files, captions=True))
    assert "a.jpg: no caption a.txt" in text
    assert "b.txt: caption without an image or video" in text
    assert "c.json: unsupported file type" in text
    assert "d.png: the file is empty" in text
    assert "e.jpg and E.jpg: names differ only in case" in text
    assert "Permission denied" in text


def test_set_problems_without_captions_accepts_lone_media() -> None:
    """``upload()`` of single files does not demand caption pairs."""
    assert set_problems([scanned("a.jpg"), scanned("b.txt")], captions=False) == []


def test_plan_routes_by_size_and_skips_what_is_already_there() -> None:
    """At the limit goes direct, one byte more goes signed, same name and size is skipped."""
    small = UploadSource(path=Path("s.jpg"), filename="s.jpg", size=100, content_type="image/jpeg")
    big = UploadSource(path=Path("b.jpg"), filename="b.jpg", size=101, content_type="image/jpeg")
    done = UploadSource(path=Path("d.jpg"), filename="d.jpg", size=5, content_type="image/jpeg")
    redo = UploadSource(path=Path("r.jpg"), filename="r.jpg", size=7, content_type="image/jpeg")
    plan = plan_uploads(
        [small, big, done, redo], existing={"d.jpg": 5, "r.jpg": 6}, direct_limit=100
    )
    assert plan.direct == (small, redo)
    assert plan.signed == (big,)
    assert plan.skipped == (done,)
    assert plan_uploads([small], existing=None, direct_limit=None).signed == (small,)


def test_upload_target_repr_masks_the_signature() -> None:
    """A signed URL's query never shows in a repr (it is the credential)."""
    target = UploadTarget(upload_url="https://s.example/k?sig=SECRET&expires=1")
    assert "SECRET" not in repr(target)


# -- routes -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_exactly_the_limit_goes_direct_and_one_byte_more_goes_signed(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """A file of exactly ``direct_limit`` bytes is POSTed; one byte more is PUT to storage."""
    at_limit = make(tmp_path / "at.jpg", 1000)
    over = make(tmp_path / "over.mp4", 1001)
    report = await ds.upload(at_limit, over, direct_limit=1000)
    methods = {r.filename: r.method for r in report.uploaded}
    assert methods == {"at.jpg": UploadMethod.DIRECT, "over.mp4": UploadMethod.SIGNED_URL}
    posts = sorted(r.path for r in emu.log if r.method == "POST")
    base = f"/prod/v1/trainers/datasets/{ds.id}"
    assert posts == [f"{base}/get-upload-endpoint", f"{base}/upload"]
    puts = [r.path for r in emu.log if r.method == "PUT"]
    assert puts == [f"/storage/datasets/{ds.id}/over.mp4"]
    assert_stored(emu, ds.id, at_limit, over)


def test_default_limit_is_the_services_150_mb() -> None:
    """The default threshold is the documented 150,000,000 bytes (decimal, docs/wire.md)."""
    assert DIRECT_UPLOAD_LIMIT == 150_000_000


@pytest.mark.asyncio
async def test_direct_over_the_servers_limit_is_reported_as_rejected(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """A direct upload the server refuses with 413 fails that file, naming the limit."""
    over = make(tmp_path / "over.jpg", 1001)
    report = await ds.upload(over, direct_limit=5000, check=False)
    (failed,) = report.failed
    assert failed.reason is FailureReason.REJECTED
    assert "413" in (failed.message or "")
    assert "over.jpg" not in emu.stored_files(ds.id)


@pytest.mark.asyncio
async def test_no_storage_request_carries_authorization(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """Signed PUTs go without the bearer token; every API call carries it."""
    files = [make(tmp_path / f"f{i}.png", 2000 + i) for i in range(5)]
    files.append(make(tmp_path / "small.txt", 10))
    await ds.upload(*files, direct_limit=1000)
    storage = [r for r in emu.log if r.api == "storage"]
    api = [r for r in emu.log if r.api == "trainer"]
    assert len(storage) == 5
    assert not any(r.authorized for r in storage)
    assert all(r.authorized for r in api)
    assert all("authorization" not in {k.lower() for k in r.headers} for r in storage)


@pytest.mark.asyncio
async def test_signed_put_sends_returned_headers_and_exact_length(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """The PUT carries the Content-Type the API returned and the exact Content-Length."""
    clip = make(tmp_path / "clip.mov", 4321)
    await ds.upload(clip, direct_limit=0)
    (put,) = [r for r in emu.log if r.method == "PUT"]
    assert put.headers["Content-Type"] == "video/quicktime"
    assert put.headers["Content-Length"] == "4321"
    assert "Transfer-Encoding" not in put.headers
    assert_stored(emu, ds.id, clip)


@pytest.mark.asyncio
async def test_large_files_stream_in_mib_chunks(ds: Dataset, emu: Emulator, tmp_path: Path) -> None:
    """A multi-MiB file goes out chunk by chunk (never read whole) and arrives intact."""
    big = make(tmp_path / "big.mp4", 3 * CHUNK_SIZE + 17)
    events: list[UploadEvent] = []
    report = await ds.upload(big, progress=events.append, direct_limit=1000)
    deltas = [e.delta for e in events if isinstance(e, BytesSent)]
    assert len(deltas) == 4
    assert max(deltas) <= CHUNK_SIZE
    assert sum(deltas) == report.bytes_sent == big.stat().st_size
    assert_stored(emu, ds.id, big)


@pytest.mark.asyncio
async def test_signed_urls_are_asked_for_in_batches(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """25 files with ``batch_size=10`` cost three signed-URL calls, not 25."""
    files = [make(tmp_path / f"p{i:02}.jpg", 1500) for i in range(25)]
    report = await ds.upload(*files, direct_limit=1000, batch_size=10)
    calls = [r for r in emu.log if r.path.endswith("/get-upload-endpoint")]
    assert len(calls) == 3
    assert report.api_calls == 3
    assert len(report.uploaded) == 25


@pytest.mark.asyncio
async def test_concurrency_bounds_transfers_in_flight(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """No more than ``concurrency`` files are being sent at any moment."""
    emu.inject("slow", api="storage", delay=0.02)
    files = [make(tmp_path / f"c{i:02}.jpg", 1500) for i in range(16)]
    in_flight = 0
    peak = 0

    def track(event: UploadEvent) -> None:
        nonlocal in_flight, peak
        if isinstance(event, FileStarted):
            in_flight += 1
            peak = max(peak, in_flight)
        elif isinstance(event, FileDone | FileFailed | FileRetrying):
            in_flight -= 1

    await ds.upload(*files, direct_limit=1000, concurrency=3, progress=track)
    assert peak == 3


# -- failures and retries ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_storage_5xx_and_resets_are_retried_per_file(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """503s and dropped connections from storage are retried; every file arrives."""
    emu.inject("503", api="storage", count=2)
    emu.inject("reset", api="storage", count=2)
    files = [make(tmp_path / f"r{i}.jpg", 1200 + i) for i in range(6)]
    events: list[UploadEvent] = []
    report = await ds.upload(*files, direct_limit=1000, progress=events.append)
    assert report.ok
    statuses = sorted(r.status for r in emu.log if r.method == "PUT")
    assert statuses == [0, 0, 200, 200, 200, 200, 200, 200, 503, 503]
    # 503s are ours to retry; aiohttp itself may resend an idempotent PUT after a reset.
    assert sum(isinstance(e, FileRetrying) for e in events) >= 2
    assert_stored(emu, ds.id, *files)


@pytest.mark.asyncio
async def test_a_file_that_keeps_failing_does_not_stop_the_others(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """A file storage always refuses with 500 fails after its retries; the rest are stored."""
    emu.inject("500", api="storage", path="doomed")
    good = [make(tmp_path / f"ok{i}.jpg", 1100) for i in range(3)]
    doomed = make(tmp_path / "doomed.jpg", 1100)
    report = await ds.upload(*good, doomed, direct_limit=1000, check=False)
    (failed,) = report.failed
    assert failed.filename == "doomed.jpg"
    assert failed.reason is FailureReason.SERVER_ERROR
    assert failed.attempts == FAST_RETRY.max_attempts
    assert_stored(emu, ds.id, *good)


@pytest.mark.asyncio
async def test_expired_urls_are_refreshed_in_one_batched_call(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """403 ExpiredToken gets fresh URLs, asked for together, and every file then arrives."""
    rule = emu.inject("expire_url", api="storage", count=5)
    files = [make(tmp_path / f"x{i}.jpg", 1300 + i) for i in range(10)]
    report = await ds.upload(*files, direct_limit=1000, concurrency=10)
    assert rule.fired == 5
    assert report.ok
    url_calls = [r for r in emu.log if r.path.endswith("/get-upload-endpoint")]
    assert 2 <= len(url_calls) <= 3  # the first batch, then the refreshes (not one per file)
    assert_stored(emu, ds.id, *files)


@pytest.mark.asyncio
async def test_a_url_refused_every_time_fails_as_expired(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """Storage refusing every fresh URL ends in URL_EXPIRED, not an endless loop."""
    emu.inject("expire_url", api="storage")
    pic = make(tmp_path / "pic.jpg", 1400)
    report = await ds.upload(pic, direct_limit=1000, check=False)
    (failed,) = report.failed
    assert failed.reason is FailureReason.URL_EXPIRED
    assert len([r for r in emu.log if r.method == "PUT"]) == 4


@pytest.mark.asyncio
async def test_a_file_changed_after_planning_fails_clearly(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """A file whose size changed before its send fails as FILE_CHANGED and is not sent."""
    steady = make(tmp_path / "steady.jpg", 1500)
    moving = make(tmp_path / "moving.jpg", 1500)

    def grow(event: UploadEvent) -> None:
        if isinstance(event, UploadPlanned):
            with moving.open("ab") as fh:
                fh.write(b"more")

    report = await ds.upload(
        steady, moving, direct_limit=1000, progress=grow, check=False
    )
    (failed,) = report.failed
    assert failed.reason is FailureReason.FILE_CHANGED
    assert "planned 1500 bytes, now 1504" in (failed.message or "")
    assert "re-run" in (failed.message or "")
    assert [r.path.rsplit("/", 1)[1] for r in emu.log if r.method == "PUT"] == ["steady.jpg"]


@pytest.mark.asyncio
@pytest.mark.parametrize("direct_limit", [0, 10_000], ids=["signed", "direct"])
async def test_a_file_changing_mid_send_is_never_stored_cut(
    ds: Dataset, emu: Emulator, tmp_path: Path, direct_limit: int
) -> None:
    """A file that grows once its send has begun fails as FILE_CHANGED; nothing is stored."""
    pic = make(tmp_path / "pic.jpg", 900)

    def grow(event: UploadEvent) -> None:
        if isinstance(event, FileStarted):
            with pic.open("ab") as fh:
                fh.write(b"late bytes")

    report = await ds.upload(
        pic, direct_limit=direct_limit, progress=grow, check=False
    )
    (failed,) = report.failed
    assert failed.reason is FailureReason.FILE_CHANGED
    assert "pic.jpg" not in emu.stored_files(ds.id)


@pytest.mark.asyncio
async def test_a_413_from_the_url_endpoint_halves_the_batch(
    ds: Dataset, rc: RunComfy, emu: Emulator, tmp_path: Path
) -> None:
    """If the API refuses a batch as too large, the engine asks for halves instead."""
    files = [make(tmp_path / f"h{i}.jpg", 1000 + i) for i in range(8)]
    sources = [
        UploadSource(path=p, filename=p.name, size=p.stat().st_size, content_type="image/jpeg")
        for p in files
    ]
    asked: list[int] = []

    async def fetch(sizes: dict[str, int]) -> Mapping[str, UploadTarget]:
        asked.append(len(sizes))
        if len(sizes) > 2:
            raise errors.PayloadTooLargeError("too many files", status=413)
        return await ds._upload_targets(sizes)

    results, sent = await run_uploads(
        direct=[],
        signed=sources,
        pipeline=rc.pipeline,
        fetch_targets=fetch,
        send_direct=ds._send_direct,
        timeout=rc.timeouts.for_transfer(),
        progress=None,
        concurrency=4,
        batch_size=8,
        planned=UploadPlanned(files=8, total_bytes=0, skipped_files=0, skipped_bytes=0),
    )
    assert asked == [8, 4, 2, 2, 4, 2, 2]
    assert all(r.reason is None for r in results)
    assert sent == sum(s.size for s in sources)
    assert_stored(emu, ds.id, *files)


# -- progress and cancellation ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_progress_callback_sees_each_file_start_bytes_and_done(
    ds: Dataset, tmp_path: Path
) -> None:
    """An async callback receives plan, then per file: started, bytes, done (in that order)."""
    files = [make(tmp_path / "a.jpg", 1500), make(tmp_path / "b.txt", 20)]
    seen: list[UploadEvent] = []

    async def record(event: UploadEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event)

    report = await ds.upload(*files, direct_limit=1000, progress=record)
    assert seen[0] == UploadPlanned(files=2, total_bytes=1520, skipped_files=0, skipped_bytes=0)
    for name in ("a.jpg", "b.txt"):
        kinds = [type(e).__name__ for e in seen[1:] if getattr(e, "filename", None) == name]
        assert kinds == ["FileStarted", "BytesSent", "FileDone"]
    assert report.bytes_sent == 1520


@pytest.mark.asyncio
async def test_an_error_in_the_progress_callback_stops_the_upload(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """The callback's own exception surfaces (not a network error, not retried)."""
    pic = make(tmp_path / "pic.jpg", 1500)

    def broken(event: UploadEvent) -> None:
        if isinstance(event, UploadPlanned):
            return
        raise RuntimeError("progress bar broke")  # on FileStarted, inside the request body

    with pytest.raises(RuntimeError, match="progress bar broke"):
        await ds.upload(pic, direct_limit=1000, progress=broken)
    assert len([r for r in emu.log if r.method == "PUT"]) <= 1


@pytest.mark.asyncio
async def test_cancelling_a_big_transfer_stops_it_promptly(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """Cancelling mid-file returns within a second and storage keeps no partial file."""
    big = tmp_path / "big.mp4"
    with big.open("wb") as fh:  # sparse: 1 GiB on disk costs nothing
        fh.truncate(1 << 30)
    started = asyncio.Event()

    def on_event(event: UploadEvent) -> None:
        if isinstance(event, BytesSent) and event.sent >= 4 * CHUNK_SIZE:
            started.set()

    task = asyncio.create_task(ds.upload(big, direct_limit=1000, progress=on_event))
    await asyncio.wait_for(started.wait(), 30)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 1.0
    await asyncio.sleep(0.1)
    assert "big.mp4" not in emu.stored_files(ds.id)


# -- input checks -----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1001}, "batch_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"direct_limit": -1}, "direct_limit"),
    ],
)
async def test_bad_arguments_are_refused_before_any_request(
    ds: Dataset, emu: Emulator, tmp_path: Path, kwargs: dict[str, int], match: str
) -> None:
    """Out-of-range knobs raise ValidationError naming the knob; nothing is sent."""
    pic = make(tmp_path / "pic.jpg", 10)
    with pytest.raises(errors.ValidationError, match=match):
        await ds.upload(pic, **kwargs)  # type: ignore[arg-type]
    assert emu.log == []


@pytest.mark.asyncio
async def test_missing_and_empty_files_are_refused_before_any_request(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """A missing file and an empty one are both listed; no request is sent."""
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(errors.DatasetValidationError) as info:
        await ds.upload(tmp_path / "nope.jpg", empty)
    text = "\n".join(info.value.problems)
    assert "nope.jpg" in text
    assert "empty.jpg: the file is empty" in text
    assert emu.log == []
    with pytest.raises(errors.ValidationError, match="at least one file"):
        await ds.upload()


@pytest.mark.asyncio
async def test_an_expired_url_is_announced_as_a_retry(
    ds: Dataset, emu: Emulator, tmp_path: Path
) -> None:
    """A send refused for an expired signature goes again with a fresh URL, announced by
    FileRetrying like any other retry: a progress display counting files in flight from the
    events never sees two sends of one file at once."""
    emu.inject("expire_url", api="storage", count=2)
    files = [make(tmp_path / f"k{i}.jpg", 1500) for i in range(3)]
    events: list[UploadEvent] = []
    report = await ds.upload(*files, direct_limit=1000, concurrency=1, progress=events.append)
    assert report.ok
    in_flight = peak = 0
    for event in events:
        if isinstance(event, FileStarted):
            in_flight += 1
            peak = max(peak, in_flight)
        elif isinstance(event, FileDone | FileFailed | FileRetrying):
            in_flight -= 1
    assert (peak, in_flight) == (1, 0)
    retries = [(e.filename, e.attempt) for e in events if isinstance(e, FileRetrying)]
    assert retries == [("k0.jpg", 1), ("k0.jpg", 2)]  # the first file drew both refusals
    assert [(e.filename, e.attempt) for e in events if isinstance(e, FileStarted)] == [
        ("k0.jpg", 1), ("k0.jpg", 2), ("k0.jpg", 3), ("k1.jpg", 1), ("k2.jpg", 1)
    ]
