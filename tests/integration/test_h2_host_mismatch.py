"""HTTP/2 `:authority` and `host` naming different hosts (S5, S9; issue 11 item 3).

The h2 library (validate_inbound_headers, kept on) kills such a connection with a
PROTOCOL_ERROR GOAWAY while decoding the header block, before mitmproxy builds a
request or calls any hook. It used to leave no decision line at all. Now it is
`host_mismatch`: logged, counted and alerted, and nothing reaches the provider.

A real HTTP/2 client (the h2 library, the same one httpx uses) over TLS through a
CONNECT tunnel: httpx itself cannot send both fields (it turns Host into :authority).
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests.support.sidecar import SidecarProcess
from tests.support.tunnel import open_tunnel

pytestmark = pytest.mark.integration


def _h2_exchange(
    sidecar: SidecarProcess, authority: str, streams: list[list[tuple[str, str]]]
) -> tuple[str, list[Any]]:
    """CONNECT `authority`, TLS with ALPN h2, send each header block as one stream.

    Returns the client id the sidecar logs and every h2 event received (bounded)."""
    raw = open_tunnel(sidecar.proxy_url, authority)
    client = "{}:{}".format(*raw.getsockname()[:2])
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(raw, server_hostname=authority.rsplit(":", 1)[0])
    assert tls.selected_alpn_protocol() == "h2"
    # An attacker's client: no outbound checks, so it can send what h2 would refuse.
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    events: list[Any] = []
    for headers in streams:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers, end_stream=True)
        tls.sendall(conn.data_to_send())
        ended = False
        for _ in range(200):  # bounded: until this stream ends or the connection does
            try:
                data = tls.recv(65536)
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                return client, events
            for event in conn.receive_data(data):
                events.append(event)
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = ended or event.stream_id == stream_id
                if isinstance(event, h2.events.ConnectionTerminated):
                    tls.close()
                    return client, events
            tls.sendall(conn.data_to_send())
            if ended:
                break
    tls.close()
    return client, events


def _request(authority: str, host: str | None, path: str = "/v1/models") -> list[tuple[str, str]]:
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", authority),
               (":path", path)]  # fmt: skip
    if host is not None:
        headers.append(("host", host))
    return headers


def _counter(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _lines(sidecar: SidecarProcess, client: str, settle: float = 2.0) -> list[dict[str, Any]]:
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


def test_control_h2_request_with_agreeing_host_is_allowed(sidecar, provider):
    authority = f"api.openai.com:{provider.port}"
    client, events = _h2_exchange(sidecar, authority, [_request(authority, authority)])
    statuses = [dict(e.headers).get(b":status") for e in events
                if isinstance(e, h2.events.ResponseReceived)]  # fmt: skip
    assert statuses == [b"200"], events
    assert [d["reason"] for d in _lines(sidecar, client)] == ["allowed"]


def test_h2_authority_and_host_naming_different_hosts_is_host_mismatch(sidecar, provider):
    """Domain fronting inside HTTP/2: :authority the provider, host the attacker."""
    authority = f"api.openai.com:{provider.port}"
    mark = len(provider.received)
    before = _counter(sidecar.metrics(), "egress_sidecar_alerts_refusals_total")
    client, events = _h2_exchange(
        sidecar, authority, [_request(authority, "exfil.attacker.example")]
    )
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in events), events
    assert len(provider.received) == mark
    [line] = _lines(sidecar, client)
    assert line["decision"] == "block" and line["reason"] == "host_mismatch", line
    assert line["host"] == "api.openai.com" and line["rule"] == "host_agreement"
    assert "exfil.attacker.example" in line["detail"]
    metrics = sidecar.metrics()
    assert 'reason="host_mismatch"' in metrics  # counted
    assert _counter(metrics, "egress_sidecar_alerts_refusals_total") > before  # alerted


def test_h2_mismatch_after_an_allowed_stream_still_gets_its_line(sidecar, provider):
    """A connection whose first stream was allowed (and logged) is then killed by a
    mismatching one: both streams leave a line, the mismatch one is host_mismatch."""
    authority = f"api.openai.com:{provider.port}"
    client, _ = _h2_exchange(
        sidecar,
        authority,
        [_request(authority, authority), _request(authority, "exfil.attacker.example")],
    )
    lines = _lines(sidecar, client)
    assert [d["reason"] for d in lines] == ["allowed", "host_mismatch"], lines
