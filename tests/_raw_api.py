"""Raw HTTP calls to the emulator for its own tests (no client of ours in between)."""

from __future__ import annotations

from typing import Any

import aiohttp


async def call(
    api: aiohttp.ClientSession, method: str, path: str, expect: int = 200, **kwargs: Any
) -> Any:
    """Send one API request, check the status and return the JSON body."""
    async with api.request(method, path, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == expect, body
        return body
