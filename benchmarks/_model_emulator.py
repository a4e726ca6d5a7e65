"""An emulator process whose models take set run times: ``python -m benchmarks._model_emulator``.

Like ``python -m runcomfy_async.testing`` (it prints the same ``export`` lines), plus
``--model ID=SECONDS`` (simulated run time of a model, repeatable) and ``--workers N`` (runs
served at once), which the scheduling benchmark needs and the public command does not offer;
``--rate-limit 0`` switches the account limit off.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from runcomfy_async.testing import Emulator
from runcomfy_async.testing._cli import announce, serve_until_stopped


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--speed", type=float, default=50.0)
    parser.add_argument("--rate-limit", type=float, default=1.0)
    parser.add_argument("--burst", type=int, default=3)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--model", action="append", default=[], metavar="ID=SECONDS")
    args = parser.parse_args(argv)
    models = {}
    for spec in args.model:
        model_id, _, seconds = spec.partition("=")
        models[model_id] = float(seconds)
    emulator = Emulator(
        port=args.port, speed=args.speed, rate_limit=args.rate_limit or None, burst=args.burst
    )

    def configure_and_announce(emu: Emulator) -> None:
        emu.state.model_requests.set_workers(args.workers)
        for model_id, seconds in models.items():
            emu.set_model_behavior(model_id, duration=seconds)
        announce(emu)

    asyncio.run(serve_until_stopped(emulator, configure_and_announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
