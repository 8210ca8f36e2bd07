"""`run --workers auto` (the default): the CPUs the container may use, not the host's;
1 when the container has no CPU limit; never more than its memory limit fits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import cpus

MIB = 1 << 20
V1_UNLIMITED = "9223372036854771712\n"  # what cgroup v1 says for "no limit"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("garbage", None),
        ("", None),
        ("0 100000", None),
    ],
)
def test_cgroup_v2_cpu_max(text, expected):
    assert cpus.quota_v2(text) == expected


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("-1\n", "100000\n", None), ("400000", "100000", 4.0), ("25000", "100000", 0.25)],
)
def test_cgroup_v1_cfs_quota(quota, period, expected):
    assert cpus.quota_v1(quota, period) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max\n", None),  # v2 without a limit
        (V1_UNLIMITED, None),
        (str(1 << 60), None),  # the threshold itself
        (str((1 << 60) - 1), (1 << 60) - 1),
        ("536870912\n", 512 * MIB),
        ("0", None),
        ("garbage", None),
    ],
)
def test_memory_limit_text(text, expected):
    assert cpus.memory_bytes(text) == expected


@pytest.mark.parametrize(
    ("mib", "expected"),
    [
        (64, 1),  # less than the supervisor alone: still one worker
        (512, 1),  # the manifests' limit: 80 + 2 x 256 = 592 > 512
        (591, 1),
        (592, 2),  # exactly 80 + 2 x 256
        (640, 2),  # docs/performance.md's limit for --workers 2
        (1024, 3),
        (80 + 64 * 256, 64),
    ],
)
def test_workers_fitting_a_memory_limit(mib, expected):
    assert cpus.workers_fitting(mib * MIB) == expected


V2_ROOT = {"/proc/self/cgroup": "0::/\n"}
V2_POD = "0::/kubepods/burstable/pod1/ctr\n"
V2_POD_DIR = "/sys/fs/cgroup/kubepods/burstable/pod1/ctr"
V1_POD = "5:memory:/kubepods/pod1/ctr\n3:cpu,cpuacct:/kubepods/pod1/ctr\n"
V1_CPU_DIR = "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/ctr"
V1_MEMORY_DIR = "/sys/fs/cgroup/memory/kubepods/pod1/ctr"


def v2(cpu_max: str | None = None, memory_max: str | None = None) -> dict[str, str]:
    """A container's namespaced v2 view: its own cgroup at the mount root."""
    table = dict(V2_ROOT)
    if cpu_max is not None:
        table["/sys/fs/cgroup/cpu.max"] = cpu_max
    if memory_max is not None:
        table["/sys/fs/cgroup/memory.max"] = memory_max
    return table


def v1(quota: str = "-1", memory: str | None = None) -> dict[str, str]:
    """A v1 host: cpu and cpuacct mounted together, the process's own directories."""
    table = {
        "/proc/self/cgroup": V1_POD,
        f"{V1_CPU_DIR}/cpu.cfs_quota_us": quota,
        f"{V1_CPU_DIR}/cpu.cfs_period_us": "100000",
    }
    if memory is not None:
        table[f"{V1_MEMORY_DIR}/memory.limit_in_bytes"] = memory
    return table


MEMORY_1G = str(1024 * MIB)


@pytest.mark.parametrize(
    ("case", "affinity", "host", "table", "expected"),
    [
        # A 64-core node, a pod limited to 2 CPUs.
        ("v2 quota", 64, 64, v2("200000 100000", "max"), 2),
        (
            "v2 quota, own directory visible (no cgroup namespace)",
            64,
            64,
            {"/proc/self/cgroup": V2_POD, f"{V2_POD_DIR}/cpu.max": "150000 100000"},
            2,
        ),
        ("v2 quota, memory fits more", 64, 64, v2("200000 100000", MEMORY_1G), 2),
        ("v2 quota, memory fits fewer", 64, 64, v2("800000 100000", MEMORY_1G), 3),
        ("v2 quota, memory too small for 2", 64, 64, v2("400000 100000", "536870912"), 1),
        ("v2 half a CPU", 16, 16, v2("50000 100000"), 1),
        ("v2 quota above the cpuset", 2, 64, v2("800000 100000"), 2),
        ("v1 quota", 32, 32, v1("300000"), 3),
        ("v1 quota, memory fits fewer", 32, 32, v1("800000", MEMORY_1G), 3),
        ("v1 quota, memory unlimited", 32, 32, v1("800000", V1_UNLIMITED), 8),
        ("v1 quota, memory too small for 2", 32, 32, v1("400000", "536870912"), 1),
        # No quota: a cpuset narrower than the host bounds it, the whole host does not.
        ("v2 cpuset narrower than the host", 8, 64, v2("max 100000"), 8),
        ("v1 cpuset narrower than the host", 4, 64, v1("-1"), 4),
        ("v1 cpuset, memory fits fewer", 4, 64, v1("-1", MEMORY_1G), 3),
        ("v2 no limits at all", 64, 64, v2("max 100000", "max"), 1),
        ("v1 no limits at all", 64, 64, v1("-1", V1_UNLIMITED), 1),
        ("v2 memory limit only", 64, 64, v2("max 100000", MEMORY_1G), 1),
        ("nothing readable (not Linux, /sys not mounted)", 6, 6, {}, 1),
        ("nothing readable, a cpuset", 6, 12, {}, 6),
        ("a 256-CPU quota is capped", 256, 256, v2("25600000 100000"), cpus.MAX_WORKERS),
        ("a 128-CPU cpuset is capped", 128, 256, {}, cpus.MAX_WORKERS),
    ],
)
def test_auto_workers(case, affinity, host, table, expected):
    assert cpus.auto_workers(affinity, host, table.get).n == expected, case


@pytest.mark.parametrize(
    ("affinity", "host", "table", "reason"),
    [
        (
            64,
            64,
            v2("200000 100000", MEMORY_1G),
            "cgroup cpu.max 2 CPUs, memory.max 1024 MiB fits 3",
        ),
        (32, 32, v1("150000"), "cgroup cpu.cfs_quota_us 1.5 CPUs"),
        (
            64,
            64,
            v2("max 100000", "max"),
            "no CPU limit (no cgroup CPU quota, all 64 CPUs of the node): "
            "1 worker (set --workers N or a CPU limit)",
        ),
        (
            4,
            64,
            v1("-1", "536870912"),
            "CPU affinity 4 of 64 CPUs, memory.limit_in_bytes 512 MiB fits 1",
        ),
        (128, 256, {}, "CPU affinity 128 of 256 CPUs, at most 64"),
    ],
)
def test_auto_says_why(affinity, host, table, reason):
    assert cpus.auto_workers(affinity, host, table.get).reason == reason


def test_the_smaller_of_v1_and_v2_quota_counts():
    """A hybrid host with both hierarchies limiting: the tighter one wins."""
    table = {**v1("300000", MEMORY_1G), "/sys/fs/cgroup/cpu.max": "200000 100000"}
    table["/sys/fs/cgroup/memory.max"] = str(600 * MIB)
    assert cpus.auto_workers(64, 64, table.get) == cpus.WorkerCount(
        2, "cgroup cpu.max 2 CPUs, memory.max 600 MiB fits 2"
    )


@st.composite
def cgroups(draw: st.DrawFn) -> tuple[int, int, dict[str, str], int | None, int | None]:
    """A host, a cpuset, and cgroup files of either version with or without limits;
    the CPU quota (microseconds per 100 ms) and memory limit in bytes (None: none)."""
    host = draw(st.integers(1, 512))
    affinity = draw(st.integers(1, host))
    quota_us = draw(st.none() | st.integers(1, 600 * 100_000))
    memory = draw(st.none() | st.integers(1, 64 << 30))
    if draw(st.booleans()):
        table = v2(
            "max 100000" if quota_us is None else f"{quota_us} 100000",
            "max" if memory is None else str(memory),
        )
    else:
        table = v1("-1" if quota_us is None else str(quota_us), V1_UNLIMITED)
        if memory is not None:
            table[f"{V1_MEMORY_DIR}/memory.limit_in_bytes"] = str(memory)
    return affinity, host, table, quota_us, memory


@given(cgroups())
def test_auto_stays_within_the_cpus_the_cap_and_the_memory(case):
    affinity, host, table, quota_us, memory = case
    count = cpus.auto_workers(affinity, host, table.get)
    assert 1 <= count.n <= min(affinity, cpus.MAX_WORKERS)
    if quota_us is None and affinity == host:
        assert count.n == 1  # no share of the node to fill
    elif quota_us is not None:
        assert count.n <= max(1, -(-quota_us // 100_000))  # ceil(quota)
    if memory is not None:
        assert count.n <= cpus.workers_fitting(memory)
        # The supervisor and N workers at their ceiling fit, unless one worker is all.
        assert count.n == 1 or (80 + 256 * count.n) * MIB <= memory
    assert count.reason


def test_this_machine_gets_at_least_one():
    count = cpus.auto()
    assert 1 <= count.n <= cpus.MAX_WORKERS and count.reason
