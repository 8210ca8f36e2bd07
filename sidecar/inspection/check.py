"""Findings against the provider's relay rules: the first one the policy refuses (issue 13).

URLs are parsed strictly, the way the egress allowlist parses hosts: a URL we could read
differently from the provider (userinfo, backslashes, spaces, scheme-relative, an
unparseable host or port) is refused, never matched. The detail names the field and
the host, never the URL's path or query (they can carry the data being exfiltrated).

Pure: no mitmproxy, no network.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from sidecar.decision import Reason
from sidecar.hostnames import HostError, parse_host
from sidecar.inspection.policy import FETCH_SCHEMES, RelayRules
from sidecar.inspection.readers import InspectionFinding, InspectionKind

MAX_URL_CHARS = 8192
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
# Provider resource names that are not URLs (Gemini Files API: "files/abc123").
_RESOURCE_NAME = re.compile(r"^(files|cachedContents|fileSearchStores)/[A-Za-z0-9_.-]{1,256}$")
_HOST_TEXT = re.compile(r"[^a-z0-9.*:\[\]-]")


@dataclasses.dataclass(frozen=True, slots=True)
class InspectionViolation:
    reason: Reason
    field: str
    detail: str  # safe to log: field, host, tool name; never a path, query or secret


@dataclasses.dataclass(frozen=True, slots=True)
class FetchTarget:
    scheme: str
    host: str  # canonical host name or address text
    port: int | None
    is_name: bool


class BadUrl(ValueError):
    pass


def parse_target(url: str) -> FetchTarget | None:
    """What a provider would contact for `url`; None for a value that is not fetched
    (a `data:` URL, a provider resource name). Raises BadUrl when unreadable."""
    if url[:5].lower() == "data:":  # inline bytes, not a fetch (the DLP reads them)
        return None
    if _RESOURCE_NAME.match(url):
        return None
    if len(url) > MAX_URL_CHARS or _UNSAFE.search(url):
        raise BadUrl("a URL with spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadUrl("an unparseable URL") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise BadUrl("a URL without a scheme or host")
    if "@" in parts.netloc:
        raise BadUrl("a URL with userinfo (user@host)")
    if scheme not in FETCH_SCHEMES:
        raise BadUrl(f"a URL with scheme {scheme[:16]!r}")
    try:
        host = parse_host(parts.hostname or "")
    except HostError:
        raise BadUrl("a URL with an invalid host") from None
    return FetchTarget(scheme, host.text, port, host.name is not None)


def check(
    findings: Iterable[InspectionFinding],
    rules: RelayRules,
    own_hosts: frozenset[str] = frozenset(),
) -> InspectionViolation | None:
    """The first finding the rules refuse. `own_hosts`: the provider's own hosts (a
    Gemini file URI naming the provider's Files API is not a fetch elsewhere)."""
    for finding in findings:
        violation = _check_one(finding, rules, own_hosts)
        if violation is not None:
            return violation
    return None


def _check_one(
    finding: InspectionFinding, rules: RelayRules, own_hosts: frozenset[str]
) -> InspectionViolation | None:
    field = finding.field
    if finding.kind is InspectionKind.AMBIGUOUS:
        return InspectionViolation(
            Reason.REQUEST_NOT_INSPECTABLE, field, f"{field}: {finding.value} (ambiguous)"
        )
    if finding.kind is InspectionKind.SERVER_TOOL:
        if finding.value in rules.server_tools:
            return None
        return InspectionViolation(
            Reason.SERVER_TOOL_NOT_ALLOWED,
            field,
            f"{field} declares provider tool {finding.value!r}, not in server_tools",
        )
    if finding.kind is InspectionKind.FETCH_DOMAIN:
        domain = finding.value.strip().lower().rstrip(".")
        if _valid_domain(domain) and rules.fetch.allows_domain(domain):
            return None
        return InspectionViolation(
            Reason.PROVIDER_FETCH_NOT_ALLOWED,
            field,
            f"{field} names domain {_printable(domain)!r}, not in fetch",
        )
    try:
        target = parse_target(finding.value)
    except BadUrl as exc:
        return InspectionViolation(Reason.PROVIDER_FETCH_NOT_ALLOWED, field, f"{field} is {exc}")
    if target is None:
        return None
    if target.is_name and target.host in own_hosts and target.scheme == "https":
        return None
    if target.is_name and rules.fetch.allows_url(target.scheme, target.host, target.port):
        return None
    where = f"{target.scheme}://{_printable(target.host)}"
    if target.port is not None:
        where += f":{target.port}"
    return InspectionViolation(
        Reason.PROVIDER_FETCH_NOT_ALLOWED,
        field,
        f"{field} asks the provider to fetch {where}, not in fetch",
    )


def _valid_domain(domain: str) -> bool:
    name = domain[2:] if domain.startswith("*.") else domain
    try:
        host = parse_host(name)
    except HostError:
        return False
    return host.name == name


def _printable(text: str) -> str:
    return _HOST_TEXT.sub("?", text[:100])
