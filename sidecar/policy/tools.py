"""The `tools:` key of a provider: which tool calls a response may carry (issue 14).

Pure: the rules, their checks, and the reading of the YAML node (called by the loader).

```yaml
providers:
  openai:
    tools:
      allow: [get_weather, search_docs]    # names a call may have; absent: any declared
      deny_arguments:                      # argument rules, checked on every call
        - download_piped_to_shell
        - unlisted_package_index           # an install from an index not in package_indexes
        - url_outside_allowlist            # a URL whose host is not in url_hosts
        - {pattern: "(?i)\\brm\\s+-rf\\s+/"}
      package_indexes: [pypi.org, files.pythonhosted.org]
      url_hosts: [docs.python.org, "*.example.com"]
      tenants:                             # per virtual-key tenant: its own allow list
        team-a: {allow: [get_weather]}
```

A call whose name the request did not declare is `tool_call_injected` whatever the
policy says; these rules come on top.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

from yaml import MappingNode, Node, ScalarNode

from sidecar import yamlfile
from sidecar.decision import Reason

_TOOLS_KEYS = ("allow", "deny_arguments", "package_indexes", "url_hosts", "tenants")
_TENANT_KEYS = ("allow",)
_PATTERN_KEYS = ("pattern",)
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_HOST_PATTERN = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)

DEFAULT_PACKAGE_INDEXES = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "rubygems.org",
    "crates.io",
    "static.crates.io",
    "proxy.golang.org",
)

_DOWNLOAD = r"(?:curl|wget|fetch|iwr|irm|invoke-webrequest|invoke-restmethod)"
_SHELL = (
    r"(?:sudo\s+)?(?:ba|z|da|k|c|tc|fi)?sh|(?:sudo\s+)?(?:python[0-9.]*|perl|ruby|node)"
    r"|iex|invoke-expression"
)
DOWNLOAD_PIPED_TO_SHELL = re.compile(
    rf"(?i)\b{_DOWNLOAD}\b[^\n]*?\|\s*(?:{_SHELL})\b"
    rf"|\b(?:ba|z)?sh\s+(?:-c\s+)?[\"']?\$\(\s*{_DOWNLOAD}\b"
    rf"|\b(?:ba|z)?sh\s+<\(\s*{_DOWNLOAD}\b"
    rf"|\b(?:iex|invoke-expression)\b[^\n]*\b{_DOWNLOAD}\b"
)
_INSTALL = re.compile(
    r"(?i)\b(?:pip[0-9.]*|uv|poetry|npm|pnpm|yarn|npx|gem|cargo|go|bun)\b[^\n;&|]*?"
    r"\b(?:install|add|i|get|x|run)\b[^\n;&|]*"
)
_URL = re.compile(
    r"(?i)\b(?:[a-z][a-z0-9+.-]*://)(?:[^\s/@\"'<>]*@)?(\[[^\]\s]*\]|[^\s/:?#\"'<>\\]+)"
)

BUILTIN_RULES = ("download_piped_to_shell", "unlisted_package_index", "url_outside_allowlist")


@dataclasses.dataclass(frozen=True, slots=True)
class ArgumentRule:
    name: str  # a built-in rule name, or "pattern #N"
    pattern: re.Pattern[str] | None = None  # for {pattern: ...}


@dataclasses.dataclass(frozen=True, slots=True)
class ToolRules:
    allow: frozenset[str] | None = None  # None: any name the request declared
    deny: tuple[ArgumentRule, ...] = ()
    package_indexes: tuple[str, ...] = DEFAULT_PACKAGE_INDEXES
    url_hosts: tuple[str, ...] = ()

    def name_refused(self, name: str, *, partial: bool = False) -> bool:
        """Not in `allow`. `partial`: a name still being streamed, refused only once
        it can no longer become an allowed name."""
        if self.allow is None:
            return False
        if partial:
            return not any(allowed.startswith(name) for allowed in self.allow)
        return name not in self.allow

    def arguments_refused(self, arguments: str, truncated: bool) -> str | None:
        """The name of the first argument rule the arguments break, or None."""
        if not self.deny:
            return None
        if truncated:
            return "arguments too long to inspect"
        texts = [arguments, *_decoded_strings(arguments)]
        for rule in self.deny:
            if rule.pattern is not None:
                if any(rule.pattern.search(t) for t in texts):
                    return rule.name
            elif rule.name == "download_piped_to_shell":
                if any(DOWNLOAD_PIPED_TO_SHELL.search(t) for t in texts):
                    return rule.name
            elif rule.name == "unlisted_package_index":
                if any(_unlisted_index(t, self.package_indexes) for t in texts):
                    return rule.name
            elif rule.name == "url_outside_allowlist":
                if any(not _host_listed(h, self.url_hosts) for t in texts for h in _hosts(t)):
                    return rule.name
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class ToolPolicy:
    rules: ToolRules
    tenants: tuple[tuple[str, ToolRules], ...] = ()  # a tuple: policies stay hashable

    def for_tenant(self, tenant: str | None) -> ToolRules:
        for name, rules in self.tenants:
            if name == tenant:
                return rules
        return self.rules


@dataclasses.dataclass(frozen=True, slots=True)
class DeclaredTools:
    """What the request offered the model: tool names and MCP servers."""

    names: frozenset[str] = frozenset()
    mcp_servers: frozenset[str] = frozenset()
    any_mcp: bool = False  # an MCP tool whose server has no label we can match


def check_call(
    rules: ToolRules | None,
    declared: DeclaredTools,
    name: str,
    kind: str,
    server: str | None,
    *,
    partial: bool,
) -> tuple[Reason, str] | None:
    """(reason, safe detail) if a call with this (so far) name is refused."""
    if kind == "mcp":
        if not (declared.any_mcp or (server is not None and server in declared.mcp_servers)):
            return Reason.TOOL_CALL_INJECTED, "MCP call to a server the request did not declare"
    elif partial:
        if not any(n.startswith(name) for n in declared.names):
            return Reason.TOOL_CALL_INJECTED, "tool not declared by the request"
    elif name not in declared.names:
        return Reason.TOOL_CALL_INJECTED, "tool not declared by the request"
    if rules is not None and rules.name_refused(name, partial=partial):
        return Reason.TOOL_NOT_ALLOWED, "tool not in the provider's tools.allow"
    return None


def _decoded_strings(arguments: str) -> Iterator[str]:
    """Every string value of the arguments' JSON (escapes decoded), if it parses."""
    try:
        doc = json.loads(arguments)
    except (ValueError, RecursionError):
        return
    stack: list[Any] = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            stack.extend(value.values())
            stack.extend(k for k in value if isinstance(k, str))
        elif isinstance(value, list):
            stack.extend(value)


def _hosts(text: str) -> Iterator[str]:
    for match in _URL.finditer(text):
        yield match.group(1).lower().strip("[]").rstrip(".")


def _host_listed(host: str, listed: tuple[str, ...]) -> bool:
    for entry in listed:
        if entry.startswith("*.") and host.endswith(entry[1:]) and len(host) > len(entry) - 1:
            return True
        if host == entry:
            return True
    return False


def _unlisted_index(text: str, indexes: tuple[str, ...]) -> bool:
    return any(
        not _host_listed(host, indexes)
        for install in _INSTALL.finditer(text)
        for host in _hosts(install.group())
    )


# --- reading the YAML node (called by sidecar/policy/loader.py) --------------------------


def read_tools(reader: yamlfile.YamlChecker, node: Node, key: str) -> ToolPolicy | None:
    """`providers.NAME.tools`; problems go to the reader (file, line, key, how to fix)."""
    fields = reader.mapping(node, key, _TOOLS_KEYS)
    if fields is None:
        return None
    rules = _rules(reader, fields, key)
    tenants: dict[str, ToolRules] = {}
    if "tenants" in fields:
        entries = reader.mapping(fields["tenants"][1], f"{key}.tenants", None) or {}
        for tenant, (_, tnode) in entries.items():
            tkey = f"{key}.tenants.{tenant}"
            tfields = reader.mapping(tnode, tkey, _TENANT_KEYS)
            if tfields is not None and "allow" in tfields:
                allow = _names(reader, tfields["allow"][1], f"{tkey}.allow")
                tenants[tenant] = dataclasses.replace(rules, allow=allow)
    return ToolPolicy(rules, tuple(tenants.items()))


def _rules(
    reader: yamlfile.YamlChecker, fields: dict[str, tuple[ScalarNode, Node]], key: str
) -> ToolRules:
    allow = _names(reader, fields["allow"][1], f"{key}.allow") if "allow" in fields else None
    indexes: tuple[str, ...] = DEFAULT_PACKAGE_INDEXES
    if "package_indexes" in fields:
        indexes = _host_list(reader, fields["package_indexes"][1], f"{key}.package_indexes")
    url_hosts: tuple[str, ...] = ()
    if "url_hosts" in fields:
        url_hosts = _host_list(reader, fields["url_hosts"][1], f"{key}.url_hosts")
    deny: list[ArgumentRule] = []
    if "deny_arguments" in fields:
        dkey = f"{key}.deny_arguments"
        for index, item in enumerate(reader.seq(fields["deny_arguments"][1], dkey, "rule") or []):
            rule = _argument_rule(reader, item, f"{dkey}[{index}]", index)
            if rule is None:
                continue
            if rule.name == "url_outside_allowlist" and "url_hosts" not in fields:
                reader.err(
                    item, f"{dkey}[{index}]",
                    "url_outside_allowlist needs 'url_hosts: [host, ...]' next to it (the "
                    "hosts a tool argument may name)",
                )  # fmt: skip
            deny.append(rule)
    return ToolRules(allow, tuple(deny), indexes, url_hosts)


def _argument_rule(
    reader: yamlfile.YamlChecker, node: Node, key: str, index: int
) -> ArgumentRule | None:
    if isinstance(node, MappingNode):
        fields = reader.mapping(node, key, _PATTERN_KEYS)
        if not fields or "pattern" not in fields:
            if fields is not None:
                reader.err(node, key, "write {pattern: REGEX}")
            return None
        text = reader.string(fields["pattern"][1], f"{key}.pattern", "a regular expression")
        if text is None:
            return None
        try:
            return ArgumentRule(f"pattern #{index}", re.compile(text))
        except re.error as exc:
            reader.err(fields["pattern"][1], f"{key}.pattern", f"invalid regular expression: {exc}")
            return None
    name = reader.string(node, key, "a rule name or {pattern: REGEX}")
    if name is None:
        return None
    if name not in BUILTIN_RULES:
        reader.err(
            node, key,
            f"unknown rule {name!r}; built-in rules: {', '.join(BUILTIN_RULES)}, "
            "or write {pattern: REGEX}",
        )  # fmt: skip
        return None
    return ArgumentRule(name)


def _names(reader: yamlfile.YamlChecker, node: Node, key: str) -> frozenset[str]:
    names: set[str] = set()
    for item in reader.seq(node, key, "tool name") or []:
        text = reader.string(item, key, "a tool name")
        if text is None:
            continue
        if not _TOOL_NAME.match(text):
            reader.err(item, key, f"invalid tool name {text[:80]!r}: letters, digits, _ . : / -")
            continue
        names.add(text)
    return frozenset(names)


def _host_list(reader: yamlfile.YamlChecker, node: Node, key: str) -> tuple[str, ...]:
    hosts: list[str] = []
    for item in reader.seq(node, key, "host") or []:
        text = reader.string(item, key, "a host name")
        if text is None:
            continue
        if not _HOST_PATTERN.match(text.lower()):
            reader.err(
                item, key, f"invalid host {text[:80]!r}: a name, or *.name for its subdomains"
            )
            continue
        hosts.append(text.lower())
    return tuple(hosts)
