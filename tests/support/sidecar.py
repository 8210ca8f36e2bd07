"""Run the real `egress-sidecar run` process, as the README says to, and read its records."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.process import terminate

BIN = shutil.which("egress-sidecar", path=str(Path(sys.executable).parent)) or "egress-sidecar"


def loopback_args(
    policy: Path | str,
    ca_dir: Path | str,
    resolver_port: int,
    *,
    upstream_ca: Path | str | None = None,
    listen: bool = True,
) -> list[str]:
    """The `run` arguments of a sidecar under test: this policy, an explicit listener on
    a free loopback port (or none), an admin port, this CA directory, the fake resolver,
    and the test CA for upstream TLS when the upstreams are fakes."""
    from tests.support.ports import free_port

    args = ["--policy", str(policy), "--listen", f"127.0.0.1:{free_port()}" if listen else "off"]
    args += ["--admin", "127.0.0.1:0", "--ca-dir", str(ca_dir)]
    args += ["--resolver", f"127.0.0.1:{resolver_port}"]
    if upstream_ca is not None:
        args += ["--upstream-ca", str(upstream_ca)]
    return args


class SidecarProcess:
    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, *, workers: str | None = "1"
    ) -> None:
        """`workers`: the --workers given when neither `args` nor `env` say it. One by
        default, not the sidecar's `auto`: the machine's cgroup (a CPU quota on a CI
        runner) must not decide how many processes a test starts. None: the sidecar's
        own default."""
        self.env = {**os.environ, **(env or {})}
        if workers is not None and not (
            "--workers" in args or "EGRESS_SIDECAR_WORKERS" in self.env
        ):
            args = [*args, "--workers", workers]
        self.args = [BIN, "run", *args]
        self.decisions: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._listening: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self.listening: dict[str, Any] = {}

    # Start-up takes ~2 s idle, but importing mitmproxy, botocore and google-auth took
    # over 30 s at load average 10-40 (the suite beside other work), and with --workers
    # three processes import them: the bound is for a sidecar that never starts.
    START_TIMEOUT = 120.0

    def start(self, timeout: float = START_TIMEOUT) -> SidecarProcess:
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.listening = self._listening.get(timeout=0.2)
                return self
            except queue.Empty:
                if self.proc.poll() is not None:
                    time.sleep(0.2)
                    raise RuntimeError(
                        f"sidecar exited {self.proc.returncode}:\n" + "".join(self.stderr_lines)
                    ) from None
        self.stop()
        raise RuntimeError("sidecar did not start:\n" + "".join(self.stderr_lines))

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            try:
                self.decisions.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(record)
            if record.get("event") == "listening":
                self._listening.put(record)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return terminate(self.proc)

    # --- addresses --------------------------------------------------------------------

    def listener(self, label: str) -> str:
        return str(self.listening["listeners"][label][0])

    @property
    def proxy_url(self) -> str:
        return f"http://{self.listener('explicit')}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.listening['admin']}"

    @property
    def ca_cert(self) -> str:
        return str(self.listening["ca_cert"])

    def reverse_url(self, provider: str) -> str:
        return f"http://{self.listener('reverse:' + provider)}"

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).text

    # --- records ----------------------------------------------------------------------

    def settled_count(self, quiet: float = 0.2, timeout: float = 5.0) -> int:
        """How many decision lines there are once none has arrived for `quiet` seconds.
        A thread writes the sidecar's stdout, so the line of a request answered just
        before can still be on its way: a test that counts "lines since" from here does
        not count an earlier test's line as its own."""
        count = len(self.decisions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(quiet)
            if len(self.decisions) == count:
                break
            count = len(self.decisions)
        return count

    def wait_for_decision(self, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in list(self.decisions):
                if all(record.get(k) == v for k, v in fields.items()):
                    return record
            time.sleep(0.02)
        raise AssertionError(f"no decision matching {fields}; got {self.decisions[-5:]}")

    def wait_for_event(self, event: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.events[after:]:
                if record.get("event") == event:
                    return record
            time.sleep(0.05)
        raise AssertionError(f"no {event} event; stderr: {''.join(self.stderr_lines[-20:])}")
