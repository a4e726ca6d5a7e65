"""The account: one wallet funds Model API requests, serverless deployments and training."""

from __future__ import annotations

import attrs

__all__ = ["Balance"]


@attrs.frozen(kw_only=True)
class Balance:
    """The account's remaining balance.

    Attributes:
        balance_usd: what is left, in US dollars.
        currency: the wallet's currency (``"USD"``).
    """

    balance_usd: float
    currency: str = "USD"
