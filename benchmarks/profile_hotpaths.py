"""Profiles of the three hot paths, with pyinstrument (``pip install pyinstrument``).

1. **pipeline**: ``rc.models.get(id).status()`` calls at 16 concurrent callers with the limiter
   effectively off, against an emulator in its own process (so only the client is sampled).
2. **upload**: one signed-URL PUT of a 256 MiB sparse file (``--smoke``: 16 MiB): the chunk loop.
3. **converter**: structuring model status and result payloads, no I/O, with timings of the
   converter as configured beside one without cattrs' detailed validation.

Run: ``python -m benchmarks.profile_hotpaths [--smoke] [--only pipeline|upload|converter]``.
Writes ``benchmarks/results/profiles/<name>.txt`` (the pyinstrument text tree) and prints the
top frames of each profile by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runcomfy_async import RunComfy
from runcomfy_async._converter import make_converter, structure
from runcomfy_async.types.models import RequestResult, RequestStatus

from ._common import RESULTS, emulator_process

try:
    from pyinstrument import Profiler
except ImportError:  # optional tool: main() says how to install it
    Profiler = None  # type: ignore[assignment,misc]

MIB = 1 << 20
STATUS = {"request_id": "r-1", "status": "in_progress", "queue_position": 0, "created_at":
          "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:01Z"}
RESULT = {"request_id": "r-1", "status": "succeeded", "output": {"images": ["https://x/y.png"]},
          "created_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:05Z"}


def _top(profiler: Any, n: int = 12) -> list[tuple[str, float]]:
    """The frames with the most own (self) time, as (``function file:line``, share of total)."""
    session = profiler.last_session
    root = session.root_frame()
    own: dict[str, float] = {}

    def walk(frame: Any) -> None:
        if frame.is_synthetic:
            return
        key = f"{frame.function} ({Path(frame.file_path or '?').name}:{frame.line_no})"
        own[key] = own.get(key, 0.0) + frame.total_self_time
        for child in frame.children:
            walk(child)

    walk(root)
    total = root.time or 1.0
    return sorted(((k, v / total) for k, v in own.items()), key=lambda kv: -kv[1])[:n]


def _report(name: str, profiler: Any, figures: dict[str, Any]) -> None:
    """Write the text tree, print the figures and the top frames."""
    out = RESULTS / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.txt").write_text(
        profiler.output_text(unicode=False, color=False, show_all=False)
    )
    print(f"## {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    for key, share in _top(profiler):
        print(f"  {share * 100:5.1f}%  {key}")
    print()


async def _pipeline(env: dict[str, str], total: int) -> None:
    """Profile ``status()`` calls through the whole pipeline."""
    async with RunComfy(
        env["RUNCOMFY_API_TOKEN"], model_url=env["RUNCOMFY_MODEL_URL"], rate=1e9, burst=10**6
    ) as rc:
        req = await rc.models.submit(
            "blackforestlabs/flux-2/flash/text-to-image", {"prompt": "a cat"}
        )
        handle = rc.models.get(req.id)
        for _ in range(200):  # warm-up: connections open, code paths hot
            await handle.status()
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await handle.status()

        profiler = Profiler(interval=0.0002, async_mode="disabled")
        started = time.perf_counter()
        profiler.start()
        await asyncio.gather(*(worker() for _ in range(16)))
        profiler.stop()
        rate = total / (time.perf_counter() - started)
    _report("pipeline", profiler, {"requests": total, "req/s (profiled)": round(rate)})


async def _upload(env: dict[str, str], size: int, work: Path) -> None:
    """Profile one signed-URL upload."""
    path = work / "big.mp4"
    with path.open("wb") as fh:
        fh.truncate(size)
    async with RunComfy(
        env["RUNCOMFY_API_TOKEN"], trainer_url=env["RUNCOMFY_TRAINER_URL"], rate=1e9, burst=10**6
    ) as rc:
        ds = await rc.datasets.create("profile-upload")
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        started = time.perf_counter()
        profiler.start()
        await ds.upload(path, direct_limit=0)
        profiler.stop()
        seconds = time.perf_counter() - started
    _report("upload", profiler, {"MiB": size // MIB, "MB/s": round(size / seconds / 1e6)})


def _plain_converter() -> Any:
    """Our converter's hooks without cattrs' detailed validation, to time what it costs."""
    from datetime import datetime

    from cattrs.preconf.json import make_converter as json_converter

    from runcomfy_async._converter import _structure_datetime
    from runcomfy_async.types._base import OpenStrEnum

    conv = json_converter(detailed_validation=False)
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_structure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, OpenStrEnum),
        lambda value, cls: cls(str(value)),
    )
    return conv


def _per_call_us(fn: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - started) / n * 1e6, 2)


def _converter(n: int) -> None:
    """Profile and time structuring status/result payloads."""
    detailed, plain = make_converter(), _plain_converter()
    timings: dict[str, Any] = {}
    cases = (("status", STATUS, RequestStatus), ("result", RESULT, RequestResult))
    for label, payload, cls in cases:
        timings[f"{label}: structure() us"] = _per_call_us(
            lambda p=payload, c=cls: structure(p, c, what="x"), n
        )
        timings[f"{label}: detailed us"] = _per_call_us(
            lambda p=payload, c=cls: detailed.structure(p, c), n
        )
        timings[f"{label}: plain us"] = _per_call_us(
            lambda p=payload, c=cls: plain.structure(p, c), n
        )
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    for _ in range(n):
        structure(STATUS, RequestStatus, what="x")
        structure(RESULT, RequestResult, what="x")
    profiler.stop()
    _report("converter", profiler, timings)


def main(argv: list[str] | None = None) -> int:
    """Run the selected profiles."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes")
    parser.add_argument("--only", choices=("pipeline", "upload", "converter"))
    args = parser.parse_args(argv)
    if Profiler is None:
        print("pyinstrument is not installed: pip install pyinstrument", file=sys.stderr)
        return 1
    want = {args.only} if args.only else {"pipeline", "upload", "converter"}
    if "converter" in want:
        _converter(2000 if args.smoke else 50_000)
    if want & {"pipeline", "upload"}:
        with (
            tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp,
            emulator_process(
                "--rate-limit", "none", "--speed", "1000",
                "--storage-dir", str(Path(tmp) / "storage"),
            ) as env,
        ):
            os.environ.update(env)
            if "pipeline" in want:
                asyncio.run(_pipeline(env, 500 if args.smoke else 5000))
            if "upload" in want:
                asyncio.run(_upload(env, (16 if args.smoke else 256) * MIB, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
