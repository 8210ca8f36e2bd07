"""Sample the sidecar with py-spy while it serves load, and say where the time goes.

py-spy is not a project dependency: install it in a throwaway venv, e.g.
    uv venv /tmp/pyspy-venv && uv pip install py-spy --python /tmp/pyspy-venv
It is looked up on PATH, then at /tmp/pyspy-venv/bin/py-spy.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import contenders as C
from bench.client import closed_loop


def find_pyspy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path("/tmp/pyspy-venv/bin/py-spy")
    return str(candidate) if candidate.exists() else None


def summarize(raw: str, top: int = 18) -> dict[str, Any]:
    """Collapsed stacks ("a;b;c N") -> self and inclusive shares per function."""
    own: collections.Counter[str] = collections.Counter()
    area: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        total += n
        own[frames[-1]] += n
        area[_area(stack.split(";"))] += n
        for frame in set(frames):
            inclusive[frame] += n

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in counter.most_common(top)]

    return {
        "samples": total,
        "self": share(own),
        "inclusive": share(inclusive),
        "areas": share(area),
    }


def _area(frames: list[str]) -> str:
    """Who the sample's innermost known frame belongs to."""
    for frame in reversed(frames):
        if "sidecar/" in frame:
            return "egress-sidecar code"
        if "OpenSSL/" in frame or "/ssl.py" in frame:
            return "TLS (pyOpenSSL/ssl)"
        if "mitmproxy/" in frame:
            return "mitmproxy"
        if "asyncio/" in frame or "selectors.py" in frame:
            return "asyncio event loop"
        if "threading.py" in frame or "concurrent/futures" in frame:
            return "idle worker threads"
    return "other"


async def sample_during[T](
    sidecar: C.Contender, out: Path, seconds: int, load: Callable[[], Awaitable[T]]
) -> tuple[T, str] | str:
    """Raw py-spy samples of the sidecar in `out` for `seconds` while `load()` runs:
    what `load` returned and the samples, or why there are none."""
    pyspy = find_pyspy()
    if pyspy is None:
        return "py-spy not found (see bench/pyspy.py)"
    proc = await asyncio.create_subprocess_exec(
        pyspy,
        "record",
        "--pid",
        str(sidecar.pid),
        "--duration",
        str(seconds),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        await asyncio.sleep(0.5)
        loaded = await load()
        _, err = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if not out.exists():
        return f"py-spy failed: {err.decode(errors='replace')[-500:]}"
    return loaded, out.read_text()


async def profile_sidecar(sidecar: C.Contender, tmp: Path, seconds: int) -> dict[str, Any]:
    sampled = await sample_during(
        sidecar,
        tmp / "sidecar.pyspy.txt",
        seconds,
        lambda: closed_loop(sidecar.target, 32, duration=seconds, per_connection=5),
    )
    if isinstance(sampled, str):
        return {"text": sampled}
    result = summarize(sampled[1])
    lines = [
        f"{result['samples']} samples of the sidecar at 32 connections"
        " (a new connection every 5 requests)",
        "",
        "by area (innermost frame):",
    ]
    lines += [f"  {p:5.1f}%  {f}" for f, p in result["areas"]]
    lines += ["", "self time:"]
    lines += [f"  {p:5.1f}%  {f}" for f, p in result["self"]]
    lines += ["", "inclusive time:"]
    lines += [f"  {p:5.1f}%  {f}" for f, p in result["inclusive"]]
    result["text"] = "\n".join(lines)
    return result
