"""Assemble the emulator's aiohttp application: the middleware chain and every API's routes.

Each endpoint module exposes ``add_routes(app, state)``; adding an API is one entry in
:data:`ROUTE_MODULES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import web

from . import (
    _storage,
    account,
    comfyui,
    control,
    model_api,
    model_catalog,
    server_api,
    serverless_api,
    trainer_datasets,
    trainer_jobs,
)
from ._middleware import make_middlewares

if TYPE_CHECKING:
    from ._state import EmulatorState

__all__ = ["ROUTE_MODULES", "RouteModule", "build_app"]


class RouteModule(Protocol):
    """A module that registers one API's endpoints."""

    def add_routes(self, app: web.Application, state: EmulatorState) -> None:
        """Register this module's routes on ``app``, bound to ``state``."""


ROUTE_MODULES: Final[tuple[RouteModule, ...]] = (
    _storage,
    trainer_datasets,
    trainer_jobs,
    model_api,
    model_catalog,
    account,
    server_api,
    serverless_api,
    comfyui,
    control,  # GET /_emulator/log: emulator-only inspection
)


def build_app(state: EmulatorState) -> web.Application:
    """The web application serving every registered API, storage and (later) ComfyUI."""
    app = web.Application(middlewares=make_middlewares(state))
    for module in ROUTE_MODULES:
        module.add_routes(app, state)
    return app
