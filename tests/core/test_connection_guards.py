"""The two pieces behind issue 11 items 2 and 3 that need no network (see
docs/tls-and-http2.md): the TLS connection that refuses every handshake, and the
filter that notices h2 closing a connection for :authority != host."""

from __future__ import annotations

import logging
import ssl

import pytest
from OpenSSL import SSL

from sidecar.addons.h2_guard import MITMPROXY_CONNECTION_LOGGER, H2HostMismatches
from sidecar.addons.tls_hello import printable_sni, refusing_tls_connection

PEER = ("10.77.0.1", 40000)
MESSAGE = (
    "10.77.0.1:40000: HTTP/2 protocol error: Request header block has mismatched "
    ":authority and Host headers: b'api.openai.com' / b'exfil.attacker.example'"
)


def _record(message: str, level: int = logging.INFO, client: object = PEER) -> logging.LogRecord:
    record = logging.LogRecord(MITMPROXY_CONNECTION_LOGGER, level, __file__, 1, message, None, None)
    record.client = client
    return record


def test_refused_hello_never_completes_a_handshake() -> None:
    server = refusing_tls_connection()
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname="api.openai.com")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    server.bio_write(outgoing.read())
    with pytest.raises(SSL.Error):
        server.do_handshake()
    try:
        incoming.write(server.bio_read(65536))  # the alert, if OpenSSL wrote one
    except SSL.WantReadError:
        incoming.write_eof()
    with pytest.raises(ssl.SSLError):
        client.do_handshake()  # never a session


def test_sni_from_an_attacker_is_made_printable() -> None:
    assert printable_sni("evil\r\n.example\x00") == "evil\\x0d\\x0a.example\\x00"
    assert printable_sni("ünïcode.example") == "\\xfcn\\xefcode.example"
    assert len(printable_sni("a" * 10_000)) == 253


def test_h2_mismatch_is_remembered_for_its_connection_and_not_shown() -> None:
    watcher = H2HostMismatches()
    assert watcher.filter(_record(MESSAGE)) is False  # never reaches a handler
    assert watcher.pop(PEER) == ("api.openai.com", "exfil.attacker.example")
    assert watcher.pop(PEER) is None  # once


def test_other_h2_errors_and_info_lines_are_not_mismatches() -> None:
    watcher = H2HostMismatches()
    other = MESSAGE.replace("mismatched :authority and Host headers", "something else")
    assert watcher.filter(_record(other)) is False
    assert watcher.filter(_record("client connect")) is False
    assert watcher.pop(PEER) is None


def test_errors_still_reach_stderr() -> None:
    watcher = H2HostMismatches()
    assert watcher.filter(_record("mitmproxy has crashed!", logging.ERROR)) is True


def test_attacker_chosen_values_are_bounded_and_printable() -> None:
    watcher = H2HostMismatches()
    hostile = MESSAGE.replace("exfil.attacker.example", "x\\r\\n" + "y" * 5000)
    watcher.filter(_record(hostile))
    found = watcher.pop(PEER)
    assert found is not None and len(found[1]) <= 200 and found[1].isprintable()
