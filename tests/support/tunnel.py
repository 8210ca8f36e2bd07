"""A gateway's raw connection through a proxy's CONNECT, for tests that must send or
read bytes an HTTP client would refuse to (non-token header names, HTTP/2 frames of
their own, TLS without a request)."""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.sidecar import SidecarProcess


def open_tunnel(proxy: str, authority: str, timeout: float = 10) -> socket.socket:
    """CONNECT `authority` through the proxy at `proxy` (`host:port`, an `http://`
    prefix allowed); the socket once the proxy answered 200. The reply is read a byte
    at a time, so nothing after it (the tunnel's first bytes) is taken."""
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def connect_tunnel(
    sidecar: SidecarProcess,
    authority: str,
    server_hostname: str,
    timeout: float = 30,
    alpn: list[str] | None = None,
) -> ssl.SSLSocket:
    """CONNECT through the sidecar's explicit listener, then TLS verified against its
    CA for `server_hostname` (offering `alpn`, checked to be chosen)."""
    raw = open_tunnel(sidecar.listener("explicit"), authority, timeout)
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    if alpn:
        context.set_alpn_protocols(alpn)
    tls = context.wrap_socket(raw, server_hostname=server_hostname)
    if alpn:
        assert tls.selected_alpn_protocol() in alpn
    return tls


def read_to_end(sock: ssl.SSLSocket) -> bytes:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    return raw
