"""How many workers `run --workers auto` (the default) starts: what the container may use.

Not `os.cpu_count()`: that is the host's count, and a pod limited to 2 CPUs on a
64-core node would start 64 workers that the CFS quota then throttles. The CPU bound is
the smaller of the scheduler affinity (cpusets) and the cgroup CPU quota (v2 `cpu.max`,
v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), a fractional quota rounded up (1.5 CPUs:
2 workers, each throttled a little, rather than a core left idle).

Two traps make the rules below (docs/performance.md#workers):
- No CPU quota and an affinity of the whole host: the container was given no share of
  the node to fill, and the affinity is the node's count (64 workers, ~6 GB on a
  64-core node). Then `auto` is 1.
- A memory limit: N workers must fit it at their ceiling under attack, or the pod is
  OOM-killed exactly when it is being attacked. Then `auto` is at most what fits.

Pure readers over text, plus one function that reads the files of this process.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

MAX_WORKERS = 64

# docs/performance.md "Sizing": "limit 512 MiB for one worker (`80 + 256 N` MiB or more
# with N)": with N > 1 the supervisor's ~80 MiB, and each worker's ceiling under the
# attacks of docs/limits.md.
SUPERVISOR_MIB = 80
WORKER_CEILING_MIB = 256
MIB = 1 << 20
# cgroup v1 says "no limit" with a huge number (9223372036854771712, page-rounded).
UNLIMITED_BYTES = 1 << 60

CGROUP_ROOT = "/sys/fs/cgroup"

type Reader = Callable[[str], str | None]  # a file's text, None when it cannot be read


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerCount:
    """How many workers, and why (logged at start-up as the `workers` event)."""

    n: int
    reason: str


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


def memory_bytes(text: str) -> int | None:
    """v2 `memory.max` ("max" or bytes) or v1 `memory.limit_in_bytes` -> bytes, None
    when unlimited (or unreadable)."""
    try:
        limit = int(text.strip())
    except ValueError:
        return None
    if limit <= 0 or limit >= UNLIMITED_BYTES:
        return None
    return limit


def workers_fitting(limit: int) -> int:
    """Workers that fit a memory limit of `limit` bytes at their ceiling (at least 1:
    one worker has no supervisor, and a pod given less is sized for one)."""
    fit = (limit - SUPERVISOR_MIB * MIB) // (WORKER_CEILING_MIB * MIB)
    return max(1, fit)


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


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """A cgroup limit and the file that set it (for the reason)."""

    value: float  # CPUs, or bytes
    file: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Source:
    """Where one cgroup version keeps a limit: the controller's entry in
    /proc/self/cgroup ("" for v2), its mounts under the cgroup root, its files (read
    from one directory) and how their texts become the limit (None: unlimited)."""

    controller: str
    mounts: tuple[str, ...]
    files: tuple[str, ...]
    parse: Callable[..., float | None]


CPU_SOURCES = (
    _Source("", ("",), ("cpu.max",), quota_v2),
    _Source("cpu", ("cpu", "cpu,cpuacct"), ("cpu.cfs_quota_us", "cpu.cfs_period_us"), quota_v1),
)
MEMORY_SOURCES = (
    _Source("", ("",), ("memory.max",), memory_bytes),
    _Source("memory", ("memory",), ("memory.limit_in_bytes",), memory_bytes),
)


def cpu_quota(read: Reader, root: str = CGROUP_ROOT) -> Limit | None:
    """The smallest cgroup CPU quota (v2, v1) in CPUs; None: no quota."""
    return _smallest(read, root, CPU_SOURCES)


def memory_limit(read: Reader, root: str = CGROUP_ROOT) -> Limit | None:
    """The smallest cgroup memory limit (v2, v1) in bytes; None: no limit."""
    return _smallest(read, root, MEMORY_SOURCES)


def _smallest(read: Reader, root: str, sources: tuple[_Source, ...]) -> Limit | None:
    """A hybrid host can limit in both versions: the tighter limit holds."""
    own = cgroup_paths(read("/proc/self/cgroup") or "")
    limits: list[Limit] = []
    for source in sources:
        bases = [
            base
            for mount in source.mounts
            for base in _candidates(f"{root}/{mount}".rstrip("/"), own.get(source.controller))
        ]
        texts = _first_readable(read, bases, *source.files)
        value = None if texts is None else source.parse(*texts)
        if value is not None:
            limits.append(Limit(value, source.files[0]))
    return min(limits, key=lambda limit: limit.value) if limits else None


def _first_readable(read: Reader, bases: list[str], *names: str) -> list[str] | None:
    """The texts of `names` in the first directory where all of them can be read."""
    for base in bases:
        texts = [read(f"{base}/{name}") for name in names]
        if all(text is not None for text in texts):
            return [text for text in texts if text is not None]
    return None


def _candidates(mount: str, path: str | None) -> list[str]:
    """The process's own cgroup directory first, then the mount root (a container's
    namespaced view shows its own cgroup at the root)."""
    found = []
    if path and path != "/":
        found.append(mount + path.rstrip("/"))
    found.append(mount)
    return found


def auto_workers(
    affinity: int, host_cpus: int, read: Reader, root: str = CGROUP_ROOT
) -> WorkerCount:
    """`--workers auto` for a process allowed `affinity` CPUs of a `host_cpus` host,
    over the cgroup files `read` finds."""
    quota = cpu_quota(read, root)
    if quota is None and affinity >= host_cpus:
        return WorkerCount(
            1,
            f"no CPU limit (no cgroup CPU quota, all {host_cpus} CPUs of the node): "
            "1 worker (set --workers N or a CPU limit)",
        )
    if quota is not None and quota.value < affinity:
        n = max(1, math.ceil(quota.value - 1e-9))
        why = [f"cgroup {quota.file} {quota.value:g} CPUs"]
    else:
        n = affinity
        why = [f"CPU affinity {affinity} of {host_cpus} CPUs"]
    if n > MAX_WORKERS:
        n = MAX_WORKERS
        why.append(f"at most {MAX_WORKERS}")
    memory = memory_limit(read, root)
    if memory is not None:
        fit = workers_fitting(int(memory.value))
        why.append(f"{memory.file} {int(memory.value) // MIB} MiB fits {fit}")
        n = min(n, fit)
    return WorkerCount(n, ", ".join(why))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def auto() -> WorkerCount:
    """`--workers auto` for this process."""
    host = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = host
    return auto_workers(affinity, host, _read)
