"""Explicit proxy mode, through the real sidecar, with the clients gateways use.

Allowed calls reach the fake provider and stream; refused calls get 403 (or a
refused CONNECT) with the reason code, one decision line and a metric increment,
and nothing reaches the provider or, for unlisted names, the DNS server.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time

import anthropic
import httpx
import openai
import pytest

from tests.support.fakes import FakeProvider
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration


def client(sidecar: SidecarProcess) -> httpx.Client:
    return httpx.Client(
        proxy=sidecar.proxy_url,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
        timeout=10,
    )


def openai_client(sidecar: SidecarProcess, provider: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-dummy-not-a-key",
        base_url=f"https://api.openai.com:{provider.port}/v1",
        http_client=client(sidecar),
        max_retries=0,
    )


def anthropic_client(sidecar: SidecarProcess, provider: FakeProvider) -> anthropic.Anthropic:
    # The anthropic SDK ships its own httpx fork; its DefaultHttpxClient takes the proxy.
    return anthropic.Anthropic(
        api_key="dummy",
        base_url=f"https://api.anthropic.com:{provider.port}",
        http_client=anthropic.DefaultHttpxClient(
            proxy=sidecar.proxy_url, verify=ssl.create_default_context(cafile=sidecar.ca_cert)
        ),
        max_retries=0,
    )


def received_since(provider: FakeProvider, mark: int) -> list[str]:
    return [r.path for r in provider.received[mark:]]


# --- allowed traffic -------------------------------------------------------------------


def test_openai_sdk_chat_completion_reaches_provider(sidecar, provider):
    mark = len(provider.received)
    reply = openai_client(sidecar, provider).chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "hello from fake"
    assert received_since(provider, mark) == ["/v1/chat/completions"]
    decision = sidecar.wait_for_decision(path="/v1/chat/completions", decision="allow")
    assert decision["provider"] == "openai"
    assert decision["rule"] == "providers.openai"
    assert decision["address"] == "127.0.0.1"


def test_openai_sdk_stream_arrives_chunk_by_chunk(sidecar, provider):
    stream = openai_client(sidecar, provider).chat.completions.create(
        model="gpt-fake",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        user="stream-openai-explicit",
    )
    arrivals = []
    texts = []
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
    sent = provider.chunk_sent_at["stream-openai-explicit"]
    assert texts == [f"tok{i} " for i in range(provider.stream_chunks)]
    # S10: the first chunk reached the gateway before the provider sent the last one.
    assert arrivals[0] < sent[-1]
    assert sent[-1] - sent[0] >= (provider.stream_chunks - 1) * provider.stream_interval * 0.9


def test_anthropic_sdk_messages_and_stream(sidecar, provider):
    client_ = anthropic_client(sidecar, provider)
    message = client_.messages.create(
        model="claude-fake", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "hello from fake"
    first = None
    pieces = []
    with client_.messages.stream(
        model="claude-fake",
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "stream-anthropic-explicit"},
    ) as stream:
        for text in stream.text_stream:
            first = first or time.monotonic()
            pieces.append(text)
    assert "".join(pieces) == "".join(f"tok{i} " for i in range(provider.stream_chunks))
    assert first is not None and first < provider.chunk_sent_at["stream-anthropic-explicit"][-1]


def test_curl_through_proxy(sidecar, provider):
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--proxy",
            sidecar.proxy_url,
            "--cacert",
            sidecar.ca_cert,
            f"https://api.openai.com:{provider.port}/v1/models",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"][0]["id"] == "gpt-fake"


@pytest.mark.parametrize("upstream_closes", [False, True], ids=["keep_alive", "upstream_closes"])
def test_one_client_connection_many_requests(sidecar, provider, upstream_closes):
    """Regression: requests are routed by the pinned address, so mitmproxy reuses the
    upstream connection (it used to open one per request and hang on the sixth)."""
    mark = len(provider.received)
    query = "?close=1" if upstream_closes else ""
    with client(sidecar) as c:
        for _ in range(12):
            response = c.get(f"https://api.openai.com:{provider.port}/v1/x{query}")
            assert response.status_code == 200
    seen = provider.received[mark:]
    assert len(seen) == 12
    assert {r.headers["host"] for r in seen} == {f"api.openai.com:{provider.port}"}
    peers = {r.peer for r in seen}
    assert len(peers) == (12 if upstream_closes else 1)


def test_wildcard_provider_host(sidecar, provider):
    with client(sidecar) as c:
        response = c.get(f"https://myres.openai.azure.com:{provider.port}/openai/deployments")
    assert response.status_code == 200
    assert sidecar.wait_for_decision(host="myres.openai.azure.com")["rule"] == "providers.azure"


# --- refusals --------------------------------------------------------------------------


def connect_status(sidecar: SidecarProcess, authority: str) -> tuple[int, bytes]:
    """Raw CONNECT, so the status and body are visible whatever a client library does."""
    host, port = sidecar.proxy_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                (
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                b"0",
            )
        )
        while len(body) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    ("attack", "authority", "reason"),
    [
        ("exfiltration_to_unlisted_host", "unlisted.example.com:443", "host_not_allowed"),
        ("lookalike_domain", "models.litellm.cloud:443", "host_not_allowed"),
        ("suffix_confusion", "api.openai.com.evil.com:443", "host_not_allowed"),
        ("prefix_confusion", "evilopenai.com:443", "host_not_allowed"),
        ("homoglyph_cyrillic_a", "xn--pi-6kc.openai.com:443", "host_not_allowed"),
        # (api.openai.com itself is refused inside the tunnel: test_refusals.py)
        ("allowed_host_other_port", "rebind.openai.com:8443", "port_not_allowed"),
        ("public_ip_literal", "93.184.216.34:443", "ip_literal"),
        ("metadata_ip_literal", "169.254.169.254:80", "metadata_address"),
        ("metadata_ipv6_literal", "[fd00:ec2::254]:80", "metadata_address"),
        ("metadata_ipv4_mapped", "[::ffff:169.254.169.254]:80", "metadata_address"),
        ("loopback_decimal_spelling", "2130706433:443", "private_address"),
        ("loopback_hex_spelling", "0x7f.1:443", "private_address"),
        ("private_ip_literal", "10.0.0.1:443", "private_address"),
        ("dns_rebinding_private", "rebind.openai.com:{port}", "private_address"),
        ("dns_rebinding_metadata", "meta.openai.com:{port}", "metadata_address"),
        ("dns_rebinding_mixed_answers", "mixed.openai.com:{port}", "private_address"),
    ],
)
def test_connect_refused_before_tunnel(sidecar, provider, dns_server, attack, authority, reason):
    authority = authority.format(port=provider.port)
    mark = len(provider.received)
    before = sidecar.metrics()
    status, body = connect_status(sidecar, authority)
    assert status == 403, attack
    assert json.loads(body)["reason"] == reason
    decision = sidecar.wait_for_decision(reason=reason, host=json.loads(body)["host"])
    assert decision["decision"] == "block"
    assert len(provider.received) == mark
    assert _counter(sidecar.metrics(), "block", reason) == _counter(before, "block", reason) + 1


def test_unlisted_name_is_never_resolved(sidecar, dns_server):
    status, _ = connect_status(sidecar, "never-resolve-me.example.net:443")
    assert status == 403
    assert not dns_server.asked("never-resolve-me.example.net")


def test_host_header_of_another_host_is_refused(sidecar, provider):
    mark = len(provider.received)
    with client(sidecar) as c:
        response = c.get(
            f"https://api.openai.com:{provider.port}/v1/models",
            headers={"Host": "api.anthropic.com"},
        )
    assert response.status_code == 403
    assert response.json()["reason"] == "host_mismatch"
    assert len(provider.received) == mark


def raw_tls_request(sidecar: SidecarProcess, authority: str, sni: str, request: bytes) -> bytes:
    """CONNECT, TLS with the given SNI, one raw request: no client library normalizes it."""
    host, port = sidecar.proxy_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=sidecar.ca_cert)
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(request)
            return _read_response(tls)


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length (what the sidecar's refusals carry)."""
    data = b""
    for _ in range(100):  # bounded: headers, then the announced body
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            lengths = [
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= int(lengths[0]):
                break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_sni_of_another_host_is_refused(sidecar, provider):
    """Domain fronting: CONNECT to an allowed host, TLS SNI names another. Refused at the
    ClientHello (issue 11): no handshake, so the request inside is never even read."""
    mark = len(provider.received)
    decisions = len(sidecar.decisions)
    with pytest.raises((ssl.SSLError, OSError)):
        raw_tls_request(
            sidecar,
            f"api.openai.com:{provider.port}",
            "api.anthropic.com",
            b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        )
    assert len(provider.received) == mark
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        d["reason"] == "host_mismatch" for d in sidecar.decisions[decisions:]
    ):
        time.sleep(0.05)
    [line] = [d for d in sidecar.decisions[decisions:] if d["reason"] == "host_mismatch"]
    assert line["decision"] == "block" and line["host"] == "api.openai.com"


@pytest.mark.parametrize(
    ("attack", "method", "path", "reason"),
    [
        ("path_outside_allowlist", "GET", "/admin/keys", "path_not_allowed"),
        ("dot_segment_escape", "GET", "/v1/../admin", "invalid_path"),
        ("encoded_dot_segment", "GET", "/v1/%2e%2e/admin", "invalid_path"),
        ("encoded_slash", "GET", "/v1%2f..%2fadmin", "invalid_path"),
        ("method_not_listed", "DELETE", "/v1/models", "method_not_allowed"),
    ],
)
def test_request_refused_by_path_or_method(sidecar, provider, attack, method, path, reason):
    mark = len(provider.received)
    reply = raw_tls_request(
        sidecar,
        f"api.openai.com:{provider.port}",
        "api.openai.com",
        f"{method} {path} HTTP/1.1\r\nHost: api.openai.com:{provider.port}\r\n\r\n".encode(),
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), attack
    assert json.loads(body)["reason"] == reason
    assert f"x-egress-sidecar-reason: {reason}".encode() in head
    assert len(provider.received) == mark


def test_plain_http_to_provider_is_refused(sidecar, provider):
    with httpx.Client(proxy=sidecar.proxy_url, timeout=5) as c:
        response = c.get(f"http://api.openai.com:{provider.port}/v1/models")
    assert response.status_code == 403
    assert response.json()["reason"] == "tls_required"


def test_upstream_certificate_is_verified(start_sidecar, provider):
    """S6: without the test CA as extra upstream CA, the fake provider is untrusted."""
    from tests.conftest import provider_policy

    untrusting = start_sidecar(
        provider_policy(provider.port),
        extra_args=("--upstream-ca", "/etc/ssl/certs/ca-certificates.crt"),
    )
    mark = len(provider.received)
    with client(untrusting) as c:
        response = c.get(f"https://api.openai.com:{provider.port}/v1/models")
    assert response.status_code == 502
    assert len(provider.received) == mark
    assert untrusting.wait_for_decision(reason="upstream_tls_failure")["decision"] == "block"


def test_metric_labels_stay_bounded_under_hostname_spray(sidecar):
    for i in range(30):
        connect_status(sidecar, f"spray-{i}.attacker.example:443")
    metrics = sidecar.metrics()
    assert "attacker" not in metrics
    assert "spray-" not in metrics


def _counter(metrics: str, decision: str, reason: str, provider: str | None = None) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if (
            line.startswith("egress_sidecar_decisions_total{")
            and f'decision="{decision}"' in line
            and f'reason="{reason}"' in line
        ):
            if provider is None or f'provider="{provider}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_non_http_bytes_in_an_allowed_tunnel_are_refused_and_seen(sidecar, provider):
    """rawtcp is off: an SSH banner inside a CONNECT to an allowed host goes nowhere, and
    the attempt is logged once the connection ends."""
    mark = len(provider.received)
    host, port = sidecar.proxy_url.removeprefix("http://").rsplit(":", 1)
    authority = f"api.openai.com:{provider.port}"
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        raw.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")  # the sidecar waits for a request; we leave
    decision = sidecar.wait_for_decision(
        reason="protocol_not_allowed", mode="explicit", host="api.openai.com", timeout=10
    )
    assert decision["decision"] == "block"
    assert provider.received[mark:] == []
