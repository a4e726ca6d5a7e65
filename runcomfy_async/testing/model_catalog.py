"""The Model API catalog (``GET /v1/models``, ``GET /v1/models/{model_id}``): known models,
their input schemas and prices.

Submits to a model the catalog does not know are refused the way the service refuses a bad
model id: HTTP 400 with its documented ``InvalidResourceIdentifier`` code, 400001 (the Model API
error-code table; the exact message is not documented, so this one adds close matches). The
catalog starts with :data:`~._catalog_data.DEFAULT_MODELS`; users add or replace entries with
``Emulator(models=...)``, ``--models FILE`` or ``emu.add_model(...)``. The list answer is
``{"models": [...], "total": N, "limit": L, "offset": O}``; entries carry ``input_schema`` only
with ``include_schema=true``, a model's own answer always.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .._rules import is_model_id
from ._catalog_data import DEFAULT_MODELS
from ._wire import ApiError, field_error, validation_error

if TYPE_CHECKING:
    from ._state import EmulatorState

__all__ = [
    "DEFAULT_PRICE",
    "UNKNOWN_MODEL",
    "ModelCatalog",
    "add_routes",
    "load_models_file",
    "model_entry",
]

#: The Model API's code for a model id it does not know (InvalidResourceIdentifier).
UNKNOWN_MODEL: Final = 400001
#: The price of a model added without one, per output.
DEFAULT_PRICE: Final = 0.04
_DEFAULT_LIMIT: Final = 20
_MAX_LIMIT: Final = 100
#: Seconds of video billed when a per-second model's inputs give no duration.
_DEFAULT_SECONDS: Final = 5


def model_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A catalog entry checked and completed (kind, price, a permissive schema when absent).

    Every problem is a ValueError, wrong types included: the command-line parsers turn
    ValueError into a usage message.

    Raises:
        ValueError: no well-formed ``model_id``, a negative or non-numeric price, categories
            that are not strings, or an ``input_schema`` that is not an object.
    """
    if not isinstance(entry, Mapping):
        raise ValueError(  # noqa: TRY004 - see the docstring
            f"a model entry must be a JSON object, got {type(entry).__name__}"
        )
    model_id = entry.get("model_id")
    if not isinstance(model_id, str) or not is_model_id(model_id):
        raise ValueError(
            f"model_id {model_id!r} is not a model id such as 'owner/model/variant' "
            "(segments of letters, digits, '.', '_' and '-' joined by single slashes)"
        )
    out = copy.deepcopy(dict(entry))
    price = out.setdefault("base_price_usd", DEFAULT_PRICE)
    if (
        isinstance(price, bool)
        or not isinstance(price, int | float)
        or not (math.isfinite(price) and price >= 0)
    ):
        raise ValueError(f"{model_id}: base_price_usd must be a number >= 0, got {price!r}")
    categories = out.setdefault("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise ValueError(f"{model_id}: categories must be a list of strings")
    schema = out.setdefault("input_schema", {"type": "object", "properties": {}})
    if not isinstance(schema, dict):
        raise ValueError(f"{model_id}: input_schema must be a JSON object")  # noqa: TRY004
    out.setdefault("display_name", model_id)
    out.setdefault("kind", "model")
    out.setdefault("price_unit", "output")
    return out


def load_models_file(path: str | Path) -> tuple[dict[str, Any], ...]:
    """The entries of a models file: a JSON list of entries, or ``{"models": [...]}``.

    Raises:
        ValueError: the file cannot be read, is not such JSON, or an entry is malformed.
    """
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read models file {path}: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("models"), list):
        loaded = loaded["models"]
    if not isinstance(loaded, list):
        raise ValueError(  # noqa: TRY004 - a usage message, like every other problem here
            f"models file {path} must hold a JSON list of model entries, or "
            '{"models": [...]}, each like {"model_id": "acme/my-model/v1"}'
        )
    return tuple(model_entry(item) for item in loaded)


def _number_input(entry: Mapping[str, Any], inputs: Mapping[str, Any], name: str) -> float | None:
    """A positive number input as sent, else its schema default, else None."""
    props = entry["input_schema"].get("properties")
    spec = props.get(name) if isinstance(props, Mapping) else None
    default = spec.get("default") if isinstance(spec, Mapping) else None
    value = inputs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    return float(value)


def _units(entry: Mapping[str, Any], inputs: Mapping[str, Any]) -> float:
    """How many of the model's price units a run with ``inputs`` uses: seconds of video for a
    per-second price, else the images it makes (``num_images``, as the outputs are counted)."""
    if entry.get("price_unit") == "second":
        return _number_input(entry, inputs, "duration") or _DEFAULT_SECONDS
    return _number_input(entry, inputs, "num_images") or 1.0


class ModelCatalog:
    """The models one emulator knows, keyed by id, in the order they were added."""

    def __init__(self, models: Iterable[Mapping[str, Any]] = ()) -> None:
        self._models: dict[str, dict[str, Any]] = {}
        for entry in (*DEFAULT_MODELS, *models):
            self.add(entry)

    def add(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Add a model (or replace the one with its id); returns the completed entry.

        Raises:
            ValueError: a malformed entry (see :func:`model_entry`).
        """
        checked = model_entry(entry)
        self._models[checked["model_id"]] = checked
        return checked

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def __len__(self) -> int:
        return len(self._models)

    def get(self, model_id: str) -> dict[str, Any] | None:
        """The entry of ``model_id``, or None."""
        return self._models.get(model_id)

    def find(
        self, *, search: str | None, category: str | None, kind: str | None
    ) -> list[dict[str, Any]]:
        """Entries matching every filter given: text in the id or name, a category, a kind."""
        needle = search.lower() if search else None
        found = []
        for entry in self._models.values():
            text = f"{entry['model_id']} {entry.get('display_name', '')}".lower()
            if needle is not None and needle not in text:
                continue
            if category is not None and category not in entry["categories"]:
                continue
            if kind is not None and entry.get("kind") != kind:
                continue
            found.append(entry)
        return found

    def cost(self, model_id: str, inputs: Mapping[str, Any]) -> float:
        """What a successful run of ``model_id`` with ``inputs`` costs, in US dollars."""
        entry = self._models[model_id]
        return round(float(entry["base_price_usd"]) * _units(entry, inputs), 6)

    def unknown(self, model_id: str) -> ApiError:
        """The service's answer to a model id it does not know, with close matches."""
        close = difflib.get_close_matches(model_id, list(self._models), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return ApiError(
            400,
            UNKNOWN_MODEL,
            f"Invalid model_id {model_id!r}: no such model in the catalog{hint}",
        )


def _public(entry: Mapping[str, Any], *, schema: bool) -> dict[str, Any]:
    """An entry as the API shows it (the schema only when asked for)."""
    shown = dict(entry)
    if not schema:
        shown.pop("input_schema", None)
    return shown


def _int_param(request: web.Request, name: str, default: int) -> int:
    """A whole-number query parameter; 422 when it is not one."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise validation_error(
            [field_error(["query", name], "value is not a valid integer", "type_error.integer")]
        ) from None


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the catalog list and the per-model entry."""
    catalog = state.catalog

    async def list_models(request: web.Request) -> web.Response:
        """GET /v1/models: one page of the filtered catalog and the total that matched."""
        limit = _int_param(request, "limit", _DEFAULT_LIMIT)
        limit = _DEFAULT_LIMIT if limit < 1 else min(limit, _MAX_LIMIT)
        offset = max(_int_param(request, "offset", 0), 0)
        include = request.query.get("include_schema", "").lower() == "true"
        found = catalog.find(
            search=request.query.get("search") or None,
            category=request.query.get("category") or None,
            kind=request.query.get("kind") or None,
        )
        page = [_public(e, schema=include) for e in found[offset : offset + limit]]
        return web.json_response(
            {"models": page, "total": len(found), "limit": limit, "offset": offset}
        )

    async def get_model(request: web.Request) -> web.Response:
        """GET /v1/models/{model_id}: the entry with its input schema and price."""
        model_id = request.match_info["model_id"]
        entry = catalog.get(model_id)
        if entry is None:
            raise catalog.unknown(model_id)
        return web.json_response(_public(entry, schema=True))

    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id:.+}", get_model)
