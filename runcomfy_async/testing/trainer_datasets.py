"""Trainer API datasets (docs/wire.md): create, list, status, delete and both uploads."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from aiohttp import BodyPartReader, web

from .._rules import MAX_UPLOAD_URLS_PER_REQUEST
from ._datasets import BUCKET, DatasetRecord, NameTaken, content_type_for, filename_problem
from ._datasets import name_problem as _name_problem
from ._storage import CHUNK, TooLarge
from ._wire import ApiError, field_error, iso_timestamp, not_found, read_json, validation_error

if TYPE_CHECKING:
    from ._state import EmulatorState

__all__ = ["MAX_FILES_PER_CALL", "PREFIX", "add_routes"]

PREFIX: Final = "/prod/v1/trainers/datasets"
MAX_FILES_PER_CALL: Final = MAX_UPLOAD_URLS_PER_REQUEST
# Multipart framing around one file is a few hundred bytes; a Content-Length beyond the limit by
# more than this cannot be a file within it, so it is refused before a byte is read.
_MULTIPART_SLACK: Final = 1 << 20


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    """A multipart part's body in chunks, never whole."""
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


def _too_large(limit: int) -> ApiError:
    """The 413 of a direct upload over the limit, pointing at the signed-URL route."""
    return ApiError(
        413,
        413001,
        f"File too large for direct upload: the limit is {limit} bytes per file; "
        "use POST /prod/v1/trainers/datasets/{dataset_id}/get-upload-endpoint for larger files.",
    )


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the six dataset endpoints."""
    store = state.datasets
    storage = state.storage

    def lookup(request: web.Request) -> DatasetRecord:
        """The dataset named in the path, or 404."""
        dataset_id = request.match_info["dataset_id"]
        try:
            return store.get(dataset_id)
        except KeyError:
            raise not_found(f"Dataset {dataset_id} not found") from None

    async def create(request: web.Request) -> web.Response:
        """POST /datasets: a DRAFT dataset; ``name`` optional, unique, mount-path safe."""
        body = await read_json(request)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise validation_error([field_error(["body"], "body must be a JSON object")])
        name = body.get("name")
        if name is None:
            name = f"ds_{secrets.token_hex(6)}"
        if not isinstance(name, str):
            raise validation_error(
                [field_error(["body", "name"], "name must be a string", "type_error.str")]
            )
        problem = _name_problem(name)
        if problem is not None:
            raise validation_error([field_error(["body", "name"], problem)])
        try:
            record = store.create(state.new_id(), name)
        except NameTaken:
            raise ApiError(
                409,
                409001,
                f"A dataset named {name!r} already exists in this account; names must be unique.",
            ) from None
        return web.json_response(store.to_json(record), status=200)

    async def list_datasets(request: web.Request) -> web.Response:
        """GET /datasets: every dataset of the account, oldest first."""
        return web.json_response({"datasets": [store.to_json(d) for d in store.all()]})

    async def status(request: web.Request) -> web.Response:
        """GET /datasets/{id}/status: the dataset with its completed files."""
        return web.json_response(store.to_json(lookup(request), files=True))

    async def delete(request: web.Request) -> web.Response:
        """DELETE /datasets/{id}: forget it and remove its files."""
        record = lookup(request)
        store.delete(record.id)
        await asyncio.to_thread(storage.remove_prefix, BUCKET, record.id)
        return web.json_response({"id": record.id, "deleted": True})

    async def upload(request: web.Request) -> web.Response:
        """POST /datasets/{id}/upload: one multipart part ``file``, streamed, size-capped."""
        record = lookup(request)
        limit = state.config.max_direct_upload
        missing = field_error(["body", "file"], "field required", "value_error.missing")
        if request.content_type != "multipart/form-data":
            raise validation_error([missing])
        length = request.content_length
        if length is not None and length > limit + _MULTIPART_SLACK:
            raise _too_large(limit)
        reader = await request.multipart()
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != "file" or not part.filename:
            raise validation_error([missing])
        filename = part.filename
        problem = filename_problem(filename)
        if problem is not None:
            raise validation_error([field_error(["body", "file"], problem)])
        try:
            received = await storage.receive(_part_chunks(part), max_size=limit)
        except TooLarge:
            raise _too_large(limit) from None
        try:
            extra = await reader.next()
        except BaseException:
            storage.discard(received)
            raise
        if extra is not None:
            storage.discard(received)
            raise validation_error(
                [field_error(["body"], "send exactly one multipart part, named 'file'")]
            )
        if record.id not in store:  # deleted while the body was arriving
            storage.discard(received)
            raise not_found(f"Dataset {record.id} not found")
        obj = storage.place(received, BUCKET, f"{record.id}/{filename}")
        record = store.add_file(record.id, filename, obj)
        return web.json_response(
            {
                "id": record.id,
                "filename": filename,
                "size_bytes": obj.size,
                "status": store.status(record).value,
            }
        )

    def check_sizes(body: Any) -> dict[str, int]:
        """Validate ``{"filenameToByteSize": {name: size}}`` (docs/wire.md)."""
        if not isinstance(body, dict) or "filenameToByteSize" not in body:
            raise validation_error(
                [
                    field_error(
                        ["body", "filenameToByteSize"], "field required", "value_error.missing"
                    )
                ]
            )
        sizes = body["filenameToByteSize"]
        if not isinstance(sizes, dict) or not sizes:
            raise validation_error(
                [
                    field_error(
                        ["body", "filenameToByteSize"],
                        "must be a non-empty object mapping file names to byte sizes",
                    )
                ]
            )
        if len(sizes) > MAX_FILES_PER_CALL:
            raise ApiError(
                413,
                413001,
                f"Too many files in one request: {len(sizes)}; "
                f"the limit is {MAX_FILES_PER_CALL} per call, split the request.",
            )
        errors = []
        for filename, size in sizes.items():
            loc = ["body", "filenameToByteSize", filename]
            problem = filename_problem(filename)
            if problem is not None:
                errors.append(field_error(loc, problem))
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                errors.append(field_error(loc, "size must be a positive integer number of bytes"))
        if errors:
            raise validation_error(errors)
        return sizes

    async def upload_endpoint(request: web.Request) -> web.Response:
        """POST /datasets/{id}/get-upload-endpoint: one signed PUT URL per file."""
        record = lookup(request)
        sizes = check_sizes(await read_json(request))
        uploads: dict[str, Any] = {}
        expires = 0.0
        for filename, size in sizes.items():
            signed = store.issue_upload(record, filename, size)
            expires = signed.expires
            content_type = content_type_for(filename) or "application/octet-stream"
            uploads[filename] = {
                "upload_url": signed.url,
                "method": "PUT",
                "headers": {"Content-Type": content_type},
            }
        return web.json_response({"uploads": uploads, "expires_at": iso_timestamp(expires)})

    app.router.add_post(PREFIX, create)
    app.router.add_get(PREFIX, list_datasets)
    app.router.add_get(PREFIX + "/{dataset_id}/status", status)
    app.router.add_delete(PREFIX + "/{dataset_id}", delete)
    app.router.add_post(PREFIX + "/{dataset_id}/upload", upload)
    app.router.add_post(PREFIX + "/{dataset_id}/get-upload-endpoint", upload_endpoint)
