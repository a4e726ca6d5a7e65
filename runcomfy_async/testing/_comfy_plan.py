"""How ComfyUI orders a prompt's nodes, and which of them it can take from its cache.

The order is ComfyUI's: starting from the output nodes, a node is ready once every uncached
node it takes input from has run; among the ready nodes an output node goes first, then a node
an output waits for, then one two steps before an output, else the first ready. A node's cache
key covers its class, its constant inputs, the keys of the nodes it takes input from, and what
it says changed (a LoadImage's file contents; a SaveImageWebsocket always changes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from ._comfy_nodes import NODES

__all__ = ["Plan", "is_link", "signatures"]


def is_link(value: Any) -> bool:
    """A node input ``[node_id, output_index]`` refers to another node's output."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
    )


def signatures(
    prompt: Mapping[str, Any], changed: Callable[[str, Mapping[str, Any]], str]
) -> dict[str, str]:
    """Every node's cache key; ``changed(class_type, inputs)`` is its "what changed" token."""
    keys: dict[str, str] = {}

    def key(node_id: str) -> str:
        if node_id not in keys:
            node = prompt[node_id]
            inputs = node.get("inputs", {})
            parts: dict[str, Any] = {}
            for name, value in sorted(inputs.items()):
                if is_link(value) and str(value[0]) in prompt:
                    parts[name] = [key(str(value[0])), value[1]]
                else:
                    parts[name] = value
            text = json.dumps(
                [node["class_type"], parts, changed(node["class_type"], inputs)],
                sort_keys=True,
                default=str,
            )
            keys[node_id] = hashlib.sha256(text.encode()).hexdigest()
        return keys[node_id]

    for node_id in prompt:
        key(node_id)
    return keys


class Plan:
    """The nodes still to run for some outputs, handed out in ComfyUI's order.

    Args:
        prompt: the validated prompt.
        outputs: the output nodes to run.
        cached: nodes whose results are cached (their inputs are not run again).
    """

    def __init__(self, prompt: Mapping[str, Any], outputs: list[str], cached: set[str]) -> None:
        self._prompt = prompt
        self._cached = cached
        self._pending: dict[str, set[str]] = {}  # node -> the pending nodes it waits for
        for output in outputs:
            self._add(output)

    def _add(self, node_id: str) -> None:
        stack = [node_id]
        while stack:
            current = stack.pop()
            if current in self._pending:
                continue
            waits = self._pending[current] = set()
            for value in self._prompt[current].get("inputs", {}).values():
                if is_link(value) and str(value[0]) not in self._cached:
                    waits.add(str(value[0]))
                    stack.append(str(value[0]))

    def _is_output(self, node_id: str) -> bool:
        return NODES[self._prompt[node_id]["class_type"]].output_node

    def _blocks(self, node_id: str) -> list[str]:
        return [n for n, waits in self._pending.items() if node_id in waits]

    def next(self) -> str | None:
        """The node to run next (None when every node ran)."""
        ready = [n for n, waits in self._pending.items() if not waits & self._pending.keys()]
        if not ready:
            return None
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self._blocks(node_id)):
                return node_id
        for node_id in ready:
            if any(self._is_output(c) for b in self._blocks(node_id) for c in self._blocks(b)):
                return node_id
        return ready[0]

    def done(self, node_id: str) -> None:
        """The node ran."""
        del self._pending[node_id]
