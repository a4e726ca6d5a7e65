"""``runcomfy balance``: what the account has left to spend."""

from __future__ import annotations

import click

from ._app import emit, output_options, run_with_client

__all__ = ["balance"]


@click.command("balance")
@output_options
def balance() -> None:
    """Show the account's remaining balance (one wallet for every RunComfy product)."""
    left = run_with_client(lambda rc: rc.account.balance())
    emit(left, text=f"balance: ${left.balance_usd:.2f} {left.currency}")
