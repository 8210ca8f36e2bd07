"""Linux network namespaces for tests: a "pod" joined by veth to an "internet".

Shared by `tests/netinit` (the rules alone) and `tests/transparent` (the rules with
the real sidecar behind them). Topology: 10.77.0.1/24 + fd77::1/64 in the pod,
10.77.0.2/24 + fd77::2/64 in the internet namespace, default routes in the pod only.
Only private 10.77/16 and fd77::/16 addresses, and only inside namespaces created
here; the host's own network is never touched. Everything is deleted on exit.

Needs root and `ip netns`: `netns_unavailable_reason()` says which is missing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
SIDECAR_UID = 1337
GATEWAY_UID = 1000
POD_V4, NET_V4 = "10.77.0.1", "10.77.0.2"
POD_V6, NET_V6 = "fd77::1", "fd77::2"
TIMEOUT = 20


# A gateway's impostor of /healthz, /readyz and /metrics: what a gateway process would serve on
# a port of the sidecar (argv[1]) while the sidecar restarts. Serves until killed.
IMPOSTOR_SERVER = """
import socket, sys, threading
BODY = b"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\negress_sidecar_up 1\\n"
def serve(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, int(sys.argv[1]))); s.listen(16)
    while True:
        c, _ = s.accept()
        try:
            c.settimeout(5); c.recv(4096); c.sendall(BODY)
        except OSError:
            pass
        c.close()
threading.Thread(target=serve, args=(socket.AF_INET6, "::"), daemon=True).start()
threading.Thread(target=serve, args=(socket.AF_INET, "0.0.0.0"), daemon=True).start()
print("READY", flush=True)
threading.Event().wait(60)
"""


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (not root, no `ip netns`), or None."""
    if os.geteuid() != 0:
        return "network namespace tests need root (euid is not 0)"
    if shutil.which("ip") is None:
        return "network namespace tests need `ip netns` (iproute2 not installed)"
    name = f"esc-test-probe-{secrets.token_hex(3)}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespace tests need `ip netns`, which fails here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def child_python() -> str:
    """A python3 that an unprivileged UID can execute (the venv lives under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no system python3 for the unprivileged test processes (apt-get install python3)")


def require_iptables() -> None:
    missing = [b for b in ("iptables-save", "ip6tables-save") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"{missing} not found: apt-get install iptables (root and netns are here)")


def init_command() -> list[str]:
    """The real console command; `python -m sidecar.netinit` only while the CLI is broken.

    `egress-sidecar` imports every subcommand module to build its parser; while a
    sibling module is still missing, the same `add_arguments`/`main` are run through
    the module entry point so that these tests keep covering the rules.
    `test_console_script_runs_init` fails loudly in that case.
    """
    exe = VENV_BIN / "egress-sidecar"
    probe = subprocess.run([str(exe), "init", "--help"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [str(exe), "init"]
    return [str(VENV_BIN / "python"), "-m", "sidecar.netinit"]


def sh(
    *argv: str, check: bool = True, stdin: str | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Pod:
    pod: str
    net: str
    veth_pod: str = ""
    veth_net: str = ""

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.pod, *argv, check=check)

    def run_net(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.net, *argv, check=check)

    def init(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return self.run(*init_command(), *flags, check=False)

    def save(self, family: str = "4", backend: str | None = None) -> str:
        tool = "iptables" if family == "4" else "ip6tables"
        name = f"{tool}-{backend}-save" if backend else f"{tool}-save"
        return normalize_save(self.run(name).stdout)

    def as_uid(self, uid: int, ns: str | None = None) -> list[str]:
        return [
            "ip", "netns", "exec", ns or self.pod,
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        ]  # fmt: skip

    def py(self, uid: int, code: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [*self.as_uid(uid, ns), child_python(), "-c", textwrap.dedent(code)]
        return sh(*argv, check=False)


def normalize_save(text: str) -> str:
    """iptables-save output without the comment lines and packet/byte counters."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in lines)


@contextlib.contextmanager
def pod_namespaces() -> Iterator[Pod]:
    """Create the pod + internet pair; always deleted on exit, even after a failure."""
    tag = secrets.token_hex(3)
    p = Pod(
        pod=f"esc-test-{tag}-pod",
        net=f"esc-test-{tag}-net",
        veth_pod=f"escp{tag}",
        veth_net=f"escn{tag}",
    )
    try:
        sh("ip", "netns", "add", p.pod)
        sh("ip", "netns", "add", p.net)
        sh("ip", "link", "add", p.veth_pod, "netns", p.pod, "type", "veth",
           "peer", "name", p.veth_net, "netns", p.net)  # fmt: skip
        for ns, dev, v4, v6 in (
            (p.pod, p.veth_pod, POD_V4, POD_V6),
            (p.net, p.veth_net, NET_V4, NET_V6),
        ):
            ex = ["ip", "netns", "exec", ns]
            sh(*ex, "ip", "link", "set", "lo", "up")
            sh(*ex, "ip", "addr", "add", f"{v4}/24", "dev", dev)
            sh(*ex, "ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            sh(*ex, "ip", "link", "set", dev, "up")
        # Default routes inside the pod namespace only, so "the internet" is routable.
        p.run("ip", "route", "add", "default", "via", NET_V4)
        p.run("ip", "-6", "route", "add", "default", "via", NET_V6)
        # Unprivileged ICMP echo sockets, so the test can show ICMP is rejected.
        p.run("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647")
        yield p
    finally:
        for ns in (p.pod, p.net):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT)


@pytest.fixture(name="pod")
def pod_fixture() -> Iterator[Pod]:
    """A fresh pod/internet pair per test (rules are installed by the test itself)."""
    require_iptables()
    with pod_namespaces() as p:
        yield p


def in_netns[T](ns: str, make: Callable[[], T]) -> T:
    """Call `make` in a thread that joined namespace `ns`; return what it made.

    Sockets keep the namespace they were created in, so a server socket made here
    can then be served from any thread (an asyncio loop in the test process). The
    thread ends afterwards: no thread of the test process stays in `ns`.
    """
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                os.setns(fd, os.CLONE_NEWNET)
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    if errors:
        raise errors[0]
    if not result:
        raise AssertionError(f"creating sockets in namespace {ns} timed out")
    return result[0]


@contextlib.contextmanager
def background(argv: list[str], ready: str = "READY") -> Iterator[subprocess.Popen[str]]:
    """Start a helper process and wait (bounded) until it prints `ready`."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if ready in line or not line:
                break
        if ready not in line:
            proc.kill()
            raise AssertionError(f"helper did not start: {argv}\n{proc.stderr.read()}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return out
