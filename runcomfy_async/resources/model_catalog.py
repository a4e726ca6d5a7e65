"""The Model API catalog: paging through models, one model's schema and price, input checks.

Wire shape, partly assumed (RunComfy's own CLI and nodes read it this way; nothing else is
documented): ``GET /v1/models?search=&category=&kind=&include_schema=&limit=&offset=`` answers
``{"models": [...], "total": N}``; ``GET /v1/models/{model_id}`` answers one entry with its
``input_schema``. Parsing is tolerant: a bare list, ``id`` for ``model_id``, ``schema`` for
``input_schema``, a single category string, a price sent as a numeric string are all read.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from .. import errors
from .._converter import structure
from .._input_schema import check_inputs, compile_schema, require_jsonschema
from .._protocol import API, RequestSpec
from .._rules import is_model_id
from ..types.catalog import ModelInfo
from ._common import unwrap_list

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["MAX_PAGE_SIZE", "ModelCatalog", "model_path"]

_MODELS: Final = "/v1/models"
_EXAMPLE_ID: Final = "blackforestlabs/flux-1-kontext/pro/edit"
#: The largest page the catalog is asked for (the vendor's tools cap ``limit`` at 100).
MAX_PAGE_SIZE: Final = 100


def model_path(model_id: str) -> str:
    """``/v1/models/{model_id}`` with each segment quoted, after checking the id's shape.

    Raises:
        ValidationError: an empty or malformed model id.
    """
    if not isinstance(model_id, str) or not model_id:
        raise errors.ValidationError(
            f"model_id must be a non-empty string such as {_EXAMPLE_ID!r} (copy it from the "
            "model's API page, or find it with rc.models.catalog(search=...))"
        )
    if not is_model_id(model_id):
        raise errors.ValidationError(
            f"model_id {model_id!r} is malformed: it must be segments of letters, digits, '.', "
            f"'_' and '-' joined by single slashes, without a leading or trailing slash or "
            f"'..', e.g. {_EXAMPLE_ID!r}"
        )
    return _MODELS + "/" + "/".join(quote(s, safe="") for s in model_id.split("/"))


def _price(value: Any) -> float | None:
    """A price as a float: numbers and numeric strings; anything else is no price."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _entry(payload: Any) -> dict[str, Any]:
    """One catalog entry in the shape :class:`ModelInfo` reads, whichever spelling was sent."""
    if isinstance(payload, Mapping) and "model_id" not in payload and "id" not in payload:
        inner = payload.get("model")
        if isinstance(inner, Mapping):
            payload = inner
    if not isinstance(payload, Mapping):
        raise errors.UnexpectedResponseError(
            f"expected a model entry (a JSON object), got {type(payload).__name__}", status=200
        )
    entry = dict(payload)
    if not isinstance(entry.get("model_id"), str) and isinstance(entry.get("id"), str):
        entry["model_id"] = entry["id"]
    categories = entry.get("categories", entry.get("category"))
    if isinstance(categories, str):
        entry["categories"] = [categories]
    elif isinstance(categories, list):
        entry["categories"] = [str(c) for c in categories if c is not None]
    else:
        entry.pop("categories", None)
    schema = entry.get("input_schema", entry.get("schema"))
    entry["input_schema"] = dict(schema) if isinstance(schema, Mapping) else None
    entry["base_price_usd"] = _price(entry.get("base_price_usd"))
    for key in ("display_name", "kind", "description", "price_unit", "pricing_note"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            entry[key] = str(entry[key])
    return entry


def _text_filter(name: str, value: str | None) -> str | None:
    """A search/category/kind filter: None or a non-blank string, stripped."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise errors.ValidationError(
            f"{name} must be a non-blank string or None (no filter), got {value!r}"
        )
    return value.strip()


class ModelCatalog:
    """The catalog calls of one client, and the schemas it has fetched for ``validate=True``.

    Schemas are kept, compiled, for the client's life: checking fifty submits to one model costs
    one schema call, not fifty (each call takes a token of the account's 1 request/s), and one
    compile (milliseconds), not fifty.
    """

    def __init__(self, client: RunComfy) -> None:
        self._client = client
        #: model id -> its entry and compiled validator (None: no validator can use its schema)
        self._checkers: dict[str, tuple[ModelInfo, Any]] = {}

    def iterate(
        self,
        *,
        search: str | None,
        category: str | None,
        kind: str | None,
        include_schema: bool,
        page_size: int,
    ) -> AsyncIterator[ModelInfo]:
        """Check the filters now (nothing is sent for bad ones), then page lazily."""
        params: dict[str, str] = {}
        for name, value in (("search", search), ("category", category), ("kind", kind)):
            checked = _text_filter(name, value)
            if checked is not None:
                params[name] = checked
        if include_schema:
            params["include_schema"] = "true"
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= MAX_PAGE_SIZE
        ):
            raise errors.ValidationError(
                f"page_size must be an int from 1 to {MAX_PAGE_SIZE}, got {page_size!r}"
            )
        return self._pages(params, page_size)

    async def _pages(self, params: dict[str, str], limit: int) -> AsyncIterator[ModelInfo]:
        """Every matching entry, one page request at a time, until a short or empty page."""
        offset = 0
        while True:
            payload = await self._client.request(
                RequestSpec(
                    api=API.MODEL,
                    method="GET",
                    path=_MODELS,
                    params={**params, "limit": str(limit), "offset": str(offset)},
                )
            )
            items = unwrap_list(payload, "models")
            for item in items:
                yield structure(_entry(item), ModelInfo, what="catalog entry")
            offset += len(items)
            total = payload.get("total") if isinstance(payload, dict) else None
            done_by_total = isinstance(total, int) and not isinstance(total, bool) and (
                offset >= total
            )
            if len(items) < limit or done_by_total:
                return

    async def schema(self, model_id: str) -> ModelInfo:
        """Fetch one model's entry with its input schema and price (never a cached answer).

        Raises:
            ValidationError: a malformed model id (nothing is sent).
            BadRequestError: the service knows no such model.
            UnexpectedResponseError: the answer carries no input schema.
        """
        payload = await self._client.request(
            RequestSpec(api=API.MODEL, method="GET", path=model_path(model_id))
        )
        info = structure(_entry(payload), ModelInfo, what="model entry")
        if info.input_schema is None:
            raise errors.UnexpectedResponseError(
                f"the entry of model {model_id!r} carries no input_schema", status=200
            )
        return info

    async def check(self, model_id: str, inputs: Mapping[str, Any]) -> None:
        """Refuse inputs that fail the model's schema (fetched once per client).

        Raises:
            ConfigurationError: ``jsonschema`` is missing (checked before anything is sent).
            ModelInputError: the inputs fail the schema.
        """
        require_jsonschema()
        if model_id not in self._checkers:
            model = await self.schema(model_id)
            self._checkers[model_id] = (model, compile_schema(model.input_schema))
        model, validator = self._checkers[model_id]
        check_inputs(model, inputs, validator)
