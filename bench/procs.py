"""Processes the benchmark starts: each in its own process group, always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port

__all__ = ["free_port"]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
        time.sleep(0.1)
    if not path.exists():
        raise RuntimeError(f"{path} not created after {timeout}s")


def wait_json_line(
    path: Path, proc: subprocess.Popen[bytes], key: str, value: str, timeout: float = 30.0
) -> dict:  # type: ignore[type-arg]
    """First JSON line in `path` whose `key` equals `value` (a process's log file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get(key) == value:
                    return record
        if proc.poll() is not None:
            tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n{tail}")
        time.sleep(0.1)
    raise RuntimeError(f"no {key}={value} line in {path} after {timeout}s")


class Procs:
    """Starts processes in new sessions (own process group); stop_all() ends each group."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        args: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        out = open(self.logdir / f"{name}.out", "wb")
        err = open(self.logdir / f"{name}.err", "wb")
        proc = subprocess.Popen(
            args,
            stdout=stdout if stdout is not None else out,
            stderr=err,
            stdin=stdin,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        out.close()
        err.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB, from /proc (no psutil here)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name.lower() + "_mb"] = round(int(rest.split()[0]) / 1024, 1)
    return values


def with_children(pid: int) -> list[int]:
    """The process and its children (a supervisor's workers), the process first."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def cpu_ms(pid: int | None) -> float:
    """User + system CPU so far of a process (all its threads) and of its children, in
    ms, from /proc (0 for none: a direct connection)."""
    if pid is None:
        return 0.0
    total = 0
    for each in with_children(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited between the two reads
        total += int(fields[11]) + int(fields[12])
    return total * 1000 / os.sysconf("SC_CLK_TCK")
