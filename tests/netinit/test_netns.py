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

import sys

import pytest

from tests.support.netns import (
    GATEWAY_UID,
    IMPOSTOR_SERVER,
    NET_V4,
    NET_V6,
    POD_V4,
    SIDECAR_UID,
    TIMEOUT,
    VENV_BIN,
    Pod,
    background,
    finish,
    pod_fixture,  # noqa: F401  (the `pod` fixture)
    sh,
)
from tests.support.netns import child_python as _child_python
from tests.support.netns import netns_unavailable_reason as _skip_reason

_REASON = _skip_reason()
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


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


# --- a dead sidecar must not be impersonated (issue 10 item 5) ------------------------

# What kubelet's httpGet probe and a Prometheus scrape do: connect, GET, read the answer.
PROBE_GET = """
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    c = socket.create_connection((host, port), timeout=3)
    c.sendall(f"GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n".encode())
    data = b""
    while chunk := c.recv(65536):
        data += chunk
    print("ANSWER", len(data), data[-40:])
except OSError as e:
    print("ERROR", type(e).__name__)
"""


def _probe_from_outside(pod: Pod, host: str, path: str, port: str = "15020") -> str:
    """kubelet/Prometheus: from outside the pod (the internet namespace), as root."""
    return sh(*helper(pod, 0, PROBE_GET, host, port, path, ns=pod.net), check=False).stdout


@pytest.mark.parametrize("host", [POD_V4, NET_V6.replace("::2", "::1")])
def test_gateway_binding_admin_port_while_sidecar_is_down_cannot_answer_probes(
    pod: Pod, host: str
) -> None:
    """The gateway binds 15020 while the sidecar is down: no probe or scrape gets an answer.

    Its SYN-ACK is a reply (conntrack ESTABLISHED), so without the source-port rule it
    would leave through the ESTABLISHED accept; with it, the handshake never completes.
    The same server as UID 1337 answers (the probe path works), and deleting the rule
    lets the impostor answer (the rule is what holds), which `--verify` then names.
    """
    assert pod.init().returncode == 0
    with background(helper(pod, GATEWAY_UID, IMPOSTOR_SERVER, "15020")):
        for path in ("/healthz", "/readyz", "/metrics"):
            got = _probe_from_outside(pod, host, path)
            assert got.startswith("ERROR"), (path, got)
            assert "egress_sidecar_up" not in got
    with background(helper(pod, SIDECAR_UID, IMPOSTOR_SERVER, "15020")):
        got = _probe_from_outside(pod, host, "/readyz")
        assert got.startswith("ANSWER") and "egress_sidecar_up" in got, got

    tool = "ip6tables" if ":" in host else "iptables"
    rule = [r for r in pod.run(f"{tool}-save").stdout.splitlines() if "--sports" in r]
    assert len(rule) == 1, rule
    pod.run(tool, "-w", "-D", *rule[0].split()[1:])
    with background(helper(pod, GATEWAY_UID, IMPOSTOR_SERVER, "15020")):
        got = _probe_from_outside(pod, host, "/metrics")
        assert got.startswith("ANSWER") and "egress_sidecar_up" in got, got
    verify = pod.init("--verify")
    assert verify.returncode == 1, verify.stderr
    assert "missing rule" in verify.stderr and "--sports" in verify.stderr


def test_gateway_binding_proxy_port_cannot_impersonate_the_proxy_to_itself(pod: Pod) -> None:
    """The gateway's own redirected connection reaches its listener but gets no byte back."""
    assert pod.init().returncode == 0
    with background(helper(pod, GATEWAY_UID, IMPOSTOR_SERVER, "15001")):
        got = sh(*helper(pod, GATEWAY_UID, PROBE_GET, NET_V4, "443", "/"), check=False).stdout
        assert got.startswith("ERROR"), got
        got = _probe_from_outside(pod, POD_V4, "/", port="15001")
        assert got.startswith("ERROR"), got


def test_gateway_binding_dns_port_cannot_answer_redirected_queries(pod: Pod) -> None:
    """UDP 15053 bound by the gateway: its own port-53 questions get no answer from it."""
    assert pod.init().returncode == 0
    with background(helper(pod, GATEWAY_UID, UDP_LISTENER, "127.0.0.1", "15053", "8")) as dns:
        gw = sh(*helper(pod, GATEWAY_UID, UDP_SEND, "8.8.8.8", "53", "q-impostor"), check=False)
        assert gw.stdout.startswith("ERROR"), gw.stdout
        dns.kill()
        out, _ = dns.communicate(timeout=TIMEOUT)
    assert "GOT q-impostor" in out  # it did receive the question: only the answer is stopped
    with background(helper(pod, SIDECAR_UID, UDP_LISTENER, "127.0.0.1", "15053", "8")):
        sc = sh(*helper(pod, GATEWAY_UID, UDP_SEND, "8.8.8.8", "53", "q-real"), check=False)
        assert sc.stdout.startswith("REPLY pong:q-real"), sc.stdout


# The sidecar writes a large answer and closes at once: the tail leaves from a socket
# that no process holds any more (an orphan), which the rule must not stop.
CLOSE_AFTER_WRITE = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 15020)); s.listen(4); s.settimeout(15)
print("READY", flush=True)
c, _ = s.accept(); c.recv(4096)
c.setblocking(False)
sent = 0
try:
    while sent < 4_000_000:
        sent += c.send(b"x" * 65536)
except BlockingIOError:
    pass
c.close()
print("SENT", sent, flush=True)
"""


def test_sidecar_answer_still_completes_after_it_closed_the_socket(pod: Pod) -> None:
    """The rule matches sockets a process holds, not orphans: no truncated scrapes."""
    assert pod.init().returncode == 0
    with background(helper(pod, SIDECAR_UID, CLOSE_AFTER_WRITE)) as srv:
        got = _probe_from_outside(pod, POD_V4, "/metrics")
        sent = int(finish(srv).split()[-1])
    assert got.startswith(f"ANSWER {sent} "), (sent, got)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
