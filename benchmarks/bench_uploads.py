"""Dataset uploads: memory and throughput beside curl and the naive upload, bulk beside per-file.

Against one emulator in its own process (1 request/s, the real account limit):

1. **Signed-URL upload, size sweep** (16 MiB, 256 MiB, 2 GiB files written in full;
   ``--smoke``: 1, 4, 16 MiB): our ``ds.upload(path, direct_limit=0)`` in a child process,
   beside the naive upload (the whole file read into memory, then one aiohttp PUT of the bytes,
   also in a child process) and ``curl -T``, each to a signed URL fetched from the same API.
   Tools alternate, in reverse order every other repeat; the file is read once beforehand
   (page cache warm for everyone) and the emulator's stored uploads are flushed to disk
   (``sync``) before each measured transfer.
   A plot of throughput and memory against size goes to ``results/uploads_sweep.png``
   (matplotlib optional: skipped with a message when it is missing).
2. **Direct upload of a 150 MB file** (``--smoke``: 8 MB): ``ds.upload(path)`` beside
   ``curl --form file=@path`` with the bearer header (the vendor's documented command).
3. **A 1,000-file captioned folder** (500 images + 500 captions, ``--smoke``: 40 files):
   ``ds.upload_folder`` (validation, resume check, batched signed URLs, verify) beside the vendor's
   per-file flow (one ``curl --form`` per file, paced at 1 request/s). The per-file flow is timed
   on a sample (20 files; ``--smoke``: 2) and extrapolated linearly to the folder, since at the
   account limit it cannot go faster than one file per second.

Peak RSS growth of our client is measured inside its child process: the kernel's high-water mark
(VmHWM) is reset after imports and read after the upload, minus the RSS before it, so neither
the interpreter's start-up nor the emulator nor curl pollutes it. curl's figure is its whole peak
RSS (``ru_maxrss`` of the process). Throughput is file bytes / wall time of the transfer itself;
the single-file scenarios run three times per tool, alternating, and report the median time.

Run: ``python -m benchmarks.bench_uploads [--smoke]`` (full: ~5 minutes, ~7 GB of scratch disk).
Writes ``benchmarks/results/uploads.json`` (``uploads-smoke.json`` with ``--smoke``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from runcomfy_async import RunComfy

from ._common import emulator_process, print_table, write_results

MIB = 1 << 20
GIB = 1 << 30
#: ``sweep``: the signed-URL PUT sizes (the flat-memory check); the last one is the headline.
FULL: dict[str, Any] = {
    "sweep": (16 * MIB, 256 * MIB, 2 * GIB),
    "direct": 150_000_000,
    "pairs": 500,
    "sample": 20,
    "repeats": 3,
}
SMOKE: dict[str, Any] = {
    "sweep": (1 * MIB, 4 * MIB, 16 * MIB),
    "direct": 8_000_000,
    "pairs": 20,
    "sample": 2,
    "repeats": 1,
}
#: Peak RSS growth allowed at every size (the issue's target).
RSS_TARGET_MIB = 64
DATASETS = "/prod/v1/trainers/datasets"


# -- the measured client, in its own process ---------------------------------------------------


def _proc_status(field: str) -> int:
    """A ``/proc/self/status`` memory figure in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _naive(target: str, url: str) -> dict[str, Any]:
    """The naive upload: read the whole file into memory, PUT the bytes with aiohttp."""
    async with aiohttp.ClientSession() as session:
        reset = _reset_peak()
        rss_before = _proc_status("VmRSS")
        started = time.monotonic()
        data = await asyncio.to_thread(Path(target).read_bytes)
        async with session.put(url, data=data, headers={"Content-Type": "video/mp4"}) as resp:
            await resp.read()
            status = resp.status
        elapsed = time.monotonic() - started
        peak = _proc_status("VmHWM")
    if not 200 <= status < 300:
        raise RuntimeError(f"the naive PUT was answered with HTTP {status}")
    return {
        "elapsed": elapsed,
        "rss_before": rss_before,
        "peak_growth": peak - rss_before if reset else None,
    }


async def _child(mode: str, target: str, dataset_id: str) -> dict[str, Any]:
    """Run one upload with our client (or, mode ``naive``, the naive way) and measure it."""
    if mode == "naive":
        return await _naive(target, dataset_id)
    async with RunComfy() as rc:
        ds = rc.datasets.get(dataset_id)
        reset = _reset_peak()
        rss_before = _proc_status("VmRSS")
        started = time.monotonic()
        if mode == "signed":
            report = await ds.upload(target, direct_limit=0)
        elif mode == "direct":
            report = await ds.upload(target)
        else:
            report = await ds.upload_folder(target)
        elapsed = time.monotonic() - started
        peak = _proc_status("VmHWM")
    return {
        "elapsed": elapsed,
        "rss_before": rss_before,
        "peak_growth": peak - rss_before if reset else None,
        "api_calls": report.api_calls,
        "bytes_sent": report.bytes_sent,
        "files": len(report.uploaded),
        "failed": len(report.failed),
    }


def _run_child(mode: str, target: Path, dataset_id: str, env: dict[str, str]) -> dict[str, Any]:
    """Start the child, wait for it, return its JSON line (``dataset_id``: the URL if naive)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_uploads",
            "--child",
            mode,
            str(target),
            dataset_id,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _run_curl(args: list[str]) -> tuple[float, int, str]:
    """Run curl; return (wall seconds, peak RSS bytes, HTTP status it printed)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    assert proc.stdout is not None
    code = proc.stdout.read().strip()
    proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed with exit code {proc.returncode}")
    return elapsed, usage.ru_maxrss * 1024, code


# -- API helpers for the curl baselines (what a shell user would do) ---------------------------


class _Api:
    """Bare HTTP calls to the emulator's Trainer API, paced under its 1 request/s limit."""

    def __init__(self, env: dict[str, str], *, paced: bool) -> None:
        self.base = env["RUNCOMFY_TRAINER_URL"] + DATASETS
        self.auth = {"Authorization": f"Bearer {env['RUNCOMFY_API_TOKEN']}"}
        self.paced = paced
        self._last = 0.0

    async def pace(self, *, always: bool = False) -> None:
        """Wait until a request may go out at 1 request/s, and count it as sent."""
        if self.paced or always:
            await asyncio.sleep(max(0.0, self._last + 1.05 - time.monotonic()))
        self._last = time.monotonic()

    async def settle(self) -> None:
        """Let the emulator's rate-limit bucket refill, so no measured run starts on a 429."""
        if self.paced:
            await asyncio.sleep(2.5)

    async def call(self, method: str, path: str = "", body: Any = None) -> Any:
        """One JSON call, at most one per second, retried on 429."""
        async with aiohttp.ClientSession() as session:
            while True:
                await self.pace()
                async with session.request(
                    method, self.base + path, json=body, headers=self.auth
                ) as resp:
                    if resp.status == 429:
                        continue
                    resp.raise_for_status()
                    return await resp.json()

    async def dataset(self, name: str) -> str:
        """Create a dataset; return its id."""
        created = await self.call("POST", body={"name": name})
        return str(created["id"])

    async def signed_url(self, dataset_id: str, path: Path, size: int) -> str:
        """One signed PUT URL for ``path`` of ``size`` bytes."""
        answer = await self.call(
            "POST", f"/{dataset_id}/get-upload-endpoint", {"filenameToByteSize": {path.name: size}}
        )
        return str(answer["uploads"][path.name]["upload_url"])

    async def sizes(self, dataset_id: str) -> dict[str, int]:
        """``{filename: size}`` the dataset lists."""
        status = await self.call("GET", f"/{dataset_id}/status")
        return {f["filename"]: f["size_bytes"] for f in status.get("files", [])}


def _expect_ok(code: str) -> None:
    if not code.startswith("2"):
        raise RuntimeError(f"curl's request was answered with HTTP {code}")


def _check(listed: dict[str, int], *paths: Path) -> None:
    for p in paths:
        if listed.get(p.name) != p.stat().st_size:
            raise RuntimeError(f"{p.name} is not listed with its size after the upload")


# -- scenarios ---------------------------------------------------------------------------------


def _filled(path: Path, size: int) -> Path:
    """A file written in full with random bytes (a sparse file's holes read from the kernel's
    one zero page, always in the CPU cache, which flatters every reader)."""
    block = os.urandom(MIB)
    with path.open("wb") as fh:
        for start in range(0, size, MIB):
            fh.write(block[: size - start])
    return path


def _warm(path: Path) -> None:
    """Read the file once, so no tool pays for filling the page cache (holes included)."""
    with path.open("rb") as fh:
        while fh.read(8 * MIB):
            pass


async def _quiet_disk() -> None:
    """Flush the emulator's stored uploads to disk before a measured transfer.

    Each stored GiB is written back by the kernel in the background; without this, whichever
    transfer runs next shares the machine with that writeback.
    """
    await asyncio.to_thread(os.sync)


def _dense(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(left, 8 * MIB)
            fh.write(os.urandom(n))
            left -= n
    return path


def _row(scenario: str, tool: str, size: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "tool": tool,
        "bytes": size,
        "seconds": round(seconds, 3),
        "MB/s": round(size / seconds / 1e6, 1) if seconds else None,
        **extra,
    }


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def _measured(scenario: str, tool: str, size: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A row from child runs: median time, the largest peak RSS growth seen."""
    growth = [r["peak_growth"] for r in runs]
    return _row(
        scenario,
        tool,
        size,
        statistics.median(r["elapsed"] for r in runs),
        peak_rss_growth_MiB=_mib(None if None in growth else max(growth)),
        runs=len(runs),
    )


async def _scenarios(
    env: dict[str, str], work: Path, sizes: dict[str, Any], *, paced: bool
) -> list[dict[str, Any]]:
    api = _Api(env, paced=paced)
    rows: list[dict[str, Any]] = []

    bearer = f"Authorization: Bearer {env['RUNCOMFY_API_TOKEN']}"

    # 1. the signed-URL PUT at each size of the sweep: ours, the naive read-it-all upload and
    # `curl -T`, alternating, `repeats` times each, each tool into its own dataset (the same
    # name overwrites, docs/wire.md). Median time, largest memory figure.
    ds_ours = await api.dataset("bench-signed-ours")
    ds_naive = await api.dataset("bench-signed-naive")
    ds_curl = await api.dataset("bench-signed-curl")
    for size in sizes["sweep"]:
        path = _filled(work / f"big_{size // MIB}MiB.mp4", size)
        ours_runs: list[dict[str, Any]] = []
        naive_runs: list[dict[str, Any]] = []
        curl_runs: list[tuple[float, int, str]] = []
        await asyncio.to_thread(_warm, path)
        for repeat in range(sizes["repeats"]):
            # Every other repeat runs the tools in reverse order, so whoever goes first after
            # the previous size's transfers is not always the same tool.
            order = ("ours", "naive", "curl") if repeat % 2 == 0 else ("curl", "naive", "ours")
            for tool in order:
                await api.settle()
                if tool == "ours":
                    await _quiet_disk()
                    ours_runs.append(
                        await asyncio.to_thread(_run_child, "signed", path, ds_ours, env)
                    )
                    continue
                url = await api.signed_url(ds_naive if tool == "naive" else ds_curl, path, size)
                await _quiet_disk()
                if tool == "naive":
                    naive_runs.append(await asyncio.to_thread(_run_child, "naive", path, url, env))
                else:
                    curl_runs.append(
                        await asyncio.to_thread(
                            _run_curl, ["-T", str(path), "-H", "Content-Type: video/mp4", url]
                        )
                    )
                    _expect_ok(curl_runs[-1][2])
        for ds in (ds_ours, ds_naive, ds_curl):
            _check(await api.sizes(ds), path)
        rows.append(_measured("signed PUT", "runcomfy-async", size, ours_runs))
        rows[-1]["api_calls"] = ours_runs[0]["api_calls"]
        rows.append(_measured("signed PUT", "naive read-all + aiohttp PUT", size, naive_runs))
        rows.append(
            _row(
                "signed PUT",
                "curl -T",
                size,
                statistics.median(r[0] for r in curl_runs),
                curl_peak_rss_MiB=_mib(max(r[1] for r in curl_runs)),
                runs=len(curl_runs),
            )
        )
        path.unlink()

    # 2. one file at the direct limit, ours beside the vendor's documented `curl --form`.
    mid = _dense(work / "mid.mp4", sizes["direct"])
    ds_ours = await api.dataset("bench-direct-ours")
    ds_curl = await api.dataset("bench-direct-curl")
    direct_runs: list[dict[str, Any]] = []
    form_runs: list[tuple[float, int, str]] = []
    await asyncio.to_thread(_warm, mid)
    for _ in range(sizes["repeats"]):
        await api.settle()
        await _quiet_disk()
        direct_runs.append(await asyncio.to_thread(_run_child, "direct", mid, ds_ours, env))
        _check(await api.sizes(ds_ours), mid)
        await api.settle()
        await _quiet_disk()
        form_runs.append(
            await asyncio.to_thread(
                _run_curl,
                ["-H", bearer, "--form", f"file=@{mid}", f"{api.base}/{ds_curl}/upload"],
            )
        )
        _expect_ok(form_runs[-1][2])
        _check(await api.sizes(ds_curl), mid)
    rows.append(_measured("direct multipart", "runcomfy-async", sizes["direct"], direct_runs))
    rows[-1]["api_calls"] = direct_runs[0]["api_calls"]
    rows.append(
        _row(
            "direct multipart",
            "curl --form",
            sizes["direct"],
            statistics.median(r[0] for r in form_runs),
            curl_peak_rss_MiB=_mib(max(r[1] for r in form_runs)),
            runs=len(form_runs),
        )
    )

    # 3. a captioned folder
    folder = work / "dogs"
    folder.mkdir()
    for i in range(sizes["pairs"]):
        (folder / f"img_{i:04}.jpg").write_bytes(os.urandom(2048 + i % 97))
        (folder / f"img_{i:04}.txt").write_text(f"a photo of sks dog, number {i}")
    files = sorted(folder.iterdir())
    total = sum(p.stat().st_size for p in files)
    ds_ours = await api.dataset("bench-folder-ours")
    ds_vendor = await api.dataset("bench-folder-vendor")
    await api.settle()
    ours = await asyncio.to_thread(_run_child, "folder", folder, ds_ours, env)
    _check(await api.sizes(ds_ours), *files)
    rows.append(
        _row(
            f"{len(files)}-file folder",
            "runcomfy-async upload_folder",
            total,
            ours["elapsed"],
            api_calls=ours["api_calls"],
            peak_rss_growth_MiB=_mib(ours["peak_growth"]),
        )
    )
    sample = files[: sizes["sample"]]
    await api.settle()
    started = time.monotonic()
    for p in sample:  # the vendor's flow: one direct upload per file, at 1 request/s
        await api.pace(always=True)
        _, _, code = await asyncio.to_thread(
            _run_curl,
            [
                "-H",
                f"Authorization: Bearer {env['RUNCOMFY_API_TOKEN']}",
                "--form",
                f"file=@{p}",
                f"{api.base}/{ds_vendor}/upload",
            ],
        )
        _expect_ok(code)
    sample_seconds = time.monotonic() - started
    _check(await api.sizes(ds_vendor), *sample)
    rows.append(
        _row(
            f"{len(files)}-file folder",
            "vendor per-file curl --form (extrapolated)",
            total,
            sample_seconds / len(sample) * len(files),
            api_calls=len(files),
            measured_sample_files=len(sample),
            measured_sample_seconds=round(sample_seconds, 2),
        )
    )
    return rows


def _ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Our speed relative to each baseline of the same scenario and size (>1: we are faster)."""
    out: dict[str, float] = {}
    ours = {(r["scenario"], r["bytes"]): r for r in rows if r["tool"].startswith("runcomfy-async")}
    for base in rows:
        mine = ours.get((base["scenario"], base["bytes"]))
        if mine is None or base is mine or not base["seconds"]:
            continue
        label = f"{base['scenario']} {_size_label(base['bytes'])}: speed vs {base['tool']}"
        out[label] = round(base["seconds"] / mine["seconds"], 2)
    return out


def _size_label(size: int) -> str:
    if size % GIB == 0:
        return f"{size // GIB} GiB"
    if size % MIB == 0:
        return f"{size // MIB} MiB"
    return f"{size / 1e6:g} MB"


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Throughput and peak RSS against file size for the signed PUT; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written")
        return None
    sweep = [r for r in rows if r["scenario"] == "signed PUT"]
    sizes = sorted({r["bytes"] for r in sweep})
    styles = {
        "runcomfy-async": ("runcomfy-async (peak RSS growth)", "tab:blue", "o", "-"),
        "naive": ("naive: read all + aiohttp PUT (growth)", "tab:red", "s", "-"),
        "curl": ("curl -T (whole process peak RSS)", "tab:gray", "^", "--"),
    }
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, (label, color, marker, line) in styles.items():
        mine = sorted((r for r in sweep if r["tool"].startswith(key)), key=lambda r: r["bytes"])
        xs = [r["bytes"] / MIB for r in mine]
        speed.plot(xs, [r["MB/s"] for r in mine], marker=marker, color=color, linestyle=line,
                   label=label.split(" (")[0])
        rss = [r.get("peak_rss_growth_MiB") or r.get("curl_peak_rss_MiB") for r in mine]
        memory.plot(xs, rss, marker=marker, color=color, linestyle=line, label=label)
    memory.axhline(RSS_TARGET_MIB, color="tab:green", linestyle=":", label="target: 64 MiB")
    for ax in (speed, memory):
        ax.set_xscale("log", base=2)
        ax.set_xticks([s / MIB for s in sizes], [_size_label(s) for s in sizes])
        ax.set_xlabel("file size")
        ax.grid(True, which="major", alpha=0.3)
    speed.set_ylabel("throughput, MB/s (median)")
    speed.set_ylim(bottom=0)
    speed.set_title("Signed-URL PUT throughput")
    speed.legend(fontsize=8)
    memory.set_yscale("log", base=2)
    memory.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    memory.set_ylabel("peak RSS, MiB (log scale)")
    memory.set_title("Client memory during the upload")
    memory.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the scenarios (or, with ``--child``, one measured upload)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes; takes seconds")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "PATH", "DATASET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        mode, target, dataset_id = args.child
        print(json.dumps(asyncio.run(_child(mode, target, dataset_id))))
        return 0
    sizes = SMOKE if args.smoke else FULL
    # Full runs keep the account's real 1 request/s limit; the smoke run lifts it on the
    # emulator (our client still paces itself at 1 request/s) so it takes seconds.
    limit = "none" if args.smoke else "1"
    with (
        tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp,
        # Signed URLs live url_ttl / speed real seconds: long enough for the naive 2 GiB read-all
        # PUT on a slow machine (a real URL lives 15 minutes).
        emulator_process(
            "--rate-limit", limit, "--speed", "50", "--url-ttl", "45000",
            "--storage-dir", str(Path(tmp) / "storage"),
        ) as env,
    ):
        work = Path(tmp) / "work"
        work.mkdir()
        rows = asyncio.run(_scenarios(env, work, sizes, paced=not args.smoke))
    ratios = _ratios(rows)
    name = "uploads-smoke" if args.smoke else "uploads"
    path = write_results(name, rows, ratios=ratios, smoke=args.smoke)
    plot = plot_sweep(rows, path.with_name(f"{name.replace('uploads', 'uploads_sweep')}.png"))
    print_table(
        rows,
        [
            "scenario",
            "tool",
            "bytes",
            "seconds",
            "MB/s",
            "peak_rss_growth_MiB",
            "curl_peak_rss_MiB",
            "api_calls",
        ],
    )
    print()
    for key, value in sorted(ratios.items()):
        print(f"- {key}: x{value}")
    print(f"\nwrote {path}" + (f" and {plot}" if plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
