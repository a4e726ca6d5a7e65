"""Serverless inference inputs: node overrides checked against a workflow, media made inline.

Overrides are ``{node_id: {"inputs": {input_name: value}}}`` and must name nodes and inputs of
the deployed workflow (its API-format ``workflow_api_json``); the service refuses anything else,
and a typo costs a round trip or, worse, a run with the default. Media inputs go as an http(s)
URL, or inline as a base64 data URI: a local :class:`~pathlib.Path` or ``bytes`` value is turned
into one here, up to :data:`MAX_INLINE_MEDIA` bytes per file.
"""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiofiles
import aiofiles.os

from . import errors

__all__ = ["MAX_INLINE_MEDIA", "check_overrides", "data_uri", "inline_media"]

#: Largest file sent inline as a data URI (bytes before base64). Larger media must be hosted
#: and passed by URL: a data URI grows the request body by a third again.
MAX_INLINE_MEDIA: Final = 20 * 1024 * 1024

# Leading bytes -> media type, for ``bytes`` values (a Path is typed by its suffix first).
_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
)


def _sniff(data: bytes) -> str:
    """The media type of some file bytes, ``application/octet-stream`` when unknown."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if data[8:12] == b"WEBP" else "audio/wav"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return "application/octet-stream"


def data_uri(data: bytes, media_type: str | None = None) -> str:
    """``data:<type>;base64,<data>``, the type sniffed from the bytes unless given.

    Raises:
        ValidationError: more than :data:`MAX_INLINE_MEDIA` bytes.
    """
    if len(data) > MAX_INLINE_MEDIA:
        raise errors.ValidationError(
            f"{len(data)} bytes is too large to send inline (at most {MAX_INLINE_MEDIA} bytes "
            "per file as a data URI); upload it somewhere public and pass its https URL instead"
        )
    kind = media_type or _sniff(data)
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


async def _path_uri(path: Path, where: str) -> str:
    """A local file as a data URI, its size checked before it is read."""
    try:
        size = (await aiofiles.os.stat(path)).st_size
    except OSError as exc:
        raise errors.ValidationError(
            f"{where}: cannot read {os.fspath(path)!r} ({exc.strerror or exc}); pass an existing "
            "file, its bytes, or an https URL"
        ) from None
    if size > MAX_INLINE_MEDIA:
        raise errors.ValidationError(
            f"{where}: {os.fspath(path)!r} is {size} bytes, too large to send inline (at most "
            f"{MAX_INLINE_MEDIA} bytes per file as a data URI); upload it somewhere public and "
            "pass its https URL instead"
        )
    async with aiofiles.open(path, "rb") as handle:
        data = await handle.read()
    guessed, _ = mimetypes.guess_type(path.name)
    return data_uri(data, guessed or _sniff(data))


async def inline_media(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides as JSON data: ``Path`` and ``bytes`` input values become data URIs.

    Raises:
        ValidationError: not shaped ``{node_id: {"inputs": {...}}}``, or a file that is
            missing, unreadable or larger than :data:`MAX_INLINE_MEDIA`.
    """
    if not isinstance(overrides, Mapping):
        raise errors.ValidationError(
            "overrides must be a mapping of node id to {'inputs': {...}}, e.g. "
            f"{{'6': {{'inputs': {{'text': 'a cat'}}}}}}, got {type(overrides).__name__}"
        )
    encoded: dict[str, Any] = {}
    for node_id, change in overrides.items():
        inputs = change.get("inputs") if isinstance(change, Mapping) else None
        if not isinstance(node_id, str | int) or isinstance(node_id, bool):
            raise errors.ValidationError(f"override node ids must be strings, got {node_id!r}")
        if not isinstance(inputs, Mapping):
            raise errors.ValidationError(
                f"override of node {node_id!s} must be {{'inputs': {{name: value}}}}, got "
                f"{change!r}"
            )
        values: dict[str, Any] = {}
        for name, value in inputs.items():
            where = f"override {node_id!s}.inputs.{name}"
            if isinstance(value, Path):
                values[name] = await _path_uri(value, where)
            elif isinstance(value, bytes | bytearray | memoryview):
                values[name] = data_uri(bytes(value))
            else:
                values[name] = value
        encoded[str(node_id)] = {**change, "inputs": values}
    return encoded


def _node_list(workflow: Mapping[str, Any]) -> str:
    """The workflow's nodes as ``id (class_type)``, in numeric-looking order."""
    ordered = sorted(workflow, key=lambda n: (len(str(n)), str(n)))
    return ", ".join(
        f"{n} ({workflow[n].get('class_type', '?')})" if isinstance(workflow[n], Mapping) else n
        for n in ordered
    )


def check_overrides(workflow: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Refuse overrides naming a node or an input the workflow does not have.

    Args:
        workflow: the deployed workflow in API format (``DeploymentPayload.workflow_api_json``).
        overrides: ``{node_id: {"inputs": {...}}}``.

    Raises:
        ValidationError: every unknown node (with the list of the workflow's nodes) and every
            unknown input (with the node's inputs), in one message.
    """
    problems: list[str] = []
    for node_id, change in overrides.items():
        node = workflow.get(str(node_id))
        if not isinstance(node, Mapping):
            problems.append(
                f"node {node_id!s} is not in the deployment's workflow; its nodes are "
                f"{_node_list(workflow)}"
            )
            continue
        known = node.get("inputs")
        known = known if isinstance(known, Mapping) else {}
        inputs = change.get("inputs") if isinstance(change, Mapping) else None
        for name in inputs or {}:
            if name not in known:
                problems.append(
                    f"node {node_id!s} ({node.get('class_type', '?')}) has no input {name!r}; "
                    f"its inputs are {', '.join(sorted(known)) or 'none'}"
                )
    if problems:
        raise errors.ValidationError(
            "the overrides do not match the deployed workflow (nothing was sent): "
            + "; ".join(problems)
        )
