"""The relay keys of a provider entry (issue 13): read into rules, and every mistake
reported as file:line: key: message."""

from __future__ import annotations

import pytest

from sidecar.inspection.policy import DEFAULT_MAX_INSPECTED_BODY, DEFAULT_RELAY_POLICY
from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import load_policy_bytes

HEAD = "version: 1\nproviders:\n  openai:\n    hosts: [api.openai.com]\n"


def load(extra: str):
    return load_policy_bytes([("p.yaml", (HEAD + extra).encode())]).endpoints[0].relay


def problems(extra: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(extra)
    return str(caught.value).splitlines()


def test_defaults_refuse_everything() -> None:
    relay = load("")
    assert relay == DEFAULT_RELAY_POLICY
    assert relay.rules.fetch.rules == () and relay.rules.server_tools == frozenset()
    assert not relay.rules.credential_minting
    assert relay.max_inspected_body == DEFAULT_MAX_INSPECTED_BODY


def test_keys_are_read() -> None:
    relay = load(
        '    fetch: [mcp.example.com, "*.cdn.example.com", "http://intra.example.com:8080",'
        ' "gs://bucket-a"]\n'
        "    server_tools: [web_search, url_context]\n"
        "    credential_minting: true\n"
        "    max_inspected_body: 1m\n"
        "    tenants:\n"
        "      team-a: {fetch: [a.example.com], credential_minting: false}\n"
    )
    fetch = relay.rules.fetch
    assert fetch.allows_url("https", "mcp.example.com", None)
    assert fetch.allows_url("https", "mcp.example.com", 443)
    assert not fetch.allows_url("http", "mcp.example.com", None)
    assert not fetch.allows_url("https", "mcp.example.com", 8443)
    assert fetch.allows_url("https", "x.cdn.example.com", None)
    assert not fetch.allows_url("https", "cdn.example.com", None)
    assert fetch.allows_url("http", "intra.example.com", 8080)
    assert fetch.allows_url("gs", "bucket-a", None)
    assert fetch.allows_domain("x.cdn.example.com") and fetch.allows_domain("*.cdn.example.com")
    assert not fetch.allows_domain("*.example.com")
    assert relay.rules.server_tools == {"web_search", "url_context"}
    assert relay.rules.credential_minting and relay.max_inspected_body == 1 << 20
    team = relay.for_tenant("team-a")
    assert team.fetch.allows_url("https", "a.example.com", None)
    assert not team.fetch.allows_url("https", "mcp.example.com", None)  # replaced
    assert team.server_tools == relay.rules.server_tools  # inherited
    assert not team.credential_minting
    assert relay.for_tenant("someone-else") == relay.rules


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('    fetch: ["https://mcp.example.com/path?q=1"]\n',
         "p.yaml:5: providers.openai.fetch[0]: write scheme://host[:port] only"),
        ('    fetch: ["ftp://mcp.example.com"]\n',
         "p.yaml:5: providers.openai.fetch[0]: scheme 'ftp' is not one of"),
        ('    fetch: ["*"]\n', "p.yaml:5: providers.openai.fetch[0]: unsupported wildcard"),
        ("    fetch: [mcp.example.com:8443]\n",
         "p.yaml:5: providers.openai.fetch[0]: write a host"),
        ("    fetch: [MCP.example.com]\n",
         "p.yaml:5: providers.openai.fetch[0]: write the host in"),
        ("    fetch: [a.example.com, a.example.com]\n",
         "p.yaml:5: providers.openai.fetch[1]: 'a.example.com' is listed twice"),
        ("    fetch: []\n", "p.yaml:5: providers.openai.fetch: empty list"),
        ("    server_tools: [web_search_20250305]\n",
         "p.yaml:5: providers.openai.server_tools[0]: write the tool's family name 'web_search'"),
        ("    server_tools: [WebSearch]\n",
         "p.yaml:5: providers.openai.server_tools[0]: a tool name"),
        ("    credential_minting: yes please\n",
         "p.yaml:5: providers.openai.credential_minting: expected true or false"),
        ("    max_inspected_body: 12q\n", "p.yaml:5: providers.openai.max_inspected_body:"),
        ("    tenants:\n      team-a: {tools: [x]}\n",
         "p.yaml:6: providers.openai.tenants.team-a.tools: unknown key 'tools'"),
        ("    fetchh: [a.example.com]\n",
         "p.yaml:5: providers.openai.fetchh: unknown key 'fetchh': did you mean 'fetch'?"),
    ],
)  # fmt: skip
def test_mistakes_name_file_line_and_key(extra: str, expected: str) -> None:
    found = problems(extra)
    assert any(line.startswith(expected) for line in found), found
