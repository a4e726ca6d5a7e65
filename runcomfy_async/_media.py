"""The files a training dataset accepts (API.md 1.2): wire data shared by client and emulator.

Images and videos, each with a ``.txt`` caption of the same base name. Pure data: the client
validates and labels uploads with it, the emulator enforces it, and the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Final

__all__ = ["CAPTION_TYPES", "CONTENT_TYPES", "IMAGE_TYPES", "VIDEO_TYPES", "stem", "suffix"]

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
    return PurePosixPath(filename).suffix.lower()


def stem(filename: str) -> str:
    """The base name captions pair on: ``dog_01`` for ``dog_01.jpg`` (API.md 1.2)."""
    return filename.rsplit(".", 1)[0] if suffix(filename) else filename
