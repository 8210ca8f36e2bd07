"""Issue 10: the HTTP/1 timers, for HTTP/2 connections too. mitmproxy's HTTP/2 layer has
no timer of its own (only a 600 s inactivity watchdog), so a silent HTTP/2 connection, a
header block that never ends, or a request body that stops, each held a connection (and
its memory) for ten minutes. Through the real process, with short timers (`quick`:
header and first-request timeouts 2 s, idle timeout 3 s)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.alerts.alerts_helpers import FakeReceiver
from tests.limits.helpers import proxy_address, wait_for_alert
from tests.support.fakes import FakeProvider
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration

# Every wait is bounded: the timers fire within a few seconds; without them nothing
# happens for 600 s, so the test fails at this deadline instead.
DEADLINE = 25.0


@contextmanager
def h2_connection(
    sidecar: SidecarProcess, provider: FakeProvider
) -> Iterator[tuple[ssl.SSLSocket, h2.connection.H2Connection, str, str]]:
    """CONNECT + TLS with ALPN h2, preface and SETTINGS exchanged."""
    authority = f"api.openai.com:{provider.port}"
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(proxy_address(sidecar), timeout=10) as raw:
        client = f"127.0.0.1:{raw.getsockname()[1]}"
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        with context.wrap_socket(raw, server_hostname="api.openai.com") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            yield tls, conn, authority, client


def wait_closed(
    tls: ssl.SSLSocket, conn: h2.connection.H2Connection, reply: bool = True
) -> tuple[float, list]:
    """Read until the sidecar ends the connection; (seconds it took, h2 events).
    `reply=False` while a header block is open: nothing may come between its frames."""
    started = time.monotonic()
    seen: list[object] = []
    tls.settimeout(1.0)
    while time.monotonic() - started < DEADLINE:
        try:
            data = tls.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        try:
            seen.extend(conn.receive_data(data))
        except Exception:  # frames on a stream this client sent raw: read on until EOF
            continue
        if any(isinstance(e, h2.events.ConnectionTerminated) for e in seen):
            break
        if reply:
            tls.sendall(conn.data_to_send())
    return time.monotonic() - started, seen


def request_headers(authority: str, method: str = "GET") -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":scheme", "https"),
        (":authority", authority),
        (":path", "/v1/models" if method == "GET" else "/v1/chat/completions"),
    ]


def test_h2_connection_that_never_sends_a_request_is_closed(
    quick: SidecarProcess, provider: FakeProvider, receiver: FakeReceiver
):
    with h2_connection(quick, provider) as (tls, conn, _, client):
        took, _ = wait_closed(tls, conn)
    assert took < DEADLINE, "an HTTP/2 connection without a request was kept open"
    decision = quick.wait_for_decision(reason="idle_timeout", client=client)
    assert "no request within 2 s" in decision["detail"]
    wait_for_alert(receiver, "idle_timeout")


def test_h2_header_block_that_never_ends_times_out(quick: SidecarProcess, provider: FakeProvider):
    """Slowloris for HTTP/2: a HEADERS frame without END_HEADERS, and no CONTINUATION."""
    with h2_connection(quick, provider) as (tls, conn, authority, client):
        block = hpack.Encoder().encode(request_headers(authority))
        tls.sendall(HeadersFrame(1, data=block[:5]).serialize())  # flags: no END_HEADERS
        took, _ = wait_closed(tls, conn, reply=False)
    assert took < DEADLINE
    decision = quick.wait_for_decision(reason="request_timeout", client=client)
    assert "HTTP/2 request headers not complete after 2 s" in decision["detail"]


def test_h2_request_body_that_stops_times_out(quick: SidecarProcess, provider: FakeProvider):
    """A POST whose body starts and then nothing: not held until the 600 s watchdog."""
    with h2_connection(quick, provider) as (tls, conn, authority, client):
        # A declared length, so the provider waits for the rest (without one, mitmproxy
        # sends the HTTP/1 request upstream with an empty body and the answer comes back).
        conn.send_headers(1, [*request_headers(authority, "POST"), ("content-length", "100")])
        conn.send_data(1, b'{"model": "gpt-fake", ')
        tls.sendall(conn.data_to_send())
        took, seen = wait_closed(tls, conn)
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in seen), seen[:5]
    assert took < DEADLINE
    decision = quick.wait_for_decision(reason="request_timeout", client=client)
    assert "request body not finished" in decision["detail"]


def test_h2_idle_connection_is_closed_quietly(quick: SidecarProcess, provider: FakeProvider):
    """After a complete exchange, an idle connection is closed (GOAWAY) after the idle
    timeout, like an HTTP/1 keep-alive expiry: no refusal recorded."""
    with h2_connection(quick, provider) as (tls, conn, authority, client):
        conn.send_headers(1, request_headers(authority), end_stream=True)
        tls.sendall(conn.data_to_send())
        took, seen = wait_closed(tls, conn)
    assert any(isinstance(e, h2.events.StreamEnded) for e in seen), seen[:5]
    assert took < DEADLINE
    terminated = [e for e in seen if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated and terminated[0].error_code == 0  # NO_ERROR
    time.sleep(0.5)
    assert not [
        d
        for d in quick.decisions
        if d.get("client") == client and d.get("reason") in ("idle_timeout", "request_timeout")
    ]


def test_h2_header_block_bomb_in_continuation_frames_is_refused(
    limited: SidecarProcess, provider: FakeProvider
):
    """HEADERS + CONTINUATION frames that never end the block: h2 would keep up to 64
    frames of 128 KiB (8 MiB per connection) before decoding and checking the list
    size. Refused once the block passes the 64 KiB head limit."""
    authority = f"api.openai.com:{provider.port}"
    # Encoded before connecting: pure-Python HPACK takes seconds on a busy machine.
    block = hpack.Encoder().encode(
        [*request_headers(authority), ("x-bomb", "b" * 200_000)], huffman=False
    )
    with h2_connection(limited, provider) as (tls, conn, _, client):
        try:
            tls.sendall(HeadersFrame(1, data=block[:16384]).serialize())
            for offset in range(16384, 16384 * 12, 16384):  # ~200 KB, never END_HEADERS
                tls.sendall(ContinuationFrame(1, data=block[offset : offset + 16384]).serialize())
        except OSError:
            pass  # closed by the sidecar while we were still sending
        took, seen = wait_closed(tls, conn, reply=False)
    assert took < DEADLINE
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in seen)
    decision = limited.wait_for_decision(reason="request_headers_too_large", client=client)
    assert "HTTP/2 header list (block still arriving) exceeds 65536 bytes" in decision["detail"]
