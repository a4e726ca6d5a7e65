"""Chaos: uploads, a job watch and a model batch ride through ~10% injected faults, per seed.

Each chaos test runs once per seed in ``SEEDS`` (20 in a row, issue 9's "done when"; set
``RUNCOMFY_CHAOS_SEEDS=0-99`` to run more). Fault draws depend on the seed and the request, not on
arrival order, so a failing seed replays. Figures (faults injected, files verified) are attached
as ``user_properties`` and land in ``--junitxml`` reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest

from runcomfy_async import errors
from runcomfy_async._client import RunComfy
from runcomfy_async._polling import PollPolicy
from runcomfy_async._retry import RetryPolicy
from runcomfy_async._transport import Timeouts
from runcomfy_async.resources.datasets import Dataset
from runcomfy_async.resources.deployments import Deployment
from runcomfy_async.resources.machines import Machine
from runcomfy_async.testing import Emulator
from runcomfy_async.testing._faults import FAULT_KINDS, FaultRule, FaultSet, request_key
from runcomfy_async.testing._storage import StoredObject
from runcomfy_async.testing.server_api import machine_store
from runcomfy_async.testing.trainer_jobs import jobs_of
from runcomfy_async.types.jobs import JobState
from runcomfy_async.types.uploads import FileDone, UploadEvent

# Not in the "heavy" xdist group: a seed spends much of its time waiting out pauses (429s and
# 503s), so the seeds run on every worker. The read timeouts are 1 s, not shorter: at 0.3 s a
# busy machine (four workers on two cores) stalled loops long enough to turn half of a seed's
# model submits into lost answers.


def _seeds() -> list[int]:
    """The seeds to run: ``RUNCOMFY_CHAOS_SEEDS`` as ``A-B`` or ``A,B,C``; default 0..19."""
    spec = os.environ.get("RUNCOMFY_CHAOS_SEEDS", "0-19")
    if "-" in spec:
        low, high = spec.split("-", 1)
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in spec.split(",")]


SEEDS = _seeds()
FILES = 1000  # 500 images + 500 captions
#: Real seconds a "slow" fault holds the answer: beyond every read timeout of CHAOS_TIMEOUTS.
SLOW = 1.5
#: The emulator's clock runs this much faster than real time.
SPEED = 1000.0
#: Signed URLs keep their real 15 minutes despite the fast clock: expiry is the "expire_url"
#: fault's job here. (At 900 simulated seconds a URL lived 0.9 s of real time, and a machine
#: loaded enough to hold a file that long between its URL and its PUT failed a seed.)
URL_TTL = 900 * SPEED
CHAOS_TIMEOUTS = Timeouts(connect=2.0, read=1.0, total=10.0, transfer_read=1.0)
CHAOS_RETRY = RetryPolicy(
    max_attempts=10, base_delay=0.01, max_delay=0.1, total_timeout=60.0, rate_limit_pause=0.2
)
FAST_POLL = PollPolicy(initial=0.02, factor=1.5, max_interval=0.1, jitter=0.0)

#: The fault mix: (kind, options, weight); each rule gets its weight's share of the total rate.
#: ``after`` rules are processed by the handler and only their answer is lost or replaced. A 429
#: pauses the client's whole bucket (a second for its Retry-After, the emulator's smallest
#: non-zero value; 0.2 s, the policy's rate_limit_pause, without one) and a 503 with Retry-After
#: holds its caller a second (seconds or HTTP-date form, API and storage alike), so those get a
#: smaller share to keep each seed at a few seconds.
API_MIX: tuple[tuple[str, dict[str, Any], float], ...] = (
    ("429", {}, 0.25),
    ("429", {"retry_after": 1}, 0.25),
    ("500", {}, 1.0),
    ("502", {}, 1.0),
    ("503", {}, 1.0),
    ("503", {"retry_after": 1}, 0.25),
    ("503", {"retry_after": 1, "retry_after_form": "date"}, 0.25),
    ("504", {}, 1.0),
    ("200_error", {}, 1.0),
    ("reset", {}, 1.0),
    ("reset_mid_body", {}, 1.0),
    ("html", {}, 1.0),
    ("truncated", {}, 1.0),
    ("slow", {"delay": SLOW}, 1.0),
    ("500", {"after": True}, 1.0),
    ("reset", {"after": True}, 1.0),
)
STORAGE_MIX: tuple[tuple[str, dict[str, Any], float], ...] = (
    ("429", {}, 1.0),
    ("429", {"retry_after": 1}, 0.25),
    ("500", {}, 1.0),
    ("502", {}, 1.0),
    ("503", {}, 1.0),
    ("503", {"retry_after": 1}, 0.25),
    ("504", {}, 1.0),
    ("reset", {}, 1.0),
    ("reset_mid_body", {}, 1.0),
    ("html", {}, 1.0),
    ("slow", {"delay": SLOW}, 1.0),
    ("expire_url", {}, 1.0),
    ("500", {"after": True}, 1.0),
)


def inject_mix(
    emu: Emulator, *, apis: tuple[str, ...], rate: float = 0.10, method: str | None = None
) -> list[FaultRule]:
    """Inject the issue's fault mix on ``apis`` so that about ``rate`` of their requests fail."""
    rules = []
    for api in apis:
        mix = STORAGE_MIX if api == "storage" else API_MIX
        total = sum(weight for _, _, weight in mix)
        for kind, options, weight in mix:
            share = rate * weight / total
            rules.append(
                emu.inject(kind, api=api, method=method, rate=share, **options)  # type: ignore[arg-type]
            )
    return rules


def fired(rules: list[FaultRule]) -> int:
    """Faults injected by ``rules`` so far."""
    return sum(rule.fired for rule in rules)


def note(request: pytest.FixtureRequest, name: str, value: object) -> None:
    """Attach a measured figure to the test's report (``user_properties``, shown in JUnit XML)."""
    request.node.user_properties.append((name, value))


def chaos_client(emu: Emulator) -> RunComfy:
    """A client with short read timeouts (so "slow" faults time out) and quick retries."""
    return emu.client(rate=1000.0, burst=100, retry=CHAOS_RETRY, timeout=CHAOS_TIMEOUTS)


def local_files(folder: Path) -> dict[str, tuple[int, str]]:
    """``{name: (size, sha256)}`` of a folder, the shape ``emu.stored_files`` returns."""
    return {
        p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in folder.iterdir()
    }


@pytest.fixture(scope="session")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 small files: 500 images with their captions, sizes varied, content random (made
    once a session: the seeds are spread through the run, see tests/conftest.py)."""
    root = tmp_path_factory.mktemp("chaos") / "dogs"
    root.mkdir()
    rng = random.Random(0)
    for i in range(FILES // 2):
        (root / f"img_{i:04}.jpg").write_bytes(rng.randbytes(32 + i % 97))
        (root / f"img_{i:04}.txt").write_text(f"a photo of sks dog number {i}")
    return root


@pytest.fixture(scope="session")
def expected(folder: Path) -> dict[str, tuple[int, str]]:
    """What the dataset must hold at the end."""
    return local_files(folder)


# -- the fault kinds themselves ----------------------------------------------------------------


def test_every_fault_kind_of_the_issue_exists() -> None:
    """429, 5xx, resets (also mid-body), HTML, truncated, slow and expiring URLs are injectable."""
    wanted = {"429", "500", "502", "503", "504", "reset", "reset_mid_body", "html", "truncated"}
    assert wanted | {"slow", "expire_url"} <= FAULT_KINDS
    with pytest.raises(ValueError, match="reset_mid_body"):
        FaultRule(kind="reset_mid_body", after=True)


def test_fault_draws_do_not_depend_on_arrival_order() -> None:
    """The same seed fires on the same requests whatever order they arrive in; ids are masked."""
    paths = [f"/storage/datasets/{i:08}-aaaa-4aaa-8aaa-{i:012}/img_{i}.jpg" for i in range(200)]

    def run(order: list[str], seed: int) -> set[str]:
        faults = FaultSet(seed)
        faults.add(FaultRule(kind="500", rate=0.2))
        return {path for path in order if faults.pick("storage", "PUT", path) is not None}

    forward = run(paths, 3)
    assert forward == run(list(reversed(paths)), 3)
    assert 10 < len(forward) < 80
    assert forward != run(paths, 4)
    assert request_key("put", paths[1]) == "PUT /storage/datasets/{id}/img_1.jpg"


@pytest.mark.asyncio
async def test_reset_mid_body_drops_the_connection_while_the_body_arrives() -> None:
    """A reset_mid_body fault reads part of a large body, then resets; nothing is stored."""
    body = os.urandom(8 << 20)
    async with Emulator(rate_limit=None) as emu, aiohttp.ClientSession() as http:
        rule = emu.inject("reset_mid_body", api="storage", count=1)
        # POST: aiohttp silently repeats an idempotent PUT once after a dropped connection
        with pytest.raises(aiohttp.ClientError):
            async with http.post(
                emu.url + "/storage/datasets/x/a.jpg", data=io.BytesIO(body)
            ) as resp:
                await resp.read()
        assert rule.fired == 1
        (record,) = emu.log
        assert record.status == 0
        assert 0 < record.body_size < len(body)


@pytest.mark.asyncio
async def test_after_fault_processes_the_request_then_loses_the_answer() -> None:
    """An ``after`` 500 creates the dataset and answers 500; a plain 500 creates nothing."""
    async with Emulator(rate_limit=None) as emu, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {emu.token}"}
        url = emu.url + "/prod/v1/trainers/datasets"
        emu.inject("500", method="POST", count=1)
        async with http.post(url, json={"name": "before"}, headers=headers) as resp:
            assert resp.status == 500
        emu.inject("500", method="POST", count=1, after=True)
        async with http.post(url, json={"name": "after"}, headers=headers) as resp:
            assert resp.status == 500
        async with http.get(url, headers=headers) as resp:
            names = [d["name"] for d in (await resp.json())["datasets"]]
        assert names == ["after"]


@pytest.mark.asyncio
async def test_storage_faults_answer_like_storage() -> None:
    """Storage 5xx and 429 carry storage's error body (code + message), API faults the API's."""
    async with Emulator(rate_limit=None) as emu, aiohttp.ClientSession() as http:
        emu.inject("503", api="storage", count=1)
        emu.inject("429", api="storage", count=1, retry_after=2)
        async with http.put(emu.url + "/storage/datasets/x/a.jpg", data=b"x") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "ServiceUnavailable"
        async with http.put(emu.url + "/storage/datasets/x/a.jpg", data=b"x") as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "2"
            assert (await resp.json())["error"] == "SlowDown"


@pytest.mark.asyncio
async def test_each_kind_is_survived_by_a_safe_api_call() -> None:
    """Every API fault kind, fired twice on a GET, is retried through to the right answer."""
    kinds = sorted(FAULT_KINDS - {"expire_url"})
    async with Emulator(rate_limit=None, seed=1) as emu, chaos_client(emu) as rc:
        created = await rc.datasets.create("kinds")
        for kind in kinds:
            delay = SLOW if kind == "slow" else 0.0
            rule = emu.inject(kind, method="GET", count=2, delay=delay)  # type: ignore[arg-type]
            info = await created.status()
            assert info.name == "kinds", kind
            assert rule.fired == 2, kind
            emu.remove_fault(rule)


# -- bulk upload -------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", SEEDS)
async def test_bulk_upload_survives_the_fault_mix(
    seed: int,
    folder: Path,
    expected: dict[str, tuple[int, str]],
    request: pytest.FixtureRequest,
) -> None:
    """1,000 files under ~10% API and storage faults: each stored once, exact size and hash."""
    async with Emulator(
        rate_limit=None, speed=SPEED, seed=seed, dataset_processing_seconds=0, url_ttl=URL_TTL
    ) as emu, chaos_client(emu) as rc:
        ds = await rc.datasets.create("chaos")
        emu.clear_log()
        rules = inject_mix(emu, apis=("trainer", "storage"))
        started = time.monotonic()
        report = await ds.upload_folder(folder, concurrency=32, batch_size=50)
        elapsed = time.monotonic() - started
        emu.clear_faults()
        assert emu.stored_files(ds.id) == expected
        listed = [f.filename for f in (await ds.status()).files]
        assert sorted(listed) == sorted(expected)  # each exactly once
        assert not report.failed and not report.skipped
        assert len(report.uploaded) == FILES
        assert {r.filename for r in report.uploaded} == set(expected)
        assert sum(r.size for r in report.uploaded) == sum(s for s, _ in expected.values())
        assert report.bytes_sent >= sum(s for s, _ in expected.values())
        retried = sum(1 for r in report.uploaded if r.attempts > 1)
        injected = fired(rules)
        assert injected >= 60, "the fault mix did not fire: the test would prove nothing"
        assert retried > 0
        note(request, "faults_injected", injected)
        note(request, "files_verified", len(expected))
        note(request, "seconds", round(elapsed, 2))


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", SEEDS)
async def test_cancelled_bulk_upload_resumes_under_faults(
    seed: int,
    folder: Path,
    expected: dict[str, tuple[int, str]],
    request: pytest.FixtureRequest,
) -> None:
    """Cancelled at a seeded moment, then re-run: only whole files were kept, the rest follow."""
    cancel_at = random.Random(seed).randint(1, FILES - 100)
    async with Emulator(
        rate_limit=None, speed=SPEED, seed=seed, dataset_processing_seconds=0, url_ttl=URL_TTL
    ) as emu, chaos_client(emu) as rc:
        ds = await rc.datasets.create("chaos")
        rules = inject_mix(emu, apis=("trainer", "storage"))
        done = 0
        me = asyncio.current_task()
        assert me is not None

        def count(event: UploadEvent) -> None:
            nonlocal done
            if isinstance(event, FileDone):
                done += 1
                if done == cancel_at:
                    me.cancel()

        with pytest.raises(asyncio.CancelledError):
            await ds.upload_folder(folder, concurrency=32, batch_size=50, progress=count)
        me.uncancel()
        kept = emu.stored_files(ds.id)
        assert len(kept) >= cancel_at
        assert all(expected[name] == stored for name, stored in kept.items())  # no cut file
        report = await ds.upload_folder(folder, concurrency=32, batch_size=50)
        injected = fired(rules)
        emu.clear_faults()
        assert emu.stored_files(ds.id) == expected
        skipped = {r.filename for r in report.skipped}
        uploaded = {r.filename for r in report.uploaded}
        assert set(kept) <= skipped
        assert not skipped & uploaded
        assert skipped | uploaded == set(expected)
        assert len(report.skipped) + len(report.uploaded) == FILES
        assert not report.failed
        note(request, "faults_injected", injected)
        note(request, "files_verified", len(expected))


# -- a job watch and a model batch, side by side ------------------------------------------------

JOB_CONFIG: dict[str, Any] = {
    "job": "extension",
    "config": {
        "name": "chaos_lora",
        "process": [
            {
                "type": "sd_trainer",
                "training_folder": "/app/ai-toolkit/output",
                "datasets": [{"folder_path": "/app/ai-toolkit/datasets/dogs"}],
                "train": {"steps": 20},
                "save": {"save_every": 5},
                "sample": {"sample_every": 10},
            }
        ],
    },
}
GOOD = "google/nano-banana-2-lite/text-to-image"  # in the emulator's built-in catalog
BAD = "acme/chaos/bad"
RUNS = 100


def _ready_dataset(emu: Emulator, name: str) -> None:
    """A READY dataset straight in the emulator's store (its upload is not the subject here)."""
    store = emu.state.datasets
    store.create(f"id-{name}", name)
    for filename in ("a.jpg", "a.txt"):
        obj = StoredObject(path=Path("/dev/null"), size=1, sha256="0")
        store.add_file(f"id-{name}", filename, obj)


async def _watch_preempted_job(emu: Emulator, rc: RunComfy, seed: int, dest: Path) -> int:
    """Watch a job preempted at a seeded step, resume it, download it; return files verified."""
    job = await rc.jobs.submit(JOB_CONFIG)
    job.poll = FAST_POLL
    preempt_at = random.Random(seed).randint(3, 17)
    emu.preempt_job(job.id, at_step=preempt_at)
    first = [a.key async for a in job.watch_artifacts()]
    stopped = await job
    assert stopped.status is JobState.STOPPED
    assert stopped.preempted and not stopped.completed
    assert stopped.progress is not None and stopped.progress.current_step == preempt_at
    await job.resume()
    seen = [a.key async for a in job.watch_artifacts()]
    final = await job
    assert final.status is JobState.STOPPED and final.completed
    stored = jobs_of(emu.state).artifacts(job.id)
    assert len(first) == len(set(first)) < len(stored)
    assert len(seen) == len(set(seen))
    assert set(first) < set(seen)
    assert {unquote(urlsplit(url).path) for _, url in seen} == {
        f"/storage/artifacts/{a.key}" for a in stored
    }
    paths = await job.download(dest)
    assert len(paths) == len(stored)
    for path, artifact in zip(paths, stored, strict=True):
        blob = emu.state.storage.blob_path(artifact.key)
        assert blob is not None
        assert path.read_bytes() == blob.read_bytes()
    assert not await asyncio.to_thread(lambda: list(dest.rglob("*.part")))
    return len(paths)


async def _model_batch(emu: Emulator, rc: RunComfy) -> int:
    """Run RUNS model requests at once (every tenth on a failing model); return runs finished."""
    emu.state.model_requests.set_workers(50)
    emu.set_model_behavior(BAD, fail="Upstream provider rejected the input")
    model_of = {i: BAD if i % 10 == 0 else GOOD for i in range(RUNS)}

    async def one(i: int) -> Any:
        return await rc.models.run(model_of[i], {"prompt": f"p{i}"}, poll=FAST_POLL)

    outcomes = await asyncio.gather(*(one(i) for i in range(RUNS)), return_exceptions=True)
    await asyncio.sleep(SLOW + 0.2)  # requests the client gave up on reach their handlers
    store = emu.state.model_requests
    records = {r.inputs["prompt"]: r for r in store._records.values()}
    assert len(records) == len(store._records), "a submit that reached the server was repeated"
    posts = [r for r in emu.log if r.method == "POST" and r.path.startswith("/v1/models/")]
    # A submit is repeated only after a 429 (refused before processing), never after a 5xx,
    # reset, timeout or unreadable answer that may hide a queued request.
    assert len(posts) == RUNS + sum(1 for r in posts if r.status == 429)
    finished = 0
    for i, outcome in enumerate(outcomes):
        record = records.get(f"p{i}")
        if isinstance(outcome, errors.RequestFailed):
            assert model_of[i] == BAD
            assert record is not None and record.fail is not None
            finished += 1
        elif isinstance(outcome, BaseException):
            # the submit's answer was lost: the client holds no handle (and cancelled nothing)
            assert isinstance(outcome, errors.APIError | errors.TransportError), outcome
            assert not isinstance(outcome, errors.OperationFailed)
            assert record is None or record.cancelled_at is None
        else:
            assert model_of[i] == GOOD
            assert record is not None
            assert outcome == store.output(record)
            finished += 1
    assert finished >= RUNS * 0.7, "too few runs finished: the fault mix is not ~10%"
    return finished


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", SEEDS)
async def test_job_watch_and_model_batch_survive_faults(
    seed: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A preempted job is watched, resumed and downloaded while 100 model runs go, under faults.

    The job sees each artifact once and downloads it intact; every model run ends right
    (output, RequestFailed, or a submit error), and no submit that reached the server is
    repeated. Trainer POSTs are left alone here: the model submits are the POSTs under test.
    """
    async with Emulator(
        rate_limit=None, speed=120.0, seed=seed, dataset_processing_seconds=0
    ) as emu, chaos_client(emu) as rc:
        _ready_dataset(emu, "dogs")
        emu.set_model_behavior(GOOD, duration=10.0 * 120 / 1000)  # as at speed 1000
        rules = [
            *inject_mix(emu, apis=("trainer",), method="GET"),
            *inject_mix(emu, apis=("storage", "model")),
        ]
        downloaded, finished = await asyncio.gather(
            _watch_preempted_job(emu, rc, seed, tmp_path / "out"), _model_batch(emu, rc)
        )
        injected = fired(rules)
        assert injected > 10
        note(request, "faults_injected", injected)
        note(request, "files_verified", downloaded)
        note(request, "runs_finished", finished)


# -- idempotency: a create whose answer was lost is not repeated -------------------------------


async def _create_dataset(rc: RunComfy) -> object:
    return await rc.datasets.create("once")


async def _create_unnamed_dataset(rc: RunComfy) -> object:
    return await rc.datasets.create()


async def _submit_job(rc: RunComfy) -> object:
    return await rc.jobs.submit(JOB_CONFIG, check_datasets=False)


async def _submit_model(rc: RunComfy) -> object:
    return await rc.models.submit(GOOD, {"prompt": "once"})


async def _launch_machine(rc: RunComfy) -> object:
    version = (await rc.machines.workflows())[0].version_id or ""
    return await rc.machines.launch(version)


async def _create_deployment(rc: RunComfy) -> object:
    workflow_id = (await rc.machines.workflows())[0].workflow_id
    return await rc.deployments.create(
        name="once", workflow_id=workflow_id, workflow_version="v1", hardware="AMPERE_24"
    )


async def _submit_serverless(rc: RunComfy) -> object:
    deployment = await _create_deployment(rc)
    assert isinstance(deployment, Deployment)
    return await deployment.submit({"6": {"inputs": {"text": "once"}}})


def _created(emu: Emulator, what: str) -> int:
    """How many resources of a kind the emulator holds."""
    state = emu.state
    if what.startswith("dataset"):
        return len(state.datasets.all())
    if what == "job":
        return len(jobs_of(state)._jobs)
    if what == "model":
        return len(state.model_requests._records)
    if what == "deployment":
        return len(state.deployments.deployments)
    if what == "serverless":
        return len(state.deployments.requests)
    return len(machine_store(state)._machines)


CREATES = {
    "dataset": (_create_dataset, "POST", r"^/prod/v1/trainers/datasets$"),
    "dataset-unnamed": (_create_unnamed_dataset, "POST", r"^/prod/v1/trainers/datasets$"),
    "job": (_submit_job, "POST", r"^/prod/v1/trainers/ai-toolkit/jobs$"),
    "model": (_submit_model, "POST", r"^/v1/models/"),
    "machine": (_launch_machine, "POST", r"/servers$"),
    "deployment": (_create_deployment, "POST", r"^/prod/v2/deployments$"),
    "serverless": (_submit_serverless, "POST", r"/inference$"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("what", sorted(CREATES))
@pytest.mark.parametrize("kind", ["500", "502", "reset", "truncated", "slow"])
async def test_create_whose_answer_was_lost_is_not_repeated(what: str, kind: str) -> None:
    """A create POST processed by the server but answered 5xx/reset/garbage/late is sent once.

    The caller gets the error -- except for a named dataset, where a 5xx, lost or cut answer is
    resolved by looking the unique name up, and a machine whose answer was lost or cut, found in
    the machine list by its workflow version and launch time: the handle of the one created
    comes back.
    """
    action, method, path = CREATES[what]
    async with Emulator(rate_limit=None, speed=1000.0) as emu, chaos_client(emu) as rc:
        delay = SLOW if kind == "slow" else 0.0
        emu.inject(kind, method=method, path=path, count=1, after=True, delay=delay)  # type: ignore[arg-type]
        if what == "dataset":
            created = await action(rc)
            assert isinstance(created, Dataset)
            assert [d.id for d in emu.state.datasets.all()] == [created.id]
        elif what == "machine" and kind not in ("500", "502"):
            launched = await action(rc)
            assert isinstance(launched, Machine)
            assert [m.server_id for m in await rc.machines.list()] == [launched.id]
        else:
            with pytest.raises((errors.APIError, errors.TransportError)):
                await action(rc)
        await asyncio.sleep(delay)  # a late answer has left the server by now
        posts = [r for r in emu.log if r.method == method and re.search(path, r.path)]
        assert len(posts) == 1, "a create that reached the server was sent again"
        assert _created(emu, what) == 1  # it exists, once: look it up instead of re-creating


@pytest.mark.asyncio
@pytest.mark.parametrize("what", sorted(CREATES))
async def test_create_refused_with_429_is_repeated_once_through(what: str) -> None:
    """A 429 is refused before processing, so the create is repeated and exists exactly once."""
    action, method, path = CREATES[what]
    async with Emulator(rate_limit=None, speed=1000.0) as emu, chaos_client(emu) as rc:
        emu.inject("429", method=method, path=path, count=2, retry_after=0)  # no pause: fast
        await action(rc)
        posts = [r for r in emu.log if r.method == method and re.search(path, r.path)]
        assert [r.status for r in posts][:2] == [429, 429]
        assert 200 <= posts[-1].status < 300 and len(posts) == 3
        assert _created(emu, what) == 1


@pytest.mark.asyncio
async def test_safe_posts_are_repeated_and_stay_harmless(tmp_path: Path) -> None:
    """Signed-URL requests and direct uploads processed then answered 500 are retried: one copy."""
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8direct")
    async with Emulator(rate_limit=None, speed=1000.0) as emu, chaos_client(emu) as rc:
        ds = await rc.datasets.create("safe")
        emu.inject("500", method="POST", path=r"/upload$", count=1, after=True)
        report = await ds.upload(tmp_path / "a.jpg", verify=False)
        assert report.uploaded[0].filename == "a.jpg"
        emu.inject("500", method="POST", path=r"/get-upload-endpoint$", count=1, after=True)
        await ds.upload(tmp_path / "a.jpg", direct_limit=0, verify=False)
        uploads = [r for r in emu.log if r.path.endswith(("/upload", "/get-upload-endpoint"))]
        assert [r.status for r in uploads] == [500, 200, 500, 200]
        assert list(emu.stored_files(ds.id)) == ["a.jpg"]
