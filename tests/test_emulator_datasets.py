"""The emulator's Trainer datasets API (docs/wire.md) and signed-URL storage."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async.testing import Emulator

DATASETS = "/prod/v1/trainers/datasets"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator without the rate limit and with a 1000-byte direct upload limit."""
    async with Emulator(rate_limit=None, max_direct_upload=1000) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def bare() -> AsyncIterator[aiohttp.ClientSession]:
    """A session without credentials, as a client talks to object storage."""
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    api: aiohttp.ClientSession, method: str, path: str, expect: int = 200, **kwargs: Any
) -> Any:
    """Send one API request, check the status and return the JSON body."""
    async with api.request(method, DATASETS + path, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == expect, body
        return body


async def create(api: aiohttp.ClientSession, name: str | None = None) -> str:
    """Create a dataset and return its id."""
    body = await call(api, "POST", "", json={} if name is None else {"name": name})
    return str(body["id"])


async def upload(
    api: aiohttp.ClientSession, dataset_id: str, filename: str, data: bytes, expect: int = 200
) -> Any:
    """Direct-upload one file as multipart ``file``."""
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return await call(api, "POST", f"/{dataset_id}/upload", expect, data=form)


async def status(api: aiohttp.ClientSession, dataset_id: str) -> Any:
    """The dataset's status body."""
    return await call(api, "GET", f"/{dataset_id}/status")


async def signed_urls(
    api: aiohttp.ClientSession, dataset_id: str, sizes: dict[str, int]
) -> dict[str, Any]:
    """Ask for signed upload URLs."""
    body = await call(
        api, "POST", f"/{dataset_id}/get-upload-endpoint", json={"filenameToByteSize": sizes}
    )
    return dict(body["uploads"])


def settle(emu: Emulator) -> None:
    """Let the simulated processing time after the last file pass."""
    emu.advance(emu.config.dataset_processing_seconds / emu.config.speed + 0.01)


# -- lifecycle --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_lifecycle_draft_uploading_ready(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """A dataset is DRAFT, UPLOADING after a file, READY once processing has passed."""
    created = await call(api, "POST", "", json={"name": "dogs"})
    assert created["status"] == "DRAFT"
    assert created["name"] == "dogs"
    assert created["error"] is None
    assert ISO.fullmatch(created["created_at"])
    dataset_id = created["id"]
    assert (await status(api, dataset_id))["files"] == []

    answer = await upload(api, dataset_id, "dog_01.jpg", b"j" * 100)
    assert answer == {
        "id": dataset_id,
        "filename": "dog_01.jpg",
        "size_bytes": 100,
        "status": "UPLOADING",
    }
    await upload(api, dataset_id, "dog_01.txt", b"a dog")
    body = await status(api, dataset_id)
    assert body["status"] == "UPLOADING"
    assert body["files"] == [
        {"filename": "dog_01.jpg", "size_bytes": 100},
        {"filename": "dog_01.txt", "size_bytes": 5},
    ]

    settle(emu)
    body = await status(api, dataset_id)
    assert body["status"] == "READY"
    assert body["updated_at"] > body["created_at"]
    listed = await call(api, "GET", "")
    assert [(d["id"], d["status"]) for d in listed["datasets"]] == [(dataset_id, "READY")]


@pytest.mark.asyncio
async def test_ready_comes_in_real_time_at_speed() -> None:
    """Without advancing the clock, processing takes processing_seconds / speed of real time."""
    async with Emulator(rate_limit=None, speed=100.0) as emu:
        headers = {"Authorization": f"Bearer {emu.token}"}
        async with aiohttp.ClientSession(emu.url, headers=headers) as api:
            dataset_id = await create(api)
            await upload(api, dataset_id, "a.png", b"png")
            await upload(api, dataset_id, "a.txt", b"caption")
            assert (await status(api, dataset_id))["status"] == "UPLOADING"
            for _ in range(100):
                if (await status(api, dataset_id))["status"] == "READY":
                    break
                await asyncio.sleep(0.01)
            assert (await status(api, dataset_id))["status"] == "READY"


@pytest.mark.asyncio
async def test_outstanding_signed_url_holds_ready_until_put_or_expiry(
    emu: Emulator, api: aiohttp.ClientSession, bare: aiohttp.ClientSession
) -> None:
    """An unused, unexpired signed URL keeps the dataset UPLOADING; using it lets it settle."""
    dataset_id = await create(api)
    await upload(api, dataset_id, "cat.jpg", b"cat")
    uploads = await signed_urls(api, dataset_id, {"cat.txt": 4, "spare.txt": 2})
    settle(emu)
    assert (await status(api, dataset_id))["status"] == "UPLOADING"
    async with bare.put(uploads["cat.txt"]["upload_url"], data=b"meow") as resp:
        assert resp.status == 200
    settle(emu)
    assert (await status(api, dataset_id))["status"] == "UPLOADING"  # spare.txt outstanding
    emu.advance(emu.config.url_ttl + 1)
    assert (await status(api, dataset_id))["status"] == "READY"


@pytest.mark.asyncio
async def test_caption_rule_fails_naming_files(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """Media without captions and orphan captions make the dataset FAILED, naming them."""
    dataset_id = await create(api)
    for name in ("a.jpg", "b.mp4", "c.txt", "d.webp", "d.txt"):
        await upload(api, dataset_id, name, b"x")
    settle(emu)
    body = await status(api, dataset_id)
    assert body["status"] == "FAILED"
    assert "a.jpg" in body["error"]
    assert "b.mp4" in body["error"]
    assert "c.txt" in body["error"]
    assert "d.webp" not in body["error"]
    emu.advance(60)
    assert (await status(api, dataset_id))["status"] == "FAILED"  # sticky

    await upload(api, dataset_id, "a.txt", b"caption")
    body = await status(api, dataset_id)
    assert (body["status"], body["error"]) == ("UPLOADING", None)


@pytest.mark.asyncio
async def test_fail_dataset_hook(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """emu.fail_dataset forces FAILED with the given error."""
    dataset_id = await create(api)
    emu.fail_dataset(dataset_id, error="disk on fire")
    body = await status(api, dataset_id)
    assert (body["status"], body["error"]) == ("FAILED", "disk on fire")


# -- create, list, delete ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_names_are_unique_per_account(api: aiohttp.ClientSession) -> None:
    """A second dataset with the same name is a 409 naming the name."""
    await create(api, "dup-name")
    body = await call(api, "POST", "", 409, json={"name": "dup-name"})
    assert body["error_code"] == 409001
    assert "dup-name" in body["error_message"]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["", "a b", "x/y", "..", "n" * 129, 42])
async def test_invalid_names_are_422(api: aiohttp.ClientSession, name: object) -> None:
    """Empty, over-long or non-[A-Za-z0-9._-] names are validation errors with a detail array."""
    body = await call(api, "POST", "", 422, json={"name": name})
    assert body["error_code"] == 422001
    assert body["detail"][0]["loc"] == ["body", "name"]


@pytest.mark.asyncio
async def test_name_is_generated_when_omitted(api: aiohttp.ClientSession) -> None:
    """Without a name (or without a body) the service generates ``ds_...``."""
    first = await call(api, "POST", "")
    second = await call(api, "POST", "", json={})
    assert re.fullmatch(r"ds_[0-9a-f]+", first["name"])
    assert first["name"] != second["name"]


@pytest.mark.asyncio
async def test_delete_removes_dataset_and_files(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """Delete answers {id, deleted}; afterwards the dataset and its files are gone."""
    dataset_id = await create(api, "gone")
    await upload(api, dataset_id, "a.jpg", b"x")
    path = emu.state.storage.path_for("datasets", f"{dataset_id}/a.jpg")
    assert path.is_file()
    assert await call(api, "DELETE", f"/{dataset_id}") == {"id": dataset_id, "deleted": True}
    assert not path.exists()
    body = await call(api, "GET", f"/{dataset_id}/status", 404)
    assert body["error_code"] == 404001
    await call(api, "DELETE", f"/{dataset_id}", 404)
    assert (await call(api, "GET", ""))["datasets"] == []
    await create(api, "gone")  # the name is free again


# -- direct upload ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_direct_upload_over_limit_is_413(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """A file over max_direct_upload is refused with 413 pointing at signed URLs; none stored."""
    dataset_id = await create(api)
    body = await upload(api, dataset_id, "big.jpg", b"x" * 1001, expect=413)
    assert body["error_code"] == 413001
    assert "get-upload-endpoint" in body["error_message"]
    assert emu.stored_files(dataset_id) == {}
    await upload(api, dataset_id, "limit.jpg", b"x" * 1000)
    assert emu.stored_files(dataset_id)["limit.jpg"][0] == 1000


@pytest.mark.asyncio
async def test_direct_upload_rejects_bad_parts(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """Unsupported types, a missing ``file`` part or extra parts are 422; nothing is stored."""
    dataset_id = await create(api)
    body = await upload(api, dataset_id, "notes.pdf", b"%PDF", expect=422)
    assert "unsupported" in body["detail"][0]["msg"]
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="a.jpg")
    await call(api, "POST", f"/{dataset_id}/upload", 422, data=form)
    form = aiohttp.FormData()
    form.add_field("file", b"x", filename="a.jpg")
    form.add_field("file", b"y", filename="b.jpg")
    await call(api, "POST", f"/{dataset_id}/upload", 422, data=form)
    await call(api, "POST", f"/{dataset_id}/upload", 422, json={"file": "a.jpg"})
    assert emu.stored_files(dataset_id) == {}
    await upload(api, "no-such-dataset", "a.jpg", b"x", expect=404)


@pytest.mark.asyncio
async def test_stored_files_sizes_sha256_and_overwrite(
    emu: Emulator, api: aiohttp.ClientSession, bare: aiohttp.ClientSession
) -> None:
    """stored_files reports size and sha256 as stored; the same name uploaded again overwrites."""
    dataset_id = await create(api)
    first, second, large = b"first", b"second version", bytes(range(256)) * 12_000
    await upload(api, dataset_id, "img.png", first)
    await upload(api, dataset_id, "img.png", second)
    uploads = await signed_urls(api, dataset_id, {"clip one.mp4": len(large)})
    entry = uploads["clip one.mp4"]
    assert entry["method"] == "PUT"
    assert entry["headers"] == {"Content-Type": "video/mp4"}
    async with bare.put(
        entry["upload_url"], data=io.BytesIO(large), headers=entry["headers"]
    ) as resp:
        assert resp.status == 200
    assert emu.stored_files(dataset_id) == {
        "img.png": (len(second), hashlib.sha256(second).hexdigest()),
        "clip one.mp4": (len(large), hashlib.sha256(large).hexdigest()),
    }
    path = emu.state.storage.path_for("datasets", f"{dataset_id}/clip one.mp4")
    assert path.read_bytes() == large
    put = next(r for r in emu.log if r.method == "PUT")
    assert (put.api, put.authorized, put.body_size) == ("storage", False, len(large))


# -- signed URLs ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_signed_url_shape(emu: Emulator, api: aiohttp.ClientSession) -> None:
    """Signed URLs live under /storage/datasets/{id}/{file} with size, expires and sig."""
    dataset_id = await create(api)
    body = await call(
        api,
        "POST",
        f"/{dataset_id}/get-upload-endpoint",
        json={"filenameToByteSize": {"a.jpg": 10, "a.txt": 3}},
    )
    assert ISO.fullmatch(body["expires_at"])
    url = urlsplit(body["uploads"]["a.jpg"]["upload_url"])
    assert f"{url.scheme}://{url.netloc}" == emu.url
    assert url.path == f"/storage/datasets/{dataset_id}/a.jpg"
    query = parse_qs(url.query)
    assert query["size"] == ["10"]
    assert re.fullmatch(r"[0-9a-f]{64}", query["sig"][0])
    assert body["uploads"]["a.txt"]["headers"] == {"Content-Type": "text/plain"}


@pytest.mark.asyncio
async def test_signed_put_rejections_store_nothing(
    emu: Emulator, api: aiohttp.ClientSession, bare: aiohttp.ClientSession
) -> None:
    """Wrong size, bad signature, expiry and a missing Content-Length are refused; none stored."""
    dataset_id = await create(api)
    uploads = await signed_urls(api, dataset_id, {"a.jpg": 10, "b.jpg": 10, "c.jpg": 10})

    async with bare.put(uploads["a.jpg"]["upload_url"], data=b"x" * 9) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "ContentLengthMismatch"

    tampered = uploads["a.jpg"]["upload_url"].replace("size=10", "size=9")
    async with bare.put(tampered, data=b"x" * 9) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "SignatureDoesNotMatch"

    other_file = uploads["a.jpg"]["upload_url"].replace("/a.jpg?", "/c.jpg?")
    async with bare.put(other_file, data=b"x" * 10) as resp:
        assert resp.status == 403

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 10

    async with bare.put(uploads["b.jpg"]["upload_url"], data=chunks()) as resp:
        assert resp.status == 411

    bearer = {"Authorization": f"Bearer {emu.token}"}
    async with bare.put(uploads["b.jpg"]["upload_url"], data=b"x" * 10, headers=bearer) as resp:
        assert resp.status == 400  # a signed URL plus a bearer token: refused, like S3 does
        assert "Only one auth mechanism" in (await resp.json())["message"]

    emu.advance(emu.config.url_ttl + 2)
    async with bare.put(uploads["c.jpg"]["upload_url"], data=b"x" * 10) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "ExpiredToken"

    assert emu.stored_files(dataset_id) == {}
    assert (await status(api, dataset_id))["files"] == []
    assert list(emu.state.storage.root.joinpath(".tmp").iterdir()) == []


@pytest.mark.asyncio
async def test_put_to_deleted_dataset_is_404(
    api: aiohttp.ClientSession, bare: aiohttp.ClientSession
) -> None:
    """A signed URL of a deleted dataset no longer accepts bytes."""
    dataset_id = await create(api)
    uploads = await signed_urls(api, dataset_id, {"a.jpg": 3})
    await call(api, "DELETE", f"/{dataset_id}")
    async with bare.put(uploads["a.jpg"]["upload_url"], data=b"abc") as resp:
        assert resp.status == 404


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"files": {"a.jpg": 1}},
        {"filenameToByteSize": {}},
        {"filenameToByteSize": {"a.jpg": 0}},
        {"filenameToByteSize": {"a.jpg": "12"}},
        {"filenameToByteSize": {"a.jpg": True}},
        {"filenameToByteSize": {"dir/a.jpg": 1}},
        {"filenameToByteSize": {"a.exe": 1}},
    ],
)
async def test_get_upload_endpoint_validation(api: aiohttp.ClientSession, payload: Any) -> None:
    """Bad bodies, non-positive sizes and unsupported or nested names are 422."""
    dataset_id = await create(api)
    body = await call(api, "POST", f"/{dataset_id}/get-upload-endpoint", 422, json=payload)
    assert body["error_code"] == 422001
    assert isinstance(body["detail"], list)


@pytest.mark.asyncio
async def test_get_upload_endpoint_file_limit(api: aiohttp.ClientSession) -> None:
    """More than 1000 files in one call is a 413; exactly 1000 is fine."""
    dataset_id = await create(api)
    sizes = {f"img_{i:04}.jpg": 1 for i in range(1001)}
    body = await call(
        api, "POST", f"/{dataset_id}/get-upload-endpoint", 413, json={"filenameToByteSize": sizes}
    )
    assert body["error_code"] == 413001
    sizes.pop("img_1000.jpg")
    assert len(await signed_urls(api, dataset_id, sizes)) == 1000
