"""A first demo: the client against the embedded emulator, nothing beyond 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

from .testing import Emulator


async def _main() -> None:
    started = time.monotonic()
    async with Emulator(rate_limit=1.0, speed=50.0) as emu, emu.client() as rc:
        print(f"emulator listening on {emu.url}")
        ds = await rc.datasets.create("demo-dogs")
        print(f"created dataset {ds.id} ({ds.name})")
        info = await ds.status()
        print(f"status: {info.status.value}, files: {len(info.files)}")
        print(f"datasets in the account: {[d.name for d in await rc.datasets.list()]}")
        await rc.datasets.delete(ds.id)
        print("deleted it")
        print(f"API calls: {rc.api_calls} in {time.monotonic() - started:.1f}s")


def main() -> None:
    """Run the demo flow and print each step."""
    asyncio.run(_main())


if __name__ == "__main__":
    main()
