"""The models the emulator's catalog knows out of the box: a small set shaped like the real one.

Entries use the catalog's wire keys (``model_id``, ``display_name``, ``categories``, ``kind``,
``base_price_usd``, ``price_unit``, ``input_schema``). Input schemas follow what RunComfy
publishes, quirks included: one types a number ``"float"``, as a captured public schema does.
Add models with ``Emulator(models=...)``, ``--models FILE`` or :meth:`Emulator.add_model`.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["DEFAULT_MODELS"]

_ASPECT_RATIOS: Final = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9")


def _seed() -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": 2147483647}


def _prompt() -> dict[str, Any]:
    return {"type": "string", "title": "Prompt"}


def _lora() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"path": {"type": "string"}, "scale": {"type": "number"}},
        "required": ["path"],
    }


def _model(
    model_id: str,
    name: str,
    category: str,
    price: float,
    unit: str,
    properties: dict[str, Any],
    required: list[str],
) -> dict[str, Any]:
    """One catalog entry in wire form."""
    return {
        "model_id": model_id,
        "display_name": name,
        "categories": [category],
        "kind": "model",
        "base_price_usd": price,
        "price_unit": unit,
        "input_schema": {"type": "object", "properties": properties, "required": required},
    }


DEFAULT_MODELS: Final[tuple[dict[str, Any], ...]] = (
    _model(
        "blackforestlabs/flux-1-kontext/pro/edit",
        "FLUX.1 Kontext [pro] Edit",
        "image-to-image",
        0.04,
        "output",
        {
            "prompt": _prompt(),
            "image_url": {"type": "string", "format": "image_uri"},
            "seed": _seed(),
            "aspect_ratio": {"type": "string", "enum": list(_ASPECT_RATIOS), "default": "1:1"},
        },
        ["prompt", "image_url"],
    ),
    _model(
        "blackforestlabs/flux-1-dev/lora",
        "FLUX.1 [dev] with LoRA",
        "text-to-image",
        0.025,
        "output",
        {
            "prompt": _prompt(),
            "lora": _lora(),
            "seed": _seed(),
            "num_images": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1},
        },
        ["prompt", "lora"],
    ),
    _model(
        "blackforestlabs/flux-2/flash/text-to-image",
        "FLUX.2 [flash] Text to Image",
        "text-to-image",
        0.008,
        "output",
        {
            "prompt": _prompt(),
            "guidance_scale": {"type": "float", "minimum": 0, "maximum": 20, "default": 2.5},
            "seed": {"type": "integer", "default": None},
            "image_size": {
                "type": "string",
                "enum": ["square_hd", "square", "portrait_4_3", "landscape_4_3", "landscape_16_9"],
                "default": "landscape_4_3",
            },
        },
        ["prompt"],
    ),
    _model(
        "google/nano-banana-2-lite/text-to-image",
        "Nano Banana 2 Lite Text to Image",
        "text-to-image",
        0.02,
        "output",
        {"prompt": _prompt(), "aspect_ratio": {"type": "string", "enum": list(_ASPECT_RATIOS)}},
        ["prompt"],
    ),
    _model(
        "openai/gpt-image-2/text-to-image",
        "GPT Image 2 Text to Image",
        "text-to-image",
        0.05,
        "output",
        {"prompt": _prompt(), "quality": {"type": "string", "enum": ["low", "medium", "high"]}},
        ["prompt"],
    ),
    _model(
        "bytedance/seedream-5.0-pro/multi-image",
        "Seedream 5.0 Pro Multi Image",
        "text-to-image",
        0.03,
        "output",
        {
            "prompt": _prompt(),
            "num_images": {"type": "integer", "minimum": 1, "maximum": 8, "default": 2},
            "seed": _seed(),
        },
        ["prompt"],
    ),
    _model(
        "bytedance/seedance-2.5/text-to-video/1080p",
        "Seedance 2.5 Text to Video 1080p",
        "text-to-video",
        0.12,
        "second",
        {
            "prompt": _prompt(),
            "duration": {"type": "integer", "minimum": 4, "maximum": 30, "default": 5},
            "aspect_ratio": {"type": "string", "enum": list(_ASPECT_RATIOS), "default": "16:9"},
        },
        ["prompt"],
    ),
    _model(
        "wan-ai/wan-3.0/image-to-video",
        "Wan 3.0 Image to Video",
        "image-to-video",
        0.08,
        "second",
        {
            "prompt": _prompt(),
            "image_url": {"type": "string", "format": "image_uri"},
            "duration": {"type": "integer", "minimum": 2, "maximum": 30, "default": 5},
            "seed": _seed(),
        },
        ["prompt", "image_url"],
    ),
)
