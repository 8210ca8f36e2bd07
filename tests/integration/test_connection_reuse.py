"""Regression for "the sixth request hangs" (docs/mitmproxy-traps.md).

mitmproxy reuses an upstream connection only when the request's address equals the
stored connection's address, and allows five concurrent upstream connections per
client connection and address. Our server_connect hook dials the vetted IP (S3), so
the sidecar routes each request by that IP (Enforcer.requestheaders); without that,
every request opened a new connection and the sixth on a kept-alive client connection
waited for the upstream to close an idle one (75 s for the fake provider).
"""

from __future__ import annotations

import ssl

import httpx
import pytest

pytestmark = pytest.mark.integration

REQUESTS = 20


def test_twenty_requests_on_one_kept_alive_reverse_connection_all_answered(sidecar, provider):
    mark = len(provider.received)
    with httpx.Client(timeout=30) as client:  # one kept-alive connection
        for _ in range(REQUESTS):
            reply = client.get(sidecar.reverse_url("openai") + "/v1/models")
            assert reply.status_code == 200
    seen = provider.received[mark:]
    assert len(seen) == REQUESTS
    assert len({r.peer for r in seen}) == 1  # one upstream connection, reused


def test_twenty_requests_on_one_kept_alive_explicit_tunnel_all_answered(sidecar, provider):
    mark = len(provider.received)
    verify = ssl.create_default_context(cafile=sidecar.ca_cert)
    with httpx.Client(proxy=sidecar.proxy_url, verify=verify, timeout=30) as client:
        for _ in range(REQUESTS):
            reply = client.get(f"https://api.openai.com:{provider.port}/v1/models")
            assert reply.status_code == 200
    seen = provider.received[mark:]
    assert len(seen) == REQUESTS
    assert len({r.peer for r in seen}) == 1
