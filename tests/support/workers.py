"""Which worker process of a `run --workers N` sidecar holds a client's connection.

Read from /proc, as an operator would: the worker whose open sockets include the
accepted end of our connection (local = the listener's port, remote = our port).
"""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.sidecar import SidecarProcess


def worker_pids(sidecar: SidecarProcess) -> list[int]:
    """The sidecar's worker processes (its descendants running sidecar.worker: the
    sidecar may run under wrappers, as in the network namespace tests)."""
    assert sidecar.proc is not None
    found: list[int] = []
    stack = [sidecar.proc.pid]
    while stack:
        pid = stack.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"sidecar.worker" in cmdline:
                found.append(child)
            else:
                stack.append(child)
    return found


def worker_decisions(pid: int, reason: str) -> float:
    """Decisions with this reason counted by one worker: its own prometheus-client
    multiprocess file, which the admin endpoint sums with the others'."""
    from prometheus_client.multiprocess import MultiProcessCollector

    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    directory = next(
        e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")
    )
    total = 0.0
    for family in MultiProcessCollector.merge([f"{directory}/counter_{pid}.db"]):
        for sample in family.samples:
            if (
                sample.name == "egress_sidecar_decisions_total"
                and sample.labels["reason"] == reason
            ):
                total += sample.value
    return total


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(target[8:-1])
    except OSError:
        pass
    return found


def _inodes_with_remote_port(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def serving_worker(sidecar: SidecarProcess, client_port: int, timeout: float = 5.0) -> int:
    """The pid of the worker that accepted the connection from our `client_port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = _inodes_with_remote_port(client_port)
        for pid in worker_pids(sidecar):
            if inodes & _socket_inodes(pid):
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def one_connection_per_worker(
    sidecar: SidecarProcess,
    workers: int,
    connect: Callable[[], http.client.HTTPConnection],
    attempts: int = 60,
) -> dict[int, http.client.HTTPConnection]:
    """Open connections (each made to send one request first, so it is accepted) until
    every worker holds one; the others are closed."""
    held: dict[int, http.client.HTTPConnection] = {}
    for _ in range(attempts):
        conn = connect()
        pid = serving_worker(sidecar, conn.sock.getsockname()[1])
        if pid in held:
            conn.close()
        else:
            held[pid] = conn
        if len(held) == workers:
            return held
        time.sleep(0.05)
    raise AssertionError(f"connections reached {len(held)} of {workers} workers")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
