"""Attack helpers for tests/limits: raw sockets (so nothing a client library does hides
what the sidecar sends back), the sidecar's RSS from /proc, and the alert receiver."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from typing import Any

from tests.support.sidecar import SidecarProcess

# The documented ceiling (docs/limits.md): with default options no attack, nor all of
# them at once, takes the sidecar's resident memory past this. The shipped manifest
# limits the container to 512 MiB. Idle, the process sits near 90-100 MB; without the
# limits a single header bomb reached ~390 MB while sending and ~1.2 GB after it.
RSS_CEILING_MB = 256


def rss_mb(sidecar: SidecarProcess) -> float:
    """The largest RSS among the sidecar's processes (with --workers: the supervisor and
    each worker; an attack lands on the worker that accepted it, and each must stay
    bounded)."""
    from tests.support.workers import worker_pids

    assert sidecar.proc is not None
    return max(_rss_mb(pid) for pid in [sidecar.proc.pid, *worker_pids(sidecar)])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc status")


class PeakRss:
    """Samples the sidecar's RSS every 50 ms while an attack runs; `peak` in MB."""

    def __init__(self, sidecar: SidecarProcess) -> None:
        self.sidecar = sidecar
        self.peak = rss_mb(sidecar)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mb(self.sidecar))
            except (OSError, AssertionError):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_mb(self.sidecar))


def proxy_address(sidecar: SidecarProcess) -> tuple[str, int]:
    host, port = sidecar.proxy_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the sidecar sends until it closes (or `timeout`)."""
    sock.settimeout(0.5)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def status_of(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 else 0


def flood(sock: socket.socket, head: bytes, filler: bytes, total: int) -> bytes:
    """Send `head`, then `filler` until `total` bytes or the sidecar stops us; collect
    whatever it answers meanwhile (read without blocking between writes)."""
    sock.settimeout(2.0)
    answer = b""
    sent = 0
    try:
        sock.sendall(head)
        while sent < total:
            sock.sendall(filler)
            sent += len(filler)
            sock.setblocking(False)  # peek for an answer between writes (TLS too)
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
            finally:
                sock.settimeout(2.0)
            if b"\r\n\r\n" in answer:
                break
    except OSError:
        pass
    return answer + read_response(sock, timeout=5)


def alert_reasons(receiver: Any) -> list[str]:
    reasons = []
    for request in receiver.requests:
        try:
            reasons.append(json.loads(request.body)["alert"]["reason"])
        except (ValueError, KeyError, TypeError):
            continue
    return reasons


def wait_for_alert(receiver: Any, reason: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while reason not in alert_reasons(receiver):
        assert time.monotonic() < deadline, f"no {reason} alert; got {alert_reasons(receiver)}"
        time.sleep(0.05)
