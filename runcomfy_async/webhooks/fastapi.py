"""The webhook endpoint for FastAPI apps: answer within the service's 10 s, handle afterwards.

Needs the ``fastapi`` extra: ``pip install 'runcomfy-async[fastapi]'``.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import errors
from ._parse import MAX_BODY
from ._receiver import WebhookReceiver

__all__ = ["webhook_router"]


def webhook_router(
    receiver: WebhookReceiver | Callable[[Request], WebhookReceiver],
    *,
    path: str = "/runcomfy/webhook",
    secret_param: str = "secret",  # noqa: S107 (the parameter's name, not a secret)
) -> APIRouter:
    """A router with ``POST path``: the URL to pass as ``webhook`` when submitting requests.

    The endpoint checks the secret (the ``secret_param`` query parameter, when the receiver has
    a secret) and the body, hands the event to :meth:`WebhookReceiver.submit` and answers 202
    at once: no API call or handler runs before the answer, so the service's 10 s never run out.
    A refused delivery gets 403 (wrong or missing secret), 413 (too large) or 400 (not a
    delivery).

    Args:
        receiver: the receiver, or a function of the request returning it (e.g. one kept on
            ``request.app.state`` by the app's lifespan, where the client it looks requests up
            with is opened).
        path: where the endpoint is mounted within the router.
        secret_param: the query parameter of the webhook URL that carries the shared secret.
    """
    router = APIRouter()
    find = receiver if callable(receiver) else (lambda _request: receiver)

    @router.post(path, status_code=202, response_model=None, tags=["webhooks"])
    async def runcomfy_webhook(request: Request) -> dict[str, str] | JSONResponse:
        """A RunComfy webhook delivery: acknowledged at once, handled in the background."""
        target = find(request)
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return JSONResponse({"error": f"over {MAX_BODY} bytes"}, status_code=413)
        try:
            event = target.accept(
                await request.body(), secret=request.query_params.get(secret_param)
            )
        except errors.WebhookSecretError as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)
        except errors.InvalidWebhookError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        target.submit(event)
        return {"request_id": event.request_id, "status": event.status.value}

    return router
