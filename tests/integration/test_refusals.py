"""Refusals the caller can read, and that stay final (issue 20), through the real process.

What the official SDKs surface (exception type, the reason in it), with their retries
ON: a refusal must still be exactly one attempt, one decision line. Upstream TLS
failures answer with our body and header as one block line; nothing we send names
mitmproxy; a client that rejects the sidecar CA is logged and counted; the start-up
event says where everything is.
"""

from __future__ import annotations

import json
import socket
import ssl
import textwrap
import time

import anthropic
import httpx
import openai
import pytest

from tests.integration.test_explicit_proxy import connect_status
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration

RETRIES = 3  # SDK retries left on: a refusal must not be retried anyway


def refusal_policy(port: int) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        providers:
          openai:
            hosts: [api.openai.com, notincert.openai.com]
            ports: [{port}]
            paths: [/v1/*]
            methods: [GET, POST]
            addresses: [127.0.0.0/8]
          anthropic:
            hosts: [api.anthropic.com]
            ports: [{port}]
            paths: [/v1/messages, /v1/models]
            addresses: [127.0.0.0/8]
            credential: {{header: x-api-key, format: "{{secret}}", secret: anthropic-absent}}
        """
    )


@pytest.fixture(scope="module")
def refusing(start_sidecar, provider, dns_server) -> SidecarProcess:
    # A provider name the fake provider's certificate does not cover: S6 refuses it.
    dns_server.records["notincert.openai.com"] = ["127.0.0.1"]
    return start_sidecar(refusal_policy(provider.port))


def _verify(sidecar: SidecarProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=sidecar.ca_cert)


def openai_sdk(sidecar: SidecarProcess, base_url: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-dummy",
        base_url=base_url,
        http_client=httpx.Client(proxy=sidecar.proxy_url, verify=_verify(sidecar), timeout=10),
        max_retries=RETRIES,
    )


def anthropic_sdk(sidecar: SidecarProcess, port: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="dummy",
        base_url=f"https://api.anthropic.com:{port}",
        http_client=anthropic.DefaultHttpxClient(
            proxy=sidecar.proxy_url, verify=_verify(sidecar), timeout=10
        ),
        max_retries=RETRIES,
    )


def lines_for(sidecar: SidecarProcess, mark: int, **fields) -> list[dict]:
    return [d for d in sidecar.decisions[mark:] if all(d.get(k) == v for k, v in fields.items())]


def settle(sidecar: SidecarProcess, mark: int, **fields) -> list[dict]:
    """The matching lines, after a pause long enough for any retry to have arrived."""
    sidecar.wait_for_decision(timeout=10, **fields)
    time.sleep(1.5)  # SDK retries back off 0.5-8 s; the SDK call has returned already
    return lines_for(sidecar, mark, **fields)


# --- the official SDKs ---------------------------------------------------------------


def test_openai_sdk_sees_reason_for_refused_method_and_does_not_retry(refusing, provider):
    mark, seen = len(refusing.decisions), len(provider.received)
    client = openai_sdk(refusing, f"https://api.openai.com:{provider.port}/v1")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.models.delete("gpt-fake")  # DELETE is not a listed method
    error = caught.value
    assert error.status_code == 403
    assert error.code == "method_not_allowed"  # OpenAI's error.code
    assert "egress-sidecar refused" in str(error) and "method_not_allowed" in str(error)
    assert error.response.headers["x-egress-sidecar-reason"] == "method_not_allowed"
    assert error.response.headers["x-should-retry"] == "false"
    assert len(settle(refusing, mark, reason="method_not_allowed")) == 1
    assert provider.received[seen:] == []


def test_openai_sdk_refused_connect_is_answered_in_tunnel_not_a_connection_error(
    refusing, provider, dns_server
):
    """A provider host on an unlisted port: refused at CONNECT time, answered to the
    first request inside the tunnel, so the SDK raises a status error with the reason
    (before, APIConnectionError "Connection error." after three attempts)."""
    port = free_port()
    mark, seen = len(refusing.decisions), len(provider.received)
    client = openai_sdk(refusing, f"https://api.openai.com:{port}/v1")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "port_not_allowed"
    (line,) = settle(refusing, mark, reason="port_not_allowed")
    assert (line["decision"], line["host"], line["port"]) == ("block", "api.openai.com", port)
    assert (line["method"], line["path"], line["mode"]) == (
        "POST",
        "/v1/chat/completions",
        "explicit",
    )
    assert provider.received[seen:] == []


def test_anthropic_sdk_sees_reason_for_refused_path_and_does_not_retry(refusing, provider):
    mark = len(refusing.decisions)
    client = anthropic_sdk(refusing, provider.port)
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        client.messages.count_tokens(  # /v1/messages/count_tokens is not listed
            model="claude-fake", messages=[{"role": "user", "content": "x"}]
        )
    error = caught.value
    assert error.type == "permission_error"
    assert error.error_code == "path_not_allowed"  # Anthropic's error.details.error_code
    assert "egress-sidecar refused" in str(error) and "path_not_allowed" in str(error)
    assert len(settle(refusing, mark, reason="path_not_allowed")) == 1


def test_anthropic_sdk_does_not_retry_a_5xx_refusal(refusing, provider):
    """credential_unavailable is a 503, which the SDK retries unless told not to."""
    mark, seen = len(refusing.decisions), len(provider.received)
    client = anthropic_sdk(refusing, provider.port)
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(
            model="claude-fake", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 503
    assert caught.value.error_code == "credential_unavailable"
    assert caught.value.type == "api_error"
    assert len(settle(refusing, mark, reason="credential_unavailable")) == 1
    assert provider.received[seen:] == []


def test_unlisted_host_is_still_refused_at_connect(refusing):
    """Invented names never cost a certificate and a handshake: 403 at CONNECT."""
    status, body = connect_status(refusing, "models.litellm.cloud:443")
    assert status == 403
    assert json.loads(body)["reason"] == "host_not_allowed"


def test_refused_tunnel_without_a_request_is_one_line_and_never_dials(
    refusing, provider, dns_server
):
    port = free_port()
    mark = len(refusing.decisions)
    status, _ = connect_status(refusing, f"api.openai.com:{port}")  # then hangs up
    assert status == 200
    (line,) = settle(refusing, mark, reason="port_not_allowed", port=port)
    assert line["method"] is None


# --- upstream TLS failure: one line, our body, no mitmproxy ------------------------------


def _no_mitmproxy(response: httpx.Response) -> None:
    text = (str(response.headers) + response.text).lower()
    assert "mitmproxy" not in text, response.headers
    assert "<html" not in text


def test_upstream_tls_failure_is_one_block_line_with_our_body(refusing, provider):
    mark, seen = len(refusing.decisions), len(provider.received)
    with httpx.Client(proxy=refusing.proxy_url, verify=_verify(refusing), timeout=10) as c:
        response = c.get(f"https://notincert.openai.com:{provider.port}/v1/models")
    assert response.status_code == 502
    assert response.headers["x-egress-sidecar-reason"] == "upstream_tls_failure"
    assert response.headers["content-type"] == "application/json"
    assert response.json()["reason"] == "upstream_tls_failure"
    _no_mitmproxy(response)
    host_lines = settle(refusing, mark, host="notincert.openai.com")
    assert len(host_lines) == 1, host_lines
    (line,) = host_lines
    assert (line["decision"], line["reason"], line["mode"]) == (
        "block",
        "upstream_tls_failure",
        "explicit",
    )
    assert (line["method"], line["path"]) == ("GET", "/v1/models")
    assert provider.received[seen:] == []  # the handshake failed: no request went up


def test_upstream_tls_failure_is_not_retried_by_the_openai_sdk(refusing, provider):
    mark = len(refusing.decisions)
    client = openai_sdk(refusing, f"https://notincert.openai.com:{provider.port}/v1")
    with pytest.raises(openai.InternalServerError) as caught:
        client.models.list()
    assert caught.value.status_code == 502
    assert "upstream_tls_failure" in str(caught.value)
    assert len(settle(refusing, mark, host="notincert.openai.com")) == 1


def test_malformed_request_gets_json_not_mitmproxy_page(refusing):
    host, port = refusing.proxy_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /?key=sk-secret-in-query HTTP/1.1\r\nContent-Length: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"mitmproxy" not in data.lower()
    assert json.loads(body)["error"] == "egress_sidecar_error"
    assert b"sk-secret-in-query" not in data


def test_connect_reply_does_not_name_mitmproxy(refusing, provider):
    host, port = refusing.proxy_url.removeprefix("http://").rsplit(":", 1)
    authority = f"api.openai.com:{provider.port}"
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"mitmproxy" not in head.lower()


# --- a client that does not trust the sidecar CA -------------------------------------------


def _client_tls_failures(sidecar: SidecarProcess) -> float:
    for line in sidecar.metrics().splitlines():
        if line.startswith("egress_sidecar_client_tls_failures_total{") and (
            'cause="untrusted_ca"' in line and 'mode="explicit"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_client_rejecting_sidecar_ca_is_logged_and_counted(refusing, provider):
    before = _client_tls_failures(refusing)
    events = len(refusing.events)
    with httpx.Client(proxy=refusing.proxy_url, timeout=10) as c:  # public roots only
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            c.get(f"https://api.openai.com:{provider.port}/v1/models")
    event = refusing.wait_for_event("client_tls_failed", after=events)
    assert event["sni"] == "api.openai.com"
    assert event["cause"] == "untrusted_ca"
    assert event["mode"] == "explicit"
    assert event["client"].startswith("127.0.0.1:")
    deadline = time.monotonic() + 10
    while _client_tls_failures(refusing) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _client_tls_failures(refusing) == before + 1


# --- the start-up event ----------------------------------------------------------------------


def test_listening_event_lists_each_address_once_with_resolver_port_and_absolute_ca(
    tmp_path, monkeypatch, provider, dns_server, test_ca_file
):
    from tests.conftest import provider_policy

    (tmp_path / "p.yaml").write_text(provider_policy(provider.port))
    monkeypatch.chdir(tmp_path)  # relative --ca-dir, as a new user types it
    reverse_port, proxy_port = free_port(), free_port()
    sidecar = SidecarProcess(
        [
            "--policy",
            "p.yaml",
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--admin",
            "127.0.0.1:0",
            "--ca-dir",
            "ca",
            "--resolver",
            f"127.0.0.1:{dns_server.port}",
            "--upstream-ca",
            test_ca_file,
            "--reverse",
            f"openai@127.0.0.1:{reverse_port}",
        ]
    ).start()
    try:
        event = sidecar.listening
        assert event["listeners"]["reverse:openai"] == [f"127.0.0.1:{reverse_port}"]
        assert event["listeners"]["explicit"] == [f"127.0.0.1:{proxy_port}"]
        assert event["resolver"] == [f"127.0.0.1:{dns_server.port}"]
        assert event["ca_cert"] == str(tmp_path / "ca" / "mitmproxy-ca-cert.pem")
        assert (tmp_path / "ca" / "mitmproxy-ca-cert.pem").is_file()
    finally:
        sidecar.stop()


def test_upstream_tls_failure_in_reverse_mode_is_openai_shaped_and_final(start_sidecar, provider):
    """The gateway's own view: a reverse listener whose provider certificate does not
    verify (the sidecar trusts only the public roots here). One 502 in OpenAI's format,
    not retried, one block line in reverse mode, nothing of mitmproxy's."""
    from tests.conftest import provider_policy

    untrusting = start_sidecar(
        provider_policy(provider.port),
        reverse=("openai",),
        extra_args=("--upstream-ca", "/etc/ssl/certs/ca-certificates.crt"),
    )
    mark, seen = len(untrusting.decisions), len(provider.received)
    client = openai.OpenAI(
        api_key="sk-dummy",
        base_url=untrusting.reverse_url("openai") + "/v1",
        max_retries=RETRIES,
        timeout=10,
    )
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "x"}]
        )
    error = caught.value
    assert (error.status_code, error.code) == (502, "upstream_tls_failure")
    assert "mitmproxy" not in (str(error.response.headers) + error.response.text).lower()
    (line,) = settle(untrusting, mark, reason="upstream_tls_failure")
    assert (line["mode"], line["provider"], line["path"]) == (
        "reverse",
        "openai",
        "/v1/chat/completions",
    )
    assert not lines_for(untrusting, mark, decision="allow")
    assert provider.received[seen:] == []
