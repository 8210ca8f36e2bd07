"""Policy model: what the loader produces and the engine indexes. Pure data."""

from __future__ import annotations

import dataclasses
import ipaddress
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.policy.usage_limits import UsagePolicy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Mode(StrEnum):
    ENFORCE = "enforce"
    AUDIT = "audit"


@dataclasses.dataclass(frozen=True, slots=True)
class SourceRef:
    """Where an entry was written: shown in errors and decision logs."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclasses.dataclass(frozen=True, slots=True)
class CredentialSpec:
    """Where and how a provider key is added. Holds the secret's *name*, never its value."""

    header: str  # lower-case header name, e.g. "authorization"
    format: str  # exactly one "{secret}", e.g. "Bearer {secret}"
    secret: str  # name of the secret (file name in the secrets directory)


@dataclasses.dataclass(frozen=True, slots=True)
class PathRules:
    """Allowed request paths: exact paths, and prefixes written as "/prefix/*"."""

    exact: frozenset[str]
    prefixes: frozenset[str]  # each ends with "/"; "/" alone means any path

    @property
    def allows_any(self) -> bool:
        return "/" in self.prefixes


ANY_PATH = PathRules(exact=frozenset(), prefixes=frozenset({"/"}))


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One policy entry that lets traffic out: a provider or an `allow:` item."""

    rule: str  # "providers.openai" or "allow[2]" (index within its file) or its name
    provider: str | None  # set for providers only; keys are bound to it
    hosts: tuple[str, ...]  # normalized names; "*.example.com" wildcards allowed
    cidrs: tuple[IPNetwork, ...]  # IP-literal destinations this entry allows
    ports: frozenset[int]
    paths: PathRules
    methods: frozenset[str] | None  # None: any method
    addresses: tuple[IPNetwork, ...]  # non-public ranges this entry's names may resolve to
    tls_required: bool
    credential: CredentialSpec | None
    source: SourceRef
    max_request_body: int | None = None  # bytes; None: the --max-request-body default


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode
    endpoints: tuple[Endpoint, ...]
    files: tuple[str, ...]
    digest: str  # sha256 over the files' bytes, for logs and reload detection
    usage: UsagePolicy | None = None  # issue 15: usage_limits (sidecar/policy/usage_limits.py)

    def provider(self, name: str) -> Endpoint | None:
        for endpoint in self.endpoints:
            if endpoint.provider == name:
                return endpoint
        return None
