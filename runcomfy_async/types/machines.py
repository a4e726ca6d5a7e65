"""Server API machines and the ComfyUI they run (docs/wire.md): enums, snapshots."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ._base import OpenStrEnum

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


@attrs.frozen(kw_only=True)
class ComfyFile:
    """A file on a ComfyUI machine: an output of a prompt or an uploaded input (docs/wire.md).

    ``node_id`` names the node that produced an output (None for uploads).
    """

    filename: str
    subfolder: str = ""
    type: str = "output"
    node_id: str | None = None


@attrs.frozen(kw_only=True)
class ComfyEvent:
    """One ComfyUI WebSocket event about a prompt (docs/wire.md), as given to a progress callback.

    Args:
        type: ``execution_start``, ``executing``, ``progress``, ``executed``,
            ``execution_success``, ``execution_error``, ...
        data: the event's ``data`` object as sent.
    """

    type: str
    data: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def node(self) -> str | None:
        """The node the event is about, when it names one."""
        node = self.data.get("node", self.data.get("node_id"))
        return None if node is None else str(node)

    @property
    def fraction(self) -> float | None:
        """``value / max`` of a ``progress`` event, else None."""
        value, top = self.data.get("value"), self.data.get("max")
        if self.type != "progress" or not isinstance(value, int | float) or not top:
            return None
        return float(value) / float(top)
