"""pytest plugin: the ``runcomfy_emulator`` fixture, a started :class:`Emulator` per test.

Registered through the ``pytest11`` entry point. Configure it per test with
``@pytest.mark.runcomfy_emulator(rate_limit=None, speed=1000)`` (any ``Emulator`` keyword).
Needs pytest-asyncio; without it the fixture skips the test with a message saying so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["pytest_configure", "runcomfy_emulator"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that configures the fixture."""
    config.addinivalue_line(
        "markers",
        "runcomfy_emulator(**kwargs): Emulator keyword arguments for the runcomfy_emulator fixture",
    )


def _emulator_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keyword arguments from the closest ``runcomfy_emulator`` marker."""
    marker = request.node.get_closest_marker("runcomfy_emulator")
    return dict(marker.kwargs) if marker is not None else {}


try:
    import pytest_asyncio
except ImportError:  # the plugin loads for every pytest run; never break one

    @pytest.fixture(name="runcomfy_emulator")
    def _runcomfy_emulator_unavailable() -> None:
        """Stands in for the real fixture when pytest-asyncio is missing."""
        pytest.skip("the runcomfy_emulator fixture needs pytest-asyncio (pip install it)")

else:

    @pytest_asyncio.fixture
    async def runcomfy_emulator(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
        """A started :class:`Emulator`, closed after the test."""
        from ._emulator import Emulator  # imported late: keeps loading the plugin cheap

        async with Emulator(**_emulator_kwargs(request)) as emu:
            yield emu
