"""Trainer datasets (API.md section 1): the ``rc.datasets`` collection and ``Dataset`` handles."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import errors
from .._converter import structure
from .._limiter import Priority
from .._polling import PollPolicy, poll_until
from .._protocol import API, RequestSpec, Retry
from ..types.datasets import DatasetInfo, DatasetStatus

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["Dataset", "Datasets"]

_BASE = "/prod/v1/trainers/datasets"


def _path(dataset_id: str, suffix: str = "") -> str:
    if not dataset_id or not isinstance(dataset_id, str):
        raise errors.ValidationError("dataset id must be a non-empty string")
    return f"{_BASE}/{quote(dataset_id, safe='')}{suffix}"


def _unwrap_list(payload: Any, key: str) -> list[Any]:
    """A list endpoint's items, whether the server sent a bare list or ``{key: [...]}``."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and isinstance(payload.get(key), list):
        return list(payload[key])
    raise errors.UnexpectedResponseError(
        f"expected a list of {key} (bare or wrapped as {{{key!r}: [...]}})", status=200
    )


class Dataset:
    """An awaitable handle on one dataset: ``await ds`` waits until READY."""

    def __init__(self, client: RunComfy, dataset_id: str, name: str | None = None) -> None:
        self._client = client
        self.id = dataset_id
        self.name = name

    def __repr__(self) -> str:
        return f"Dataset(id={self.id!r}, name={self.name!r})"

    async def status(self, *, priority: Priority = Priority.USER) -> DatasetInfo:
        """Ask the server for the dataset's current state (never a cached one)."""
        payload = await self._client.request(
            RequestSpec(api=API.TRAINER, method="GET", path=_path(self.id, "/status")),
            priority=priority,
        )
        info = structure(payload, DatasetInfo, what="dataset status")
        if info.name:
            self.name = info.name
        return info

    async def wait_ready(
        self, *, timeout: float | None = None, poll: PollPolicy | None = None
    ) -> DatasetInfo:
        """Poll until READY and return that snapshot.

        Raises:
            DatasetFailed: the dataset went FAILED (``error`` holds the server's reason).
            ValidationError: the dataset is an empty DRAFT: nothing is uploading, it would never
                become READY.
            WaitTimeoutError: ``timeout`` passed first.
        """
        info = await poll_until(
            lambda: self.status(priority=Priority.BACKGROUND),
            _dataset_settled,
            policy=poll or PollPolicy(initial=0.5, max_interval=10.0),
            timeout=timeout,
            key=lambda i: (i.status, len(i.files)),
            what=f"dataset {self.id} to become READY",
        )
        if info.status is DatasetStatus.FAILED:
            raise errors.DatasetFailed(
                f"dataset {self.id} ({info.name}) FAILED: {info.error}; fix the files and "
                "upload again, or create a new dataset",
                error=info.error,
                snapshot=info,
            )
        if info.status is DatasetStatus.DRAFT:
            raise errors.ValidationError(
                f"dataset {self.id} ({info.name}) is an empty DRAFT: nothing has been uploaded, "
                "so it will never become READY; upload files first (ds.upload_folder(...))"
            )
        return info

    def __await__(self) -> Generator[Any, None, DatasetInfo]:
        return self.wait_ready().__await__()

    async def delete(self) -> None:
        """Delete this dataset."""
        await self._client.datasets.delete(self.id)


def _dataset_settled(info: DatasetInfo) -> bool:
    return info.status in (DatasetStatus.READY, DatasetStatus.FAILED, DatasetStatus.DRAFT)


class Datasets:
    """``rc.datasets``: create, look up, list and delete datasets."""

    def __init__(self, client: RunComfy) -> None:
        self._client = client

    async def create(self, name: str | None = None) -> Dataset:
        """Create an empty dataset (status DRAFT); ``name`` must be unique in the account.

        Raises:
            ConflictError: the name is taken.
        """
        if name is not None and (not name.strip() or name != name.strip()):
            raise errors.ValidationError(
                f"dataset name {name!r} is empty or has surrounding whitespace; pass a plain "
                "name such as 'my-dog-dataset'"
            )
        body = {"name": name} if name else {}
        # Not retried blindly: a lost answer could leave a second dataset. Repeating after 429 or
        # a refused connection is safe (the request never ran); with a name, a 409 on a retry
        # would tell us it exists (see issue 9's idempotency notes).
        payload = await self._client.request(
            RequestSpec(api=API.TRAINER, method="POST", path=_BASE, json=body, retry=Retry.UNSENT)
        )
        info = structure(payload, DatasetInfo, what="created dataset")
        return Dataset(self._client, info.id, info.name)

    def get(self, dataset_id: str) -> Dataset:
        """A handle on an existing dataset by id (no request is sent)."""
        _path(dataset_id)
        return Dataset(self._client, dataset_id)

    async def list(self) -> list[DatasetInfo]:
        """Every dataset of the account."""
        payload = await self._client.request(RequestSpec(api=API.TRAINER, method="GET", path=_BASE))
        return [
            structure(item, DatasetInfo, what="dataset list")
            for item in _unwrap_list(payload, "datasets")
        ]

    async def delete(self, dataset_id: str) -> None:
        """Delete a dataset by id.

        Raises:
            NotFoundError: no such dataset.
        """
        await self._client.request(
            RequestSpec(api=API.TRAINER, method="DELETE", path=_path(dataset_id))
        )
