"""Per request: find gateway-held keys, strip what the gateway sent, add the provider key.

`prepare_request()` is pure: it takes the policy `Endpoint` the engine matched, the
request's headers and query (anything with `__iter__`/`get_all`/`set_all`, which
mitmproxy's `Headers` and `Request.query` both have, so the adapter passes them as
they are), the `SecretStore` and optionally the `VirtualKeys`, edits headers and query
in place and returns a `CredentialResult` the adapter turns into a `Decision`.

BINDING. The key that is added is the one named by `endpoint.credential`, and the
endpoint decides where the request goes. The caller MUST pass the endpoint of the
*vetted* destination: the entry the engine matched for the host that was resolved,
checked (S3) and agreed on by CONNECT/SNI/Host (S5), and that the connection is
pinned to, for this very request. Never an endpoint looked up from a header the
gateway controls, never one cached from an earlier request on another host. Redirects
are followed by the gateway, so each hop is a new request that is vetted again.
`allow:` entries have no credential spec, so nothing is ever added to them.

What happens, in order:

1. Detection, before anything is changed: prefixed key families in every header value
   and query parameter; the sidecar's own secret values (current and recently
   rotated out) in credential-bearing places of any request; generic rules (random
   `sk-`, Azure hex, JWT, long random token) in credential-bearing places of requests
   to endpoints that get a key. Any finding -> `GATEWAY_HOLDS_CREDENTIAL`.
2. Stripping (endpoints with a credential spec only): every credential-bearing header
   and query parameter, cookies, `openai-insecure-api-key.*` WebSocket sub-protocols.
   For other endpoints only virtual keys are removed (the gateway's own auth to a
   telemetry collector, or SigV4 to Bedrock, is left alone). Stripping also happens
   when the request is refused, so a key never leaves even if a caller forgets to
   refuse.
3. Virtual key -> tenant, if a `VirtualKeys` is given (endpoints with a spec only).
4. Injection: `endpoint.credential.format` with the secret's value, into
   `endpoint.credential.header`. A missing secret -> `CREDENTIAL_UNAVAILABLE`.
   `accept-encoding` is set to `identity` so the reflection guard sees plain bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from sidecar.credentials.cloud_signing import (
    gateway_signature_findings,
    is_gateway_signature,
    strip_aws_signature,
)
from sidecar.credentials.detect import CredentialFinding, scan_generic, scan_prefixed
from sidecar.credentials.fields import MultiMap, by_name, fold_name
from sidecar.credentials.secret_store import Secret, SecretStore
from sidecar.credentials.virtual_keys import VirtualKeys, is_virtual_key
from sidecar.decision import REASONS, Reason
from sidecar.policy.cloud_credentials import CloudKind
from sidecar.policy.model import Endpoint

__all__ = [
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_PARAMS",
    "CredentialResult",
    "HeaderList",
    "MultiMap",
    "Outcome",
    "is_credential_header",
    "is_credential_param",
    "prepare_request",
]


class HeaderList:
    """A minimal ordered, case-insensitive multi-map (for tests and non-mitmproxy use)."""

    def __init__(self, fields: list[tuple[str, str]] | None = None, *, fold_case: bool = True):
        self.fields: list[tuple[str, str]] = list(fields or [])
        self._fold = fold_case

    def _k(self, name: str) -> str:
        return fold_name(name) if self._fold else name

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for name, _ in list(self.fields):
            if self._k(name) not in seen:
                seen.add(self._k(name))
                yield name

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.fields if self._k(k) == self._k(name)]

    def set_all(self, name: str, values: list[str]) -> None:
        rest = [(k, v) for k, v in self.fields if self._k(k) != self._k(name)]
        self.fields = rest + [(name, v) for v in values]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def items(self, multi: bool = False) -> list[tuple[str, str]]:
        if multi:
            return list(self.fields)
        return [(name, self.get_all(name)[0]) for name in self]

    def __repr__(self) -> str:
        return f"HeaderList(names={[k for k, _ in self.fields]})"


# Header names that carry credentials towards providers (lower case).
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "anthropic-api-key",
        "openai-api-key",
        "x-openai-api-key",
        "x-auth-token",
        "x-access-token",
        "ocp-apim-subscription-key",
        "x-amz-security-token",
        "x-litellm-api-key",
        "x-portkey-api-key",
        "helicone-auth",
        "cookie",
        "cookie2",
    }
)
# Any header or parameter whose name has one of these words between separators.
_CREDENTIAL_WORDS = re.compile(
    r"(?:^|[-_.])(?:api[-_]?key|apikey|auth|authorization|token|secret|password|passwd|"
    r"credentials?|access[-_]?key|private[-_]?key|subscription[-_]?key)(?:$|[-_.])"
)
CREDENTIAL_PARAMS = frozenset(
    {
        "key",
        "api_key",
        "api-key",
        "apikey",
        "access_token",
        "token",
        "auth",
        "x-goog-api-key",
        "signature",
        "sig",
    }
)
WEBSOCKET_PROTOCOL = "sec-websocket-protocol"
# OpenAI Realtime (browser form): "openai-insecure-api-key.<key>".
_WS_KEY_PREFIXES = ("openai-insecure-api-key.",)
_AWS_SIGV4 = "aws4-hmac-sha256 "


def is_credential_header(name: str) -> bool:
    lower = name.lower()
    return lower in CREDENTIAL_HEADERS or bool(_CREDENTIAL_WORDS.search(lower))


def is_credential_param(name: str) -> bool:
    lower = name.lower()
    return lower in CREDENTIAL_PARAMS or bool(_CREDENTIAL_WORDS.search(lower))


class Outcome(StrEnum):
    INJECTED = "injected"  # provider key added; the request may go
    NOT_APPLICABLE = "not_applicable"  # endpoint has no credential spec: nothing added
    WITHHELD = "withheld"  # a provider's entry, but the request may not get a key (S7)
    GATEWAY_HOLDS_CREDENTIAL = "gateway_holds_credential"
    CREDENTIAL_UNAVAILABLE = "credential_unavailable"
    UNKNOWN_VIRTUAL_KEY = "unknown_virtual_key"
    TENANT_NOT_ALLOWED = "tenant_not_allowed"  # known tenant, provider not granted
    # A cloud credential (SigV4 signature, OAuth token) is added once the body is read.
    DEFERRED = "deferred"


_REASONS: dict[Outcome, Reason] = {
    Outcome.GATEWAY_HOLDS_CREDENTIAL: Reason.GATEWAY_HOLDS_CREDENTIAL,
    Outcome.CREDENTIAL_UNAVAILABLE: Reason.CREDENTIAL_UNAVAILABLE,
    Outcome.UNKNOWN_VIRTUAL_KEY: Reason.UNKNOWN_VIRTUAL_KEY,
    Outcome.TENANT_NOT_ALLOWED: Reason.TENANT_NOT_ALLOWED,
}


@dataclass(frozen=True, slots=True)
class CredentialResult:
    """What the credential layer did to one request. Safe to log (no values)."""

    outcome: Outcome
    provider: str | None
    detail: str  # human-readable, safe: names headers, families, secrets; never values
    secret_name: str | None = None
    tenant: str | None = None
    findings: tuple[CredentialFinding, ...] = ()
    stripped: tuple[str, ...] = ()  # "header authorization", "query key", ...
    # The injected secret (its repr shows only name and fingerprint).
    secret: Secret | None = field(default=None, repr=False, compare=False)

    @property
    def reason(self) -> Reason | None:
        """The Decision reason for a refusal (None when the request may go)."""
        return _REASONS.get(self.outcome)

    @property
    def http_status(self) -> int:
        """Status for the local refusal answer (the reason table's), 200 when not refused."""
        reason = self.reason
        return 200 if reason is None else REASONS[reason].http_status


@dataclass(slots=True)
class _Scan:
    findings: list[CredentialFinding] = field(default_factory=list)
    virtual_keys: set[str] = field(default_factory=set)
    stripped: list[str] = field(default_factory=list)
    # Headers / params that held a finding but were not stripped: removed on refusal.
    tainted_headers: list[str] = field(default_factory=list)
    tainted_params: list[str] = field(default_factory=list)


def prepare_request(
    endpoint: Endpoint,
    headers: MultiMap,
    query: MultiMap | None,
    store: SecretStore,
    *,
    virtual_keys: VirtualKeys | None = None,
    require_virtual_key: bool = False,
    identity_encoding: bool = True,
    add_key: bool = True,
) -> CredentialResult:
    """Detect, strip, inject. Edits `headers` and `query` in place. See module doc.

    `endpoint` MUST be the policy entry of the vetted destination of this request.
    `add_key=False` (see `confinement.key_withheld_because`): detect and strip as for
    this provider, but add no key (outcome WITHHELD).
    """
    spec = endpoint.credential
    cloud = endpoint.cloud_credential if endpoint.provider is not None else None
    injecting = endpoint.provider is not None and (spec is not None or cloud is not None)
    own_values = store.owners_by_value()  # ours, current and recently rotated out
    scan = _Scan()
    if cloud is not None:  # before anything is stripped: the gateway's own signature
        scan.findings += gateway_signature_findings(cloud.kind, headers, query)

    for name, values in by_name(headers):
        lower = name.lower()
        credential_place = is_credential_header(lower)
        location = f"header {lower}"
        before = len(scan.findings)
        for value in values:
            skip: frozenset[str] = frozenset()
            if not injecting and lower == "authorization" and value.lower().startswith(_AWS_SIGV4):
                # SigV4 to an endpoint where the gateway authenticates itself (Bedrock):
                # the access key id in it is expected there.
                skip = frozenset({"aws_access_key_id"})
            scan.findings += scan_prefixed(value, location, skip=skip)
            if credential_place:
                generic = injecting and not (
                    cloud is not None and is_gateway_signature(cloud.kind, lower, value)
                )
                _credential_value(value, location, lower, generic, own_values, scan)
        if lower == WEBSOCKET_PROTOCOL:
            kept = _websocket_protocols(values, injecting, own_values, scan)
            if kept != values:
                headers.set_all(name, kept)
                scan.stripped.append(f"{location} (key entry)")
                values = kept
        elif injecting and (credential_place or (spec is not None and lower == spec.header)):
            headers.set_all(name, [])
            scan.stripped.append(location)
            continue
        elif not injecting and any(_holds_virtual_key(v) for v in values):
            headers.set_all(name, [])
            scan.stripped.append(location)
            continue
        if len(scan.findings) > before and values:
            scan.tainted_headers.append(name)

    if query is not None:
        for name, values in by_name(query, fold_case=False):
            location = f"query {name.lower()}"
            credential_place = is_credential_param(name)
            before = len(scan.findings)
            for value in values:
                scan.findings += scan_prefixed(value, location)
                if credential_place:
                    _credential_value(value, location, None, injecting, own_values, scan)
            if (injecting and credential_place) or any(_holds_virtual_key(v) for v in values):
                query.set_all(name, [])
                scan.stripped.append(location)
            elif len(scan.findings) > before:
                scan.tainted_params.append(name)

    if cloud is not None and cloud.kind is CloudKind.AWS_SIGV4:
        scan.stripped += strip_aws_signature(headers, query)
    stripped = tuple(scan.stripped)
    findings = tuple(_dedupe(scan.findings))
    provider = endpoint.provider
    if findings:
        # Defence in depth: the request is refused, but if a caller forwarded it
        # anyway, the gateway's key would still not leave.
        for name in scan.tainted_headers:
            headers.set_all(name, [])
            scan.stripped.append(f"header {name.lower()}")
        if query is not None:
            for name in scan.tainted_params:
                query.set_all(name, [])
                scan.stripped.append(f"query {name.lower()}")
        stripped = tuple(scan.stripped)
        where = "; ".join(f.describe() for f in findings)
        return CredentialResult(
            Outcome.GATEWAY_HOLDS_CREDENTIAL,
            provider,
            f"the gateway sent a real credential ({where}): a key has leaked into the "
            "gateway; rotate it at the provider",
            findings=findings,
            stripped=stripped,
        )
    if not injecting or provider is None:
        return CredentialResult(
            Outcome.NOT_APPLICABLE,
            provider,
            "no credential for this destination",
            stripped=stripped,
        )

    tenant_name: str | None = None
    secret_name = spec.secret if spec is not None else cloud.secret if cloud is not None else None
    if virtual_keys is not None:
        if len(scan.virtual_keys) > 1:
            return CredentialResult(
                Outcome.UNKNOWN_VIRTUAL_KEY,
                provider,
                "more than one virtual key in one request",
                stripped=stripped,
            )
        if not scan.virtual_keys:
            if require_virtual_key:
                return CredentialResult(
                    Outcome.UNKNOWN_VIRTUAL_KEY,
                    provider,
                    "no virtual key presented (send it as the provider key, e.g. "
                    "'Authorization: Bearer vk-...')",
                    stripped=stripped,
                )
        else:
            (presented,) = scan.virtual_keys
            tenant, why = virtual_keys.explain(presented)
            if tenant is None:
                return CredentialResult(
                    Outcome.UNKNOWN_VIRTUAL_KEY, provider, why, stripped=stripped
                )
            tenant_name = tenant.name
            if not tenant.may_use(provider):
                return CredentialResult(
                    Outcome.TENANT_NOT_ALLOWED,
                    provider,
                    f"tenant {tenant.name!r} may not use provider {provider!r}",
                    tenant=tenant_name,
                    stripped=stripped,
                )
            if spec is not None:  # a cloud credential is the provider's own, per entry
                secret_name = tenant.secret_for(provider, spec.secret)

    if not add_key:
        return CredentialResult(
            Outcome.WITHHELD,
            provider,
            "provider key not added",
            secret_name=secret_name,
            tenant=tenant_name,
            stripped=stripped,
        )
    if cloud is not None:
        if secret_name is not None and store.get_document(secret_name) is None:
            return _unavailable(provider, secret_name, tenant_name, stripped)
        if identity_encoding:
            headers.set_all("accept-encoding", ["identity"])
        return CredentialResult(
            Outcome.DEFERRED,
            provider,
            f"{cloud.kind.value} credential from {cloud.source}",
            secret_name=secret_name,
            tenant=tenant_name,
            stripped=stripped,
        )
    assert spec is not None and secret_name is not None
    secret = store.get(secret_name)
    if secret is None:
        return _unavailable(provider, secret_name, tenant_name, stripped)
    headers.set_all(spec.header, [spec.format.replace("{secret}", secret.reveal())])
    if identity_encoding:
        headers.set_all("accept-encoding", ["identity"])
    return CredentialResult(
        Outcome.INJECTED,
        provider,
        f"added secret {secret_name!r} as {spec.header}",
        secret_name=secret_name,
        tenant=tenant_name,
        stripped=stripped,
        secret=secret,
    )


def _unavailable(
    provider: str, secret_name: str, tenant_name: str | None, stripped: tuple[str, ...]
) -> CredentialResult:
    return CredentialResult(
        Outcome.CREDENTIAL_UNAVAILABLE,
        provider,
        f"secret {secret_name!r} for provider {provider!r} is missing or invalid; "
        "refusing rather than sending the request without a key",
        secret_name=secret_name,
        tenant=tenant_name,
        stripped=stripped,
    )


def _credential_value(
    value: str,
    location: str,
    header: str | None,
    injecting: bool,
    own_values: dict[str, str],
    scan: _Scan,
) -> None:
    for token in _tokens(value):
        if is_virtual_key(token):
            scan.virtual_keys.add(token)
    for token in _tokens(value):
        name = own_values.get(token)
        if name is not None:
            scan.findings.append(
                CredentialFinding(location, "sidecar_secret", f"the sidecar's own {name!r} key")
            )
    if injecting:
        scan.findings += scan_generic(value, location, header=header)


def _websocket_protocols(
    values: list[str], injecting: bool, own_values: dict[str, str], scan: _Scan
) -> list[str]:
    kept: list[str] = []
    location = f"header {WEBSOCKET_PROTOCOL}"
    for value in values:
        entries = [e.strip() for e in value.split(",") if e.strip()]
        keep_entries: list[str] = []
        for entry in entries:
            carried = next((entry[len(p) :] for p in _WS_KEY_PREFIXES if entry.startswith(p)), None)
            if carried is None:
                if is_virtual_key(entry):
                    scan.virtual_keys.add(entry)
                    continue
                keep_entries.append(entry)
                continue
            if is_virtual_key(carried):
                scan.virtual_keys.add(carried)
            else:
                scan.findings += scan_generic(carried, location, header=None)
                if carried in own_values:
                    scan.findings.append(
                        CredentialFinding(
                            location,
                            "sidecar_secret",
                            f"the sidecar's own {own_values[carried]!r} key",
                        )
                    )
            # Key-carrying entries are removed for every destination.
        if keep_entries:
            kept.append(", ".join(keep_entries))
    return kept


def _tokens(value: str) -> list[str]:
    parts = value.replace(",", " ").replace(";", " ").split()
    out: list[str] = []
    for part in parts:
        out.append(part)
        if "=" in part:  # cookie "name=value"
            out.append(part.split("=", 1)[1])
    return out


def _holds_virtual_key(value: str) -> bool:
    return any(is_virtual_key(t) for t in _tokens(value))


def _dedupe(findings: list[CredentialFinding]) -> list[CredentialFinding]:
    seen: set[tuple[str, str]] = set()
    out: list[CredentialFinding] = []
    for f in findings:
        if (f.location, f.family) not in seen:
            seen.add((f.location, f.family))
            out.append(f)
    return out
