"""S5/S7: mitmproxy reuses an upstream connection by address alone. Two hosts that
resolve to one address (a shared CDN address; here 127.0.0.1) must not share the TLS
session opened and verified for the first: the second would carry our key over it."""

from __future__ import annotations

import socket

import pytest

from tests.support.fakes import FakeProvider
from tests.support.keys import KEYS
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration


def _ask(sock: socket.socket, url: str, host: str) -> bytes:
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


def test_provider_request_cannot_ride_another_hosts_upstream_tls_session(
    keyed: SidecarProcess, provider: FakeProvider
) -> None:
    other = f"unlisted.example.com:{provider.port}"  # an allow: entry, same address
    openai = f"api.openai.com:{provider.port}"
    host, port = keyed.proxy_url.removeprefix("http://").rsplit(":", 1)
    seen = len(provider.received)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        first = _ask(sock, f"https://{other}/v1/first", other)
        second = _ask(sock, f"https://{openai}/v1/models", openai)
    assert first.startswith(b"HTTP/1.1 200"), first
    assert second.startswith(b"HTTP/1.1 403"), second
    assert b"x-egress-sidecar-reason: host_mismatch" in second.lower()
    decision = keyed.wait_for_decision(reason="host_mismatch", host="api.openai.com")
    assert "another host" in decision["detail"]
    after = provider.received[seen:]
    assert [r.path for r in after] == ["/v1/first"]
    assert all(KEYS["openai"] not in str(r.headers) for r in after)

    # Control: on a connection of its own the provider request goes, with the key.
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        alone = _ask(sock, f"https://{openai}/v1/models", openai)
    assert alone.startswith(b"HTTP/1.1 200"), alone
    assert provider.received[-1].headers.get("authorization") == f"Bearer {KEYS['openai']}"
