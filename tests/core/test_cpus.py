"""The default of `run --workers`: the CPUs the container may use, not the host's."""

from __future__ import annotations

import pytest

from sidecar import cpus


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


def files(table: dict[str, str]):
    return table.get


V2_POD = "0::/kubepods/burstable/pod1/ctr\n"
V1_POD = "4:memory:/kubepods/pod1/ctr\n3:cpu,cpuacct:/kubepods/pod1/ctr\n"


@pytest.mark.parametrize(
    ("affinity", "table", "expected"),
    [
        # A 64-core node, a pod limited to 2 CPUs (v2, seen at the namespaced root).
        (64, {"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "200000 100000"}, 2),
        # The same, the process's own cgroup directory visible (no cgroup namespace).
        (
            64,
            {
                "/proc/self/cgroup": V2_POD,
                "/sys/fs/cgroup/kubepods/burstable/pod1/ctr/cpu.max": "150000 100000",
            },
            2,
        ),
        # No limit: the affinity decides.
        (8, {"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "max 100000"}, 8),
        # A limit above the cpuset: the cpuset decides.
        (2, {"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "800000 100000"}, 2),
        # Half a CPU still gets one worker.
        (16, {"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "50000 100000"}, 1),
        # cgroup v1, cpu and cpuacct mounted together.
        (
            32,
            {
                "/proc/self/cgroup": V1_POD,
                "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/ctr/cpu.cfs_quota_us": "300000",
                "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/ctr/cpu.cfs_period_us": "100000",
            },
            3,
        ),
        # cgroup v1 without a quota (-1), at the mount root.
        (
            4,
            {
                "/proc/self/cgroup": "1:cpu:/\n",
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
                "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
            },
            4,
        ),
        # Nothing readable (not Linux, or /sys not mounted): the affinity.
        (6, {}, 6),
    ],
)
def test_usable_cpus(affinity, table, expected):
    assert cpus.usable_cpus(affinity, files(table)) == expected


def test_this_machine_has_at_least_one():
    assert cpus.available() >= 1
