"""Record how a real ComfyUI answers the conformance scenarios, as JSON fixtures.

Usage (a ComfyUI started with ``python main.py --cpu --listen 127.0.0.1 --port 8188``)::

    python scripts/record_comfyui.py http://127.0.0.1:8188 [scenario ...]

Each scenario of ``tests/_comfy_scenarios.py`` is run once and its transcript (HTTP statuses,
content types and bodies, every WebSocket message) is written to
``tests/fixtures/comfyui/<scenario>.json``, with the ids the server made up replaced by
placeholders. The emulator's conformance tests replay the same scenarios and compare shapes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._comfy_scenarios import SCENARIOS, Driver  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "comfyui"


async def record(base_url: str, names: list[str]) -> None:
    """Run the named scenarios (all by default) against ``base_url`` and store the fixtures."""
    async with aiohttp.ClientSession() as session:
        async with session.get(base_url.rstrip("/") + "/system_stats") as resp:
            version = (await resp.json())["system"]["comfyui_version"]
        for name in names or list(SCENARIOS):
            driver = Driver(session, base_url)
            await SCENARIOS[name](driver)
            transcript = {"scenario": name, "comfyui_version": version, **await driver.finish()}
            path = FIXTURES / f"{name}.json"
            path.write_text(json.dumps(transcript, indent=1, sort_keys=True) + "\n")
            print(f"{name}: {len(transcript['steps'])} requests -> {path.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(record(sys.argv[1], sys.argv[2:]))
