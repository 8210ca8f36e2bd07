"""Issue 10, the DNS listener: a hostile gateway floods it. Through the real process.

What must hold: memory stays bounded whatever the number of source ports, a flood is
refused (REFUSED, reason `dns_rate_limited`) with a bounded number of decision lines
and an alert, one noisy source does not starve another, TCP connections are capped.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.alerts.alerts_helpers import FakeReceiver, write_config
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

ALLOWED = "api.openai.com"  # answered NOERROR unless a limit refuses it


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def dns_address(sidecar) -> tuple[str, int]:
    host, port = sidecar.listener("dns").rsplit(":", 1)
    return host, int(port)


def fire(
    target: tuple[str, int],
    count: int,
    name: str,
    *,
    source: str = "127.0.0.1",
    fresh_ports: bool = False,
) -> dict[str, int]:
    """Send `count` questions without waiting for answers, then collect the rcodes.

    With `fresh_ports`, every question comes from its own new socket (source port).
    Bounded: at most `count` sends and one short timeout per socket at the end.
    """
    rcodes: dict[str, int] = {"lost": 0}
    wire = dns.message.make_query(name, "A").to_wire()
    batch = 200
    for start in range(0, count, batch):
        n = min(batch, count - start)
        if fresh_ports:
            socks = []
            for _ in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((source, 0))
                s.sendto(wire, target)
                socks.append((s, 1))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((source, 0))
            for _ in range(n):
                s.sendto(wire, target)
            socks = [(s, n)]
        for sock, expected in socks:
            sock.settimeout(2.0)
            for _ in range(expected):
                try:
                    data, _ = sock.recvfrom(4096)
                except OSError:
                    rcodes["lost"] += expected
                    break
                text = dns.rcode.to_text(dns.message.from_wire(data).rcode())
                rcodes[text] = rcodes.get(text, 0) + 1
            sock.close()
    return rcodes


def ask(target: tuple[str, int], name: str, source: str) -> str:
    reply = dns.query.udp(
        dns.message.make_query(name, "A"), target[0], port=target[1], timeout=5, source=source
    )
    return dns.rcode.to_text(reply.rcode())


def limited_metric(sidecar, limit: str) -> float:
    match = re.search(
        rf'^egress_sidecar_dns_questions_limited_total\{{limit="{limit}"\}} (\S+)$',
        sidecar.metrics(),
        re.M,
    )
    return float(match.group(1)) if match else 0.0


def rate_limited_lines(sidecar) -> list[dict]:
    return [d for d in sidecar.decisions if d.get("reason") == "dns_rate_limited"]


def test_dns_flood_from_many_ports_keeps_memory_bounded(start_sidecar):
    """6,000 questions, each from a fresh source port (on main: +83 MB, never released)."""
    sidecar = start_sidecar(extra_args=("--dns", f"127.0.0.1:{free_port()}"))
    target = dns_address(sidecar)
    fire(target, 300, "warm-up.unlisted.example", fresh_ports=True)
    before = rss_mb(sidecar.proc.pid)
    seen = fire(target, 6000, "flood.unlisted.example", fresh_ports=True)
    grown = rss_mb(sidecar.proc.pid) - before
    assert seen.get("REFUSED", 0) > 0, seen  # the listener was really answering
    assert grown < 15, f"RSS grew {grown:.1f} MB for 6,000 source ports"
    assert ask(target, ALLOWED, "127.0.0.1") in ("NOERROR", "REFUSED")  # still serving


def test_dns_flood_is_refused_with_bounded_decision_lines_and_an_alert(start_sidecar, bg, tmp_path):
    rx = bg.run(FakeReceiver(default=202).start(0))
    try:
        config = write_config(
            tmp_path,
            f"sinks:\n  - name: hook\n    type: webhook\n    url: {rx.url}/hook\n"
            f"    hmac_key_file: {tmp_path / 'hmac'}\n",
            secrets={"hmac": "h" * 32},
        )
        sidecar = start_sidecar(
            extra_args=(
                "--dns",
                f"127.0.0.1:{free_port()}",
                "--dns-max-qps",
                "100",
                "--dns-max-qps-per-source",
                "20",
                "--alerts-config",
                config,
            )
        )
        target = dns_address(sidecar)
        started = time.monotonic()
        seen = fire(target, 2000, ALLOWED, source="127.0.0.5")
        elapsed = time.monotonic() - started
        # At most 20 + 20/s of them can have been answered; the rest are refused.
        assert seen.get("REFUSED", 0) > 0, seen
        assert seen.get("NOERROR", 0) <= 20 + 20 * elapsed + 1, seen
        assert limited_metric(sidecar, "per_source") >= seen["REFUSED"]
        first = sidecar.wait_for_decision(reason="dns_rate_limited", client="127.0.0.5")
        assert first["decision"] == "block" and first["mode"] == "dns"
        assert "from this source address" in first["detail"]
        # Thousands of refusals, a handful of lines: one now, one count per 10 s.
        lines = [d for d in rate_limited_lines(sidecar) if d["client"] == "127.0.0.5"]
        assert len(lines) <= 2 + elapsed / 10, lines
        _wait(lambda: any(b"dns_rate_limited" in r.body for r in rx.requests), 15)
        # The rest are reported with their count once the interval has passed.
        summary = sidecar.wait_for_decision(
            timeout=30, reason="dns_rate_limited", client="127.0.0.5", detail=_Contains("more")
        )
        assert re.search(r"\d+ more questions refused", summary["detail"])
    finally:
        bg.run(rx.stop())


def test_one_noisy_source_does_not_starve_another(start_sidecar):
    sidecar = start_sidecar(
        extra_args=(
            "--dns",
            f"127.0.0.1:{free_port()}",
            "--dns-max-qps",
            "100",
            "--dns-max-qps-per-source",
            "20",
        )
    )
    target = dns_address(sidecar)
    answers = []
    for _ in range(10):
        noisy = fire(target, 300, ALLOWED, source="127.0.0.2")
        assert noisy.get("REFUSED", 0) > 0  # the noisy source is being limited
        answers.append(ask(target, ALLOWED, "127.0.0.3"))
    assert answers == ["NOERROR"] * 10
    assert not [d for d in rate_limited_lines(sidecar) if d["client"] == "127.0.0.3"]


def test_dns_over_tcp_connections_are_capped(start_sidecar):
    sidecar = start_sidecar(
        extra_args=(
            "--dns",
            f"127.0.0.1:{free_port()}",
            "--dns-max-tcp-connections",
            "4",
        )
    )
    target = dns_address(sidecar)
    held = [socket.create_connection(target, timeout=5) for _ in range(4)]
    try:
        time.sleep(0.5)  # let the server accept them (not a timing assertion)
        extra = socket.create_connection(target, timeout=5)
        assert extra.recv(10) == b""  # closed at once
        extra.close()
        decision = sidecar.wait_for_decision(reason="dns_rate_limited")
        assert "TCP" in decision["detail"]
        # The connections within the cap still answer.
        reply = dns.query.tcp(
            dns.message.make_query(ALLOWED, "A"), target[0], port=target[1], timeout=5, sock=held[0]
        )
        assert reply.rcode() == dns.rcode.NOERROR
    finally:
        for s in held:
            s.close()


class _Contains(str):
    """Matches a decision field that contains this text (for wait_for_decision)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and str(self) in other

    __hash__ = str.__hash__


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
