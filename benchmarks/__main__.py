"""Run every benchmark, then print and write the summary table.

``python -m benchmarks`` runs each benchmark in full (about 20 minutes, 3 GB of scratch disk and
2 GB of /dev/shm; run it on a quiet machine), ``--smoke`` runs each in its seconds-long mode,
``--only NAME`` picks some, ``--summary`` only rebuilds the summary from the JSON already in
``benchmarks/results/``. Each benchmark runs in its own process and writes
``benchmarks/results/<name>.json`` (with ``-smoke`` in smoke mode) with the machine's
description; the summary, every figure beside its baseline from the same run with the ratio and
the target, goes to ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import RESULTS, machine, print_table, write_results

#: Benchmark modules, in the order they run.
BENCHMARKS = ("throughput", "uploads", "pipeline", "models", "limiter", "validate")


def _load(name: str, smoke: bool) -> dict[str, Any] | None:
    path = RESULTS / f"{name}{'-smoke' if smoke else ''}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _row(figure: str, ours: Any, baseline: str, value: Any, ratio: Any, target: str,
         met: bool | None) -> dict[str, Any]:
    return {
        "figure": figure,
        "ours": ours,
        "baseline": baseline,
        "baseline_value": value,
        "ratio": ratio,
        "target": target,
        "met": "n/a" if met is None else ("yes" if met else "NO"),
    }


def _uploads(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = data["rows"]

    def pick(scenario: str, tool: str, size: int | None = None) -> dict[str, Any]:
        found = [r for r in rows if r["scenario"] == scenario and r["tool"].startswith(tool)
                 and (size is None or r["bytes"] == size)]
        return max(found, key=lambda r: r["bytes"])

    out = []
    big = pick("signed PUT", "runcomfy-async")
    curl = pick("signed PUT", "curl", big["bytes"])
    naive = pick("signed PUT", "naive", big["bytes"])
    mib = big["bytes"] // (1 << 20)
    speed = round(curl["seconds"] / big["seconds"], 2)
    out.append(_row(f"emulator (end to end): signed PUT {mib} MiB, MB/s", big["MB/s"],
                    "curl -T", curl["MB/s"],
                    speed, ">= 0.9x", speed >= 0.9))
    sweep = sorted((r for r in rows if r["scenario"] == "signed PUT"
                    and r["tool"].startswith("runcomfy-async")), key=lambda r: r["bytes"])
    naive_sweep = sorted((r for r in rows if r["scenario"] == "signed PUT"
                          and r["tool"].startswith("naive")), key=lambda r: r["bytes"])
    growth = [r["peak_rss_growth_MiB"] for r in sweep]
    sizes = "/".join(f"{r['bytes'] >> 20}" for r in sweep)
    out.append(_row(
        f"signed PUT peak RSS growth, MiB at {sizes} MiB",
        " / ".join(str(g) for g in growth),
        "naive read-all PUT",
        " / ".join(str(r["peak_rss_growth_MiB"]) for r in naive_sweep),
        round(naive["peak_rss_growth_MiB"] / max(big["peak_rss_growth_MiB"], 0.1), 1),
        "<= 64 MiB at every size",
        all(g is not None and g <= 64 for g in growth),
    ))
    direct = pick("direct multipart", "runcomfy-async")
    form = pick("direct multipart", "curl")
    speed = round(form["seconds"] / direct["seconds"], 2)
    out.append(_row(f"emulator (end to end): direct multipart {direct['bytes'] / 1e6:g} MB, MB/s",
                    direct["MB/s"],
                    "curl --form", form["MB/s"], speed, ">= 0.8x", speed >= 0.8))
    out.append(_row("direct multipart peak RSS growth, MiB", direct["peak_rss_growth_MiB"],
                    "curl --form (whole process)", form["curl_peak_rss_MiB"], None,
                    "<= 64 MiB (flat)", (direct["peak_rss_growth_MiB"] or 0) <= 64))
    folder = next(r for r in rows if r["scenario"].endswith("folder")
                  and r["tool"].startswith("runcomfy-async"))
    vendor = next(r for r in rows if r["scenario"].endswith("folder")
                  and r["tool"].startswith("vendor"))
    out.append(_row(
        f"{folder['scenario']} at 1 req/s: seconds, API calls",
        f"{folder['seconds']} s, {folder['api_calls']} calls",
        "vendor per-file flow (extrapolated)",
        f"{vendor['seconds']:.0f} s, {vendor['api_calls']} calls",
        round(vendor["seconds"] / folder["seconds"], 1),
        "<= 10 s and <= 5 calls",
        folder["seconds"] <= 10 and folder["api_calls"] <= 5,
    ))
    return out


def _size(size: int) -> str:
    if size % (1 << 30) == 0:
        return f"{size >> 30} GiB"
    if size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    return f"{size / 1e6:g} MB"


def _throughput(data: dict[str, Any]) -> list[dict[str, Any]]:
    curl = {"signed PUT": "curl -T", "direct multipart": "curl --form", "download": "curl -o"}
    out = []
    for v in data["verdicts"]:
        uv = v.get("ours_on_uvloop_MB/s")
        out.append(_row(
            f"{v['scheme'].upper()} {v['transfer']} {_size(v['bytes'])} (fast receiver): "
            "MB/s, CPU s/GiB, RSS growth",
            f"{v['ours_MB/s']:.0f} MB/s, {v['ours_cpu_s_per_GiB']:.2f} s/GiB "
            f"({v.get('cpu_vs_curl', '?')}x curl's CPU efficiency), +{v['rss_growth_MiB']} MiB"
            + (f" (uvloop: {uv:.0f} MB/s)" if uv else ""),
            curl[v["transfer"]],
            f"{v['curl_MB/s']:.0f} MB/s, {v['curl_cpu_s_per_GiB']:.2f} s/GiB",
            v["vs_curl"],
            f"{v['target']} curl, RSS <= 64 MiB",
            v["met"] == "yes",
        ))
    return out


def _pipeline(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in data["rows"]:
        if r["benchmark"].startswith("client overhead"):
            out.append(_row("client overhead, status() calls/s (limiter off)", r["ours"],
                            r["baseline"], r["baseline_value"], r["ratio"], ">= 0.75x",
                            r["met"]))
        else:
            out.append(_row(f"{r['benchmark']}: requests answered, 429s",
                            f"{r['ours']}, {r['requests_429']} x 429", r["baseline"],
                            r["baseline_value"], r["ratio"], ">= 0.95, zero 429", r["met"]))
    return out


def _models(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = data["rows"]
    out = []
    for ours in (r for r in rows if r["order"] == "latency"):
        before = next(r for r in rows if r["scenario"] == ours["scenario"] and r is not ours)
        figures = ("first_s", "median_s", "p95_s", "total_s")
        if "2 s model" in ours["scenario"]:
            ratio = round(ours["median_s"] / ours["bound_median_s"], 2)
            target = "first <= 6 s, median <= 1.15x bound"
            met = ours["first_s"] <= 6.0 and ratio <= 1.15
        else:
            ratio = round(ours["median_s"] / before["median_s"], 2)
            target = "no worse than before (median, p95, total; 1 % noise)"
            met = all(ours[f] <= 1.01 * before[f] for f in figures[1:])
        out.append(_row(
            f"{ours['scenario']}: first / median / p95 / total answer, s",
            " / ".join(str(ours[f]) for f in figures),
            "clairvoyant bound; arrival order (before)",
            " / ".join(str(ours[f"bound_{f}"]) for f in figures) + "; "
            + " / ".join(str(before[f]) for f in figures),
            ratio, target, met,
        ))
    return out


def _limiter(data: dict[str, Any]) -> list[dict[str, Any]]:
    most = max(r["processes"] for r in data["rows"])
    by = {r["limiter"].split()[0]: r for r in data["rows"] if r["processes"] == most}
    shared, local = by["shared"], by["per-process"]
    return [_row(f"{most} processes, one account: sent/s, 429s",
                 f"{shared['sent_per_s']:.2f}/s, {shared['requests_429']} x 429",
                 "per-process TokenBucket",
                 f"{local['sent_per_s']:.2f}/s, {local['requests_429']} x 429",
                 None, "<= limit, zero 429", shared["requests_429"] == 0)]


def _validate(data: dict[str, Any]) -> list[dict[str, Any]]:
    r = data["rows"][0]
    return [_row("validate=True input check, us", r["ours_us"], r["baseline"], r["baseline_us"],
                 r["ratio"], r["target"], r["met"])]


SUMMARIES: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    "throughput": _throughput,
    "uploads": _uploads,
    "pipeline": _pipeline,
    "models": _models,
    "limiter": _limiter,
    "validate": _validate,
}


def summarize(smoke: bool) -> Path:
    """Build, print and write the summary table from the results on disk."""
    rows: list[dict[str, Any]] = []
    sources = {}
    for name in BENCHMARKS:
        data = _load(name, smoke)
        if data is None:
            print(f"(no results for {name}: run python -m benchmarks --only {name})")
            continue
        rows.extend(SUMMARIES[name](data))
        sources[name] = data["machine"]["when"]
    print_table(rows, ["figure", "ours", "baseline", "baseline_value", "ratio", "target", "met"])
    path = write_results("summary-smoke" if smoke else "summary", rows, measured=sources)
    print(f"\nwrote {path} ({machine()['cpu']}, {machine()['cores']} cores)")
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks one after another (at once with --smoke), then the summary; exit
    status 1 if any failed."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="every benchmark in seconds")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--summary", action="store_true", help="only rebuild the summary")
    args = parser.parse_args(argv)
    failed = []
    if not args.summary:
        names = args.only or BENCHMARKS
        commands = {
            name: [sys.executable, "-m", f"benchmarks.bench_{name}"]
            + (["--smoke"] if args.smoke else [])
            for name in names
        }
        if args.smoke:
            # Smoke figures are not measurements: the benchmarks run at once (they mostly wait
            # on rate limits), their output printed in order.
            running = {
                name: subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                for name, command in commands.items()
            }
            for name, proc in running.items():
                output, _ = proc.communicate()
                print(f"\n## {name} (smoke)\n\n{output}", end="", flush=True)
                if proc.returncode:
                    failed.append(name)
        else:
            for name, command in commands.items():
                print(f"\n## {name}\n", flush=True)
                if subprocess.run(command, check=False).returncode:
                    failed.append(name)
    print("\n## summary\n")
    summarize(args.smoke)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
