"""The Model API catalog: one entry per model, with its price and (when asked for) input schema.

The catalog's wire shape is only partly documented. What is assumed, from RunComfy's own CLI and
ComfyUI nodes: a list answer ``{"models": [...], "total": N}``; entries keyed ``model_id``,
``display_name``, ``categories``, ``base_price_usd``, ``price_unit``, ``pricing_note``; a model's
own answer adds ``input_schema`` (a JSON Schema object). Unknown keys are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["ModelInfo"]


@attrs.frozen(kw_only=True)
class ModelInfo:
    """One model of the catalog: what it is, what it costs, and what inputs it takes.

    Attributes:
        model_id: the id to submit to, slashes included
            (``"blackforestlabs/flux-1-kontext/pro/edit"``).
        display_name: the human name, when sent.
        categories: e.g. ``("image-to-image",)``; empty when not sent.
        kind: the catalog's kind of entry (e.g. ``"model"`` or ``"lora"``), when sent.
        description: one line about the model, when sent.
        base_price_usd: what one unit of ``price_unit`` costs, in US dollars, when sent.
        price_unit: what the price is per (``"output"``, ``"second"``, ``"image"``...).
        pricing_note: the service's note on how the price is worked out, when sent.
        input_schema: the JSON Schema of the inputs (``properties``, ``required``...); None in
            list answers unless asked for with ``include_schema``.
    """

    model_id: str
    display_name: str | None = None
    categories: tuple[str, ...] = ()
    kind: str | None = None
    description: str | None = None
    base_price_usd: float | None = None
    price_unit: str | None = None
    pricing_note: str | None = None
    input_schema: dict[str, Any] | None = None

    @property
    def price(self) -> str | None:
        """The price as a reader writes it: ``"$0.04/output"``, or None when unpriced."""
        if self.base_price_usd is None:
            return None
        amount = f"${self.base_price_usd:g}"
        return f"{amount}/{self.price_unit}" if self.price_unit else amount

    @property
    def inputs(self) -> Mapping[str, Any]:
        """The input schema's ``properties``: input name -> its schema (empty when unknown)."""
        props = (self.input_schema or {}).get("properties")
        return props if isinstance(props, Mapping) else {}

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """The names the input schema marks as required."""
        required = (self.input_schema or {}).get("required")
        if not isinstance(required, list):
            return ()
        return tuple(name for name in required if isinstance(name, str))
