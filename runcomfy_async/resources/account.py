"""``rc.account``: the account's balance (one wallet funds every RunComfy product).

The balance is read from the serverless host, ``GET /prod/v2/balance``, which answers
``{"balance_usd": <number>, "currency": "USD"}`` (as RunComfy's own CLI reads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._converter import structure
from .._protocol import API, RequestSpec
from ..types.account import Balance

if TYPE_CHECKING:
    from .._client import RunComfy

__all__ = ["Account"]

_BALANCE: Final = "/prod/v2/balance"


class Account:
    """``rc.account``: what the account has left to spend."""

    def __init__(self, client: RunComfy) -> None:
        self._client = client

    async def balance(self) -> Balance:
        """The account's remaining balance (never a cached answer).

        Paid calls draw it down; one that finds it too low fails with
        :class:`~runcomfy_async.errors.InsufficientBalanceError` (HTTP 402).

        Raises:
            AuthenticationError: the token is missing, wrong or expired.
            APIError: any other error answer.
        """
        payload = await self._client.request(
            RequestSpec(api=API.SERVER, method="GET", path=_BALANCE)
        )
        return structure(payload, Balance, what="account balance")
