"""Table tests for the request readers and the relay rules (issue 13): each row is a
request body an API accepts, and what the sidecar must make of it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.decision import Reason
from sidecar.inspection.body_inspection import Api, api_for, inspect_body, minting_endpoint
from sidecar.inspection.policy import FetchList, FetchRule, RelayRules

OPENAI, ANTHROPIC, GEMINI = (
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
)
NONE = RelayRules()
FETCH_MCP = RelayRules(fetch=FetchList((FetchRule("https", "mcp.example.com", None),)))
WILDCARD = RelayRules(fetch=FetchList((FetchRule("https", "*.cdn.example.com", None),)))
SEARCH = RelayRules(server_tools=frozenset({"web_search", "web_fetch", "url_context"}))
FETCH, TOOL, AMBIG = (
    Reason.PROVIDER_FETCH_NOT_ALLOWED,
    Reason.SERVER_TOOL_NOT_ALLOWED,
    Reason.REQUEST_NOT_INSPECTABLE,
)


def inspect(path: str, body: Any, rules: RelayRules = NONE, host: str = OPENAI):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return inspect_body(
        raw, api=api_for(path, host), rules=rules, limit=1 << 20, own_hosts=frozenset({host})
    )


def mcp(url: str) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "s", "server_url": url, "require_approval": "never"}


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def container(policy: dict[str, Any]) -> dict[str, Any]:
    return {"type": "code_interpreter", "container": {"type": "auto", "network_policy": policy}}


CASES: list[tuple[str, str, str, Any, RelayRules, Reason | None, str]] = [
    # id, host, path, body, rules, expected reason, expected field
    (
        "responses mcp unlisted",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [mcp("https://evil.example/sse")]},
        NONE,
        FETCH,
        "tools[0].server_url",
    ),
    (
        "responses mcp listed",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [mcp("https://mcp.example.com/sse?x=1")]},
        FETCH_MCP,
        None,
        "",
    ),
    (
        "responses mcp listed host, http scheme",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [mcp("http://mcp.example.com/sse")]},
        FETCH_MCP,
        FETCH,
        "tools[0].server_url",
    ),
    (
        "responses mcp listed host, other port",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [mcp("https://mcp.example.com:8443/sse")]},
        FETCH_MCP,
        FETCH,
        "tools[0].server_url",
    ),
    (
        "responses mcp userinfo trick",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [mcp("https://mcp.example.com@evil.example/")]},
        FETCH_MCP,
        FETCH,
        "tools[0].server_url",
    ),
    (
        "responses mcp backslash trick",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [mcp("https://evil.example\\@mcp.example.com/")]},
        FETCH_MCP,
        FETCH,
        "tools[0].server_url",
    ),
    (
        "responses mcp IP literal",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [mcp("https://203.0.113.9/")]},
        FETCH_MCP,
        FETCH,
        "tools[0].server_url",
    ),
    (
        "responses mcp connector",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "tools": [{"type": "mcp", "server_label": "g", "connector_id": "connector_gmail"}],
        },
        NONE,
        TOOL,
        "tools[0].connector_id",
    ),
    (
        "responses web_search",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "tools": [{"type": "web_search", "filters": {"allowed_domains": ["a.com"]}}],
        },
        NONE,
        TOOL,
        "tools[0]",
    ),
    (
        "responses web_search_preview dated",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [{"type": "web_search_preview_2025_03_11"}]},
        NONE,
        TOOL,
        "tools[0]",
    ),
    (
        "responses web_search opted in",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [{"type": "web_search"}]},
        SEARCH,
        None,
        "",
    ),
    (
        "responses unknown tool type",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [{"type": "teleport"}]},
        NONE,
        TOOL,
        "tools[0]",
    ),
    (
        "responses function tool",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [{"type": "function", "name": "f", "parameters": {}}]},
        NONE,
        None,
        "",
    ),
    (
        "responses input_image url",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "input": user(
                {"type": "input_image", "image_url": "https://evil.example/a.png?q=SECRET"}
            ),
        },
        NONE,
        FETCH,
        "input[0].content[0].image_url",
    ),
    (
        "responses input_image data url",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "input": user({"type": "input_image", "image_url": "data:image/png;base64,AA"}),
        },
        NONE,
        None,
        "",
    ),
    (
        "responses input_image wildcard listed",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "input": user({"type": "input_image", "image_url": "https://img.cdn.example.com/a"}),
        },
        WILDCARD,
        None,
        "",
    ),
    (
        "responses input_image wildcard apex",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "input": user({"type": "input_image", "image_url": "https://cdn.example.com/a"}),
        },
        WILDCARD,
        FETCH,
        "input[0].content[0].image_url",
    ),
    (
        "responses input_file url",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "input": user({"type": "input_file", "file_url": "https://evil.example/f.pdf"}),
        },
        NONE,
        FETCH,
        "input[0].content[0].file_url",
    ),
    (
        "responses input_file id",
        OPENAI,
        "/v1/responses",
        {"model": "m", "input": user({"type": "input_file", "file_id": "file-1"})},
        NONE,
        None,
        "",
    ),
    (
        "code interpreter network allowlist",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "tools": [container({"type": "allowlist", "allowed_domains": ["evil.example"]})],
        },
        NONE,
        FETCH,
        "tools[0].container.network_policy.allowed_domains[0]",
    ),
    (
        "code interpreter domain secrets",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "tools": [
                container(
                    {
                        "type": "allowlist",
                        "allowed_domains": ["mcp.example.com"],
                        "domain_secrets": [{"domain": "evil.example", "name": "K", "value": "v"}],
                    }
                )
            ],
        },
        FETCH_MCP,
        FETCH,
        "tools[0].container.network_policy.domain_secrets[0].domain",
    ),
    (
        "code interpreter network disabled",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": [container({"type": "disabled"})]},
        NONE,
        None,
        "",
    ),
    (
        "shell container allowlist",
        OPENAI,
        "/v1/responses",
        {
            "model": "m",
            "tools": [
                {
                    "type": "shell",
                    "environment": {
                        "type": "container_auto",
                        "network_policy": {
                            "type": "allowlist",
                            "allowed_domains": ["*.evil.example"],
                        },
                    },
                }
            ],
        },
        WILDCARD,
        FETCH,
        "tools[0].environment.network_policy.allowed_domains[0]",
    ),
    (
        "containers endpoint",
        OPENAI,
        "/v1/containers",
        {"name": "c", "network_policy": {"type": "allowlist", "allowed_domains": ["evil.example"]}},
        NONE,
        FETCH,
        "network_policy.allowed_domains[0]",
    ),
    (
        "chat image_url",
        OPENAI,
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": user({"type": "image_url", "image_url": {"url": "https://evil.example/x"}}),
        },
        NONE,
        FETCH,
        "messages[0].content[0].image_url.url",
    ),
    (
        "chat web_search_options",
        OPENAI,
        "/v1/chat/completions",
        {"model": "m", "messages": [], "web_search_options": {}},
        NONE,
        TOOL,
        "web_search_options",
    ),
    (
        "compatible provider prefix",
        "api.groq.com",
        "/openai/v1/chat/completions",
        {
            "model": "m",
            "messages": user({"type": "image_url", "image_url": {"url": "https://evil.example/x"}}),
        },
        NONE,
        FETCH,
        "messages[0].content[0].image_url.url",
    ),
    (
        "realtime session mcp",
        OPENAI,
        "/v1/realtime/calls",
        {
            "type": "session.update",
            "session": {"type": "realtime", "tools": [mcp("https://evil.example/")]},
        },
        NONE,
        FETCH,
        "session.tools[0].server_url",
    ),
    (
        "anthropic mcp_servers",
        ANTHROPIC,
        "/v1/messages",
        {
            "model": "c",
            "max_tokens": 1,
            "messages": [],
            "mcp_servers": [
                {
                    "type": "url",
                    "url": "https://evil.example/sse",
                    "name": "e",
                    "authorization_token": "t",
                }
            ],
        },
        NONE,
        FETCH,
        "mcp_servers[0].url",
    ),
    (
        "anthropic mcp_servers listed + toolset",
        ANTHROPIC,
        "/v1/messages",
        {
            "model": "c",
            "max_tokens": 1,
            "messages": [],
            "mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "e"}],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "e"}],
        },
        FETCH_MCP,
        None,
        "",
    ),
    (
        "anthropic web_fetch",
        ANTHROPIC,
        "/v1/messages",
        {
            "model": "c",
            "max_tokens": 1,
            "messages": [],
            "tools": [
                {"type": "web_fetch_20250910", "name": "web_fetch", "allowed_domains": ["a.com"]}
            ],
        },
        NONE,
        TOOL,
        "tools[0]",
    ),
    (
        "anthropic web_search opted in",
        ANTHROPIC,
        "/v1/messages",
        {
            "model": "c",
            "max_tokens": 1,
            "messages": [],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
        SEARCH,
        None,
        "",
    ),
    (
        "anthropic custom + client tools",
        ANTHROPIC,
        "/v1/messages",
        {
            "model": "c",
            "max_tokens": 1,
            "messages": [],
            "tools": [
                {"name": "f", "description": "d", "input_schema": {"type": "object"}},
                {"type": "bash_20250124", "name": "bash"},
                {"type": "code_execution_20250825", "name": "code_execution"},
            ],
        },
        NONE,
        None,
        "",
    ),
    (
        "anthropic image url source",
        ANTHROPIC,
        "/v1/messages",
        {
            "model": "c",
            "max_tokens": 1,
            "messages": user(
                {"type": "image", "source": {"type": "url", "url": "https://evil.example/i.png"}}
            ),
        },
        NONE,
        FETCH,
        "messages[0].content[0].source.url",
    ),
    (
        "anthropic document url source",
        ANTHROPIC,
        "/v1/messages",
        {
            "model": "c",
            "max_tokens": 1,
            "messages": user(
                {"type": "document", "source": {"type": "url", "url": "https://evil.example/d.pdf"}}
            ),
        },
        NONE,
        FETCH,
        "messages[0].content[0].source.url",
    ),
    (
        "anthropic batch params",
        ANTHROPIC,
        "/v1/messages/batches",
        {
            "requests": [
                {
                    "custom_id": "1",
                    "params": {
                        "model": "c",
                        "max_tokens": 1,
                        "messages": [],
                        "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}],
                    },
                }
            ]
        },
        NONE,
        TOOL,
        "requests[0].params.tools[0]",
    ),
    (
        "gemini file_data",
        GEMINI,
        "/v1beta/models/g:generateContent",
        {
            "contents": [
                {
                    "parts": [
                        {"file_data": {"file_uri": "https://evil.example/a.pdf", "mime_type": "x"}}
                    ]
                }
            ]
        },
        NONE,
        FETCH,
        "contents[0].parts[0].file_data.file_uri",
    ),
    (
        "gemini fileData camel",
        GEMINI,
        "/v1beta/models/g:streamGenerateContent",
        {"contents": [{"parts": [{"fileData": {"fileUri": "https://evil.example/a.pdf"}}]}]},
        NONE,
        FETCH,
        "contents[0].parts[0].fileData.fileUri",
    ),
    (
        "gemini own files api",
        GEMINI,
        "/v1beta/models/g:generateContent",
        {
            "contents": [
                {"parts": [{"fileData": {"fileUri": f"https://{GEMINI}/v1beta/files/abc"}}]}
            ]
        },
        NONE,
        None,
        "",
    ),
    (
        "gemini url_context",
        GEMINI,
        "/v1beta/models/g:generateContent",
        {"contents": [], "tools": [{"urlContext": {}}]},
        NONE,
        TOOL,
        "tools[0]",
    ),
    (
        "gemini google_search",
        GEMINI,
        "/v1beta/models/g:generateContent",
        {"contents": [], "tools": [{"google_search": {}}]},
        NONE,
        TOOL,
        "tools[0]",
    ),
    (
        "gemini function + code execution",
        GEMINI,
        "/v1beta/models/g:generateContent",
        {"contents": [], "tools": [{"functionDeclarations": [{"name": "f"}], "codeExecution": {}}]},
        NONE,
        None,
        "",
    ),
    (
        "gemini two spellings",
        GEMINI,
        "/v1beta/models/g:generateContent",
        b'{"contents":[{"parts":[{"file_data":{"file_uri":"files/a"},"fileData":{"fileUri":"https://e.x/"}}]}]}',
        NONE,
        AMBIG,
        "body",
    ),
    (
        "gemini interactions mcp_server",
        GEMINI,
        "/v1beta/interactions",
        {
            "model": "g",
            "input": "x",
            "tools": [{"type": "mcp_server", "url": "https://evil.example/", "name": "e"}],
        },
        NONE,
        FETCH,
        "tools[0].url",
    ),
    (
        "gemini interactions image uri",
        GEMINI,
        "/v1beta/interactions",
        {"model": "g", "input": [{"type": "image", "uri": "https://evil.example/i.png"}]},
        NONE,
        FETCH,
        "input[0].uri",
    ),
    (
        "unknown path still sees mcp",
        OPENAI,
        "/v1/somethingnew",
        {"tools": [mcp("https://evil.example/")]},
        NONE,
        FETCH,
        "tools[0].server_url",
    ),
    (
        "unknown path tolerates unknown tools",
        OPENAI,
        "/v1/somethingnew",
        {"tools": [{"type": "teleport"}]},
        NONE,
        None,
        "",
    ),
    (
        "stringified tools",
        OPENAI,
        "/v1/responses",
        {"model": "m", "tools": json.dumps([mcp("https://evil.example/")])},
        NONE,
        AMBIG,
        "tools",
    ),
    (
        "duplicate keys",
        OPENAI,
        "/v1/responses",
        b'{"tools":[],"tools":[{"type":"mcp","server_url":"https://evil.example/"}]}',
        NONE,
        AMBIG,
        "body",
    ),
    ("lone surrogate", OPENAI, "/v1/responses", b'{"input":"\\udc00"}', NONE, AMBIG, "body"),
    (
        "surrogate pair is fine",
        OPENAI,
        "/v1/responses",
        b'{"input":"\\ud83d\\ude00"}',
        NONE,
        None,
        "",
    ),
    ("not utf-8", OPENAI, "/v1/responses", b'{"input":"\xff"}', NONE, AMBIG, "body"),
    ("NaN", OPENAI, "/v1/responses", b'{"temperature":NaN}', NONE, AMBIG, "body"),
    ("BOM", OPENAI, "/v1/responses", b"\xef\xbb\xbf{}", NONE, AMBIG, "body"),
    ("not JSON on a JSON API", OPENAI, "/v1/responses", b"hello", NONE, AMBIG, "body"),
    ("plain text elsewhere", OPENAI, "/v1/files", b"hello", NONE, None, ""),
    ("upper-case data url is not a fetch", OPENAI, "/v1/responses",
     {"input": user({"type": "input_image", "image_url": "DATA:image/png;base64,AA"})},
     NONE, None, ""),
    ("stored prompt variable with an image url", OPENAI, "/v1/responses",
     {"prompt": {"id": "pmpt_1", "variables": {"pic": {"type": "input_image",
      "image_url": "https://evil.example/x"}}}},
     NONE, FETCH, "prompt.variables.pic.image_url"),
    ("gemini live setup tools", GEMINI,
     "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
     {"setup": {"model": "m", "tools": [{"googleSearch": {}}, {"teleport": {}}]}},
     NONE, TOOL, "setup.tools[0]"),
    ("percent-encoded host", OPENAI, "/v1/responses",
     {"tools": [mcp("https://%6dcp.example.com/")]}, FETCH_MCP, FETCH, "tools[0].server_url"),
    ("trailing dot and explicit default port", OPENAI, "/v1/responses",
     {"tools": [mcp("https://mcp.example.com.:443/sse")]}, FETCH_MCP, None, ""),
    ("vertex gs uri", GEMINI, "/v1/projects/p/locations/l/models/g:generateContent",
     {"contents": [{"parts": [{"fileData": {"fileUri": "gs://attacker-bucket/x"}}]}]},
     NONE, FETCH, "contents[0].parts[0].fileData.fileUri"),
    ("deeply nested", OPENAI, "/v1/responses",
     b'{"a":' * 200 + b"1" + b"}" * 200, NONE, AMBIG, "body"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("host", "path", "body", "rules", "reason", "field"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_reader_table(host, path, body, rules, reason, field) -> None:
    result = inspect(path, body, rules, host)
    if reason is None:
        assert result.violation is None, result.violation
    else:
        assert result.violation is not None
        assert (result.violation.reason, result.violation.field) == (reason, field)


def test_detail_names_field_and_host_never_path_or_query() -> None:
    url = "https://evil.example/steal/AKIAIOSFODNN7EXAMPLE?data=c2VjcmV0"
    result = inspect("/v1/responses", {"model": "m", "tools": [mcp(url)]})
    assert result.violation is not None
    detail = result.violation.detail
    assert "tools[0].server_url" in detail and "evil.example" in detail
    assert "AKIA" not in detail and "c2VjcmV0" not in detail and "steal" not in detail


def test_keys_in_the_field_path_are_never_attacker_text() -> None:
    body = {"input": {"sk-SECRET-as-a-key": {"image_url": "https://evil.example/"}}}
    result = inspect("/v1/responses", body)
    assert result.violation is not None
    assert "SECRET" not in result.violation.field and "<key>" in result.violation.field


def test_document_is_kept_for_the_other_request_addons() -> None:
    body = {"model": "m", "input": "hi"}
    result = inspect("/v1/responses", body)
    assert result.document == body and result.api is Api.OPENAI_RESPONSES


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/responses", Api.OPENAI_RESPONSES),
        ("/v1/responses/input_tokens", Api.OPENAI_RESPONSES),
        ("/openai/v1/chat/completions", Api.OPENAI_CHAT),
        ("/openai/deployments/d/chat/completions?api-version=1", Api.OPENAI_CHAT),
        ("/v1/messages", Api.ANTHROPIC_MESSAGES),
        ("/v1/projects/p/locations/l/publishers/anthropic/models/c:streamRawPredict",
         Api.ANTHROPIC_MESSAGES),
        ("/v1beta/models/gemini-2.5-flash:generateContent", Api.GEMINI_GENERATE),
        ("/v1/containers", Api.OPENAI_CONTAINERS),
        ("/v1/models", Api.OTHER),
    ],
)  # fmt: skip
def test_api_by_path(path: str, api: Api) -> None:
    assert api_for(path, OPENAI) is api


@pytest.mark.parametrize(
    ("method", "path", "minted"),
    [
        ("POST", "/v1/realtime/client_secrets", "realtime/client_secrets"),
        ("POST", "/v1/realtime/sessions", "realtime/sessions"),
        ("POST", "/v1/realtime/transcription_sessions/", "realtime/transcription_sessions"),
        ("POST", "/v1alpha/auth_tokens", "auth_tokens"),
        ("GET", "/v1/realtime/sessions", None),
        ("POST", "/v1/realtime/calls", None),
    ],
)
def test_minting_endpoints(method: str, path: str, minted: str | None) -> None:
    assert minting_endpoint(method, path) == minted


def test_body_over_the_limit_is_not_inspectable() -> None:
    result = inspect_body(b"{}" + b" " * 100, api=Api.OPENAI_RESPONSES, rules=NONE, limit=50)
    assert result.violation is not None and result.violation.reason is AMBIG


def test_compressed_body_is_read_after_decoding() -> None:
    import gzip

    raw = gzip.compress(json.dumps({"tools": [mcp("https://evil.example/")]}).encode())
    result = inspect_body(
        raw, api=Api.OPENAI_RESPONSES, rules=NONE, limit=1 << 20, content_encoding=["gzip"]
    )
    assert result.violation is not None and result.violation.reason is FETCH


@pytest.mark.parametrize("coding", ["x-unknown", "compress", "gzip, gzip, gzip, gzip, gzip"])
def test_unknown_or_too_many_encodings_are_refused(coding: str) -> None:
    result = inspect_body(
        b"{}", api=Api.OPENAI_RESPONSES, rules=NONE, limit=1 << 20, content_encoding=[coding]
    )
    assert result.violation is not None and result.violation.reason is AMBIG


def test_gzip_bomb_is_stopped_at_the_limit() -> None:
    import gzip

    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]")
    result = inspect_body(
        bomb, api=Api.OPENAI_RESPONSES, rules=NONE, limit=1 << 20, content_encoding=["gzip"]
    )
    assert result.violation is not None and "more than" in result.violation.detail
