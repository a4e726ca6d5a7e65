"""What a ComfyUI server says: files, WebSocket events, accepted prompts and its queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "ComfyEvent",
    "ComfyFile",
    "ComfyNodeProgress",
    "ComfyPrompt",
    "ComfyQueue",
    "ComfyQueueItem",
]

#: The suffix ComfyUI's image loaders read as "this file is in the output/temp folder".
_FOLDER_SUFFIX = {"output": " [output]", "temp": " [temp]"}


@attrs.frozen(kw_only=True)
class ComfyFile:
    """A file on a ComfyUI machine: an output of a prompt or an uploaded input.

    ``node_id`` names the node that produced an output (None for uploads).
    """

    filename: str
    subfolder: str = ""
    type: str = "output"
    node_id: str | None = None

    @property
    def input_value(self) -> str:
        """The value a ``LoadImage`` node's ``image`` input takes for this file.

        ComfyUI wants ``subfolder/filename`` for a file in a subfolder of its input folder (the
        bare name is refused), and a ``" [output]"`` / ``" [temp]"`` suffix for a file in
        those folders, so an output can be fed back into another prompt.
        """
        name = f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename
        return name + _FOLDER_SUFFIX.get(self.type, "")


@attrs.frozen(kw_only=True)
class ComfyNodeProgress:
    """One node's entry in a ``progress_state`` event.

    Args:
        node_id: the node.
        value: work done so far (steps, images...).
        max: work in all.
        state: ``running`` or ``finished`` (ComfyUI leaves pending nodes out).
    """

    node_id: str
    value: float
    max: float
    state: str

    @property
    def fraction(self) -> float | None:
        """``value / max``, None when the node gave no total."""
        return self.value / self.max if self.max else None


@attrs.frozen(kw_only=True)
class ComfyEvent:
    """One ComfyUI WebSocket event about a prompt, as given to a progress callback.

    Args:
        type: ``status``, ``execution_start``, ``execution_cached``, ``executing``,
            ``progress``, ``progress_state``, ``executed``, ``execution_success``,
            ``execution_error``, ``execution_interrupted``...
        data: the event's ``data`` object as sent (an ``executing`` event the server sends
            without a prompt id on reconnection gets the id of the prompt that was running).
    """

    type: str
    data: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def nodes(self) -> dict[str, ComfyNodeProgress]:
        """Per-node progress of a ``progress_state`` event (empty for other events)."""
        found = self.data.get("nodes") if self.type == "progress_state" else None
        progress = {}
        for node_id, entry in (found if isinstance(found, Mapping) else {}).items():
            if not isinstance(entry, Mapping):
                continue
            value, top = entry.get("value"), entry.get("max")
            progress[str(node_id)] = ComfyNodeProgress(
                node_id=str(node_id),
                value=float(value) if isinstance(value, int | float) else 0.0,
                max=float(top) if isinstance(top, int | float) else 0.0,
                state=str(entry.get("state") or ""),
            )
        return progress

    def _running(self) -> ComfyNodeProgress | None:
        """The node a ``progress_state`` event shows running (the last one listed)."""
        running = [n for n in self.nodes.values() if n.state == "running"]
        return running[-1] if running else None

    @property
    def node(self) -> str | None:
        """The node the event is about, when it names one (for ``progress_state``: the node
        that is running)."""
        if self.type == "progress_state":
            running = self._running()
            return None if running is None else running.node_id
        node = self.data.get("node", self.data.get("node_id"))
        return None if node is None else str(node)

    @property
    def fraction(self) -> float | None:
        """``value / max`` of a ``progress`` event, or of the running node of a
        ``progress_state`` event; else None."""
        if self.type == "progress_state":
            running = self._running()
            return None if running is None else running.fraction
        value, top = self.data.get("value"), self.data.get("max")
        if self.type != "progress" or not isinstance(value, int | float) or not top:
            return None
        return float(value) / float(top)

    @property
    def queue_remaining(self) -> int | None:
        """Prompts queued or running on the server, from a ``status`` event; else None."""
        status = self.data.get("status") if self.type == "status" else None
        info = status.get("exec_info") if isinstance(status, Mapping) else None
        remaining = info.get("queue_remaining") if isinstance(info, Mapping) else None
        return remaining if isinstance(remaining, int) else None


@attrs.frozen(kw_only=True)
class ComfyPrompt:
    """A prompt ComfyUI accepted.

    Args:
        prompt_id: the id to wait for and fetch outputs with.
        number: its place in ComfyUI's queue order.
        node_errors: for a partly valid prompt, the output nodes ComfyUI refused and why
            (``{node_id: {"errors": [...], "dependent_outputs": [...], "class_type": ...}}``);
            the valid outputs run all the same. Empty when the whole prompt was valid.
    """

    prompt_id: str
    number: float = 0
    node_errors: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ComfyQueueItem:
    """One prompt in ComfyUI's queue: ``[number, prompt_id, prompt, extra_data, outputs]``."""

    number: float
    prompt_id: str
    prompt: Mapping[str, Any] = attrs.field(factory=dict)
    extra_data: Mapping[str, Any] = attrs.field(factory=dict)
    outputs: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class ComfyQueue:
    """ComfyUI's queue: the prompt running and those waiting, in the order they will run."""

    running: tuple[ComfyQueueItem, ...] = ()
    pending: tuple[ComfyQueueItem, ...] = ()

    def position(self, prompt_id: str) -> int | None:
        """0 while the prompt runs, 1 for the next to run, ...; None when not queued."""
        if any(item.prompt_id == prompt_id for item in self.running):
            return 0
        for place, item in enumerate(self.pending, start=1):
            if item.prompt_id == prompt_id:
                return place
        return None
