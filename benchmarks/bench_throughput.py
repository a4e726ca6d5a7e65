"""Upload and download throughput where the client is the limit, over HTTP and HTTPS.

Against a receiver that is never the pacing party (``benchmarks/_sink.py``: it drops what it
receives and serves downloads from memory, in its own process), each transfer is made by:

- **ours**: ``ds.upload(path, direct_limit=0)`` (one ``get-upload-endpoint`` call, then the
  signed-URL PUT), ``ds.upload(path)`` of a 150 MB file (the direct multipart POST), and the
  download path every artifact and output download takes (``.part`` file, resume support,
  rename into place);
- **curl**: ``curl -T``, ``curl --form file=@path``, ``curl -o``;
- **raw aiohttp**: a tuned loop (4 MiB reads in a worker thread, ``Content-Length``, a
  hand-built multipart body, a 4 MiB read buffer for downloads).

Sizes: 16 MiB, 256 MiB and 1 GiB (multipart 150 MB; ``--smoke``: small sizes, one round, the
Python clients in the benchmark's own process: it checks the plumbing, not the figures).
Every size runs ``repeats`` rounds; in each round every tool runs once, in reverse order every
other round; the median time is quoted. Our client and raw aiohttp run in a child process each
time, measuring themselves: wall time of the transfer (for ours including its API call), CPU
seconds (``getrusage``, all threads) and peak RSS growth (VmHWM reset after imports). curl's
CPU is its whole process (``wait4``). The receiver's CPU over each transfer is read from
``/proc`` so the table shows how busy it was. Over HTTPS the certificate is generated at bench
time and every client verifies it through the CA file (ours: ``RunComfy(ssl=...)``).

Files (written in full, random bytes) and downloads live in ``/dev/shm`` when it exists, so the
disk is not the pacing party either. Run: ``python -m benchmarks.bench_throughput [--smoke]
[--only put|form|get] [--scheme http|https] [--repeats N]``. Writes ``results/throughput.json``.
``--profile`` instead records our client's transfers with py-spy into
``results/profiles/throughput-*.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from ._common import RESULTS, print_table, write_results
from .bench_uploads import _proc_status

MIB = 1 << 20
GIB = 1 << 30
FULL: dict[str, Any] = {
    "put": (16 * MIB, 256 * MIB, GIB),
    "form": (150_000_000,),
    "get": (16 * MIB, 256 * MIB, GIB),
    "repeats": 5,
}
SMOKE: dict[str, Any] = {"put": (2 * MIB,), "form": (2_000_000,), "get": (2 * MIB,), "repeats": 1}
#: ``ours-uvloop`` (our client on uvloop's event loop) joins when uvloop is installed.
TOOLS = ("ours", "aiohttp", "curl")
TOOL_NAMES = {
    "ours": "runcomfy-async",
    "ours-uvloop": "runcomfy-async on uvloop",
    "aiohttp": "raw aiohttp (tuned)",
}
OPS = ("put", "form", "get")
#: Throughput targets, ours / curl (the issue's acceptance figures).
TARGETS = {
    ("http", "put"): 1.0,
    ("http", "form"): 0.9,
    ("http", "get"): 1.0,
    ("https", "put"): 0.9,
    ("https", "form"): 0.9,
    ("https", "get"): 0.9,
}
RSS_TARGET_MIB = 64
CURL = {"put": "curl -T", "form": "curl --form", "get": "curl -o"}
OP_NAMES = {"put": "signed PUT", "form": "direct multipart", "get": "download"}
TOKEN = "bench-token"  # noqa: S105 (the sink accepts any token)
DATASETS = "/prod/v1/trainers/datasets"
READ = 4 * MIB


# -- the measured clients, each in a child process ---------------------------------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _context(cafile: str) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=cafile) if cafile else None


async def _ours(op: str, base: str, dataset: str, path: str, cafile: str) -> int:
    """One transfer with our client; returns the bytes it moved."""
    from runcomfy_async import RunComfy
    from runcomfy_async._downloads import download_artifacts
    from runcomfy_async.types.jobs import Artifact

    async with RunComfy(
        TOKEN, trainer_url=base, rate=1000, burst=1000, ssl=_context(cafile)
    ) as rc:
        started = _start()
        if op == "get":
            size = int(Path(path).name)
            dest = Path(path).parent
            await download_artifacts(
                rc.pipeline,
                [Artifact(kind="bench", url=f"{base}/blob/{size}", name="download.bin")],
                dest,
                timeout=rc.timeouts.for_transfer(),
                concurrency=1,
            )
            return _stop(started, (dest / "bench" / "download.bin").stat().st_size)
        ds = rc.datasets.get(dataset)
        report = await ds.upload(path, direct_limit=0 if op == "put" else 150_000_000)
        return _stop(started, report.bytes_sent)


async def _file_chunks(path: str) -> AsyncIterator[bytes]:
    with Path(path).open("rb", buffering=0) as fh:
        while chunk := await asyncio.to_thread(fh.read, READ):
            yield chunk


async def _raw(op: str, base: str, dataset: str, path: str, cafile: str) -> int:
    """One transfer with a tuned raw aiohttp loop; returns the bytes it moved."""
    connector = aiohttp.TCPConnector(ssl=_context(cafile) or True)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = _start()
        if op == "get":
            size = int(Path(path).name)
            out = Path(path).parent / "raw.bin"
            async with session.get(f"{base}/blob/{size}", read_bufsize=READ) as resp:
                resp.raise_for_status()
                with out.open("wb", buffering=0) as fh:
                    async for chunk in resp.content.iter_chunked(READ):
                        await asyncio.to_thread(fh.write, chunk)
            return _stop(started, out.stat().st_size)
        size = await asyncio.to_thread(os.path.getsize, path)
        if op == "put":
            url = f"{base}/storage/{dataset}/{Path(path).name}?X-Signature=bench"
            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            async with session.put(url, data=_file_chunks(path), headers=headers) as resp:
                resp.raise_for_status()
            return _stop(started, size)
        boundary = "benchboundary0123456789"
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{Path(path).name}\"\r\nContent-Type: video/mp4\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        async def body() -> AsyncIterator[bytes]:
            yield head
            async for chunk in _file_chunks(path):
                yield chunk
            yield tail

        headers = {
            "Content-Length": str(len(head) + size + len(tail)),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Authorization": f"Bearer {TOKEN}",
        }
        url = f"{base}{DATASETS}/{dataset}/upload"
        async with session.post(url, data=body(), headers=headers) as resp:
            resp.raise_for_status()
        return _stop(started, size)


_MEASURE: dict[str, float] = {}


def _start() -> float:
    """Reset the RSS high-water mark and note RSS, CPU and the clock."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    _MEASURE.update(rss=_proc_status("VmRSS"), cpu=_cpu())
    return time.perf_counter()


def _stop(started: float, moved: int) -> int:
    _MEASURE.update(
        elapsed=time.perf_counter() - started,
        cpu=_cpu() - _MEASURE["cpu"],
        growth=_proc_status("VmHWM") - _MEASURE["rss"],
    )
    return moved


def _child(tool: str, op: str, base: str, dataset: str, path: str, cafile: str) -> None:
    run = _raw if tool == "aiohttp" else _ours
    if tool == "ours-uvloop":
        import uvloop

        moved = uvloop.run(run(op, base, dataset, path, cafile))
    else:
        moved = asyncio.run(run(op, base, dataset, path, cafile))
    print(json.dumps({**_MEASURE, "bytes": moved}))


# -- the parent: the sinks, curl, the rounds ---------------------------------------------------


@contextlib.contextmanager
def _sink(*args: str) -> Iterator[tuple[str, int]]:
    """The receiver in its own process; yields its base URL and pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._sink", *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"{'https' if '--tls' in args else 'http'}://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the CA file every client verifies against)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _curl(op: str, base: str, dataset: str, path: Path, cafile: str) -> dict[str, Any]:
    """One curl transfer: wall time, CPU and peak RSS of the whole process."""
    args = ["curl", "-sS", "-w", "%{http_code}", "--fail"]
    args += ["--cacert", cafile] if cafile else []
    if op == "put":
        args += ["-o", "/dev/null", "-T", str(path), "-H", "Content-Type: application/octet-stream",
                 f"{base}/storage/{dataset}/{path.name}?X-Signature=bench"]
    elif op == "form":
        args += ["-o", "/dev/null", "-H", f"Authorization: Bearer {TOKEN}", "--form",
                 f"file=@{path}", f"{base}{DATASETS}/{dataset}/upload"]
    else:
        args += ["-o", str(path.parent / "curl.bin"), f"{base}/blob/{path.name}"]
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    assert proc.stdout is not None
    assert proc.stderr is not None
    code, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode or not code.startswith("2"):
        raise RuntimeError(f"curl {op} failed ({proc.returncode}, HTTP {code}): {err}")
    moved = (path.parent / "curl.bin").stat().st_size if op == "get" else path.stat().st_size
    return {"elapsed": elapsed, "cpu": usage.ru_utime + usage.ru_stime, "growth": None,
            "peak_rss": usage.ru_maxrss * 1024, "bytes": moved}


def _python(tool: str, op: str, base: str, dataset: str, path: Path, cafile: str,
            *, in_process: bool = False) -> dict[str, Any]:
    """One measured transfer by ours or raw aiohttp, in a fresh child process (``in_process``:
    in this one, for the smoke run, which checks the plumbing, not the figures)."""
    if in_process:
        run = _raw if tool == "aiohttp" else _ours
        moved = asyncio.run(run(op, base, dataset, str(path), cafile))
        return {**_MEASURE, "bytes": moved}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_throughput", "--child", tool, op, base, dataset,
         str(path), cafile],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{tool} {op} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _target(work: Path, op: str, size: int) -> Path:
    """The file to upload (written in full: a sparse file's holes read from the one zero page,
    always in the CPU cache, which flatters every reader but ``sendfile``), or for a download a
    folder whose name is the size (the downloaded file goes inside it)."""
    if op == "get":
        folder = work / "get" / str(size)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    path = work / f"{op}_{size}.mp4"
    if not path.exists():
        block = os.urandom(MIB)
        with path.open("wb") as fh:
            for start in range(0, size, MIB):
                fh.write(block[: size - start])
    return path


def _clean_downloads(folder: Path) -> None:
    for leftover in folder.rglob("*"):
        if leftover.is_file():
            leftover.unlink()


def _api(base: str, cafile: str, method: str, path: str) -> Any:
    """A bare API call to the sink (dataset creation, the status check)."""
    context = _context(cafile)

    async def call() -> Any:
        connector = aiohttp.TCPConnector(ssl=context or True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.request(method, base + path, json={} if method == "POST" else None,
                            headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
        ):
            resp.raise_for_status()
            return await resp.json()

    return asyncio.run(call())


def _measure(scheme: str, op: str, size: int, base: str, sink_pid: int, work: Path,
             cafile: str, repeats: int, tools: tuple[str, ...],
             smoke: bool = False) -> list[dict[str, Any]]:
    """Every tool, ``repeats`` alternating rounds; one row per tool (medians)."""
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    datasets = {tool: _api(base, cafile, "POST", DATASETS)["id"] for tool in tools}
    target = _target(work, op, size)
    for repeat in range(repeats):
        for tool in tools if repeat % 2 == 0 else tools[::-1]:
            if op == "get":
                _clean_downloads(target)
            sink_before = _proc_cpu(sink_pid)
            path = target / str(size) if op == "get" else target
            if tool == "curl":
                run = _curl(op, base, datasets[tool], target if op != "get" else path, cafile)
            else:
                run = _python(tool, op, base, datasets[tool], path, cafile, in_process=smoke)
            run["sink_cpu"] = _proc_cpu(sink_pid) - sink_before
            if run["bytes"] != size:
                raise RuntimeError(f"{tool} {op} moved {run['bytes']} of {size} bytes")
            runs[tool].append(run)
        if op != "get":
            listed = {
                tool: {f["filename"]: f["size_bytes"] for f in _api(
                    base, cafile, "GET", f"{DATASETS}/{datasets[tool]}/status")["files"]}
                for tool in tools
            }
            for tool, files in listed.items():
                got = max(files.values(), default=0)
                if got < size:  # multipart bodies are a little larger than the file
                    raise RuntimeError(f"the sink received {got} of {size} bytes from {tool}")
    if op == "get":
        _clean_downloads(target)
    rows = []
    for tool in tools:
        mine = runs[tool]
        seconds = statistics.median(r["elapsed"] for r in mine)
        growth = [r["growth"] for r in mine if r["growth"] is not None]
        rows.append({
            "scheme": scheme,
            "op": op,
            "transfer": OP_NAMES[op],
            "tool": TOOL_NAMES.get(tool, CURL[op]),
            "bytes": size,
            "seconds": round(seconds, 4),
            "MB/s": round(size / seconds / 1e6, 1),
            "cpu_s_per_GiB": round(statistics.median(r["cpu"] for r in mine) * GIB / size, 3),
            "peak_rss_growth_MiB": round(max(growth) / MIB, 1) if growth else None,
            "curl_peak_rss_MiB": (round(max(r["peak_rss"] for r in mine) / MIB, 1)
                                  if tool == "curl" else None),
            "sink_busy": round(statistics.median(r["sink_cpu"] / r["elapsed"] for r in mine), 2),
            "runs_s": [round(r["elapsed"], 4) for r in mine],
        })
    return rows


def _aggregate(raw: Path, title: str) -> str:
    """py-spy's folded stacks as text: the hottest frames by own and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [title, f"{total} samples (idle included: waiting shows as epoll/select)", "",
             "own time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(25)]
    lines += ["", "inclusive time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(45)]
    return "\n".join(lines) + "\n"


def profile(work: Path, cert: Path, key: Path, size: int) -> list[Path]:
    """Our client's transfers under py-spy, one text profile each in ``results/profiles``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    folder = RESULTS / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for scheme in ("http", "https"):
        sink_args = ["--tls", str(cert), str(key), "--threads"] if scheme == "https" else []
        cafile = str(cert) if scheme == "https" else ""
        with _sink(*sink_args) as (base, _):
            for op in OPS:
                dataset = _api(base, cafile, "POST", DATASETS)["id"]
                target = _target(work, op, size if op != "form" else 150_000_000)
                path = target / str(size) if op == "get" else target
                raw = work / "profile.txt"
                subprocess.run(
                    [spy, "record", "--idle", "-r", "250", "-f", "raw", "-o", str(raw), "--",
                     sys.executable, "-m", "benchmarks.bench_throughput", "--child", "ours", op,
                     base, dataset, str(path), cafile],
                    check=True, capture_output=True,
                )
                if op == "get":
                    _clean_downloads(target)
                out = folder / f"throughput-{scheme}-{op}.txt"
                out.write_text(_aggregate(
                    raw, f"runcomfy-async {OP_NAMES[op]} over {scheme.upper()}, py-spy"
                ))
                written.append(out)
    return written


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours beside curl and raw aiohttp for each (scheme, transfer, size), with the targets."""
    out = []
    for row in rows:
        if row["tool"] != "runcomfy-async":
            continue
        same = [r for r in rows if (r["scheme"], r["op"], r["bytes"]) ==
                (row["scheme"], row["op"], row["bytes"])]
        curl = next(r for r in same if r["tool"].startswith("curl"))
        raw = next(r for r in same if r["tool"].startswith("raw"))
        uv = next((r for r in same if r["tool"].endswith("uvloop")), None)
        ratio = round(curl["seconds"] / row["seconds"], 2)
        target = TARGETS[(row["scheme"], row["op"])]
        growth = row["peak_rss_growth_MiB"]
        out.append({
            "scheme": row["scheme"],
            "transfer": row["transfer"],
            "bytes": row["bytes"],
            "ours_MB/s": row["MB/s"],
            "curl_MB/s": curl["MB/s"],
            "vs_curl": ratio,
            "target": f">= {target}x",
            "raw_aiohttp_MB/s": raw["MB/s"],
            "ours_cpu_s_per_GiB": row["cpu_s_per_GiB"],
            # curl's CPU / ours: the steadier figure on a shared machine (>1: we spend less).
            "cpu_vs_curl": round(curl["cpu_s_per_GiB"] / row["cpu_s_per_GiB"], 2),
            "curl_cpu_s_per_GiB": curl["cpu_s_per_GiB"],
            "raw_cpu_s_per_GiB": raw["cpu_s_per_GiB"],
            "rss_growth_MiB": growth,
            "ours_on_uvloop_MB/s": uv["MB/s"] if uv else None,
            "ours_on_uvloop_cpu_s_per_GiB": uv["cpu_s_per_GiB"] if uv else None,
            "met": "yes" if ratio >= target and growth is not None and growth <= RSS_TARGET_MIB
            else "NO",
        })
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the rounds (or, with ``--child``, one measured transfer)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes; takes seconds")
    parser.add_argument("--only", action="append", choices=OPS, help="only these transfers")
    parser.add_argument("--scheme", action="append", choices=("http", "https"))
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--no-uvloop", action="store_true", help="skip the uvloop row")
    parser.add_argument(
        "--profile", action="store_true", help="write py-spy profiles of ours (256 MiB) instead"
    )
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    sizes = SMOKE if args.smoke else FULL
    repeats = args.repeats or sizes["repeats"]
    tools: tuple[str, ...] = TOOLS
    if not args.no_uvloop and not args.smoke and importlib.util.find_spec("uvloop"):
        tools = ("ours", "ours-uvloop", "aiohttp", "curl")
    shm = Path("/dev/shm")  # noqa: S108 (memory-backed scratch space, a private temp dir in it)
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-",
                                     dir=shm if shm.is_dir() else None) as tmp:
        work = Path(tmp)
        cert, key = _certificate(work)
        if args.profile:
            for written in profile(work, cert, key, 256 * MIB):
                print(f"wrote {written}")
            return 0
        for scheme in args.scheme or ("http", "https"):
            sink_args = ["--tls", str(cert), str(key), "--threads"] if scheme == "https" else []
            cafile = str(cert) if scheme == "https" else ""
            with _sink(*sink_args) as (base, pid):
                for op in args.only or OPS:
                    for size in sizes[op]:
                        rows += _measure(
                            scheme, op, size, base, pid, work, cafile, repeats, tools,
                            smoke=args.smoke,
                        )
                        print(f"  {scheme} {op} {size}: done", flush=True)
    load = {"before": load_before, "after": os.getloadavg()}
    table = verdicts(rows)
    name = "throughput-smoke" if args.smoke else "throughput"
    path = write_results(name, rows, verdicts=table, smoke=args.smoke, load_average=load)
    print_table(rows, ["scheme", "transfer", "tool", "bytes", "MB/s", "cpu_s_per_GiB",
                       "peak_rss_growth_MiB", "curl_peak_rss_MiB", "sink_busy"])
    print()
    print_table(table, list(table[0]) if table else [])
    print(f"\nload average before/after: {load['before']} / {load['after']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
