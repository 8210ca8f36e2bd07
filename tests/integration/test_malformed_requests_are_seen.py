"""S9: what mitmproxy answers on its own (a 400 to a malformed request) is still a
decision line; an allowed request whose exchange then fails says so in its line.

A hostile gateway probing the explicit listener with garbage, a request without a
destination or a CONNECT without a valid port must not go unseen.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.sidecar import SidecarProcess
from tests.support.tunnel import connect_tunnel

pytestmark = pytest.mark.integration


def send_raw(sidecar: SidecarProcess, data: bytes) -> bytes:
    host, port = sidecar.listener("explicit").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        if data:
            sock.sendall(data)
        sock.settimeout(5)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def lines_after(sidecar: SidecarProcess, mark: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(sidecar.decisions) <= mark:
        time.sleep(0.05)
    time.sleep(0.3)  # a second line would show up now
    return sidecar.decisions[mark:]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\n\r\n",  # origin form, no Host: no destination
        b"CONNECT api.openai.com HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",  # no port
        b"CONNECT api.openai.com:99999 HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello\r\n\r\n",
    ],
    ids=["garbage", "no-host", "connect-no-port", "connect-bad-port", "junk"],
)
def test_malformed_request_to_the_explicit_listener_is_one_block_line(
    sidecar: SidecarProcess, request_bytes: bytes
) -> None:
    mark = len(sidecar.decisions)
    send_raw(sidecar, request_bytes)
    lines = lines_after(sidecar, mark)
    assert len(lines) == 1, lines
    assert lines[0]["decision"] == "block" and lines[0]["reason"] == "protocol_not_allowed"
    assert lines[0]["mode"] == "explicit" and lines[0]["host"] == "unknown"


def test_request_smuggling_framing_is_not_logged_as_a_plain_allow(
    sidecar: SidecarProcess, provider
) -> None:
    # Content-Length and Transfer-Encoding together: mitmproxy rejects the framing
    # after the headers were allowed. The one line must say the exchange failed.
    mark = len(sidecar.decisions)
    authority = f"api.openai.com:{provider.port}"
    raw = send_raw(
        sidecar,
        f"POST https://{authority}/v1/x HTTP/1.1\r\nHost: {authority}\r\n"
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
    )
    assert raw.startswith(b"HTTP/1.1 400"), raw[:100]
    lines = lines_after(sidecar, mark)
    assert len(lines) == 1, lines
    assert lines[0]["decision"] != "allow" or "exchange failed" in lines[0].get("detail", "")


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def test_http2_prior_knowledge_preface_to_the_explicit_listener_says_what_it_was(
    sidecar: SidecarProcess,
) -> None:
    # An HTTP/2-only client (h2c prior knowledge) at the explicit listener: before,
    # the line read as a Host-less `PRI` request or an unexplained malformed one.
    mark = len(sidecar.decisions)
    raw = send_raw(sidecar, H2_PREFACE)
    assert raw.startswith(b"HTTP/1.1 403"), raw[:100]
    lines = lines_after(sidecar, mark)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["decision"] == "block" and line["reason"] == "protocol_not_allowed"
    assert line["mode"] == "explicit" and line["method"] is None
    assert "HTTP/2 prior-knowledge preface" in line["detail"]


def test_http2_prior_knowledge_inside_a_plain_connect_tunnel_is_refused_as_such(
    sidecar: SidecarProcess, provider
) -> None:
    # h2c inside a CONNECT tunnel to an allowed host: a second protocol (S5).
    mark = len(sidecar.decisions)
    authority = f"api.openai.com:{provider.port}"
    raw = send_raw(
        sidecar, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + H2_PREFACE
    )
    assert b" 403 " in raw, raw[:200]
    lines = lines_after(sidecar, mark)
    refused = [x for x in lines if x["reason"] == "protocol_not_allowed"]
    assert len(refused) == 1, lines
    assert "HTTP/2 prior-knowledge preface" in refused[0]["detail"]


@pytest.mark.parametrize("target", [b"/v1/x\xff", b"/v1/%ff\xc3"], ids=["raw byte", "mixed"])
def test_a_request_with_a_non_utf8_path_still_writes_its_decision_line(
    sidecar: SidecarProcess, provider, target: bytes
) -> None:
    """mitmproxy gives a path's non-UTF-8 bytes as lone surrogates; the decision
    scrubber (which encodes what it scrubs) must never see them, or the decision is
    dropped from every record (no line, no metric, no alert) and the refusal goes
    unseen. The engine writes the path as printable ASCII first."""
    mark = len(sidecar.decisions)
    authority = f"api.openai.com:{provider.port}"
    with connect_tunnel(sidecar, authority, "api.openai.com", timeout=10) as tls:
        tls.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: " + authority.encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        tls.settimeout(10)
        while tls.recv(65536):
            pass
    lines = lines_after(sidecar, mark)
    assert len(lines) == 1, lines
    assert "\\udc" in lines[0]["path"], lines  # the raw byte, escaped
    assert not any("scrubber failed" in line for line in sidecar.stdout_lines[-50:])
