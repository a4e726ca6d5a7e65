"""Checking a model's inputs against its JSON Schema before a request is sent (``validate=True``).

Pure: no I/O. Uses the ``jsonschema`` package, which comes with the ``schema`` extra. Published
model schemas are not always strict JSON Schema (one captured from the catalog types a number
``"float"``), so type names are normalised first and a type no validator knows is left to the
service. Formats (``image_uri``...) are not checked: they are the service's own names.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Final

from . import errors
from .types.catalog import ModelInfo

__all__ = ["check_inputs", "compile_schema", "describe_inputs", "require_jsonschema"]

_JSON_TYPES: Final = frozenset(
    {"string", "number", "integer", "boolean", "object", "array", "null"}
)
_TYPE_ALIASES: Final = {
    "float": "number",
    "double": "number",
    "int": "integer",
    "bool": "boolean",
    "str": "string",
    "dict": "object",
    "list": "array",
}
_LINE: Final = 200


def require_jsonschema() -> ModuleType:
    """The ``jsonschema`` module.

    Raises:
        ConfigurationError: it is not installed; the message names the extra that brings it.
    """
    try:
        import jsonschema
    except ModuleNotFoundError as exc:
        raise errors.ConfigurationError(
            "validate=True checks inputs with the jsonschema package, which is not installed; "
            "install the schema extra (pip install 'runcomfy-async[schema]') or pass "
            "validate=False"
        ) from exc
    return jsonschema


def _normalised(schema: Any) -> Any:
    """A copy of ``schema`` with loose type names mapped to JSON Schema's, unknown ones dropped."""
    if isinstance(schema, list):
        return [_normalised(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            names = value if isinstance(value, list) else [value]
            mapped = [
                _TYPE_ALIASES.get(n.lower(), n.lower()) for n in names if isinstance(n, str)
            ]
            known = [n for n in mapped if n in _JSON_TYPES]
            if len(known) != len(names) or not known:
                continue  # a type only the service knows: let it decide
            out[key] = known if isinstance(value, list) else known[0]
        elif key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(
            value, Mapping
        ):
            out[key] = {name: _normalised(sub) for name, sub in value.items()}
        else:
            out[key] = _normalised(value)
    return out


def _clip(text: str) -> str:
    """One problem line, cut short (a value may be a long data URI)."""
    return text if len(text) <= _LINE else text[: _LINE - 3] + "..."


def _describe(name: str, prop: Any, required: bool) -> str:
    """``seed (integer, 0..2147483647)``: one input as the error message lists it."""
    facts: list[str] = []
    if isinstance(prop, Mapping):
        kind = prop.get("type")
        if isinstance(kind, list):
            kind = "|".join(str(k) for k in kind)
        if kind:
            facts.append(str(kind))
        if required:
            facts.append("required")
        enum = prop.get("enum")
        if isinstance(enum, list) and enum:
            shown = ", ".join(repr(v) for v in enum[:8])
            facts.append(f"one of {shown}" + (", ..." if len(enum) > 8 else ""))
        low, high = prop.get("minimum"), prop.get("maximum")
        if low is not None or high is not None:
            facts.append(f"{'' if low is None else low}..{'' if high is None else high}")
    elif required:
        facts.append("required")
    return f"{name} ({', '.join(facts)})" if facts else name


def describe_inputs(model: ModelInfo) -> list[str]:
    """Every input the model's schema lists, required ones first, as the error message shows."""
    required = set(model.required_inputs)
    names = sorted(model.inputs, key=lambda n: (n not in required, n))
    return [_describe(name, model.inputs[name], name in required) for name in names]


def _unknown_names(model: ModelInfo, inputs: Mapping[str, Any]) -> list[str]:
    """Problems for input names the schema does not list (a typo the model would ignore)."""
    schema = model.input_schema or {}
    if not model.inputs or schema.get("additionalProperties") not in (None, False):
        return []
    problems = []
    for name in inputs:
        if name in model.inputs:
            continue
        close = difflib.get_close_matches(name, list(model.inputs), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{name}: not an input of this model{hint}")
    return problems


def _problem(error: Any) -> str:
    """One jsonschema error as ``where: what``."""
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = error.message.split("'")[1] if error.message.count("'") >= 2 else error.message
        field = f"{where}.{missing}" if where else missing
        return _clip(f"{field}: required input missing")
    return _clip(f"{where or 'inputs'}: {error.message}")


def compile_schema(schema: Mapping[str, Any] | None) -> Any:
    """A jsonschema validator for ``schema`` (normalised), or None when no validator can use it.

    Compiling checks the schema against its meta-schema, which costs milliseconds: compile once
    per model and reuse the validator.

    Raises:
        ConfigurationError: ``jsonschema`` is not installed.
    """
    jsonschema = require_jsonschema()
    normal = _normalised(schema or {})
    cls = jsonschema.validators.validator_for(normal, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(normal)
    except jsonschema.SchemaError:
        return None  # not a schema any validator can use: the service checks the inputs itself
    return cls(normal)


def check_inputs(model: ModelInfo, inputs: Mapping[str, Any], validator: Any = None) -> None:
    """Refuse ``inputs`` that do not match ``model``'s input schema, listing every problem.

    Args:
        model: the catalog entry, with its ``input_schema``.
        inputs: the inputs as plain JSON data (already encoded).
        validator: the model's :func:`compile_schema` result, to skip compiling again.

    Raises:
        ConfigurationError: ``jsonschema`` is not installed.
        ModelInputError: the inputs fail the schema (or use names it does not list); the message
            lists what is wrong and every valid input.
    """
    if validator is None:
        validator = compile_schema(model.input_schema)
    unknown = _unknown_names(model, inputs)
    found = [] if validator is None else list(validator.iter_errors(dict(inputs)))
    found.sort(key=lambda e: [str(p) for p in e.absolute_path])
    problems = unknown + [
        _problem(e)
        for e in found
        if not (unknown and e.validator == "additionalProperties" and not e.absolute_path)
    ]
    if problems:
        raise errors.ModelInputError(
            model_id=model.model_id, problems=problems, valid=describe_inputs(model)
        )
