"""Webhooks of serverless requests for web backends: parse, verify, deduplicate, hand off.

RunComfy POSTs a JSON delivery to the webhook URL given on submit each time a request changes
status (``in_queue`` and ``in_progress`` only when asked for; then ``succeeded``, ``failed`` or
``cancelled``). Deliveries are not signed, must be answered with a 2xx within 10 seconds, are
retried for up to 24 hours, and may arrive twice, out of order, or not at all. This module
turns that into one call of your handler per new status of a request:

- :func:`parse_event` reads a delivery into a frozen :class:`WebhookEvent`.
- :class:`WebhookReceiver` checks a shared secret in constant time, deduplicates on
  (request id, status) in a :class:`DeliveryStore`, ignores statuses that arrive after a later
  one, and looks final events up through the API before your handler sees them; its
  :meth:`~WebhookReceiver.poll` recovers a delivery that never came.
- :func:`api_lookup` is how a receiver looks a request up: its result, read with your client.
- :class:`MemoryDeliveryStore` (one process) and :class:`RedisDeliveryStore` (every worker
  process; the ``redis`` extra) remember what was handled; implement :class:`DeliveryStore`
  to keep it elsewhere.
- :func:`runcomfy_async.webhooks.fastapi.webhook_router` is the FastAPI endpoint (the
  ``fastapi`` extra).

The shared secret: put a long random value in the webhook URL you submit with (for example
``https://app.example/runcomfy/webhook?secret=<secrets.token_urlsafe(32)>``), serve the
endpoint over HTTPS only, and give the receiver the same value. Anyone who does not know the
URL is refused; anyone who does can at most make the receiver look a request up through the API,
which is where final outputs are read from anyway.
"""

from ..errors import InvalidWebhookError, WebhookError, WebhookSecretError
from ..types.webhooks import WebhookEvent, WebhookStatus
from ._lookup import api_lookup, event_from_result
from ._parse import MAX_BODY, check_secret, parse_event
from ._receiver import RequestLookup, WebhookHandler, WebhookReceiver
from ._redis_store import RedisDeliveryStore
from ._store import DEFAULT_TTL, DeliveryStore, MemoryDeliveryStore

__all__ = [
    "DEFAULT_TTL",
    "MAX_BODY",
    "DeliveryStore",
    "InvalidWebhookError",
    "MemoryDeliveryStore",
    "RedisDeliveryStore",
    "RequestLookup",
    "WebhookError",
    "WebhookEvent",
    "WebhookHandler",
    "WebhookReceiver",
    "WebhookSecretError",
    "WebhookStatus",
    "api_lookup",
    "check_secret",
    "event_from_result",
    "parse_event",
]
