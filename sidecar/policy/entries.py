"""Reading one policy file: a composed YAML document -> entry drafts, with every problem.

The YAML is *composed* (not constructed) so that every value keeps its line, duplicate
keys are visible (PyYAML's constructor silently keeps the last one), and YAML 1.1
surprises (`0443` read as octal, `on` read as a boolean) are caught before they turn
into a policy. The composing layer (lines, duplicates, unknown keys) is
`sidecar/yamlfile.py`; single values are checked by `sidecar/policy/values.py`; the
files are checked against each other by `sidecar/policy/merge.py`.

Pure: no mitmproxy, no network.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from yaml.nodes import Node, ScalarNode

from sidecar import yamlfile
from sidecar.netguard import METADATA_NETWORKS, metadata_text
from sidecar.policy import overrides
from sidecar.policy.cloud_credentials import is_typed, read_cloud_credential
from sidecar.policy.dlp import DlpRules, read_dlp
from sidecar.policy.errors import Problem
from sidecar.policy.model import (
    ANY_PATH,
    CredentialSpec,
    Endpoint,
    IPNetwork,
    Mode,
    PathRules,
    SourceRef,
)
from sidecar.policy.relay import RELAY_KEYS, read_relay
from sidecar.policy.tools import read_tools
from sidecar.policy.usage_limits import UsagePolicy, read_usage_limits
from sidecar.policy.values import (
    ALLOWED_METHODS,
    canonical_host,
    format_problem,
    header_problem,
    path_problem,
    secret_problem,
)

POLICY_VERSION = 1
DEFAULT_PROVIDER_PORTS = frozenset({443})
DEFAULT_PROVIDER_METHODS = frozenset({"GET", "POST"})
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

_TOP_KEYS = ("version", "mode", "providers", "allow", "overrides", "usage_limits", "dlp")
_PROVIDER_KEYS = (
    "hosts",
    "ports",
    "paths",
    "methods",
    "addresses",
    "credential",
    "max_request_body",
    *RELAY_KEYS,  # issue 13: sidecar/policy/relay.py
    "tools",  # issue 14: sidecar/policy/tools.py
    "dlp",
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
_DECIMAL_PORT = re.compile(r"^[1-9][0-9]{0,4}$")
_HOST_WITH_PORT = re.compile(r"^[^:\[\]]+:[0-9]*$")

_STR, _INT, _BOOL, _NULL, _FLOAT = (
    yamlfile.STR, yamlfile.INT, yamlfile.BOOL, yamlfile.NULL, yamlfile.FLOAT,
)  # fmt: skip

_line = yamlfile.line
_join = yamlfile.join
_describe = yamlfile.describe
_quote_hint = yamlfile.quote_hint


@dataclasses.dataclass(slots=True)
class EntryDraft:
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


class FileReader(yamlfile.YamlChecker):
    """Checks one composed YAML document; appends to `problems`, returns drafts."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        super().__init__(file, problems)
        self.drafts: list[EntryDraft] = []
        self.mode: tuple[Mode, int] | None = None
        self.overrides: overrides.FileOverrides | None = None
        self.usage: UsagePolicy | None = None  # issue 15
        self.dlp: DlpRules | None = None

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
        if "dlp" in top:
            self.dlp = read_dlp(self, top["dlp"][1], "dlp")
        if "providers" in top:
            providers = self.mapping(top["providers"][1], "providers", None)
            for name, (knode, vnode) in (providers or {}).items():
                self._provider(name, knode, vnode)
        if "allow" in top:
            items = self.seq(top["allow"][1], "allow", "entry", "entries")
            for index, item in enumerate(items or []):
                self._allow(index, item)
        if "overrides" in top:
            self.overrides = overrides.read(self, top["overrides"][1])
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
        draft = EntryDraft(
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
        credential = cloud = None
        if "credential" in fields and is_typed(fields["credential"][1]):
            cloud, ref = read_cloud_credential(
                self, fields["credential"][1], f"{key}.credential", [h for h, _, _ in draft.hosts]
            )
            draft.secret = ref and (ref[0], ref[1], f"{key}.credential.secret")
        elif "credential" in fields:
            credential = self._credential(fields["credential"][1], f"{key}.credential", draft)
        if "credential" in fields:
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
        relay = read_relay(self, fields, key, self._size)
        tools = read_tools(self, fields["tools"][1], f"{key}.tools") if "tools" in fields else None
        dlp = read_dlp(self, fields["dlp"][1], f"{key}.dlp") if "dlp" in fields else None
        self.drafts.append(draft)
        if self._errors == errors_before:
            paths, methods, addresses = common
            draft.endpoint = Endpoint(
                relay=relay,
                tools=tools,
                max_request_body=max_body,
                dlp=dlp,
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
                cloud_credential=cloud,
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
        draft = EntryDraft(
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
        return self.unique(nodes, key, single, self._host, lambda host, _: repr(host))

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
        host, problem = canonical_host(raw)
        if problem is not None:
            why = (
                " (international names are written in their xn-- form, so that reviewers "
                "see look-alike characters)"
                if host != raw and not raw.isascii()
                else ""
            )
            self.err(node, key, problem + why)
            return None
        return host

    def _ports(self, node: Node, key: str) -> frozenset[int]:
        nodes = self.seq(node, key, "port") or []
        found = self.unique(nodes, key, False, self._port, lambda port, _: f"port {port}")
        return frozenset(port for port, _, _ in found)

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
        nodes = self.seq(node, key, "path") or []
        found = self.unique(nodes, key, False, self._path, lambda _path, _: "path")
        prefixes = {value: item_key for (value, is_prefix), _, item_key in found if is_prefix}
        for (value, is_prefix), line, item_key in found:
            for prefix, prefix_key in prefixes.items():
                if prefix_key != item_key and value.startswith(prefix):
                    shown = value + "*" if is_prefix else value
                    self.err(
                        line,
                        item_key,
                        f"{shown!r} is already covered by {prefix + '*'!r} ({prefix_key}); "
                        "remove one",
                    )
                    break
        return PathRules(
            exact=frozenset(value for (value, is_prefix), _, _ in found if not is_prefix),
            prefixes=frozenset(prefixes),
        )

    def _path(self, node: Node, key: str) -> tuple[str, bool] | None:
        text = self.string(node, key, "a path")
        if text is None:
            return None
        problem = path_problem(text)
        if problem:
            self.err(node, key, problem)
            return None
        if text.endswith("/*"):
            return text[:-1], True
        return text, False

    def _methods(self, node: Node, key: str) -> frozenset[str]:
        nodes = self.seq(node, key, "method") or []
        found = self.unique(nodes, key, False, self._method, lambda method, _: f"method {method}")
        return frozenset(method for method, _, _ in found)

    def _method(self, node: Node, key: str) -> str | None:
        text = self.string(node, key, "an HTTP method")
        if text is None or text in ALLOWED_METHODS:
            return text
        upper = text.upper()
        if upper in ("CONNECT", "TRACE"):
            message = f"{upper} is never allowed through the sidecar"
        elif upper in ALLOWED_METHODS:
            message = f"methods are written in upper case: write {upper!r}"
        else:
            message = f"unknown method {text!r}; allowed: {', '.join(ALLOWED_METHODS)}"
        self.err(node, key, message)
        return None

    def _cidr_list(
        self, nodes: list[Node], key: str, single: bool
    ) -> list[tuple[IPNetwork, int, str]]:
        return self.unique(nodes, key, single, self._cidr, lambda cidr, _: str(cidr))

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
                    f"{net} covers the cloud metadata address {metadata_text(meta)}: metadata "
                    "services hand out cloud credentials and can never be allowed; "
                    "narrow the range",
                )
                return None
        if isinstance(net, ipaddress.IPv6Network) and net.overlaps(_IPV4_MAPPED):
            self.err(node, key, "IPv4-mapped IPv6 ranges are not accepted: write the IPv4 CIDR")
            return None
        return net

    def _credential(self, node: Node, key: str, draft: EntryDraft) -> CredentialSpec | None:
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
                "header": header_problem,
                "format": format_problem,
                "secret": secret_problem,
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
