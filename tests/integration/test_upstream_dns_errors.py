"""A failing upstream resolver is counted (egress_sidecar_upstream_dns_errors_total) and
refused, through the real process: explicit CONNECT and the pod DNS listener.

The attack, or the outage: the resolver the sidecar asks SERVFAILs or stops answering
(a poisoned or overloaded cluster DNS, or an attacker flooding it). Every request to an
allowed name then fails with dns_failure; the operator must see the resolver is the
cause, by kind, from the metric, and the gateway must get SERVFAIL (retry) rather than
NXDOMAIN (the name does not exist) from the pod's DNS listener.
"""

from __future__ import annotations

import re
import socket

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.conftest import provider_policy
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

SERVFAIL_NAME = "servfail.dnserr.example.com"
TIMEOUT_NAME = "timeout.dnserr.example.com"
MISSING_NAME = "missing.dnserr.example.com"  # the fake answers NXDOMAIN: no such name


@pytest.fixture(scope="module")
def broken_dns_sidecar(start_sidecar, provider, dns_server):
    dns_server.failures.update({SERVFAIL_NAME: "servfail", TIMEOUT_NAME: "timeout"})
    extra = 'allow:\n  - host: "*.dnserr.example.com"\n    ports: [443]\n'
    sidecar = start_sidecar(
        provider_policy(provider.port, extra=extra),
        extra_args=("--dns", f"127.0.0.1:{free_port()}"),
    )
    yield sidecar
    for name in (SERVFAIL_NAME, TIMEOUT_NAME):
        dns_server.failures.pop(name, None)


def dns_errors(sidecar) -> dict[str, float]:
    found = re.findall(
        r'^egress_sidecar_upstream_dns_errors_total\{error="([a-z_]+)"\} ([0-9.]+)$',
        sidecar.metrics(),
        re.MULTILINE,
    )
    return {kind: float(value) for kind, value in found}


def connect(sidecar, authority: str) -> int:
    """Raw CONNECT; generous timeout (the resolver gives up after 3 s)."""
    host, port = sidecar.proxy_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def ask(sidecar, name: str) -> int:
    host, port = sidecar.listener("dns").rsplit(":", 1)
    reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=30)
    return reply.rcode()


def test_error_series_exist_at_zero_from_the_start(broken_dns_sidecar):
    errors = dns_errors(broken_dns_sidecar)
    assert set(errors) == {"no_address", "timeout", "server_failure", "other"}


def test_resolver_servfail_is_counted_and_refused(broken_dns_sidecar):
    before = dns_errors(broken_dns_sidecar)
    assert connect(broken_dns_sidecar, f"{SERVFAIL_NAME}:443") == 502
    decision = broken_dns_sidecar.wait_for_decision(host=SERVFAIL_NAME, mode="explicit")
    assert decision["reason"] == "dns_failure" and decision["decision"] == "block"
    after = dns_errors(broken_dns_sidecar)
    assert after["server_failure"] == before["server_failure"] + 1
    assert after["timeout"] == before["timeout"]


def test_resolver_timeout_is_counted_and_refused(broken_dns_sidecar):
    before = dns_errors(broken_dns_sidecar)
    assert connect(broken_dns_sidecar, f"{TIMEOUT_NAME}:443") == 502
    decision = broken_dns_sidecar.wait_for_decision(host=TIMEOUT_NAME, mode="explicit")
    assert decision["reason"] == "dns_failure"
    after = dns_errors(broken_dns_sidecar)
    assert after["timeout"] == before["timeout"] + 1
    assert after["server_failure"] == before["server_failure"]


def test_dns_listener_passes_resolver_failure_on_as_servfail_and_counts_it(broken_dns_sidecar):
    before = dns_errors(broken_dns_sidecar)
    assert ask(broken_dns_sidecar, SERVFAIL_NAME) == dns.rcode.SERVFAIL
    assert ask(broken_dns_sidecar, MISSING_NAME) == dns.rcode.NXDOMAIN
    after = dns_errors(broken_dns_sidecar)
    assert after["server_failure"] == before["server_failure"] + 1
    assert after["no_address"] == before["no_address"] + 1


def test_dns_error_labels_stay_bounded_under_many_failing_names(broken_dns_sidecar, dns_server):
    """Attacker-chosen names never become label values: the series set does not grow."""
    names = [f"x{i}.dnserr.example.com" for i in range(20)]
    dns_server.failures.update(dict.fromkeys(names, "servfail"))
    try:
        before = dns_errors(broken_dns_sidecar)
        for name in names:
            assert ask(broken_dns_sidecar, name) == dns.rcode.SERVFAIL
        after = dns_errors(broken_dns_sidecar)
    finally:
        for name in names:
            dns_server.failures.pop(name, None)
    assert set(after) == set(before)
    assert after["server_failure"] == before["server_failure"] + len(names)
    assert "dnserr" not in broken_dns_sidecar.metrics()
