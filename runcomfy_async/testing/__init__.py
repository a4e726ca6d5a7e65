"""A faithful local RunComfy for tests and demos.

``async with Emulator() as emu:`` serves the Trainer, Model, Server and Serverless APIs, object
storage and a small ComfyUI on one local port (and POSTs serverless webhooks), with auth, the
account rate limit, documented lifecycles at configurable speed, and injectable faults.
``python -m runcomfy_async.testing`` runs it as a process; the pytest plugin provides the
``runcomfy_emulator`` fixture.
"""

from ._emulator import Emulator
from ._faults import FaultKind, FaultRule
from ._state import RequestRecord
from ._webhooks import WebhookDelivery, WebhookPolicy

__all__ = [
    "Emulator",
    "FaultKind",
    "FaultRule",
    "RequestRecord",
    "WebhookDelivery",
    "WebhookPolicy",
]
