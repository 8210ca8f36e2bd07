"""Policy keys for the provider as a relay (issue 13), read from a provider entry.

    providers:
      openai:
        fetch: [mcp.example.com, "*.cdn.example.com", "http://intranet.example.com:8080"]
        server_tools: [web_search]
        credential_minting: false
        max_inspected_body: 32m
        tenants:
          team-a: {fetch: [mcp.team-a.example.com]}

The loader calls `read_relay` with the entry's fields; problems are reported as
`file:line: key: message` like every other key. docs/policy-reference.md is the
reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from yaml.nodes import Node, ScalarNode

from sidecar import yamlfile
from sidecar.inspection.policy import (
    DEFAULT_MAX_INSPECTED_BODY,
    FETCH_SCHEMES,
    FetchList,
    FetchRule,
    RelayPolicy,
    RelayRules,
)
from sidecar.policy.values import canonical_host

RELAY_KEYS = ("fetch", "server_tools", "credential_minting", "max_inspected_body", "tenants")
_TENANT_KEYS = ("fetch", "server_tools", "credential_minting")
_TOOL_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_DATED_TOOL = re.compile(r"^(web_search|web_fetch)_(preview_)?[0-9_]+$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

Fields = dict[str, tuple[ScalarNode, Node]]


def read_relay(
    reader: yamlfile.YamlChecker, fields: Fields, key: str, size: Callable[[Node, str], int | None]
) -> RelayPolicy:
    """The relay settings of one provider entry (defaults for absent keys). `size`
    reads a byte size the way the loader reads `max_request_body`."""
    rules = _rules(reader, fields, key, RelayRules())
    max_body = DEFAULT_MAX_INSPECTED_BODY
    if "max_inspected_body" in fields:
        node = fields["max_inspected_body"][1]
        max_body = size(node, f"{key}.max_inspected_body") or DEFAULT_MAX_INSPECTED_BODY
    tenants: dict[str, RelayRules] = {}
    if "tenants" in fields:
        mapping = reader.mapping(fields["tenants"][1], f"{key}.tenants", None) or {}
        for name, (knode, vnode) in mapping.items():
            tkey = f"{key}.tenants.{name}"
            if not _TENANT_NAME.match(name):
                reader.err(
                    knode,
                    tkey,
                    "invalid tenant name: use the tenant as the virtual keys file names it",
                )
                continue
            tfields = reader.mapping(vnode, tkey, _TENANT_KEYS)
            if tfields is not None:
                tenants[name] = _rules(reader, tfields, tkey, rules)
    return RelayPolicy(rules, tuple(tenants.items()), max_body)


def _rules(
    reader: yamlfile.YamlChecker, fields: Fields, key: str, inherited: RelayRules
) -> RelayRules:
    fetch = inherited.fetch
    if "fetch" in fields:
        fetch = _fetch(reader, fields["fetch"][1], f"{key}.fetch")
    tools = inherited.server_tools
    if "server_tools" in fields:
        tools = _server_tools(reader, fields["server_tools"][1], f"{key}.server_tools")
    minting = inherited.credential_minting
    if "credential_minting" in fields:
        node = fields["credential_minting"][1]
        if isinstance(node, ScalarNode) and node.tag == yamlfile.BOOL:
            minting = node.value.lower() == "true"
        else:
            reader.err(
                node,
                f"{key}.credential_minting",
                f"expected true or false, got {yamlfile.describe(node)}",
            )
    return RelayRules(fetch, tools, minting)


def _fetch(reader: yamlfile.YamlChecker, node: Node, key: str) -> FetchList:
    def parse(item: Node, item_key: str) -> FetchRule | None:
        text = reader.string(item, item_key, "a host or scheme://host")
        return None if text is None else _fetch_rule(reader, item, item_key, text)

    nodes = reader.seq(node, key, "URL or host", "URLs or hosts") or []
    found = reader.unique(nodes, key, False, parse, lambda _, item: repr(item.value))
    return FetchList(tuple(rule for rule, _, _ in found))


def _fetch_rule(reader: yamlfile.YamlChecker, node: Node, key: str, text: str) -> FetchRule | None:
    scheme, rest, port = "https", text, None
    if "://" in text:
        try:
            parts = urlsplit(text.replace("*.", "wildcard-label.", 1))
            port = parts.port
        except ValueError:
            reader.err(node, key, f"{text!r} is not a valid scheme://host[:port]")
            return None
        scheme = parts.scheme
        if scheme not in FETCH_SCHEMES:
            reader.err(
                node, key, f"scheme {scheme!r} is not one of {', '.join(sorted(FETCH_SCHEMES))}"
            )
            return None
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            reader.err(node, key, "write scheme://host[:port] only: no path, query or user")
            return None
        rest = (parts.hostname or "").replace("wildcard-label.", "*.", 1)
    elif "/" in text or ":" in text:
        reader.err(
            node,
            key,
            "write a host, '*.domain', or scheme://host[:port] (e.g. https://mcp.example.com)",
        )
        return None
    host, problem = canonical_host(rest)
    if problem is not None:
        reader.err(node, key, problem)
        return None
    return FetchRule(scheme, host, port)


def _server_tools(reader: yamlfile.YamlChecker, node: Node, key: str) -> frozenset[str]:
    names: set[str] = set()
    for index, item in enumerate(reader.seq(node, key, "tool name") or []):
        item_key = f"{key}[{index}]"
        name = reader.string(item, item_key, "a tool name")
        if name is None:
            continue
        dated = _DATED_TOOL.match(name)
        if dated:
            reader.err(
                item,
                item_key,
                f"write the tool's family name {dated.group(1)!r}: every dated version "
                "is one tool here",
            )
        elif not _TOOL_NAME.match(name):
            reader.err(
                item,
                item_key,
                "a tool name is lower-case letters, digits, '_', '.' or '-' (e.g. web_search)",
            )
        else:
            names.add(name)
    return frozenset(names)
