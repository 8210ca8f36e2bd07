"""Free loopback ports for listeners the tests start.

A port from `bind(0)` is an ephemeral port: between the test closing it and the sidecar
binding it, any outgoing connection on the machine may be given it as its source port
(CI once failed 34 tests on "address already in use" that way). So ports are taken
below the kernel's ephemeral range, where only explicit binds land, and each is handed
out once per test process.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading

_LOWEST = 10_000
_handed_out: set[int] = set()
_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(part) for part in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    """Free for TCP and UDP on loopback (a DNS listener takes both)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _candidates() -> range:
    low, _high = _ephemeral_range()
    if low - _LOWEST >= 1000:
        return range(_LOWEST, low)
    return range(1024, low) if low > 2048 else range(0)


def free_port() -> int:
    candidates = _candidates()
    if not candidates:  # an unusual kernel range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    # Start at a place of this process's own so parallel test processes rarely meet.
    start = (os.getpid() * 7919) % len(candidates)
    with _lock:
        for offset in itertools.islice(itertools.count(), len(candidates)):
            port = candidates[(start + offset) % len(candidates)]
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free loopback port in {candidates.start}-{candidates.stop - 1}")
