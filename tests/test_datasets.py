"""The ``rc.datasets`` collection's look-ups, against the emulator over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from runcomfy_async import (
    ConflictError,
    Dataset,
    DatasetValidationError,
    FolderCheck,
    RunComfy,
    ValidationError,
)
from runcomfy_async.testing import Emulator


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit."""
    async with Emulator(rate_limit=None, speed=1000.0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client with a generous rate."""
    async with emu.client(rate=200.0, burst=20) as client:
        yield client


@pytest.mark.asyncio
async def test_find_resolves_an_id_or_a_name_with_one_list_call(
    emu: Emulator, rc: RunComfy
) -> None:
    """find returns a handle for an id or a name, None for neither, each with one GET."""
    dogs = await rc.datasets.create("dogs")
    await rc.datasets.create("cats")
    before = len(emu.log)
    by_id = await rc.datasets.find(dogs.id)
    by_name = await rc.datasets.find("dogs")
    missing = await rc.datasets.find("no-such-dataset")
    assert isinstance(by_id, Dataset) and isinstance(by_name, Dataset)
    assert (by_id.id, by_id.name) == (by_name.id, by_name.name) == (dogs.id, "dogs")
    assert missing is None
    calls = emu.log[before:]
    assert [(r.method, r.path) for r in calls] == [("GET", "/prod/v1/trainers/datasets")] * 3


@pytest.mark.asyncio
async def test_find_prefers_an_id_over_a_name(rc: RunComfy) -> None:
    """A dataset named like another dataset's id does not shadow that dataset."""
    first = await rc.datasets.create("first")
    await rc.datasets.create(first.id)
    found = await rc.datasets.find(first.id)
    assert found is not None and found.id == first.id and found.name == "first"


@pytest.mark.asyncio
async def test_find_refuses_an_empty_reference(emu: Emulator, rc: RunComfy) -> None:
    """An empty name_or_id is a ValidationError and nothing is sent."""
    before = len(emu.log)
    with pytest.raises(ValidationError):
        await rc.datasets.find("")
    assert len(emu.log) == before


@pytest.mark.asyncio
async def test_create_exist_ok_returns_the_existing_dataset(emu: Emulator, rc: RunComfy) -> None:
    """exist_ok=True hands back the dataset already called that (a script can run again);
    without it the 409 says how to get that behaviour."""
    first = await rc.datasets.create("again", exist_ok=True)
    second = await rc.datasets.create("again", exist_ok=True)
    assert (second.id, second.name) == (first.id, "again")
    with pytest.raises(ConflictError) as caught:
        await rc.datasets.create("again")
    assert "exist_ok=True" in caught.value.fix
    assert "rc.datasets.find('again')" in str(caught.value)
    assert "exist_ok" not in caught.value.problem


@pytest.mark.asyncio
async def test_check_folder_validates_without_sending(
    emu: Emulator, rc: RunComfy, tmp_path: Path
) -> None:
    """check_folder returns what would be sent, or raises upload_folder's own error; it sends
    nothing, even from a client that was never opened."""
    folder = tmp_path / "dogs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpeg")
    (folder / "a.txt").write_text("a dog")
    before = len(emu.log)
    check = await rc.datasets.check_folder(folder)
    assert check == FolderCheck(path=folder, files=("a.jpg", "a.txt"), total_bytes=9)
    (folder / "b.jpg").write_bytes(b"jpeg")
    with pytest.raises(DatasetValidationError) as checked:
        await emu.client().datasets.check_folder(folder)
    ds = await rc.datasets.create("checked")
    mark = len(emu.log)
    with pytest.raises(DatasetValidationError) as uploaded:
        await ds.upload_folder(folder)
    assert checked.value.problems == uploaded.value.problems
    assert "exist_ok=True" in uploaded.value.fix and "check_folder" in str(uploaded.value)
    assert "b.jpg: no caption b.txt" in checked.value.problems[0]
    assert len(emu.log) == mark
    assert [r.method for r in emu.log[before:]] == ["POST"]
