"""Building blocks of the data classes: status enums that keep unknown values."""

from __future__ import annotations

import enum
from typing import Any, Self

__all__ = ["OpenStrEnum"]


class OpenStrEnum(enum.StrEnum):
    """A string enum that accepts values it does not know.

    The server may add a status tomorrow; ``Status("NEW_THING")`` then returns a pseudo-member
    whose ``value`` is the raw string and whose ``known`` is False, instead of crashing. Matching
    is case-insensitive, and ``_ALIASES`` maps spellings such as ``cancelled`` -> ``CANCELED``.
    """

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {}

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if not isinstance(value, str):
            return None
        folded = value.strip().lower()
        target = cls._aliases().get(folded, folded)
        for member in cls:
            if member.value.lower() == target:
                return member
        pseudo = str.__new__(cls, value)
        pseudo._name_ = "UNKNOWN"
        pseudo._value_ = value
        return pseudo

    @property
    def known(self) -> bool:
        """False for a value this version of the library has never heard of."""
        return self._name_ != "UNKNOWN"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {self._value_!r}>"

    @classmethod
    def parse(cls, value: Any) -> Self:
        """The member for ``value`` (known or not)."""
        return cls(value)
