"""Deciding a TLS connection at its ClientHello (issue 11 item 2).

In transparent mode the ClientHello is the first moment the sidecar knows both the
name (SNI) and the original destination of a redirected connection, and it comes
before any certificate is made or any HTTP byte is read. A destination refused there
never gets a handshake: the connection gets a TLS alert and one decision line, and
nothing that follows (an HTTP request, DNS-over-TLS, junk) is ever read. Inside an
explicit-mode CONNECT tunnel the ClientHello's SNI must name the CONNECT authority
(S5). Allowed or `would_block` hellos go on to the handshake; their requests are
decided one by one as before, and a connection that ends without any request is
logged when it closes (Enforcer.client_disconnected).

mitmproxy has no "refuse this handshake" switch in `tls_clienthello`
(`ignore_connection` would pass the bytes through uninspected, the opposite), so the
refusal is made in `tls_start_client`: the enforcer, first in the addon chain, hands
mitmproxy a TLS server connection without any certificate. Every handshake on it
fails with a `handshake_failure` alert, and mitmproxy's own `tlsconfig` leaves a
connection it finds already set alone. More in docs/tls-and-http2.md.
"""

from __future__ import annotations

from OpenSSL import SSL


def refusing_tls_connection() -> SSL.Connection:
    """A server-side TLS connection (memory BIOs) on which every handshake fails."""
    context = SSL.Context(SSL.TLS_METHOD)
    # No certificate and no anonymous suites: no cipher suite can be agreed on.
    context.set_cipher_list(b"DEFAULT:!aNULL:!eNULL")
    connection = SSL.Connection(context)
    connection.set_accept_state()
    return connection


def printable_sni(sni: str) -> str:
    """An attacker-chosen SNI made safe for one log line (ASCII, no control characters)."""
    text = sni[:253].encode("ascii", "backslashreplace").decode()
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
