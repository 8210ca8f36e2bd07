"""`egress-sidecar init` for real, in Linux network namespaces this test creates.

Topology per test: a "pod" namespace joined by a veth pair to an "internet"
namespace (10.77.0.1/24 + fd77::1/64 in the pod, 10.77.0.2/24 + fd77::2/64 outside).
The real command installs the rules in the pod namespace; then processes run there
as the sidecar UID (1337) and as a "gateway" UID (1000) and try to get out.

Needs root and `ip netns`; skipped, saying which, only when either is missing. Never
touches the host's own network: everything lives in the namespaces, which are always
deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
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


def _skip_reason() -> str | None:
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


_REASON = _skip_reason()
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _child_python() -> str:
    """A python3 that an unprivileged UID can execute (the venv lives under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no system python3 for the unprivileged test processes (apt-get install python3)")


def _require_iptables() -> None:
    missing = [b for b in ("iptables-save", "ip6tables-save") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"{missing} not found: apt-get install iptables (root and netns are here)")


def _init_command() -> list[str]:
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
    *argv: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=TIMEOUT, input=stdin, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Pod:
    pod: str
    net: str

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.pod, *argv, check=check)

    def init(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return self.run(*_init_command(), *flags, check=False)

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
        argv = [*self.as_uid(uid, ns), _child_python(), "-c", textwrap.dedent(code)]
        return sh(*argv, check=False)


def normalize_save(text: str) -> str:
    """iptables-save output without the comment lines and packet/byte counters."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in lines)


@pytest.fixture
def pod() -> Iterator[Pod]:
    _require_iptables()
    tag = secrets.token_hex(3)
    p = Pod(pod=f"esc-test-{tag}-pod", net=f"esc-test-{tag}-net")
    veth_pod, veth_net = f"escp{tag}", f"escn{tag}"
    try:
        sh("ip", "netns", "add", p.pod)
        sh("ip", "netns", "add", p.net)
        sh("ip", "link", "add", veth_pod, "netns", p.pod, "type", "veth",
           "peer", "name", veth_net, "netns", p.net)  # fmt: skip
        for ns, dev, v4, v6 in (
            (p.pod, veth_pod, POD_V4, POD_V6),
            (p.net, veth_net, NET_V4, NET_V6),
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


# A stand-in for the transparent listener: accepts one connection, reports the
# original destination that iptables' REDIRECT recorded (SO_ORIGINAL_DST), sends it
# to the client too, and exits.
ORIGDST_LISTENER = """
import socket, struct, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4); s.settimeout(15)
print("READY", flush=True)
c, peer = s.accept()
try:
    if family == socket.AF_INET:
        raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
        port = struct.unpack_from("!H", raw, 2)[0]
        ip = socket.inet_ntop(socket.AF_INET, raw[4:8])
    else:
        raw = c.getsockopt(socket.IPPROTO_IPV6, 80, 28)  # IP6T_SO_ORIGINAL_DST
        port = struct.unpack_from("!H", raw, 2)[0]
        ip = socket.inet_ntop(socket.AF_INET6, raw[8:24])
except OSError:  # not tracked by conntrack (no rules here): not redirected either
    ip, port = c.getsockname()[:2]
msg = f"{ip} {port}"
print(msg, flush=True); c.sendall(msg.encode()); c.close()
"""

UDP_LISTENER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("READY", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2048)
        print("GOT", data.decode(), flush=True)
        s.sendto(b"pong:" + data, peer)
except TimeoutError:
    pass
"""

UDP_SEND = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(3)
try:
    s.sendto(sys.argv[3].encode(), (host, port))
    data, peer = s.recvfrom(2048)
    print("REPLY", data.decode(), peer[0], peer[1])
except OSError as e:
    print("ERROR", type(e).__name__, e.errno)
"""

TCP_CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    c = socket.create_connection((host, port), timeout=5)
    print("CONNECTED", c.recv(200).decode())
except OSError as e:
    print("ERROR", type(e).__name__, e.errno)
"""


def helper(pod: Pod, uid: int, code: str, *args: str, ns: str | None = None) -> list[str]:
    return [*pod.as_uid(uid, ns), _child_python(), "-c", code, *args]


# --- install / verify / idempotency --------------------------------------------------


def test_console_script_runs_init() -> None:
    """`egress-sidecar init` is the entry point the init container uses."""
    proc = sh(str(VENV_BIN / "egress-sidecar"), "init", "--help", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--verify" in proc.stdout


@pytest.mark.parametrize("backend", ["nft", "legacy", "auto"])
def test_install_verify_and_rerun_is_identical(pod: Pod, backend: str) -> None:
    first = pod.init("--backend", backend)
    assert first.returncode == 0, first.stderr
    assert pod.init("--backend", backend, "--verify").returncode == 0
    real = None if backend == "auto" else backend
    dumps = (pod.save("4", real), pod.save("6", real))
    assert "EGRESS_SIDECAR_OUTPUT" in dumps[0] and "EGRESS_SIDECAR_OUTPUT" in dumps[1]
    again = pod.init("--backend", backend)
    assert again.returncode == 0, again.stderr
    assert (pod.save("4", real), pod.save("6", real)) == dumps
    verify = pod.init("--backend", backend, "--verify")
    assert verify.returncode == 0, verify.stderr
    assert "verify ok" in verify.stdout


def test_auto_backend_follows_existing_legacy_rules(pod: Pod) -> None:
    pod.run(
        "iptables-legacy", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"
    )
    assert pod.init().returncode == 0
    assert "EGRESS_SIDECAR_OUTPUT" in pod.save("4", "legacy")
    assert "EGRESS_SIDECAR_OUTPUT" not in pod.save("4", "nft")
    # and stays there on a second run
    assert pod.init().returncode == 0
    assert "EGRESS_SIDECAR_OUTPUT" not in pod.save("4", "nft")
    assert pod.init("--verify").returncode == 0


def test_verify_names_a_deleted_rule_and_rerun_repairs(pod: Pod) -> None:
    assert pod.init().returncode == 0
    rule = "-d 127.0.0.0/8 -p tcp --dport 15020 -j REJECT --reject-with tcp-reset"
    pod.run("iptables", "-t", "filter", "-D", "EGRESS_SIDECAR_OUTPUT", *rule.split())
    bad = pod.init("--verify")
    assert bad.returncode == 1
    assert "missing rule" in bad.stderr and "--dport 15020" in bad.stderr
    assert pod.init().returncode == 0
    assert pod.init("--verify").returncode == 0


def test_verify_fails_when_something_runs_before_our_jump(pod: Pod) -> None:
    assert pod.init().returncode == 0
    pod.run("ip6tables", "-t", "filter", "-I", "OUTPUT", "1", "-j", "ACCEPT")
    bad = pod.init("--verify")
    assert bad.returncode == 1
    assert "ip6tables -t filter" in bad.stderr and "not the first rule" in bad.stderr
    assert pod.init().returncode == 0
    assert pod.init("--verify").returncode == 0


def test_verify_fails_on_an_empty_namespace(pod: Pod) -> None:
    bad = pod.init("--verify")
    assert bad.returncode == 1
    assert "chain EGRESS_SIDECAR_OUTPUT is missing" in bad.stderr


def test_dry_run_changes_nothing(pod: Pod) -> None:
    before = (pod.save("4"), pod.save("6"))
    out = pod.init("--dry-run")
    assert out.returncode == 0 and "*nat" in out.stdout
    assert (pod.save("4"), pod.save("6")) == before


def test_gateway_uid_cannot_change_the_rules(pod: Pod) -> None:
    assert pod.init().returncode == 0
    before = (pod.save("4"), pod.save("6"))
    attempts = [
        ["iptables", "-t", "filter", "-F", "EGRESS_SIDECAR_OUTPUT"],
        ["iptables", "-t", "nat", "-D", "OUTPUT", "1"],
        ["ip6tables", "-t", "filter", "-I", "OUTPUT", "1", "-j", "ACCEPT"],
        ["iptables-legacy", "-t", "filter", "-I", "OUTPUT", "1", "-j", "ACCEPT"],
    ]
    for argv in attempts:
        proc = sh(*pod.as_uid(GATEWAY_UID), *argv, check=False)
        assert proc.returncode != 0, argv
        assert "denied" in proc.stderr.lower() or "not permitted" in proc.stderr.lower()
    restore = sh(*pod.as_uid(GATEWAY_UID), "iptables-restore", "--noflush",
                 stdin="*filter\n-I OUTPUT 1 -j ACCEPT\nCOMMIT\n", check=False)  # fmt: skip
    assert restore.returncode != 0
    assert (pod.save("4"), pod.save("6")) == before
    assert pod.init("--verify").returncode == 0


# --- what the rules do to traffic ---------------------------------------------------


@pytest.mark.parametrize(("listen", "target"), [(NET_V4, NET_V4), (NET_V6, NET_V6)])
def test_udp_from_gateway_rejected_from_sidecar_passes(pod: Pod, listen: str, target: str) -> None:
    assert pod.init().returncode == 0
    with background(helper(pod, 0, UDP_LISTENER, listen, "9999", "8", ns=pod.net)) as lst:
        gw = sh(*helper(pod, GATEWAY_UID, UDP_SEND, target, "9999", "from-gateway"), check=False)
        assert gw.stdout.startswith("ERROR"), gw.stdout + gw.stderr
        assert "PermissionError" in gw.stdout or "ConnectionRefusedError" in gw.stdout
        quic = sh(*helper(pod, GATEWAY_UID, UDP_SEND, target, "443", "quic"), check=False)
        assert quic.stdout.startswith("ERROR"), quic.stdout
        sc = sh(*helper(pod, SIDECAR_UID, UDP_SEND, target, "9999", "from-sidecar"), check=False)
        assert sc.stdout.startswith("REPLY pong:from-sidecar"), sc.stdout + sc.stderr
        lst.kill()
        out, _ = lst.communicate(timeout=TIMEOUT)
    assert "GOT from-sidecar" in out
    assert "from-gateway" not in out


def test_icmp_from_gateway_rejected(pod: Pod) -> None:
    assert pod.init().returncode == 0
    code = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.settimeout(3)
try:
    s.sendto(b"\\x08\\x00\\x00\\x00\\x12\\x34\\x00\\x01hello", ("%s", 0))
    s.recvfrom(200); print("ECHO-REPLY")
except OSError as e:
    print("ERROR", type(e).__name__)
"""
    gw = sh(*helper(pod, GATEWAY_UID, code % NET_V4), check=False)
    assert gw.stdout.startswith("ERROR"), gw.stdout + gw.stderr
    sc = sh(*helper(pod, SIDECAR_UID, code % NET_V4), check=False)
    assert sc.stdout.startswith("ECHO-REPLY"), sc.stdout + sc.stderr


@pytest.mark.parametrize(("listen", "target"), [("127.0.0.1", NET_V4), ("::1", NET_V6)])
def test_tcp_from_gateway_lands_on_proxy_port_with_original_dst(
    pod: Pod, listen: str, target: str
) -> None:
    assert pod.init().returncode == 0
    with background(helper(pod, SIDECAR_UID, ORIGDST_LISTENER, listen, "15001")) as proxy:
        gw = sh(*helper(pod, GATEWAY_UID, TCP_CONNECT, target, "443"), check=False)
        assert gw.stdout.strip() == f"CONNECTED {target} 443", gw.stdout + gw.stderr
        assert finish(proxy).strip() == f"{target} 443"


def test_tcp_from_sidecar_is_not_redirected(pod: Pod) -> None:
    assert pod.init().returncode == 0
    upstream = helper(pod, 0, ORIGDST_LISTENER, NET_V4, "8443", ns=pod.net)
    with background(upstream) as up:
        sc = sh(*helper(pod, SIDECAR_UID, TCP_CONNECT, NET_V4, "8443"), check=False)
        assert sc.stdout.startswith("CONNECTED"), sc.stdout + sc.stderr
        # the upstream saw a direct connection (original destination = itself)
        assert finish(up).strip() == f"{NET_V4} 8443"


def test_dns_to_any_resolver_lands_on_dns_port(pod: Pod) -> None:
    assert pod.init().returncode == 0
    with background(helper(pod, SIDECAR_UID, UDP_LISTENER, "127.0.0.1", "15053", "8")) as dns:
        for resolver in (NET_V4, "8.8.8.8", "127.0.0.53"):
            gw = sh(*helper(pod, GATEWAY_UID, UDP_SEND, resolver, "53", f"q-{resolver}"),
                    check=False)  # fmt: skip
            # the answer comes back from the address the gateway asked
            assert gw.stdout.strip() == f"REPLY pong:q-{resolver} {resolver} 53", gw.stdout
        dns.kill()
        out, _ = dns.communicate(timeout=TIMEOUT)
    assert "GOT q-8.8.8.8" in out


def test_admin_port_closed_to_gateway_open_to_sidecar(pod: Pod) -> None:
    assert pod.init().returncode == 0
    admin = helper(pod, SIDECAR_UID, ORIGDST_LISTENER, "127.0.0.1", "15020")
    with background(admin) as adm:
        gw = sh(*helper(pod, GATEWAY_UID, TCP_CONNECT, "127.0.0.1", "15020"), check=False)
        assert gw.stdout.startswith("ERROR ConnectionRefusedError"), gw.stdout + gw.stderr
        sc = sh(*helper(pod, SIDECAR_UID, TCP_CONNECT, "127.0.0.1", "15020"), check=False)
        assert sc.stdout.startswith("CONNECTED"), sc.stdout
        finish(adm)


def test_pod_ip_admin_port_goes_to_proxy_not_admin(pod: Pod) -> None:
    """The sidecar's listeners on non-loopback addresses are not reachable either."""
    assert pod.init().returncode == 0
    with background(helper(pod, SIDECAR_UID, ORIGDST_LISTENER, "127.0.0.1", "15001")) as proxy:
        gw = sh(*helper(pod, GATEWAY_UID, TCP_CONNECT, POD_V4, "15020"), check=False)
        assert gw.stdout.strip() == f"CONNECTED {POD_V4} 15020", gw.stdout
        assert finish(proxy).strip() == f"{POD_V4} 15020"
    udp = sh(*helper(pod, GATEWAY_UID, UDP_SEND, POD_V4, "15053", "x"), check=False)
    assert udp.stdout.startswith("ERROR"), udp.stdout


def test_gateway_loopback_tcp_is_untouched(pod: Pod) -> None:
    """Explicit/reverse mode ports on loopback stay reachable for the gateway."""
    assert pod.init().returncode == 0
    with background(helper(pod, SIDECAR_UID, ORIGDST_LISTENER, "127.0.0.1", "18080")) as lst:
        gw = sh(*helper(pod, GATEWAY_UID, TCP_CONNECT, "127.0.0.1", "18080"), check=False)
        assert gw.stdout.strip() == "CONNECTED 127.0.0.1 18080", gw.stdout
        finish(lst)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
