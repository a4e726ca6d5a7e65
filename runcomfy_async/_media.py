"""The files a training dataset accepts (docs/wire.md): wire data shared by client and emulator.

Images and videos, each with a ``.txt`` caption of the same base name. Pure data: the client
validates and labels uploads with it, the emulator enforces it, and the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = [
    "CAPTION_TYPES",
    "CONTENT_TYPES",
    "IMAGE_TYPES",
    "VIDEO_TYPES",
    "Unpaired",
    "content_type_for",
    "stem",
    "suffix",
    "unpaired_files",
]

IMAGE_TYPES: Final = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
VIDEO_TYPES: Final = {
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".mkv": "video/x-matroska",
}
CAPTION_TYPES: Final = {".txt": "text/plain"}
#: Every accepted extension (lower case, dot included) -> its content type.
CONTENT_TYPES: Final = {**IMAGE_TYPES, **VIDEO_TYPES, **CAPTION_TYPES}


def suffix(filename: str) -> str:
    """The lower-cased extension of a file name, dot included ("" when it has none)."""
    # What PurePosixPath(filename).suffix gives, without building a path (this runs for every
    # file of a bulk upload, several times).
    name = filename.rstrip("/").rpartition("/")[2]
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def stem(filename: str) -> str:
    """The base name captions pair on: ``dog_01`` for ``dog_01.jpg`` (docs/wire.md)."""
    return filename.rsplit(".", 1)[0] if suffix(filename) else filename


def content_type_for(filename: str) -> str | None:
    """The Content-Type a supported dataset file is stored with, None if the type is refused."""
    return CONTENT_TYPES.get(suffix(filename))


class Unpaired(NamedTuple):
    """The files that break the caption rule, each in the order given."""

    #: Images and videos without a ``.txt`` caption of the same base name.
    media: tuple[str, ...]
    #: ``.txt`` captions without an image or video of the same base name.
    captions: tuple[str, ...]


def unpaired_files(filenames: Iterable[str]) -> Unpaired:
    """The caption rule both ways (docs/wire.md): every image/video needs a same-stem ``.txt``,
    and every ``.txt`` needs an image or video; ``Unpaired((), ())`` when the set is sound.

    Names of other types are ignored here (the file-type rule refuses them). A pure function of
    the names: the client runs it before uploading, the emulator when it settles a dataset.
    """
    typed = [n for n in filenames if content_type_for(n) is not None]
    caption_stems = {stem(n) for n in typed if suffix(n) in CAPTION_TYPES}
    media_stems = {stem(n) for n in typed if suffix(n) not in CAPTION_TYPES}
    return Unpaired(
        media=tuple(
            n for n in typed if suffix(n) not in CAPTION_TYPES and stem(n) not in caption_stems
        ),
        captions=tuple(
            n for n in typed if suffix(n) in CAPTION_TYPES and stem(n) not in media_stems
        ),
    )
