"""HTTP/2 -> HTTP/1 request smuggling: a body without a length must stay one body.

HTTP/2 frames a request body itself (DATA frames, END_STREAM), so a client need not
send `content-length`. mitmproxy relayed such a body to an HTTP/1 provider with no
length and no chunked framing: the provider read the body's bytes as further requests
that the sidecar never decided (path, method and key rules skipped). Found by the red
team while testing the HTTP/2 timers (issue 10). A real HTTP/2 client (the h2 library)
over TLS through a CONNECT tunnel; the fake provider speaks HTTP/1.1.
"""

from __future__ import annotations

import time

import h2.config
import h2.connection
import h2.events
import pytest

from tests.support.sidecar import SidecarProcess
from tests.support.tunnel import connect_tunnel

pytestmark = pytest.mark.integration


def h2_post(sidecar: SidecarProcess, authority: str, path: str, body: bytes) -> bytes:
    """POST `body` over HTTP/2 without content-length; returns the response status."""
    host = authority.rsplit(":", 1)[0]
    tls = connect_tunnel(sidecar, authority, host, timeout=10, alpn=["h2"])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", authority),
               (":path", path), ("content-type", "application/octet-stream")]  # fmt: skip
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers)
    conn.send_data(stream_id, body, end_stream=True)
    tls.sendall(conn.data_to_send())
    status = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # bounded: until the stream ends
        data = tls.recv(65536)
        if not data:
            break
        ended = False
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status", b"")
            if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended = True
        tls.sendall(conn.data_to_send())
        if ended:
            break
    tls.close()
    return status


def test_h2_body_without_length_cannot_smuggle_a_second_request_upstream(sidecar, provider):
    authority = f"api.openai.com:{provider.port}"
    mark = len(provider.received)
    smuggled = (
        f"GET /v1/smuggled HTTP/1.1\r\nHost: api.openai.com:{provider.port}\r\n\r\n"
    ).encode()
    status = h2_post(sidecar, authority, "/v1/files", smuggled)
    assert status == b"200", status
    time.sleep(1.0)  # a smuggled request would arrive right after the POST
    received = [(r.method, r.path) for r in provider.received[mark:]]
    assert ("GET", "/v1/smuggled") not in received, received
    posts = [r for r in provider.received[mark:] if r.path == "/v1/files"]
    assert len(posts) == 1 and posts[0].body == smuggled, received
