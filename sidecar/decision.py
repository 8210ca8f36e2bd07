"""The one object every sink consumes: what was decided about one attempt, and why.

The decision log line, the Prometheus counters and the alerts are all derived from a
`Decision`, so they cannot disagree. Nothing in here may ever hold a credential, a
header value or a body: a `Decision` is safe to log, count and send to a pager.
"""

from __future__ import annotations

import dataclasses
import time
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    WOULD_BLOCK = "would_block"  # audit mode: refused by policy, let through


class Reason(StrEnum):
    """Stable, machine-readable reason codes. They are a public contract (README)."""

    ALLOWED = "allowed"
    HOST_NOT_ALLOWED = "host_not_allowed"
    PORT_NOT_ALLOWED = "port_not_allowed"
    PATH_NOT_ALLOWED = "path_not_allowed"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TLS_REQUIRED = "tls_required"
    INVALID_HOST = "invalid_host"
    INVALID_PATH = "invalid_path"
    IP_LITERAL = "ip_literal"
    PRIVATE_ADDRESS = "private_address"
    METADATA_ADDRESS = "metadata_address"
    HOST_MISMATCH = "host_mismatch"
    DNS_FAILURE = "dns_failure"
    UPSTREAM_TLS_FAILURE = "upstream_tls_failure"
    PROTOCOL_NOT_ALLOWED = "protocol_not_allowed"
    # Credential reasons (S7): owned by the credential layer, listed here so the
    # whole vocabulary lives in one place.
    GATEWAY_HOLDS_CREDENTIAL = "gateway_holds_credential"
    CREDENTIAL_UNAVAILABLE = "credential_unavailable"
    CREDENTIAL_REFLECTED = "credential_reflected"
    UNKNOWN_VIRTUAL_KEY = "unknown_virtual_key"
    TENANT_NOT_ALLOWED = "tenant_not_allowed"  # known virtual key, provider not granted
    # Transparent mode / DNS listener reasons.
    DESTINATION_MISMATCH = "destination_mismatch"
    DNS_NAME_NOT_ALLOWED = "dns_name_not_allowed"
    DNS_TUNNEL_SUSPECTED = "dns_tunnel_suspected"
    # issue 10: limits on what a peer controls (HTTP and connections, docs/limits.md).
    REQUEST_HEADERS_TOO_LARGE = "request_headers_too_large"
    RESPONSE_HEADERS_TOO_LARGE = "response_headers_too_large"
    REQUEST_BODY_TOO_LARGE = "request_body_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_STREAMS = "too_many_streams"


# Reasons enforced even in audit mode (S11): address vetting (S3), IP literals (S4),
# Host/SNI agreement and the protocol tricks around it (S5, because the request would
# go to the wrong host) and everything about credentials (S7).
ALWAYS_ENFORCED: frozenset[Reason] = frozenset(
    {
        Reason.INVALID_HOST,
        Reason.IP_LITERAL,
        Reason.PRIVATE_ADDRESS,
        Reason.METADATA_ADDRESS,
        Reason.HOST_MISMATCH,
        Reason.DNS_FAILURE,
        Reason.UPSTREAM_TLS_FAILURE,
        Reason.DESTINATION_MISMATCH,
        Reason.PROTOCOL_NOT_ALLOWED,  # h2c, TLS without SNI: ways around S5
        Reason.GATEWAY_HOLDS_CREDENTIAL,
        Reason.CREDENTIAL_UNAVAILABLE,
        Reason.CREDENTIAL_REFLECTED,
        Reason.UNKNOWN_VIRTUAL_KEY,
        Reason.TENANT_NOT_ALLOWED,
        # issue 10: resource limits protect the sidecar itself; audit mode keeps them.
        Reason.REQUEST_HEADERS_TOO_LARGE,
        Reason.RESPONSE_HEADERS_TOO_LARGE,
        Reason.REQUEST_BODY_TOO_LARGE,
        Reason.REQUEST_TIMEOUT,
        Reason.IDLE_TIMEOUT,
        Reason.TOO_MANY_CONNECTIONS,
        Reason.TOO_MANY_STREAMS,
    }
)

# Rule names used when no policy entry decided.
RULE_DEFAULT_DENY = "default_deny"
RULE_NETGUARD = "netguard"
RULE_HOST_AGREEMENT = "host_agreement"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: Reason
    rule: str  # policy entry that decided ("providers.openai", "allow[0]") or a RULE_* name
    host: str  # normalized destination host (or address text for literals)
    port: int
    provider: str | None = None
    method: str | None = None
    path: str | None = None  # path only, never the query string (may carry keys)
    client: str | None = None
    mode: str | None = None  # explicit | reverse | transparent | dns
    address: str | None = None  # the vetted address the sidecar connected to
    tenant: str | None = None
    detail: str = ""  # human-readable, safe to log: never header or body content
    source: str | None = None  # policy file:line of the deciding entry
    at: float = dataclasses.field(default_factory=time.time)

    @property
    def refused(self) -> bool:
        return self.verdict is Verdict.BLOCK

    @property
    def is_violation(self) -> bool:
        """True for block and would_block: what alerts and refusal counters see."""
        return self.verdict is not Verdict.ALLOW

    def with_context(self, **changes: Any) -> Decision:
        return dataclasses.replace(self, **changes)

    def as_log_record(self) -> dict[str, Any]:
        """The canonical decision log line (one JSON object per decision)."""
        record: dict[str, Any] = {
            "time": _iso(self.at),
            "decision": self.verdict.value,
            "reason": self.reason.value,
            "rule": self.rule,
            "provider": self.provider,
            "host": self.host,
            "port": self.port,
            "method": self.method,
            "path": self.path,
            "client": self.client,
            "mode": self.mode,
            "address": self.address,
        }
        if self.tenant is not None:
            record["tenant"] = self.tenant
        if self.source is not None:
            record["source"] = self.source
        if self.detail:
            record["detail"] = self.detail
        return record


def _iso(ts: float) -> str:
    secs = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{secs}.{int((ts % 1) * 1000):03d}Z"
