"""The workers dimension (issue 17): small JSON over HTTPS, keep-alive, at concurrency 1
and 32, for the trimmed single-process Master, Squid, and egress-sidecar with
`--workers 1` and `--workers 2`, all in one run, rounds rotating the order.

    .venv/bin/python -m bench.workers                 # 5 rounds of 2.5 s per figure
    .venv/bin/python -m bench.workers --rounds 9 --seconds 3 --output FILE
    git worktree add /tmp/before REV   # then, before and after in one run:
    .venv/bin/python -m bench.workers --baseline-tree /tmp/before

Targets (issue 17): 2 workers >= 1.7x one worker at concurrency 32; one worker >= 0.8x
the trimmed Master (concurrency 32); added p50 over the trimmed Master < 1 ms at
concurrency 1. On a machine shared with other work, figures move between runs: the
report prints every round, so the spread is visible next to the medians.

Each contender's CPU per request (its processes' user + system time over the requests
served, at concurrency 32) is reported too. Where the load generator and the fake
provider share the proxies' cores, it gives the ratios the cores would allow:
`w1_over_trimmed_by_cpu_c32` (one core each) and `w2_over_w1_on_free_cores_c32` (two
workers on two cores of their own, supervisor included, over one worker on one).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import contenders as C
from bench import run as R
from bench.procs import Procs, cpu_ms

WORKER_COUNTS = (1, 2)
REUSEPORT = "sidecar-w2-reuseport"  # --accept-variants: the alternative to shared sockets
UVLOOP = "sidecar-w1-uvloop"  # --uvloop: one worker on uvloop's event loop
BASELINE = "sidecar-baseline"  # --baseline-tree: one worker of another checkout


def sidecar_name(workers: int) -> str:
    return f"sidecar-w{workers}"


async def measure(
    rounds: int,
    seconds: float,
    tmp: Path,
    procs: Procs,
    log: Any,
    profile: bool,
    variants: bool,
    uvloop: bool = False,
    baseline_tree: str | None = None,
) -> dict[str, Any]:
    world = C.start_world(procs, tmp)
    trimmed = C.start_trimmed(procs, world)
    squid = C.start_squid(procs, world)
    sidecars = [
        C.start_sidecar(procs, world, label=sidecar_name(n), workers=n) for n in WORKER_COUNTS
    ]
    if variants:
        from sidecar.listeners import ACCEPT_ENV

        sidecars.append(_variant(procs, world, REUSEPORT, 2, ACCEPT_ENV, "reuseport"))
    if uvloop:
        from sidecar.runner import LOOP_ENV

        sidecars.append(_variant(procs, world, UVLOOP, 1, LOOP_ENV, "uvloop"))
    if baseline_tree:  # e.g. a worktree of an earlier commit: before/after in one run
        ours, C.SIDECAR_TREE = C.SIDECAR_TREE, baseline_tree
        try:
            sidecars.append(C.start_sidecar(procs, world, label=BASELINE))
        finally:
            C.SIDECAR_TREE = ours
    C.wait_mitm(trimmed)
    everyone = [trimmed, squid, *sidecars]
    scenarios: dict[str, Any] = {}
    for conc in (1, 32):
        log(f"small JSON, concurrency {conc}")
        collected = await R.rounds(
            f"small_c{conc}", everyone, rounds, lambda c, n=conc: small_with_cpu(c, n, seconds), log
        )
        scenarios[f"small_c{conc}"] = R.finish(collected, summarize)
    profiles: dict[str, Any] = {}
    if profile:
        from bench.pyspy import profile_sidecar

        log("py-spy: sidecar --workers 1 under load")
        profiles = await profile_sidecar(sidecars[0], tmp, seconds=10)
    return {"scenarios": scenarios, "profiles": profiles}


async def small_with_cpu(
    contender: C.Contender, concurrency: int, seconds: float
) -> dict[str, Any]:
    """`R.small`, plus the CPU the contender's processes (a supervisor's workers too)
    used per request: a figure other work on the machine moves far less than req/s."""
    before: list[float] = []  # taken as the clock starts: the handshakes are not counted
    measured = await R.small(
        contender, concurrency, seconds, on_start=lambda: before.append(cpu_ms(contender.pid))
    )
    used = cpu_ms(contender.pid) - before[0]
    measured["cpu_ms_per_request"] = (
        used / len(measured["latencies"]) if measured["latencies"] else None
    )
    return measured


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary = R.summarize_small(rounds)
    per_request = [r["cpu_ms_per_request"] for r in rounds if r.get("cpu_ms_per_request")]
    summary["cpu_ms_per_request"] = round(R.med(per_request), 3) if per_request else None
    return summary


def _variant(
    procs: Procs, world: C.World, label: str, workers: int, variable: str, value: str
) -> C.Contender:
    """A sidecar started with a measurement-only environment variable set."""
    os.environ[variable] = value
    try:
        return C.start_sidecar(procs, world, label=label, workers=workers)
    finally:
        del os.environ[variable]


def figures(scenarios: dict[str, Any]) -> dict[str, Any]:
    c1, c32 = scenarios["small_c1"], scenarios["small_c32"]
    w1, w2 = sidecar_name(1), sidecar_name(2)

    def rps(s: dict[str, Any], name: str) -> float | None:
        value = s.get(name, {}).get("rps_median")
        return float(value) if value else None

    def p50(s: dict[str, Any], name: str) -> float | None:
        value = s.get(name, {}).get("lat_p50_ms")
        return float(value) if value is not None else None

    def cpu(name: str) -> float | None:
        value = c32.get(name, {}).get("cpu_ms_per_request")
        return float(value) if value else None

    # On one free core a CPU-bound proxy serves 1 / (CPU per request): the ratio of CPU
    # per request is the throughput ratio without the load generator and the fake
    # provider taking their share of the same cores.
    w1_cpu, w2_cpu = cpu(w1), cpu(w2)

    return {
        "w2_over_w1_c32": R.ratio(rps(c32, w2), rps(c32, w1)),
        "w1_over_trimmed_c32": R.ratio(rps(c32, w1), rps(c32, "trimmed")),
        "w1_over_trimmed_c1": R.ratio(rps(c1, w1), rps(c1, "trimmed")),
        "w2_over_trimmed_c32": R.ratio(rps(c32, w2), rps(c32, "trimmed")),
        "w1_added_p50_ms_c1": R.diff(p50(c1, w1), p50(c1, "trimmed")),
        "w2_added_p50_ms_c1": R.diff(p50(c1, w2), p50(c1, "trimmed")),
        "reuseport_over_w2_c32": R.ratio(rps(c32, REUSEPORT), rps(c32, w2)),
        "uvloop_over_w1_c32": R.ratio(rps(c32, UVLOOP), rps(c32, w1)),
        "uvloop_over_w1_c1": R.ratio(rps(c1, UVLOOP), rps(c1, w1)),
        "w1_over_baseline_c32": R.ratio(rps(c32, w1), rps(c32, BASELINE)),
        "w1_over_baseline_c1": R.ratio(rps(c1, w1), rps(c1, BASELINE)),
        "cpu_ms_per_request_c32": {name: cpu(name) for name in c32},
        "w1_over_trimmed_by_cpu_c32": R.ratio(cpu("trimmed"), w1_cpu),
        "w1_over_baseline_by_cpu_c32": R.ratio(cpu(BASELINE), w1_cpu),
        # Two workers on two cores of their own: twice the requests one core serves at
        # w2's CPU per request (supervisor included), over one worker on one core.
        "w2_over_w1_on_free_cores_c32": R.ratio(2 * w1_cpu, w2_cpu) if w1_cpu and w2_cpu else None,
    }


TARGETS = (
    ("w2_over_w1_c32", ">=", 1.7),
    ("w1_over_trimmed_c32", ">=", 0.8),
    ("w1_added_p50_ms_c1", "<", 1.0),
)


def report(result: dict[str, Any]) -> str:
    out = []
    for key, title in (("small_c1", "concurrency 1"), ("small_c32", "concurrency 32")):
        rows = [
            [
                name,
                s.get("rps_median"),
                " ".join(str(x) for x in s.get("rps_rounds", [])),
                s.get("lat_p50_ms"),
                s.get("lat_p99_ms"),
                s.get("errors"),
                s.get("cpu_ms_per_request"),
            ]
            for name, s in result["scenarios"][key].items()
        ]
        out.append(
            R.table(
                f"Small JSON over HTTPS, keep-alive, {title}",
                [
                    "contender",
                    "req/s (median)",
                    "req/s per round",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "CPU ms/request",
                ],
                rows,
            )
        )
    rows = []
    for name, op, threshold in TARGETS:
        value = result["figures"][name]
        met = value is not None and (value >= threshold if op == ">=" else value < threshold)
        rows.append([name, value, f"{op} {threshold}", "met" if met else "NOT met"])
    shown = {n for n, *_ in TARGETS}
    rows += [
        [n, v, "", ""]
        for n, v in result["figures"].items()
        if n not in shown and not isinstance(v, dict)
    ]
    out.append(R.table("Ratios (issue 17)", ["figure", "value", "target", ""], rows))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--profile", action="store_true", help="py-spy the one-worker sidecar")
    parser.add_argument(
        "--accept-variants",
        action="store_true",
        help="also 2 workers on SO_REUSEPORT sockets of their own (instead of shared ones)",
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="also one worker on uvloop's event loop"
    )
    parser.add_argument("--sidecar-tree", metavar="DIR", help="as for `python -m bench`")
    parser.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="also one worker of this checkout (e.g. `git worktree add DIR REV`), in the same run",
    )
    parser.add_argument("--output", default=str(R.RESULTS / "workers-latest.json"))
    args = parser.parse_args(argv)
    if args.sidecar_tree:
        C.SIDECAR_TREE = str(Path(args.sidecar_tree).resolve())
    if C.squid_binary() is None:
        print("squid is missing (apt-get install -y squid)", file=sys.stderr)
        return 3
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="egress-bench-workers-"))
    procs = Procs(tmp)
    load_before = R.load_average()
    try:
        measured = asyncio.run(
            measure(
                args.rounds,
                args.seconds,
                tmp,
                procs,
                log,
                args.profile,
                args.accept_variants,
                args.uvloop,
                str(Path(args.baseline_tree).resolve()) if args.baseline_tree else None,
            )
        )
    finally:
        procs.stop_all()
        if os.environ.get("BENCH_KEEP_TMP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": R.machine(),
            "loadavg_before": load_before,
            "loadavg_after": R.load_average(),
            "rounds": args.rounds,
            "seconds_per_round": args.seconds,
            "took_seconds": round(time.monotonic() - started, 1),
        },
        **measured,
    }
    result["figures"] = figures(result["scenarios"])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1, default=str))
    m = result["meta"]
    print(
        f"# egress-sidecar workers benchmark, {m['date']}\n"
        f"machine: {m['machine']['nproc']} CPUs, {m['machine']['cpu']}; load average "
        f"before {m['loadavg_before']}, after {m['loadavg_after']}; took {m['took_seconds']} s"
    )
    print(report(result))
    if measured.get("profiles"):
        print("\n## Profile (py-spy, --workers 1)\n" + measured["profiles"].get("text", ""))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
