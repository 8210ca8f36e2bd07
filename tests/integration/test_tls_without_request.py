"""Explicit proxy: a CONNECT tunnel's TLS is held to the CONNECT authority, and a tunnel
that carries TLS but no HTTP request is still seen (issue 11 item 2, S5 and S9).

Before: CONNECT api.openai.com, then TLS with any SNI, then nothing (or junk): no
decision line at all. Now the ClientHello's SNI must name the CONNECT host
(`host_mismatch`, refused before any handshake), and a tunnel that ends without a
request is logged once as `protocol_not_allowed`.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest

from tests.support.sidecar import SidecarProcess
from tests.support.tunnel import open_tunnel

pytestmark = pytest.mark.integration


def _tunnel(sidecar: SidecarProcess, authority: str) -> socket.socket:
    return open_tunnel(sidecar.proxy_url, authority)


def _tls(sidecar: SidecarProcess, sock: socket.socket, sni: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    context.check_hostname = False
    return context.wrap_socket(sock, server_hostname=sni)


def _lines(sidecar: SidecarProcess, client: str, settle: float = 2.0) -> list[dict[str, Any]]:
    """The decision lines of one client connection, once none came for `settle` s."""
    deadline = time.monotonic() + 15
    seen, quiet_since = -1, time.monotonic()
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [d for d in sidecar.decisions if d.get("client") == client]
        if len(found) != seen:
            seen, quiet_since = len(found), time.monotonic()
        elif found and time.monotonic() - quiet_since > settle:
            break
        time.sleep(0.05)
    return found


def _client_id(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def test_tunnel_tls_naming_another_host_is_host_mismatch(sidecar, provider):
    """CONNECT api.openai.com, then a ClientHello for api.anthropic.com: S5, no handshake."""
    sock = _tunnel(sidecar, f"api.openai.com:{provider.port}")
    client = _client_id(sock)
    with pytest.raises((ssl.SSLError, OSError)):
        _tls(sidecar, sock, "api.anthropic.com").close()
    sock.close()
    [line] = _lines(sidecar, client)
    assert line["reason"] == "host_mismatch" and line["decision"] == "block", line
    assert line["host"] == "api.openai.com" and "ClientHello" in line["detail"]
    assert 'reason="host_mismatch"' in sidecar.metrics()


@pytest.mark.parametrize(
    ("case", "payload"), [("nothing", b""), ("junk", b"\x00\x1dnot http\r\n\r\n")]
)
def test_tunnel_tls_without_a_request_is_logged_once(sidecar, provider, case, payload):
    received = len(provider.received)
    sock = _tunnel(sidecar, f"api.openai.com:{provider.port}")
    client = _client_id(sock)
    tls = _tls(sidecar, sock, "api.openai.com")
    if payload:
        tls.sendall(payload)
        try:
            tls.recv(4096)
        except (ssl.SSLError, OSError):
            pass
    tls.close()
    [line] = _lines(sidecar, client)
    assert line["reason"] == "protocol_not_allowed" and line["decision"] == "block", line
    assert line["host"] == "api.openai.com" and line["mode"] == "explicit", case
    assert line["detail"].startswith("TLS connection ended without an HTTP request")
    assert len(provider.received) == received


def test_tunnel_with_a_request_gets_only_the_request_line(sidecar, provider):
    sock = _tunnel(sidecar, f"api.openai.com:{provider.port}")
    client = _client_id(sock)
    tls = _tls(sidecar, sock, "api.openai.com")
    tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n")
    reply = b""
    while chunk := tls.recv(65536):
        reply += chunk
    tls.close()
    assert b"gpt-fake" in reply
    assert [(d["decision"], d["reason"]) for d in _lines(sidecar, client)] == [("allow", "allowed")]
