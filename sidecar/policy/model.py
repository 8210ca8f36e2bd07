"""Policy model: what the loader produces and the engine indexes. Pure data."""

from __future__ import annotations

import dataclasses
import ipaddress
from enum import StrEnum
from typing import TYPE_CHECKING

from sidecar.inspection.policy import DEFAULT_RELAY_POLICY, RelayPolicy
from sidecar.policy.cloud_credentials import CloudCredential

if TYPE_CHECKING:
    from sidecar.policy.dlp import DlpRules
    from sidecar.policy.tools import ToolPolicy
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
    relay: RelayPolicy = DEFAULT_RELAY_POLICY  # issue 13: what the provider may fetch, run, mint
    tools: ToolPolicy | None = None  # issue 14: `tools:` (sidecar/policy/tools.py)
    cloud_credential: CloudCredential | None = None  # aws_sigv4 / google_oauth (issue 16)

    @property
    def secret_name(self) -> str | None:
        """The secret this entry's credential is made from, if it names one."""
        if self.credential is not None:
            return self.credential.secret
        return self.cloud_credential.secret if self.cloud_credential is not None else None

    dlp: DlpRules | None = None  # the provider's own `dlp:` section (sidecar/policy/dlp.py)


@dataclasses.dataclass(frozen=True, slots=True)
class Removal:
    """An entry one file defines and another file's `overrides.remove` dropped."""

    rule: str
    source: SourceRef  # where the entry was defined
    by: SourceRef  # the override that removed it


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode
    endpoints: tuple[Endpoint, ...]
    files: tuple[str, ...]
    digest: str  # sha256 over the files' bytes, for logs and reload detection
    mode_source: SourceRef | None = None  # the `mode:` that decided; None: the default
    removed: tuple[Removal, ...] = ()
    dlp: DlpRules | None = None  # the top-level `dlp:` section (request DLP defaults)
    usage: UsagePolicy | None = None  # issue 15: usage_limits (sidecar/policy/usage_limits.py)

    def provider(self, name: str) -> Endpoint | None:
        for endpoint in self.endpoints:
            if endpoint.provider == name:
                return endpoint
        return None
