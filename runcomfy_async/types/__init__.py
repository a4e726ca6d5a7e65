"""Frozen data classes: snapshots of what the server said, one module per API."""

from ._base import OpenStrEnum

__all__ = ["OpenStrEnum"]
