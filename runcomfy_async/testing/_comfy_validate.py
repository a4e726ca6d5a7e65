"""ComfyUI's prompt validation, in its order and with its error shapes.

Unknown or class-less nodes refuse the prompt at once (``invalid_prompt``); a prompt without an
output node is ``prompt_no_outputs``; then each output node is checked with everything it takes
input from. A broken link (missing node, output index out of range) is an exception during
validation, reported on the output node, or on the linked node when found one level down. An
output whose checks fail is left out: when none is left the prompt is refused
(``prompt_outputs_failed_validation``), otherwise the valid outputs run and the errors come
back with the accepted prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import attrs

from ._comfy_nodes import INPUT_FILES, NODES, Input, input_config

__all__ = ["Verdict", "validate_prompt"]

#: LoadImage checks its ``image`` itself (the file must exist), instead of the list check.
_CUSTOM_CHECKED: Final = MappingProxyType({"LoadImage": "image"})
_CONVERT: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
)


@attrs.frozen(kw_only=True)
class Verdict:
    """What validation decided: the refusing ``error`` (None: run ``outputs``), and the
    per-node errors (also for a partly valid prompt)."""

    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


class _Broken(Exception):
    """What ComfyUI meets as a Python exception while validating (a broken link)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _refused(error: dict[str, Any]) -> Verdict:
    return Verdict(error=error, outputs=[], node_errors={})


def validate_prompt(
    prompt: Any, *, input_files: Sequence[str], exists: Callable[[str], bool]
) -> Verdict:
    """Check a prompt as ComfyUI does.

    Args:
        prompt: the ``prompt`` of a ``POST /prompt`` body.
        input_files: the image files at the top of the input folder (LoadImage's list).
        exists: whether a LoadImage value names a file (``subfolder/name`` included).
    """
    if not isinstance(prompt, dict):
        return _refused(_error("invalid_prompt", "Prompt must be an object of nodes"))
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return _refused(
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            )
        spec = NODES.get(str(node["class_type"]))
        if spec is None:
            return _refused(
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
            )
        if spec.output_node:
            outputs.append(node_id)
    if not outputs:
        return _refused(_error("prompt_no_outputs", "Prompt has no outputs"))
    checker = _Checker(prompt, input_files, exists)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        try:
            valid, reasons = checker.node(output)
        except _Broken as exc:
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(exc),
                    exception_type=exc.kind,
                    traceback=["(emulated)"],
                )
            ]
            checker.validated[output] = (False, reasons)
        if valid:
            good.append(output)
            continue
        failed.append((output, reasons))
        for node_id, (ok, found) in checker.validated.items():
            if ok or not found:
                continue
            entry = node_errors.setdefault(
                node_id,
                {
                    "errors": found,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                },
            )
            entry["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, found in failed for e in found)
        error = _error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
        )
        return Verdict(error=error, outputs=[], node_errors=node_errors)
    return Verdict(error=None, outputs=good, node_errors=node_errors)


class _Checker:
    """Checks nodes and remembers each verdict (a node shared by outputs is checked once)."""

    def __init__(
        self, prompt: dict[str, Any], input_files: Sequence[str], exists: Callable[[str], bool]
    ) -> None:
        self.prompt = prompt
        self.input_files = input_files
        self.exists = exists
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        """``(valid, errors)`` of a node; an upstream failure makes it invalid without errors."""
        if node_id in self.validated:
            return self.validated[node_id]
        node = self.prompt[node_id]
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            raise _Broken("'inputs'", "KeyError")
        spec = NODES[str(node["class_type"])]
        custom = _CUSTOM_CHECKED.get(spec.name)
        problems: list[dict[str, Any]] = []
        valid = True
        for item in spec.inputs:
            if item.name not in inputs:
                if item.required:
                    problems.append(
                        _error(
                            "required_input_missing",
                            "Required input is missing",
                            item.name,
                            input_name=item.name,
                        )
                    )
                continue
            value = inputs[item.name]
            config = input_config(item, self.input_files)
            if isinstance(value, list):
                ok, problem = self._link(item, value, config)
                valid = valid and ok
            else:
                problem = self._value(item, value, config, checked_by_node=item.name == custom)
            if problem is not None:
                problems.append(problem)
        image = inputs.get(custom) if custom else None
        if isinstance(image, str) and not self.exists(image):
            problems.append(
                _error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    f"{custom} - Invalid image file: {image}",
                    input_name=custom,
                )
            )
        verdict = (not problems and valid, problems)
        self.validated[node_id] = verdict
        return verdict

    def _link(
        self, item: Input, value: list[Any], config: list[Any]
    ) -> tuple[bool, dict[str, Any] | None]:
        """A linked input: ``(upstream valid, this input's error)``."""
        if len(value) != 2:
            return True, _error(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                item.name,
                input_name=item.name,
                input_config=config,
                received_value=value,
            )
        source, index = value
        if source not in self.prompt:
            raise _Broken(repr(source), "KeyError")
        produced = NODES[str(self.prompt[source]["class_type"])].outputs
        if not isinstance(index, int):
            raise _Broken(
                f"tuple indices must be integers or slices, not {type(index).__name__}", "TypeError"
            )
        if not -len(produced) <= index < len(produced):
            raise _Broken("tuple index out of range", "IndexError")
        received = produced[index]
        if not _type_matches(received, item.type):
            return True, _error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                f"{item.name}, received_type({received}) mismatch input_type({_type_name(item)})",
                input_name=item.name,
                input_config=config,
                received_type=received,
                linked_node=value,
            )
        try:
            upstream_ok, _ = self.node(str(source))
        except _Broken as exc:
            self.validated[str(source)] = (
                False,
                [
                    _error(
                        "exception_during_inner_validation",
                        "Exception when validating inner node",
                        str(exc),
                        input_name=item.name,
                        input_config=config,
                        exception_message=str(exc),
                        exception_type=exc.kind,
                        traceback=["(emulated)"],
                        linked_node=value,
                    )
                ],
            )
            return False, None
        return upstream_ok, None

    def _value(
        self, item: Input, value: Any, config: list[Any], *, checked_by_node: bool
    ) -> dict[str, Any] | None:
        """A constant input: converted to its type, then its range or list checked."""
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        convert = _CONVERT.get(item.type) if isinstance(item.type, str) else None
        if convert is not None:
            try:
                value = convert(value)
            except (TypeError, ValueError) as exc:
                return _error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {item.type} value",
                    f"{item.name}, {value}, {exc}",
                    input_name=item.name,
                    input_config=config,
                    received_value=value,
                    exception_message=str(exc),
                )
        if checked_by_node:
            return None
        low, high = item.options.get("min"), item.options.get("max")
        if low is not None and value < low:
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {low}",
                item.name,
                input_name=item.name,
                input_config=config,
                received_value=value,
            )
        if high is not None and value > high:
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {high}",
                item.name,
                input_name=item.name,
                input_config=config,
                received_value=value,
            )
        if isinstance(item.type, tuple):
            options = sorted(self.input_files) if item.type == INPUT_FILES else list(item.type)
            if value not in options:
                shown = f"(list of length {len(options)})" if len(options) > 20 else str(options)
                return _error(
                    "value_not_in_list",
                    "Value not in list",
                    f"{item.name}: '{value}' not in {shown}",
                    input_name=item.name,
                    input_config=None if len(options) > 20 else config,
                    received_value=value,
                )
        return None


def _type_name(item: Input) -> str:
    return "COMBO" if isinstance(item.type, tuple) else item.type


def _type_matches(received: str, wanted: str | tuple[str, ...]) -> bool:
    """ComfyUI's loose check: ``*`` matches anything, else the comma-separated types overlap."""
    if isinstance(wanted, tuple):
        return received in ("*", "COMBO")
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in wanted.split(",")}
    return "*" in got or "*" in want or bool(got & want)
