"""Server API machines (docs/wire.md): enums and snapshots (the ComfyUI types: comfyui.py)."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from ._base import OpenStrEnum
from .comfyui import ComfyEvent, ComfyFile  # their home before ComfyUI had a module

__all__ = ["ComfyEvent", "ComfyFile", "MachineInfo", "MachineStatus", "ServerType", "Workflow"]


class ServerType(enum.StrEnum):
    """The machine sizes the Server API launches (docs/wire.md): a closed set, checked here."""

    MEDIUM = "medium"
    LARGE = "large"
    EXTRA_LARGE = "extra-large"
    X2_LARGE = "2x-large"
    X2L_TURBO = "2xl-turbo"


class MachineStatus(OpenStrEnum):
    """A machine's ``current_status``: Initializing -> Ready -> Stopping (then gone).

    Only ``Ready`` and ``Initializing`` are confirmed by public code (docs/wire.md); the others are
    the names third-party clients use. Unknown values are kept; matching is case-insensitive.
    """

    INITIALIZING = "Initializing"
    STARTING = "Starting"
    READY = "Ready"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    DELETING = "Deleting"
    ERROR = "Error"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"failed": "error", "deleted": "stopped", "pending": "initializing"}

    @property
    def ended(self) -> bool:
        """True for states a machine never comes back from (stopping, stopped, error)."""
        return self in _ENDED


_ENDED = frozenset(
    {MachineStatus.STOPPING, MachineStatus.STOPPED, MachineStatus.DELETING, MachineStatus.ERROR}
)


@attrs.frozen(kw_only=True)
class MachineInfo:
    """A snapshot of one machine as the Server API described it (docs/wire.md).

    ``main_service_url`` (the ComfyUI backend) is only set once the machine is ``Ready``.
    ``server_type`` stays a plain string, so a size this library does not know yet still reads.
    """

    server_id: str
    current_status: MachineStatus
    user_id: str | None = None
    server_type: str | None = None
    estimated_duration: int | None = None
    workflow_version_id: str | None = None
    main_service_url: str | None = None
    service_ready_at: datetime | None = None
    estimated_stopping_at: datetime | None = None

    @property
    def id(self) -> str:
        """The machine's id (``server_id``)."""
        return self.server_id

    @property
    def status(self) -> MachineStatus:
        """The machine's status (``current_status``)."""
        return self.current_status


@attrs.frozen(kw_only=True)
class Workflow:
    """A saved workflow of the account; launch a machine with its ``version_id`` (docs/wire.md)."""

    workflow_id: str
    name: str | None = None
    version_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
