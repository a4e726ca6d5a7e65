"""Shared test setup: the emulator's pytest plugin, and fast fixtures for new tests.

Tests must be fast (the whole suite runs in a few minutes on 2 cores). Where a test is not
about the rate limit, use ``fast_emu`` and ``fast_rc``: an emulator without an account limit
whose simulated durations run 1000x faster, and a client that does not pace itself. Where a test
is about the order or timing of a schedule, drive the limiter on virtual time instead of
sleeping (``tests._virtual_time.run_virtual``, see ``tests/test_schedule.py``).
"""

from collections.abc import AsyncIterator
from importlib.metadata import entry_points

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async import RunComfy
from runcomfy_async.testing import Emulator

pytest_plugins = (
    []
    if any(ep.name == "runcomfy_emulator" for ep in entry_points(group="pytest11"))
    else ["runcomfy_async.testing.plugin"]
)


@pytest_asyncio.fixture
async def api(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw session to the test module's ``emu`` fixture, sending its bearer token."""
    headers = {"Authorization": f"Bearer {emu.token}"}
    async with aiohttp.ClientSession(emu.url, headers=headers) as session:
        yield session


@pytest_asyncio.fixture
async def fast_emu() -> AsyncIterator[Emulator]:
    """An emulator without an account limit, simulated time 1000x faster (a 10 s run: 10 ms)."""
    async with Emulator(rate_limit=None, speed=1000.0, dataset_processing_seconds=0) as emu:
        yield emu


@pytest_asyncio.fixture
async def fast_rc(fast_emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client of ``fast_emu`` at 1000 requests/s (burst 100): it never waits for a token."""
    async with fast_emu.client(rate=1000.0, burst=100) as client:
        yield client


#: Tests that spend most of their time waiting in real time (servers in child processes,
#: wall-clock pacing, held answers), by node id prefix, in two xdist groups of about two
#: minutes each. Each group runs on one worker from the start of the run, so on two cores the
#: waits of two workers overlap the CPU-bound tests (the chaos seeds) on the others, instead of
#: all workers waiting at once and leaving the cores idle.
WAITING_GROUPS = {
    "waiting-a": (
        "tests/test_fastapi_example.py::",
        "tests/test_chaos.py::test_create_whose_answer_was_lost_is_not_repeated",
        "tests/test_redis_limiter.py::",
    ),
    "waiting-b": (
        "tests/test_polling_fairness.py::",
        "tests/test_chaos.py::test_job_watch_and_model_batch_survive_faults",
        "tests/test_redis_outage.py::",
        "tests/test_cli.py::",
    ),
}


#: The longest CPU-bound tests, by node id prefix: spread evenly through the run (see below).
CPU_BOUND = (
    "tests/test_chaos.py::test_bulk_upload_survives_the_fault_mix",
    "tests/test_chaos.py::test_cancelled_bulk_upload_resumes_under_faults",
    "tests/test_properties.py::",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the waiting tests in their groups (:data:`WAITING_GROUPS`), spread the
    :data:`CPU_BOUND` tests evenly among the others (in collection order they came in one
    block, so the cores were saturated first and half idle later), then apply the xdist group
    fix below."""
    for item in items:
        for group, prefixes in WAITING_GROUPS.items():
            if item.nodeid.startswith(prefixes) and not item.get_closest_marker("xdist_group"):
                item.add_marker(pytest.mark.xdist_group(group))
    heavy = [item for item in items if item.nodeid.startswith(CPU_BOUND)]
    light = [item for item in items if not item.nodeid.startswith(CPU_BOUND)]
    step = len(light) / max(len(heavy), 1)
    spread: list[pytest.Item] = []
    placed = 0
    for done, item in enumerate(light):
        # Only between modules, so that no module-scoped fixture is set up twice.
        if spread and getattr(spread[-1], "module", None) is not getattr(item, "module", None):
            while placed < len(heavy) and done >= (placed + 1) * step:
                spread.append(heavy[placed])
                placed += 1
        spread.append(item)
    items[:] = spread + heavy[placed:]
    _keep_xdist_groups(config, items)


def _keep_xdist_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``--dist loadgroup`` working under pytest 9.

    pytest-xdist (3.8) puts each ``xdist_group`` test on one worker by appending ``@group`` to
    its node id through ``Item._nodeid``, which pytest 9 no longer reads (the id lives in
    ``Item._id``), so the groups were silently ignored: a session fixture of a group ran once
    per worker. This appends the suffix the way pytest 9 stores ids; it does nothing where
    xdist's own suffix took effect.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest < 9: xdist's own suffix works
        return

    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        if names and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")
