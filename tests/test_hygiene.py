"""Resource hygiene: warnings are errors, and a cancelled bulk upload leaves nothing open.

Open files are counted in ``/proc/self/fd`` (Linux): before the upload, right after it is
cancelled (no descriptor may point at the dataset folder or at the emulator's half-received
bodies), and after everything closed (the count is back where it started).
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from pathlib import Path

import pytest

from runcomfy_async.testing import Emulator
from runcomfy_async.types.uploads import FileDone, UploadEvent

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts descriptors in /proc/self/fd"
)


def open_fds() -> dict[int, str]:
    """``{fd: target}`` of this process's open descriptors (the listing's own fd excluded)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor os.listdir itself used, closed by now
    return found


def under(fds: dict[int, str], root: Path) -> list[str]:
    """The descriptors pointing into ``root``."""
    prefix = str(root.resolve())
    return [target for target in fds.values() if target.startswith(prefix)]


def test_warnings_are_errors_in_this_suite(pytestconfig: pytest.Config) -> None:
    """pytest runs with filterwarnings=error, so an unclosed session or file fails its test."""
    assert "error" in pytestconfig.getini("filterwarnings")
    with pytest.raises(ResourceWarning):
        warnings.warn("unclosed", ResourceWarning, stacklevel=1)


@pytest.mark.asyncio
async def test_an_unclosed_client_warns() -> None:
    """A client left open warns with a ResourceWarning naming the fix."""
    async with Emulator(rate_limit=None) as emu:
        rc = emu.client()
        await rc.open()
        session = rc.session
        with pytest.warns(ResourceWarning, match="async with RunComfy"):
            del rc  # the last reference: collected (and warning) right here
        await session.close()


@pytest.mark.asyncio
async def test_cancelled_bulk_upload_leaves_no_open_descriptors(tmp_path: Path) -> None:
    """Cancelling a 1,000-file upload mid-flight closes every file, socket and body it opened."""
    folder = tmp_path / "dogs"
    folder.mkdir()
    for i in range(500):
        (folder / f"img_{i:04}.jpg").write_bytes(os.urandom(2000 + i))
        (folder / f"img_{i:04}.txt").write_text(f"dog {i}")
    await asyncio.sleep(0)
    tasks_before = asyncio.all_tasks()
    before = open_fds()
    storage_dir = tmp_path / "storage"
    async with (
        Emulator(rate_limit=None, speed=1000.0, storage_dir=storage_dir) as emu,
        emu.client(rate=1000.0, burst=100) as rc,
    ):
        ds = await rc.datasets.create("dogs")
        # some transfers hang mid-way, so the cancel catches them with files open
        emu.inject("slow", api="storage", delay=1.5, rate=0.2)
        done = 0
        me = asyncio.current_task()
        assert me is not None

        def count(event: UploadEvent) -> None:
            nonlocal done
            if isinstance(event, FileDone):
                done += 1
                if done == 300:
                    me.cancel()

        with pytest.raises(asyncio.CancelledError):
            await ds.upload_folder(folder, concurrency=32, progress=count)
        me.uncancel()
        await asyncio.sleep(0.1)  # let aiohttp finish closing the aborted connections
        during = open_fds()
        assert under(during, folder) == []
        assert under(during, storage_dir / ".tmp") == []
        assert 300 <= len(emu.stored_files(ds.id)) < 1000
        emu.clear_faults()
    await asyncio.sleep(0.1)  # the emulator's cancelled handlers finish unwinding
    after = open_fds()
    assert sorted(after) == sorted(before), {fd: after.get(fd) for fd in set(after) - set(before)}
    # Only the emulator's own request handlers (a "slow" fault sleeps on) may still unwind.
    leftover = asyncio.all_tasks() - tasks_before
    assert all("RequestHandler." in repr(t.get_coro()) for t in leftover), leftover
