"""The decision core: facts about one attempt in, one `Decision` out. Pure.

Lookups are hash lookups: exact names in one dict, wildcards keyed by their suffix
and found by walking the name's parents (one dict probe per label), CIDR entries
keyed by (version, prefix length, network bits), paths by exact path and by each
of the path's directory prefixes.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from urllib.parse import unquote

from sidecar.decision import (
    ALWAYS_ENFORCED,
    RULE_DEFAULT_DENY,
    RULE_HOST_AGREEMENT,
    RULE_NETGUARD,
    Decision,
    Reason,
    Verdict,
)
from sidecar.hostnames import Host, HostError, IPAddress, parse_host, wildcard_parents
from sidecar.netguard import AddressClass, classify_address
from sidecar.policy.model import Endpoint, IPNetwork, Mode, Policy


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """What the adapter observed. `method`/`path` are None for a CONNECT or a TLS hello."""

    host: str  # destination host as the client named it (CONNECT authority, URL, SNI)
    port: int
    mode: str  # explicit | reverse | transparent
    client: str | None = None
    scheme: str | None = None  # "https" | "http"; None when not yet known (CONNECT)
    method: str | None = None
    path: str | None = None  # may include "?query"; only the path part is ever logged
    sni: str | None = None
    host_header: str | None = None  # Host / :authority, host part only
    authority: str | None = None  # absolute-form request-target authority, host part only
    tenant: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Vetting:
    """Outcome of S3 on a resolved name: the address to dial, or why none may be dialled."""

    address: IPAddress | None
    reason: Reason
    detail: str


_BAD_PATH_ESCAPES = re.compile(r"%(2f|5c|00|25)", re.IGNORECASE)
# A "%" not starting an escape: "%zz", "%u002e", or nibble-wise double encoding
# ("%%32%65" and "%2%65" decode to "%2e", which a second decoding turns into ".").
_STRAY_PERCENT = re.compile(r"%(?![0-9a-f]{2})", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x20\x7f\\]")


class PolicyEngine:
    def __init__(self, policy: Policy, own_addresses: Iterable[IPAddress] = ()) -> None:
        self.policy = policy
        self.own_addresses = frozenset(own_addresses)
        self._exact: dict[str, Endpoint] = {}
        self._wildcard: dict[str, Endpoint] = {}
        self._cidr: dict[tuple[int, int, int], Endpoint] = {}
        self._cidr_lengths: set[tuple[int, int]] = set()
        self._by_rule: dict[str, Endpoint] = {}
        for endpoint in policy.endpoints:
            self._by_rule[endpoint.rule] = endpoint
            for host in endpoint.hosts:
                if host.startswith("*."):
                    self._wildcard[host[2:]] = endpoint
                else:
                    self._exact[host] = endpoint
            for network in endpoint.cidrs:
                key = (network.version, network.prefixlen, int(network.network_address))
                self._cidr[key] = endpoint
                self._cidr_lengths.add((network.version, network.prefixlen))
        # Longest prefixes first, so the most specific CIDR entry decides.
        self._cidr_order = sorted(self._cidr_lengths, key=lambda vl: -vl[1])

    # --- lookups --------------------------------------------------------------------

    def endpoint(self, rule: str) -> Endpoint | None:
        return self._by_rule.get(rule)

    def match_name(self, name: str) -> Endpoint | None:
        """Exact name first, then the most specific `*.suffix` (never the apex itself)."""
        found = self._exact.get(name)
        if found is not None:
            return found
        for parent in wildcard_parents(name):
            found = self._wildcard.get(parent)
            if found is not None:
                return found
        return None

    def match_address(self, address: IPAddress) -> Endpoint | None:
        bits = 32 if address.version == 4 else 128
        value = int(address)
        for version, length in self._cidr_order:
            if version != address.version:
                continue
            key = (version, length, value >> (bits - length) << (bits - length))
            found = self._cidr.get(key)
            if found is not None:
                return found
        return None

    # --- decisions ------------------------------------------------------------------

    def decide(self, attempt: Attempt) -> Decision:
        """Destination, agreement (S5), port, scheme, method and path, in that order."""
        try:
            host = parse_host(attempt.host)
        except HostError as exc:
            return self._decide_against(attempt, Reason.INVALID_HOST, RULE_NETGUARD, str(exc))

        mismatch = self._host_disagreement(host, attempt)
        if mismatch:
            return self._decide_against(
                attempt, Reason.HOST_MISMATCH, RULE_HOST_AGREEMENT, mismatch, host=host
            )

        if host.address is not None:
            return self._decide_literal(host.address, attempt)

        assert host.name is not None
        endpoint = self.match_name(host.name)
        if endpoint is None:
            return self._decide_against(
                attempt, Reason.HOST_NOT_ALLOWED, RULE_DEFAULT_DENY, "no policy entry", host=host
            )
        return self._decide_on_endpoint(endpoint, attempt, host)

    def _decide_literal(self, address: IPAddress, attempt: Attempt) -> Decision:
        host = Host(address=address)
        cls = classify_address(address, self.own_addresses)
        if cls is AddressClass.METADATA:
            return self._decide_against(
                attempt, Reason.METADATA_ADDRESS, RULE_NETGUARD, "cloud metadata", host=host
            )
        endpoint = self.match_address(address)
        if endpoint is None:
            reason = Reason.IP_LITERAL if cls is AddressClass.PUBLIC else Reason.PRIVATE_ADDRESS
            return self._decide_against(
                attempt, reason, RULE_NETGUARD, f"{cls.value} literal", host=host
            )
        return self._decide_on_endpoint(endpoint, attempt, host)

    def _decide_on_endpoint(self, endpoint: Endpoint, attempt: Attempt, host: Host) -> Decision:
        def refuse(reason: Reason, detail: str) -> Decision:
            return self._decide_against(
                attempt, reason, endpoint.rule, detail, host=host, endpoint=endpoint
            )

        if attempt.port not in endpoint.ports:
            return refuse(Reason.PORT_NOT_ALLOWED, f"port {attempt.port} not listed")
        if attempt.scheme == "http" and endpoint.tls_required:
            return refuse(Reason.TLS_REQUIRED, "provider traffic must use TLS upstream")
        if attempt.method is not None:
            if endpoint.methods is not None and attempt.method not in endpoint.methods:
                return refuse(Reason.METHOD_NOT_ALLOWED, f"method {attempt.method} not listed")
        if attempt.path is not None:
            path, problem = normalize_request_path(attempt.path)
            if problem:
                return refuse(Reason.INVALID_PATH, problem)
            if not path_allowed(endpoint, path):
                return refuse(Reason.PATH_NOT_ALLOWED, "path not listed")
        return self._decision(
            attempt, Verdict.ALLOW, Reason.ALLOWED, endpoint.rule, "", host=host, endpoint=endpoint
        )

    def _host_disagreement(self, host: Host, attempt: Attempt) -> str:
        """S5: CONNECT authority, SNI and Host must name the same host."""
        claims = (
            ("sni", attempt.sni),
            ("host header", attempt.host_header),
            ("request authority", attempt.authority),
        )
        for label, other in claims:
            if not other or other == attempt.host:
                continue
            try:
                parsed = parse_host(other)
            except HostError:
                return f"unparseable {label}"
            if parsed != host:
                return f"{label} names another host"
        return ""

    # --- S3: resolve-vet-pin --------------------------------------------------------

    def vet_answers(self, answers: Sequence[IPAddress], endpoint: Endpoint | None) -> Vetting:
        """Vet every answer for a name; refuse all if any is refused (rebinding mixes)."""
        if not answers:
            return Vetting(None, Reason.DNS_FAILURE, "no addresses")
        for address in answers:
            cls = classify_address(address, self.own_addresses)
            if cls is AddressClass.PUBLIC:
                continue
            if cls is AddressClass.METADATA:
                return Vetting(None, Reason.METADATA_ADDRESS, f"resolved to {cls.value}")
            if endpoint is not None and _within(address, endpoint.addresses):
                continue
            return Vetting(None, Reason.PRIVATE_ADDRESS, f"resolved to {cls.value} address")
        return Vetting(answers[0], Reason.ALLOWED, "")

    # --- helpers --------------------------------------------------------------------

    def _decide_against(
        self,
        attempt: Attempt,
        reason: Reason,
        rule: str,
        detail: str,
        *,
        host: Host | None = None,
        endpoint: Endpoint | None = None,
    ) -> Decision:
        verdict = self.verdict_for(reason)
        return self._decision(attempt, verdict, reason, rule, detail, host=host, endpoint=endpoint)

    def verdict_for(self, reason: Reason) -> Verdict:
        """The verdict a refusal for `reason` gets: block, or would_block in audit mode
        (S11) unless the reason is ALWAYS_ENFORCED."""
        audit = self.policy.mode is Mode.AUDIT and reason not in ALWAYS_ENFORCED
        return Verdict.WOULD_BLOCK if audit else Verdict.BLOCK

    def overrule(self, decision: Decision, reason: Reason, detail: str) -> Decision:
        """A later check (S3 after DNS, the credential layer, a body inspector) overrules
        an earlier decision: `verdict_for(reason)`, keeping what the decision knew."""
        if decision.verdict is Verdict.WOULD_BLOCK:
            # Keep what audit mode let pass in the one line this attempt gets.
            detail = f"{detail}; audit: would_block {decision.reason.value}"
        return decision.with_context(
            verdict=self.verdict_for(reason),
            reason=reason,
            rule=RULE_NETGUARD if reason in ALWAYS_ENFORCED else decision.rule,
            detail=detail,
        )

    def _decision(
        self,
        attempt: Attempt,
        verdict: Verdict,
        reason: Reason,
        rule: str,
        detail: str,
        *,
        host: Host | None,
        endpoint: Endpoint | None = None,
    ) -> Decision:
        return Decision(
            verdict=verdict,
            reason=reason,
            rule=rule,
            host=host.text if host is not None else _printable(attempt.host),
            port=attempt.port,
            provider=endpoint.provider if endpoint is not None else None,
            method=attempt.method,
            path=_path_only(attempt.path),
            client=attempt.client,
            mode=attempt.mode,
            tenant=attempt.tenant,
            detail=detail,
            source=str(endpoint.source) if endpoint is not None else None,
        )


@functools.lru_cache(maxsize=8192)  # pure; gateways repeat a handful of paths
def normalize_request_path(raw: str) -> tuple[str, str]:
    """Percent-decode the path part the way servers route on it; refuse ambiguous forms.

    Returns (path, problem). Encoded slashes, backslashes, NULs, double encoding,
    dot segments and empty segments are refused rather than guessed at: an upstream
    that normalizes them differently would route to a path the policy never saw.
    """
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return path, "path must start with '/'"
    if _BAD_PATH_ESCAPES.search(path):
        return path, "encoded '/', '\\', '%' or NUL in path"
    if _STRAY_PERCENT.search(path):
        return path, "'%' that is not a valid escape in path"
    try:
        decoded = unquote(path, errors="strict") if "%" in path else path
    except UnicodeDecodeError:
        return path, "percent-encoding that is not UTF-8"
    if _CONTROL.search(decoded):
        return decoded, "control character, space or backslash in path"
    segments = decoded.split("/")[1:]
    if any(s in (".", "..") for s in segments) or "" in segments[:-1]:
        return decoded, "dot or empty segment in path"
    return decoded, ""


def path_allowed(endpoint: Endpoint, path: str) -> bool:
    rules = endpoint.paths
    if rules.allows_any or path in rules.exact:
        return True
    # Each directory prefix of the path, e.g. "/v1/", "/v1/chat/" for /v1/chat/completions.
    index = path.find("/", 1)
    while index != -1:
        if path[: index + 1] in rules.prefixes:
            return True
        index = path.find("/", index + 1)
    return False


def _within(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


@functools.lru_cache(maxsize=8192)
def _path_only(path: str | None) -> str | None:
    if path is None:
        return None
    return _printable(path.split("?", 1)[0][:256])


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    """Attacker-chosen text made safe for one log line: ASCII, no control characters."""
    escaped = text[:256].encode("ascii", "backslashreplace").decode()
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", escaped)


def parse_address(text: str) -> IPAddress:
    return ipaddress.ip_address(text)
