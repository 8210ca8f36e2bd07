"""Memory of egress-sidecar with 1 and 2 workers (issue 17's sizing): RSS of every
process of the pod (supervisor and workers), idle after start, then with `--streams`
SSE streams held open through it.

    .venv/bin/python -m bench.workers_memory                # 500 streams
    .venv/bin/python -m bench.workers_memory --streams 200 --output FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import contenders as C
from bench import run as R
from bench.procs import Procs, with_children
from bench.workers import WORKER_COUNTS, sidecar_name


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pod_rss(pid: int) -> list[float]:
    """RSS (MB) of the process and its children (the workers), the process first."""
    return [round(rss_mb(p), 1) for p in with_children(pid)]


async def measure(streams: int, tmp: Path, procs: Procs) -> dict[str, Any]:
    world = C.start_world(procs, tmp)
    found: dict[str, Any] = {}
    for n in WORKER_COUNTS:
        sidecar = C.start_sidecar(procs, world, label=sidecar_name(n), workers=n)
        assert sidecar.pid is not None
        await asyncio.sleep(3)  # settled after start
        idle = pod_rss(sidecar.pid)
        held = await _with_streams(sidecar, streams, world)
        found[sidecar.name] = {
            "idle_mb": idle,
            "with_streams_mb": held["rss"],
            "streams_open": held["open"],
        }
        assert sidecar.proc is not None
        procs.stop(sidecar.proc)
    return found


async def _with_streams(sidecar: C.Contender, count: int, world: C.World) -> dict[str, Any]:
    assert sidecar.pid is not None
    pid = sidecar.pid
    seen: list[float] = []
    result = await R.open_streams(sidecar, count, world, lambda: seen.extend(pod_rss(pid)))
    return {"rss": seen, "open": result["streams_open"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers_memory", description=__doc__)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--output", default=str(R.RESULTS / "workers-memory-latest.json"))
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="egress-bench-workers-memory-"))
    procs = Procs(tmp)
    try:
        found = asyncio.run(measure(args.streams, tmp, procs))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"streams": args.streams, "load": R.load_average(), "sidecars": found}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"# RSS in MB (supervisor first), {args.streams} streams; load {result['load']}")
    for name, figures in found.items():
        print(
            f"{name}: idle {figures['idle_mb']} (sum {sum(figures['idle_mb']):.0f}); "
            f"{figures['streams_open']} streams open: {figures['with_streams_mb']} "
            f"(sum {sum(figures['with_streams_mb']):.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
