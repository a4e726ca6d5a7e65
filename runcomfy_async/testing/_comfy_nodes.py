"""The node classes the emulated ComfyUI knows, described as ComfyUI describes its own nodes.

The image nodes are ComfyUI's core model-free ones with their real inputs, ranges and output
types; the model nodes (checkpoint, text encoder, sampler, decoder) are simulated so that a
txt2img workflow runs without weights. ``object_info`` renders a class as ``/object_info`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import attrs

__all__ = ["INPUT_FILES", "NODES", "Input", "Node", "input_config", "object_info"]

#: Stands for "the image files of the input folder" in a list input (LoadImage's).
INPUT_FILES: Final = ("<input files>",)
MAX_RESOLUTION: Final = 16384


@attrs.frozen(kw_only=True)
class Input:
    """One input of a node class: a type name (``IMAGE``, ``INT``...) or a list of options."""

    name: str
    type: str | tuple[str, ...]
    options: Mapping[str, Any] = attrs.field(factory=dict)
    required: bool = True


@attrs.frozen(kw_only=True)
class Node:
    """A node class: its inputs, output types, and what kind of output node it is."""

    name: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...] = ()
    category: str = "image"
    description: str = ""
    display_name: str | None = None
    output_node: bool = False
    #: Where an output node's images go: ``output``, ``temp``, or ``websocket`` (binary frames).
    saves_to: str | None = None
    hidden: Mapping[str, str] = attrs.field(factory=dict)


def _int(name: str, default: int, low: int, high: int, **extra: Any) -> Input:
    return Input(
        name=name, type="INT", options={"default": default, "min": low, "max": high, **extra}
    )


_HIDDEN_PROMPT = MappingProxyType({"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"})
_IMAGE = Input(name="image", type="IMAGE")
_IMAGES_TO_SAVE = Input(name="images", type="IMAGE", options={"tooltip": "The images to save."})
_PREFIX = Input(
    name="filename_prefix",
    type="STRING",
    options={
        "default": "ComfyUI",
        "tooltip": "The prefix for the file to save. This may include formatting information "
        "such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.",
    },
)

_ALL: Sequence[Node] = (
    Node(
        name="EmptyImage",
        inputs=(
            _int("width", 512, 1, MAX_RESOLUTION, step=1),
            _int("height", 512, 1, MAX_RESOLUTION, step=1),
            _int("batch_size", 1, 1, 4096),
            _int("color", 0, 0, 0xFFFFFF, step=1, display="color"),
        ),
        outputs=("IMAGE",),
    ),
    Node(
        name="LoadImage",
        inputs=(Input(name="image", type=INPUT_FILES, options={"image_upload": True}),),
        outputs=("IMAGE", "MASK"),
        display_name="Load Image",
    ),
    Node(name="ImageInvert", inputs=(_IMAGE,), outputs=("IMAGE",), display_name="Invert Image"),
    Node(
        name="ImageScale",
        inputs=(
            _IMAGE,
            Input(
                name="upscale_method",
                type=("nearest-exact", "bilinear", "area", "bicubic", "lanczos"),
            ),
            _int("width", 512, 0, MAX_RESOLUTION, step=1),
            _int("height", 512, 0, MAX_RESOLUTION, step=1),
            Input(name="crop", type=("disabled", "center")),
        ),
        outputs=("IMAGE",),
        category="image/upscaling",
        display_name="Upscale Image",
    ),
    Node(
        name="SaveImage",
        inputs=(_IMAGES_TO_SAVE, _PREFIX),
        category="image",
        description="Saves the input images to your ComfyUI output directory.",
        display_name="Save Image",
        output_node=True,
        saves_to="output",
        hidden=_HIDDEN_PROMPT,
    ),
    Node(
        name="PreviewImage",
        inputs=(Input(name="images", type="IMAGE"),),
        description="Saves the input images to your ComfyUI output directory.",
        display_name="Preview Image",
        output_node=True,
        saves_to="temp",
        hidden=_HIDDEN_PROMPT,
    ),
    Node(
        name="SaveImageWebsocket",
        inputs=(Input(name="images", type="IMAGE"),),
        category="api/image",
        output_node=True,
        saves_to="websocket",
    ),
    # Simulated model nodes: their link inputs and the inputs the examples give are required.
    Node(
        name="CheckpointLoaderSimple",
        inputs=(Input(name="ckpt_name", type="STRING"),),
        outputs=("MODEL", "CLIP", "VAE"),
        category="loaders",
        display_name="Load Checkpoint",
    ),
    Node(
        name="CLIPTextEncode",
        inputs=(Input(name="text", type="STRING"), Input(name="clip", type="CLIP")),
        outputs=("CONDITIONING",),
        category="conditioning",
        display_name="CLIP Text Encode (Prompt)",
    ),
    Node(
        name="EmptyLatentImage",
        inputs=(
            _int("width", 512, 16, MAX_RESOLUTION, step=8),
            _int("height", 512, 16, MAX_RESOLUTION, step=8),
            Input(
                name="batch_size",
                type="INT",
                options={"default": 1, "min": 1, "max": 4096},
                required=False,
            ),
        ),
        outputs=("LATENT",),
        category="latent",
        display_name="Empty Latent Image",
    ),
    Node(
        name="KSampler",
        inputs=(
            Input(name="model", type="MODEL"),
            Input(name="positive", type="CONDITIONING"),
            Input(name="negative", type="CONDITIONING"),
            Input(name="latent_image", type="LATENT"),
            Input(name="seed", type="INT", options={"default": 0, "min": 0}, required=False),
            Input(
                name="steps",
                type="INT",
                options={"default": 20, "min": 1, "max": 10000},
                required=False,
            ),
            Input(
                name="cfg",
                type="FLOAT",
                options={"default": 8.0, "min": 0.0, "max": 100.0},
                required=False,
            ),
            Input(name="sampler_name", type="STRING", required=False),
            Input(name="scheduler", type="STRING", required=False),
            Input(
                name="denoise",
                type="FLOAT",
                options={"default": 1.0, "min": 0.0, "max": 1.0},
                required=False,
            ),
        ),
        outputs=("LATENT",),
        category="sampling",
    ),
    Node(
        name="VAEDecode",
        inputs=(Input(name="samples", type="LATENT"), Input(name="vae", type="VAE")),
        outputs=("IMAGE",),
        category="latent",
        display_name="VAE Decode",
    ),
)

#: Every known node class by name.
NODES: Final[Mapping[str, Node]] = MappingProxyType({node.name: node for node in _ALL})


def input_config(spec: Input, input_files: Sequence[str]) -> list[Any]:
    """``[type or options, {options}]``, as validation errors show an input."""
    kind: Any = sorted(input_files) if spec.type == INPUT_FILES else spec.type
    return [list(kind) if isinstance(kind, tuple) else kind, dict(spec.options)]


def _declared(spec: Input, input_files: Sequence[str]) -> list[Any]:
    """An input as ``/object_info`` shows it (no options object when it has none)."""
    config = input_config(spec, input_files)
    return config if spec.options else config[:1]


def object_info(node: Node, input_files: Sequence[str]) -> dict[str, Any]:
    """One class as ``/object_info`` describes it."""
    required = {i.name: _declared(i, input_files) for i in node.inputs if i.required}
    optional = {i.name: _declared(i, input_files) for i in node.inputs if not i.required}
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    if node.hidden:
        inputs["hidden"] = dict(node.hidden)
    return {
        "input": inputs,
        "input_order": {group: list(names) for group, names in inputs.items()},
        "output": list(node.outputs),
        "output_is_list": [False] * len(node.outputs),
        "output_name": list(node.outputs),
        "name": node.name,
        "display_name": node.display_name or node.name,
        "description": node.description,
        "python_module": "nodes",
        "category": node.category,
        "output_node": node.output_node,
    }
