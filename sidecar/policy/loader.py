"""Strict policy loader: YAML files -> one `Policy`, or a `PolicyError` listing every problem.

The YAML is *composed* (not constructed) so that every value keeps its line, duplicate
keys are visible (PyYAML's constructor silently keeps the last one), and YAML 1.1
surprises (`0443` read as octal, `on` read as a boolean) are caught before they turn
into a policy. Each file is checked on its own, then the files are checked against
each other (same provider, same host, overlapping wildcards or CIDRs, shared secrets,
conflicting modes). All problems are collected and raised together. The reading layer
(composing, lines, duplicate and unknown keys) is `sidecar/yamlfile.py`, shared with the
alerts config and the virtual keys file.

Pure: no mitmproxy, no network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from yaml.nodes import Node, ScalarNode

from sidecar import yamlfile
from sidecar.hostnames import HostError, normalize_policy_host, wildcard_parents
from sidecar.netguard import METADATA_ADDRESSES
from sidecar.policy.errors import PolicyError, Problem
from sidecar.policy.model import (
    ANY_PATH,
    CredentialSpec,
    Endpoint,
    IPNetwork,
    Mode,
    PathRules,
    Policy,
    SourceRef,
)
from sidecar.policy.usage_limits import UsagePolicy, merge_usage_limits, read_usage_limits

__all__ = [
    "ALLOWED_METHODS",
    "DEFAULT_PROVIDER_METHODS",
    "DEFAULT_PROVIDER_PORTS",
    "FORBIDDEN_CREDENTIAL_HEADERS",
    "METADATA_NETWORKS",
    "POLICY_VERSION",
    "PolicyError",
    "Problem",
    "find_policy_files",
    "load_policy",
    "load_policy_bytes",
]

POLICY_VERSION = 1
ALLOWED_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_PROVIDER_PORTS = frozenset({443})
DEFAULT_PROVIDER_METHODS = frozenset({"GET", "POST"})

# Cloud metadata / credential endpoints (netguard's one list). A policy CIDR that
# touches any of these is an error: they hand out cloud credentials, and nothing in a
# gateway pod needs them. IPv6 forms a resolver or NAT may translate to them count too.


def _metadata_networks() -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for address in sorted(METADATA_ADDRESSES, key=lambda a: (a.version, int(a))):
        nets.append(ipaddress.ip_network(address))
        if isinstance(address, ipaddress.IPv4Address):
            n = int(address)
            nets.append(ipaddress.IPv6Network(f"::ffff:{address}/128"))  # IPv4-mapped
            nets.append(ipaddress.IPv6Network(f"::{address}/128"))  # IPv4-compatible
            nets.append(ipaddress.IPv6Network(f"64:ff9b::{address}/128"))  # NAT64
            nets.append(ipaddress.IPv6Network(((0x2002 << 112) | (n << 80), 48)))  # 6to4
    return tuple(nets)


METADATA_NETWORKS: tuple[IPNetwork, ...] = _metadata_networks()
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

# Headers a credential may never be written to: framing, routing, hop-by-hop, cookies.
FORBIDDEN_CREDENTIAL_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "cookie",
        "set-cookie",
        "forwarded",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "range",
    }
)

_TOP_KEYS = ("version", "mode", "providers", "allow", "usage_limits")
_PROVIDER_KEYS = (
    "hosts",
    "ports",
    "paths",
    "methods",
    "addresses",
    "credential",
    "max_request_body",
)
_ALLOW_KEYS = ("name", "host", "hosts", "cidr", "cidrs", "ports", "paths", "methods", "addresses")
_CREDENTIAL_KEYS = ("header", "format", "secret")

_PROVIDER_HINTS = {
    "host": "providers take a list: 'hosts: [api.example.com]'",
    "name": "a provider's name is its key under 'providers:'",
    "cidr": "providers are reached by name; IP destinations belong in an 'allow:' entry",
    "cidrs": "providers are reached by name; IP destinations belong in an 'allow:' entry",
}
_ALLOW_HINTS = {
    "credential": "'allow:' entries never get a credential; declare a provider under "
    "'providers:' to have a key added",
}

_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ALLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_HEADER_TOKEN = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_DECIMAL_PORT = re.compile(r"^[1-9][0-9]{0,4}$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=:@/*-]*$")
_HOST_WITH_PORT = re.compile(r"^[^:\[\]]+:[0-9]*$")

_STR, _INT, _BOOL, _NULL, _FLOAT = (
    yamlfile.STR, yamlfile.INT, yamlfile.BOOL, yamlfile.NULL, yamlfile.FLOAT,
)  # fmt: skip


# --- public API ------------------------------------------------------------------------


def load_policy(paths: Sequence[str | Path]) -> Policy:
    """Load and merge the policy files at `paths` (files or directories).

    A directory contributes its `*.yaml` / `*.yml` files in sorted order, not
    recursively, skipping names that start with "." (a Kubernetes ConfigMap mount's
    `..data` and `..2024_...` entries); visible symlinks are followed. Raises
    `PolicyError` listing every problem found.
    """
    files = find_policy_files(paths)
    sources: list[tuple[str, bytes]] = []
    problems: list[Problem] = []
    for path in files:
        try:
            sources.append((str(path), path.read_bytes()))
        except OSError as exc:
            problems.append(Problem(str(path), 0, "", f"cannot read file: {_os_reason(exc)}"))
    if problems:
        raise PolicyError(problems)
    return load_policy_bytes(sources)


def load_policy_bytes(sources: Sequence[tuple[str, bytes]]) -> Policy:
    """Load a policy from (file name, content) pairs, in that order."""
    if not sources:
        raise PolicyError([Problem("<policy>", 0, "", "no policy files given")])
    merger = _Merger()
    for name, data in sources:
        merger.add_file(name, data)
    return merger.finish()


def find_policy_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files `load_policy(paths)` reads, in load order (for reload watchers too)."""
    files: list[Path] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        found: list[Path] = []
        if path.is_dir():
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                problems.append(Problem(str(path), 0, "", f"cannot list: {_os_reason(exc)}"))
                continue
            for name in names:
                child = path / name
                if name.startswith(".") or not name.endswith((".yaml", ".yml")):
                    continue
                if child.is_file():
                    found.append(child)
        elif path.is_file():
            found.append(path)
        elif path.exists() or path.is_symlink():
            reason = "dangling symlink" if path.is_symlink() and not path.exists() else None
            problems.append(Problem(str(path), 0, "", reason or "not a regular file or directory"))
            continue
        else:
            problems.append(Problem(str(path), 0, "", "no such file or directory"))
            continue
        for file in found:
            key = os.path.realpath(file)
            if key in seen:
                problems.append(
                    Problem(str(file), 0, "", f"same file as {seen[key]}: each file is loaded once")
                )
                continue
            seen[key] = file
            files.append(file)
    if not problems and not files:
        shown = ", ".join(str(p) for p in paths) or "<nothing>"
        problems.append(Problem(shown, 0, "", "no *.yaml or *.yml policy files found"))
    if problems:
        raise PolicyError(problems)
    return files


# --- internals -------------------------------------------------------------------------


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# The reading layer (lines, duplicates, unknown keys) is shared: sidecar/yamlfile.py.
_line = yamlfile.line
_join = yamlfile.join
_describe = yamlfile.describe
_quote_hint = yamlfile.quote_hint


@dataclasses.dataclass(slots=True)
class _HostRef:
    entry: int  # index of the entry in load order
    rule: str
    file: str
    line: int
    key: str

    def where(self) -> str:
        return f"{self.file}:{self.line} ({self.key})"


@dataclasses.dataclass(slots=True)
class _Draft:
    """An entry as read, before the files are checked against each other."""

    rule: str
    provider: str | None
    source: SourceRef
    key: str
    hosts: list[tuple[str, int, str]]  # (host, line, key path)
    cidrs: list[tuple[IPNetwork, int, str]]
    name_line: int = 0
    secret: tuple[str, int, str] | None = None
    endpoint: Endpoint | None = None


class _FileReader(yamlfile.Reader):
    """Checks one composed YAML document; appends to `problems`, returns drafts."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        super().__init__(file, problems)
        self.drafts: list[_Draft] = []
        self.mode: tuple[Mode, int] | None = None
        self.usage: UsagePolicy | None = None  # issue 15

    # -- document

    def read(self, root: Node) -> None:
        top = self.mapping(root, "", _TOP_KEYS)
        if top is None:
            return
        if "version" not in top:
            self.err(
                1, "version", f"missing: every policy file starts with 'version: {POLICY_VERSION}'"
            )
        elif not self._version(top["version"][1]):
            return  # an unknown format: reading on would only produce noise
        if "mode" in top:
            self._mode(top["mode"][1])
        if "providers" in top:
            providers = self.mapping(top["providers"][1], "providers", None)
            for name, (knode, vnode) in (providers or {}).items():
                self._provider(name, knode, vnode)
        if "allow" in top:
            items = self.seq(top["allow"][1], "allow", "entry", "entries")
            for index, item in enumerate(items or []):
                self._allow(index, item)
        if "usage_limits" in top:
            knode, vnode = top["usage_limits"]
            self.usage = read_usage_limits(self, vnode, yamlfile.line(knode))

    def _version(self, node: Node) -> bool:
        if isinstance(node, ScalarNode) and node.tag == _INT and node.value == str(POLICY_VERSION):
            return True
        if isinstance(node, ScalarNode) and node.tag == _STR and node.value == str(POLICY_VERSION):
            self.err(node, "version", f"write version: {POLICY_VERSION} without quotes")
            return True
        self.err(
            node,
            "version",
            f"unsupported version {_describe(node)}: this sidecar reads version {POLICY_VERSION}",
        )
        return False

    def _mode(self, node: Node) -> None:
        choices = ", ".join(m.value for m in Mode)
        text = self.string(node, "mode", f"one of {choices}")
        if text is None:
            return
        try:
            self.mode = (Mode(text), _line(node))
        except ValueError:
            hint = f": write {text.lower()!r}" if text.lower() in {m.value for m in Mode} else ""
            self.err(node, "mode", f"unknown mode {text!r}; expected one of {choices}{hint}")

    # -- entries

    def _provider(self, name: str, knode: ScalarNode, node: Node) -> None:
        key = f"providers.{name}"
        errors_before = self._errors
        if knode.tag != _STR or not _PROVIDER_NAME.match(name):
            self.err(
                knode,
                key,
                "invalid provider name: use 1-63 lower-case letters, digits, '_' or '-', "
                "starting with a letter or digit",
            )
        fields = self.mapping(node, key, _PROVIDER_KEYS, _PROVIDER_HINTS)
        if fields is None:
            return
        draft = _Draft(
            rule=key,
            provider=name,
            source=SourceRef(self.file, _line(knode)),
            key=key,
            hosts=[],
            cidrs=[],
            name_line=_line(knode),
        )
        if "hosts" in fields:
            draft.hosts = self._hosts(fields["hosts"][1], f"{key}.hosts")
        else:
            self.err(knode, f"{key}.hosts", "missing: a provider needs 'hosts: [name, ...]'")
        common = self._common(fields, key, default_methods=DEFAULT_PROVIDER_METHODS)
        ports = DEFAULT_PROVIDER_PORTS
        if "ports" in fields:
            ports = self._ports(fields["ports"][1], f"{key}.ports")
        credential = None
        if "credential" in fields:
            credential = self._credential(fields["credential"][1], f"{key}.credential", draft)
            wildcards = [h for h, _, _ in draft.hosts if h.startswith("*.")]
            if wildcards:
                # S7: a key bound to "*.openai.azure.com" goes to resources anyone can
                # create; the key must only ever reach hosts the team owns.
                self.err(
                    fields["credential"][0],
                    f"{key}.credential",
                    f"a credential cannot be bound to wildcard host {wildcards[0]!r}: anyone "
                    "may own a name under it; list your exact hosts (e.g. "
                    "myresource.openai.azure.com) or drop the credential",
                )
        max_body = None
        if "max_request_body" in fields:
            max_body = self._size(fields["max_request_body"][1], f"{key}.max_request_body")
        self.drafts.append(draft)
        if self._errors == errors_before:
            paths, methods, addresses = common
            draft.endpoint = Endpoint(
                max_request_body=max_body,
                rule=key,
                provider=name,
                hosts=tuple(h for h, _, _ in draft.hosts),
                cidrs=(),
                ports=ports,
                paths=paths,
                methods=methods,
                addresses=addresses,
                tls_required=True,
                credential=credential,
                source=draft.source,
            )

    def _allow(self, index: int, node: Node) -> None:
        key = f"allow[{index}]"
        errors_before = self._errors
        fields = self.mapping(node, key, _ALLOW_KEYS, _ALLOW_HINTS)
        if fields is None:
            return
        rule = key
        if "name" in fields:
            nnode = fields["name"][1]
            name = self.string(nnode, f"{key}.name")
            if name is not None:
                if _ALLOW_NAME.match(name):
                    rule = f"allow.{name}"
                else:
                    self.err(
                        nnode,
                        f"{key}.name",
                        "invalid name: use lower-case letters, digits, '_', '.' or '-', "
                        "starting with a letter or digit",
                    )
        draft = _Draft(
            rule=rule,
            provider=None,
            source=SourceRef(self.file, _line(node)),
            key=key,
            hosts=[],
            cidrs=[],
            name_line=_line(fields["name"][0]) if "name" in fields else _line(node),
        )
        for single, plural in (("host", "hosts"), ("cidr", "cidrs")):
            if single in fields and plural in fields:
                self.err(
                    fields[plural][0],
                    f"{key}.{plural}",
                    f"use either {single!r} or {plural!r}, not both",
                )
        if "host" in fields:
            draft.hosts = self._host_list([fields["host"][1]], f"{key}.host", single=True)
        elif "hosts" in fields:
            draft.hosts = self._hosts(fields["hosts"][1], f"{key}.hosts")
        if "cidr" in fields:
            draft.cidrs = self._cidr_list([fields["cidr"][1]], f"{key}.cidr", single=True)
        elif "cidrs" in fields:
            nodes = self.seq(fields["cidrs"][1], f"{key}.cidrs", "CIDR")
            draft.cidrs = self._cidr_list(nodes or [], f"{key}.cidrs", single=False)
        has_hosts = "host" in fields or "hosts" in fields
        has_cidrs = "cidr" in fields or "cidrs" in fields
        if has_hosts and has_cidrs:
            knode = fields["cidr" if "cidr" in fields else "cidrs"][0]
            self.err(
                knode,
                _join(key, str(knode.value)),
                "an entry lists host names or CIDRs, not both: split it into two entries",
            )
        elif not has_hosts and not has_cidrs:
            self.err(node, key, "missing destination: add 'host', 'hosts', 'cidr' or 'cidrs'")
        if has_cidrs and not has_hosts and "addresses" in fields:
            self.err(
                fields["addresses"][0],
                f"{key}.addresses",
                "'addresses' applies to host names only; this entry lists CIDRs",
            )
        common = self._common(fields, key, default_methods=None)
        ports: frozenset[int] = frozenset()
        if "ports" in fields:
            ports = self._ports(fields["ports"][1], f"{key}.ports")
        else:
            self.err(node, f"{key}.ports", "missing: 'allow:' entries must list their ports")
        self.drafts.append(draft)
        if self._errors == errors_before:
            paths, methods, addresses = common
            draft.endpoint = Endpoint(
                rule=rule,
                provider=None,
                hosts=tuple(h for h, _, _ in draft.hosts),
                cidrs=tuple(c for c, _, _ in draft.cidrs),
                ports=ports,
                paths=paths,
                methods=methods,
                addresses=addresses,
                tls_required=False,
                credential=None,
                source=draft.source,
            )

    def _common(
        self,
        fields: dict[str, tuple[ScalarNode, Node]],
        key: str,
        default_methods: frozenset[str] | None,
    ) -> tuple[PathRules, frozenset[str] | None, tuple[IPNetwork, ...]]:
        paths = ANY_PATH
        if "paths" in fields:
            paths = self._paths(fields["paths"][1], f"{key}.paths")
        methods = default_methods
        if "methods" in fields:
            methods = self._methods(fields["methods"][1], f"{key}.methods")
        addresses: tuple[IPNetwork, ...] = ()
        if "addresses" in fields:
            nodes = self.seq(fields["addresses"][1], f"{key}.addresses", "CIDR")
            found = self._cidr_list(nodes or [], f"{key}.addresses", single=False)
            addresses = tuple(c for c, _, _ in found)
        return paths, methods, addresses

    # -- values

    def _hosts(self, node: Node, key: str) -> list[tuple[str, int, str]]:
        nodes = self.seq(node, key, "host")
        return self._host_list(nodes or [], key, single=False)

    def _host_list(self, nodes: list[Node], key: str, single: bool) -> list[tuple[str, int, str]]:
        out: list[tuple[str, int, str]] = []
        first: dict[str, str] = {}
        for index, item in enumerate(nodes):
            item_key = key if single else f"{key}[{index}]"
            host = self._host(item, item_key)
            if host is None:
                continue
            if host in first:
                self.err(item, item_key, f"{host!r} is listed twice (also {first[host]})")
                continue
            first[host] = item_key
            out.append((host, _line(item), item_key))
        return out

    def _host(self, node: Node, key: str) -> str | None:
        raw = self.string(node, key, "a host name")
        if raw is None:
            return None
        if "/" in raw:
            self.err(node, key, "write the host name only, not a URL; paths go under 'paths:'")
            return None
        if _HOST_WITH_PORT.match(raw):
            self.err(node, key, "write the port under 'ports:', not in the host name")
            return None
        try:
            host = normalize_policy_host(raw)
        except HostError as exc:
            self.err(node, key, str(exc))
            return None
        if host != raw:
            why = (
                " (international names are written in their xn-- form, so that reviewers "
                "see look-alike characters)"
                if not raw.isascii()
                else ""
            )
            self.err(node, key, f"write the host in its canonical form {host!r}{why}")
            return None
        return host

    def _ports(self, node: Node, key: str) -> frozenset[int]:
        out: dict[int, str] = {}
        for index, item in enumerate(self.seq(node, key, "port") or []):
            item_key = f"{key}[{index}]"
            port = self._port(item, item_key)
            if port is None:
                continue
            if port in out:
                self.err(item, item_key, f"port {port} is listed twice (also {out[port]})")
                continue
            out[port] = item_key
        return frozenset(out)

    def _size(self, node: Node, key: str) -> int | None:
        """A byte size (issue 10): 33554432, "32m", "512k", "1g" (binary units)."""
        from sidecar.limits import MAX_BODY_LIMIT, MIB, LimitError, parse_size

        text = str(node.value) if isinstance(node, ScalarNode) else ""
        if not isinstance(node, ScalarNode) or node.tag not in (_INT, _STR):
            self.err(node, key, 'expected a size in bytes, e.g. 33554432 or "32m"')
            return None
        try:
            size = parse_size(int(text) if node.tag == _INT and text.isdigit() else text)
        except LimitError as exc:
            self.err(node, key, f"{exc}; sizes are bytes or end in k, m or g (binary units)")
            return None
        if size > MAX_BODY_LIMIT:
            self.err(
                node, key, f"{text!r} is larger than the most accepted, {MAX_BODY_LIMIT // MIB}m"
            )
            return None
        return size

    def _port(self, node: Node, key: str) -> int | None:
        if isinstance(node, ScalarNode):
            text = str(node.value)
            if node.tag == _INT:
                if not _DECIMAL_PORT.match(text):
                    self.err(
                        node,
                        key,
                        f"write the port as a plain decimal number, not {text!r} "
                        "(YAML reads 0443 as octal and 0x1bb as hex)",
                    )
                    return None
                if int(text) > 65535:
                    self.err(node, key, f"port {text} is out of range 1..65535")
                    return None
                return int(text)
            if node.tag == _STR and text.isdigit():
                self.err(node, key, f"a port is a number: write {text} without quotes")
                return None
        self.err(node, key, f"expected a port number 1..65535, got {_describe(node)}")
        return None

    def _paths(self, node: Node, key: str) -> PathRules:
        exact: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        items: list[tuple[str, bool, Node, str]] = []
        for index, item in enumerate(self.seq(node, key, "path") or []):
            item_key = f"{key}[{index}]"
            parsed = self._path(item, item_key)
            if parsed is None:
                continue
            value, is_prefix = parsed
            table = prefixes if is_prefix else exact
            if value in table:
                self.err(item, item_key, f"path is listed twice (also {table[value]})")
                continue
            table[value] = item_key
            items.append((value, is_prefix, item, item_key))
        for value, is_prefix, item, item_key in items:
            for prefix, prefix_key in prefixes.items():
                if prefix_key != item_key and value.startswith(prefix):
                    shown = value + "*" if is_prefix else value
                    self.err(
                        item,
                        item_key,
                        f"{shown!r} is already covered by {prefix + '*'!r} ({prefix_key}); "
                        "remove one",
                    )
                    break
        return PathRules(exact=frozenset(exact), prefixes=frozenset(prefixes))

    def _path(self, node: Node, key: str) -> tuple[str, bool] | None:
        text = self.string(node, key, "a path")
        if text is None:
            return None
        problem = _path_problem(text)
        if problem:
            self.err(node, key, problem)
            return None
        if text.endswith("/*"):
            return text[:-1], True
        return text, False

    def _methods(self, node: Node, key: str) -> frozenset[str]:
        out: dict[str, str] = {}
        for index, item in enumerate(self.seq(node, key, "method") or []):
            item_key = f"{key}[{index}]"
            text = self.string(item, item_key, "an HTTP method")
            if text is None:
                continue
            if text not in ALLOWED_METHODS:
                upper = text.upper()
                if upper in ("CONNECT", "TRACE"):
                    message = f"{upper} is never allowed through the sidecar"
                elif upper in ALLOWED_METHODS:
                    message = f"methods are written in upper case: write {upper!r}"
                else:
                    message = f"unknown method {text!r}; allowed: {', '.join(ALLOWED_METHODS)}"
                self.err(item, item_key, message)
                continue
            if text in out:
                self.err(item, item_key, f"method {text} is listed twice (also {out[text]})")
                continue
            out[text] = item_key
        return frozenset(out)

    def _cidr_list(
        self, nodes: list[Node], key: str, single: bool
    ) -> list[tuple[IPNetwork, int, str]]:
        out: list[tuple[IPNetwork, int, str]] = []
        first: dict[IPNetwork, str] = {}
        for index, item in enumerate(nodes):
            item_key = key if single else f"{key}[{index}]"
            net = self._cidr(item, item_key)
            if net is None:
                continue
            if net in first:
                self.err(item, item_key, f"{net} is listed twice (also {first[net]})")
                continue
            first[net] = item_key
            out.append((net, _line(item), item_key))
        return out

    def _cidr(self, node: Node, key: str) -> IPNetwork | None:
        text = self.string(node, key, "a CIDR such as 10.1.2.0/24")
        if text is None:
            return None
        try:
            net: IPNetwork = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                self.err(node, key, f"not a valid CIDR: {exc}")
                return None
            self.err(node, key, f"host bits are set in {text!r}: did you mean {str(loose)!r}?")
            return None
        if str(net) != text and str(net.network_address) != text:
            self.err(node, key, f"write the CIDR in its canonical form {str(net)!r}")
            return None
        for meta in METADATA_NETWORKS:
            if meta.version == net.version and net.overlaps(meta):
                self.err(
                    node,
                    key,
                    f"{net} covers the cloud metadata address {_meta_text(meta)}: metadata "
                    "services hand out cloud credentials and can never be allowed; "
                    "narrow the range",
                )
                return None
        if isinstance(net, ipaddress.IPv6Network) and net.overlaps(_IPV4_MAPPED):
            self.err(node, key, "IPv4-mapped IPv6 ranges are not accepted: write the IPv4 CIDR")
            return None
        return net

    def _credential(self, node: Node, key: str, draft: _Draft) -> CredentialSpec | None:
        fields = self.mapping(node, key, _CREDENTIAL_KEYS)
        if fields is None:
            return None
        values: dict[str, str] = {}
        for name in _CREDENTIAL_KEYS:
            if name not in fields:
                self.err(
                    node, f"{key}.{name}", "missing: a credential needs header, format, secret"
                )
                continue
            vnode = fields[name][1]
            text = self.string(vnode, f"{key}.{name}")
            if text is None:
                continue
            checker = {
                "header": _header_problem,
                "format": _format_problem,
                "secret": _secret_problem,
            }[name]
            problem = checker(text)
            if problem:
                self.err(vnode, f"{key}.{name}", problem)
                continue
            values[name] = text
            if name == "secret":
                draft.secret = (text, _line(vnode), f"{key}.secret")
        if len(values) != len(_CREDENTIAL_KEYS):
            return None
        return CredentialSpec(
            header=values["header"], format=values["format"], secret=values["secret"]
        )


def _meta_text(net: IPNetwork) -> str:
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def _path_problem(text: str) -> str | None:
    if not text.startswith("/"):
        return "a path must start with '/'"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return "whitespace and control characters are not allowed in a path"
    if not text.isascii():
        return "non-ASCII characters are not allowed in a path"
    if "%" in text:
        return (
            "'%' is not allowed: a percent-encoded path can be read two ways; list the plain path"
        )
    if "?" in text:
        return "'?' is not allowed: query strings are not matched; list the path only"
    if "#" in text:
        return "'#' is not allowed: fragments are never sent; list the path only"
    if "*" in text and (not text.endswith("/*") or text.count("*") != 1):
        return "'*' is only allowed as a final '/*' (prefix match), e.g. '/v1/*'"
    if "//" in text:
        return "empty path segment '//' is not allowed"
    if ".." in text or "/./" in text or text.endswith("/."):
        return "'.' and '..' segments are not allowed"
    if "\\" in text:
        return "backslashes are not allowed in a path"
    if not _PATH_CHARS.match(text):
        bad = next(c for c in text if not _PATH_CHARS.match(c))
        return f"character {bad!r} is not allowed in a path"
    return None


def _header_problem(text: str) -> str | None:
    lower = text.lower()
    if not _HEADER_TOKEN.match(lower):
        return f"{text!r} is not a valid header name"
    if lower in FORBIDDEN_CREDENTIAL_HEADERS:
        return f"a credential can never be written to the {lower!r} header"
    if text != lower:
        return f"header names are written in lower case: write {lower!r}"
    return None


def _format_problem(text: str) -> str | None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return "CR, LF and other control characters are not allowed in a format"
    if not text.isascii():
        return "non-ASCII characters are not allowed in a header value format"
    count = text.count("{secret}")
    if count != 1:
        return f"the format must contain '{{secret}}' exactly once (found {count})"
    if "{" in text.replace("{secret}", "") or "}" in text.replace("{secret}", ""):
        return "the only braces allowed are those of '{secret}'"
    if text != text.strip():
        return "remove leading and trailing spaces from the format"
    return None


def _secret_problem(text: str) -> str | None:
    if not _SECRET_NAME.match(text):
        return (
            "invalid secret name: use lower-case letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return None


class _Merger:
    """Reads files in order, then checks them against each other."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.drafts: list[_Draft] = []
        self.files: list[str] = []
        self.digest = hashlib.sha256()
        self.modes: list[tuple[Mode, str, int]] = []
        self.usages: list[UsagePolicy] = []

    def add_file(self, file: str, data: bytes) -> None:
        self.files.append(file)
        # Length-framed so that moving bytes from one file to the next changes the digest.
        self.digest.update(len(data).to_bytes(8, "big"))
        self.digest.update(data)
        root = self._compose(file, data)
        if root is None:
            return
        reader = _FileReader(file, self.problems)
        reader.read(root)
        self.drafts.extend(reader.drafts)
        if reader.mode is not None:
            self.modes.append((reader.mode[0], file, reader.mode[1]))
        if reader.usage is not None:
            self.usages.append(reader.usage)

    def _compose(self, file: str, data: bytes) -> Node | None:
        empty = f"empty file: a policy file starts with 'version: {POLICY_VERSION}'"
        return yamlfile.compose(file, data, self.problems, empty=empty)

    def finish(self) -> Policy:
        self._check_modes()
        self._check_names()
        self._check_hosts()
        self._check_cidrs()
        self._check_secrets()
        providers = {d.provider for d in self.drafts if d.provider}
        usage = merge_usage_limits(self.usages, providers, self.problems)
        if self.problems:
            order = {f: i for i, f in enumerate(self.files)}
            self.problems.sort(key=lambda p: (order.get(p.file, -1), p.line))
            raise PolicyError(self.problems)
        mode = self.modes[0][0] if self.modes else Mode.ENFORCE
        endpoints = tuple(d.endpoint for d in self.drafts if d.endpoint is not None)
        return Policy(
            mode=mode,
            endpoints=endpoints,
            files=tuple(self.files),
            digest=self.digest.hexdigest(),
            usage=usage,
        )

    def _conflict(self, file: str, line: int, key: str, message: str) -> None:
        self.problems.append(Problem(file, line, key, message))

    def _check_modes(self) -> None:
        if not self.modes:
            return
        mode, file, line = self.modes[0]
        for other, other_file, other_line in self.modes[1:]:
            if other != mode:
                self._conflict(
                    other_file,
                    other_line,
                    "mode",
                    f"mode {other.value!r} conflicts with mode {mode.value!r} at {file}:{line}; "
                    "all files must agree (or leave 'mode' out)",
                )

    def _check_names(self) -> None:
        first: dict[str, _Draft] = {}
        for draft in self.drafts:
            if draft.rule.startswith("allow["):
                continue  # index-named entries cannot collide by name within a file
            if draft.rule in first:
                other = first[draft.rule]
                what = "provider" if draft.provider else "allow entry name"
                self._conflict(
                    draft.source.file,
                    draft.name_line,
                    draft.key if draft.provider else f"{draft.key}.name",
                    f"{what} {draft.rule.split('.', 1)[1]!r} is also defined at "
                    f"{other.source.file}:{other.name_line}; each name must be unique",
                )
                continue
            first[draft.rule] = draft

    def _check_hosts(self) -> None:
        owner: dict[str, _HostRef] = {}
        refs: list[tuple[str, _HostRef]] = []
        for index, draft in enumerate(self.drafts):
            for host, line, key in draft.hosts:
                ref = _HostRef(index, draft.rule, draft.source.file, line, key)
                if host in owner and owner[host].entry != index:
                    self._conflict(
                        ref.file,
                        ref.line,
                        ref.key,
                        f"host {host!r} is also listed by {owner[host].rule} at "
                        f"{owner[host].where()}; a host belongs to one entry: merge them",
                    )
                    continue
                owner.setdefault(host, ref)
                refs.append((host, ref))
        wildcards = {h[2:]: ref for h, ref in owner.items() if h.startswith("*.")}
        for host, ref in refs:
            base = host[2:] if host.startswith("*.") else host
            for parent in wildcard_parents(base):
                wild = wildcards.get(parent)
                if wild is not None and wild.entry != ref.entry:
                    self._conflict(
                        ref.file,
                        ref.line,
                        ref.key,
                        f"{host!r} is also covered by '*.{parent}' of {wild.rule} at "
                        f"{wild.where()}; a host belongs to one entry: narrow the wildcard "
                        "or merge the entries",
                    )
                    break

    def _check_cidrs(self) -> None:
        seen: list[tuple[IPNetwork, _HostRef]] = []
        for index, draft in enumerate(self.drafts):
            for net, line, key in draft.cidrs:
                ref = _HostRef(index, draft.rule, draft.source.file, line, key)
                for other, other_ref in seen:
                    if other_ref.entry == index or other.version != net.version:
                        continue
                    if net.overlaps(other):
                        how = "is also listed" if net == other else f"overlaps {other}"
                        self._conflict(
                            ref.file,
                            ref.line,
                            ref.key,
                            f"{net} {how} by {other_ref.rule} at {other_ref.where()}; "
                            "an address belongs to one entry: merge them",
                        )
                        break
                seen.append((net, ref))

    def _check_secrets(self) -> None:
        first: dict[str, _Draft] = {}
        for draft in self.drafts:
            if draft.secret is None:
                continue
            name, line, key = draft.secret
            if name in first:
                other = first[name]
                assert other.secret is not None
                self._conflict(
                    draft.source.file,
                    line,
                    key,
                    f"secret {name!r} is already bound to {other.rule} at "
                    f"{other.source.file}:{other.secret[1]}; a key is sent only to its own "
                    "provider's hosts, so each provider needs its own secret",
                )
                continue
            first[name] = draft
