"""How many CPUs this container may use: the default of `run --workers`.

Not `os.cpu_count()`: that is the host's count, and a pod limited to 2 CPUs on a
64-core node would start 64 workers that the CFS quota then throttles. The answer is
the smallest of the scheduler affinity (cpusets) and the cgroup CPU quota (v2
`cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), a fractional quota rounded up
(1.5 CPUs: 2 workers, each throttled a little, rather than a core left idle).

Pure readers over text, plus one function that reads the files of this process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path


def quota_v2(cpu_max: str) -> float | None:
    """`cpu.max` ("max 100000" or "150000 100000") -> CPUs, None when unlimited."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def quota_v1(quota_us: str, period_us: str) -> float | None:
    """`cpu.cfs_quota_us` (-1 = unlimited) over `cpu.cfs_period_us` -> CPUs."""
    return _ratio(quota_us.strip(), period_us.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p


def cgroup_paths(proc_self_cgroup: str) -> dict[str, str]:
    """/proc/self/cgroup -> {controller: path}; the v2 unified entry is keyed ""."""
    paths: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def usable_cpus(
    affinity: int,
    read: Callable[[str], str | None],
    root: str = "/sys/fs/cgroup",
) -> int:
    """min(affinity, ceil(quota)) over the cgroup files `read` finds (None: missing)."""
    limits: list[float] = [float(affinity)]
    own = cgroup_paths(read("/proc/self/cgroup") or "")
    for base in _candidates(root, own.get("")):
        text = read(f"{base}/cpu.max")
        if text is not None:
            quota = quota_v2(text)
            if quota is not None:
                limits.append(quota)
            break
    for base in _candidates(f"{root}/cpu", own.get("cpu")) + _candidates(
        f"{root}/cpu,cpuacct", own.get("cpu")
    ):
        quota_text, period_text = (
            read(f"{base}/cpu.cfs_quota_us"),
            read(f"{base}/cpu.cfs_period_us"),
        )
        if quota_text is not None and period_text is not None:
            quota = quota_v1(quota_text, period_text)
            if quota is not None:
                limits.append(quota)
            break
    return max(1, math.ceil(min(limits) - 1e-9))


def _candidates(mount: str, path: str | None) -> list[str]:
    """The process's own cgroup directory first, then the mount root (a container's
    namespaced view shows its own cgroup at the root)."""
    found = []
    if path and path != "/":
        found.append(mount + path.rstrip("/"))
    found.append(mount)
    return found


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def available() -> int:
    """CPUs this process may use (at least 1)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    return usable_cpus(affinity, _read)
