"""A real `redis-server` (Debian package redis-server) on a loopback port, with its
data in a temporary directory; killed, paused and restarted by the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.process import terminate

BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"


def _require_binary() -> str:
    if Path(BINARY).exists():
        return BINARY
    message = "redis-server not found: apt-get install -y redis-server (/usr/bin/redis-server)"
    if os.environ.get("CI"):
        pytest.fail(message + " -- required under CI")
    pytest.skip(message)


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.binary = _require_binary()
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "",
                # Suspensions must survive a Redis restart (docs/usage-limits.md).
                "--appendonly", "yes", "--appendfsync", "always",
                "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ping():
                return self
            assert self.proc.poll() is None, f"redis-server exited {self.proc.returncode}"
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer PING")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def unpause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            terminate(self.proc)
