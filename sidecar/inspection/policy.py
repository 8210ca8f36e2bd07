"""What a provider may be asked to fetch, run and mint (issue 13): the policy, pure data.

The host allowlist bounds where the gateway's packets go; this bounds where the
*provider* goes on the gateway's behalf. Written per provider entry (and per tenant
of a virtual key) in the policy file; read by `sidecar/policy/relay.py`, applied by
`sidecar/inspection/check.py`. docs/policy-reference.md has the keys.
"""

from __future__ import annotations

import dataclasses

from sidecar.hostnames import wildcard_parents

MIB = 1024 * 1024
# Default `max_inspected_body`: the default request body limit (sidecar/limits.py), so
# that by default nothing the sidecar accepts goes to a provider uninspected.
DEFAULT_MAX_INSPECTED_BODY = 32 * MIB

# Schemes a `fetch:` entry may name. A bare host means https on its default port.
FETCH_SCHEMES = frozenset({"https", "http", "gs", "s3"})
DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclasses.dataclass(frozen=True, slots=True)
class FetchRule:
    """One `fetch:` entry: `host`, `*.suffix`, or `scheme://host[:port]`."""

    scheme: str  # one of FETCH_SCHEMES
    host: str  # canonical name, or "*.suffix"
    port: int | None  # None: the scheme's default port only (any for gs/s3)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{self.host}{port}"


@dataclasses.dataclass(frozen=True, slots=True)
class FetchList:
    """The `fetch:` entries, indexed like the egress allowlist: exact names in a set,
    wildcards by their suffix (never the apex itself)."""

    rules: tuple[FetchRule, ...] = ()

    def allows_url(self, scheme: str, host: str, port: int | None) -> bool:
        default = DEFAULT_PORTS.get(scheme)
        for rule in self._candidates(host):
            if rule.scheme != scheme:
                continue
            wanted = rule.port if rule.port is not None else default
            if wanted is None or port is None or port == wanted:
                return True
        return False

    def allows_domain(self, domain: str) -> bool:
        """A bare domain (a container's network allowlist, `*.x` included): listed by
        some entry, whatever its scheme. A wildcard domain needs a wildcard entry at or
        above it."""
        if domain.startswith("*."):
            suffix = domain[2:]
            wanted = {f"*.{suffix}"} | {f"*.{p}" for p in wildcard_parents(suffix)}
            return any(rule.host in wanted for rule in self.rules)
        return bool(self._candidates(domain))

    def _candidates(self, host: str) -> list[FetchRule]:
        wanted = {host} | {f"*.{p}" for p in wildcard_parents(host)}
        return [rule for rule in self.rules if rule.host in wanted]


@dataclasses.dataclass(frozen=True, slots=True)
class RelayRules:
    """The rules for one provider, or for one tenant of it."""

    fetch: FetchList = FetchList()
    server_tools: frozenset[str] = frozenset()
    credential_minting: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RelayPolicy:
    """A provider entry's request inspection settings. The defaults are the safe ones:
    nothing fetched, no network-using server tool, no minting."""

    rules: RelayRules = RelayRules()
    # (tenant, rules) pairs: a tuple, so that policies stay hashable and immutable.
    tenants: tuple[tuple[str, RelayRules], ...] = ()
    max_inspected_body: int = DEFAULT_MAX_INSPECTED_BODY

    def for_tenant(self, tenant: str | None) -> RelayRules:
        if tenant is None:
            return self.rules
        return next((rules for name, rules in self.tenants if name == tenant), self.rules)


DEFAULT_RELAY_POLICY = RelayPolicy()
