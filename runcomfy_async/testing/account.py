"""The account's wallet (``GET /prod/v2/balance``): paid calls draw it down, 402 when it is out.

A Model API submit is charged what its run costs when it is accepted, and refunded when it is
cancelled while queued; a run set to fail is not charged. A submit the balance cannot cover is
refused with HTTP 402 and the Model API's ``InsufficientResources`` code, 400002.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from aiohttp import web

from ._wire import ApiError

if TYPE_CHECKING:
    from ._state import EmulatorState

__all__ = ["INSUFFICIENT_BALANCE", "Wallet", "add_routes"]

#: The Model API's code for a balance too low (InsufficientResources).
INSUFFICIENT_BALANCE: Final = 400002


def _check_amount(usd: float, what: str) -> float:
    """A finite amount >= 0, as a float."""
    if (
        isinstance(usd, bool)
        or not isinstance(usd, int | float)
        or not (math.isfinite(usd) and usd >= 0)
    ):
        raise ValueError(f"{what} must be a number of US dollars >= 0, got {usd!r}")
    return float(usd)


class Wallet:
    """One account's balance in US dollars."""

    def __init__(self, balance: float) -> None:
        self._balance = _check_amount(balance, "balance")

    @property
    def balance(self) -> float:
        """What is left."""
        return round(self._balance, 6)

    def set(self, usd: float) -> None:
        """Replace the balance (a top-up, or draining it for a test).

        Raises:
            ValueError: a negative or non-finite amount.
        """
        self._balance = _check_amount(usd, "balance")

    def charge(self, usd: float, what: str) -> None:
        """Take ``usd`` for ``what``.

        Raises:
            ApiError: 402 with code 400002 when the balance does not cover it (nothing taken).
        """
        if usd > self._balance + 1e-9:
            raise ApiError(
                402,
                INSUFFICIENT_BALANCE,
                f"Insufficient balance: {what} costs ${usd:.4f}, the balance is "
                f"${self.balance:.4f}; add funds to continue",
            )
        self._balance = max(self._balance - usd, 0.0)

    def refund(self, usd: float) -> None:
        """Give ``usd`` back (a cancelled run)."""
        self._balance += usd


def add_routes(app: web.Application, state: EmulatorState) -> None:
    """Register the balance endpoint."""

    async def balance(_: web.Request) -> web.Response:
        """GET /prod/v2/balance: what the account has left."""
        return web.json_response({"balance_usd": state.wallet.balance, "currency": "USD"})

    app.router.add_get("/prod/v2/balance", balance)
