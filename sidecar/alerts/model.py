"""Alert model: severity, bounded destination class, fingerprint, safe evidence.

Pure code (no I/O, no mitmproxy, no aiohttp). Everything that leaves the process in an
alert is derived here from a `Decision`, and every free-text field of a `Decision`
(host, path, detail, rule, tenant, ...) is treated as attacker-chosen: it is cut to a
bounded length, stripped of control characters and passed through `redact()`.

Redaction rule (documented in docs/alerts.md, pinned by tests/alerts/test_model.py):

1. A path loses everything from the first ``?`` or ``#`` (query strings carry keys).
2. Each field is cut to its limit *before* anything else looks at it (path 200,
   detail 200, host 253, other fields 64 characters), control characters become ``?``.
3. Tokens with a known credential prefix (``sk-``, ``sk-proj-``, ``sk-ant-``, ``AKIA``,
   ``ASIA``, ``ghp_``, ``github_pat_``, ``xox?-``, ``AIza``, ``glpat-``, ``hf_``, JWTs
   ``eyJ...``, ``Bearer ...``, ``Basic ...``) become ``[REDACTED]``.
4. Any other run of 32 or more characters from ``[A-Za-z0-9_+=%~-]`` that mixes letters
   and digits (a key, a token, base64url or percent-encoded data) becomes ``[REDACTED]``,
   and so does a run of exactly 40 characters of ``[A-Za-z0-9/+]`` that mixes letters and
   digits (an AWS secret access key). ``/`` is not a token character otherwise, so
   ordinary paths such as ``/v1/models/gpt-4o-mini-2024-07-18`` stay readable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any

from sidecar import domains
from sidecar.decision import (
    REASONS,
    RULE_DEFAULT_DENY,
    RULE_HOST_AGREEMENT,
    RULE_NETGUARD,
    Decision,
    Reason,
    Severity,
    Verdict,
)

SEVERITY_RANK: Mapping[Severity, int] = {
    Severity.INFO: 0,
    Severity.WARNING: 1,
    Severity.CRITICAL: 2,
}

# Severity of a *block*, from the reason table. A would_block (audit mode) is one level
# lower and marked audit. Reasons that are not known (future additions) are warnings.
SEVERITY_BY_REASON: Mapping[Reason, Severity] = {r: s.severity for r, s in REASONS.items()}

_LOWER: Mapping[Severity, Severity] = {
    Severity.CRITICAL: Severity.WARNING,
    Severity.WARNING: Severity.INFO,
    Severity.INFO: Severity.INFO,
}


def severity_for(reason: Reason | str, verdict: Verdict | str) -> tuple[Severity, bool]:
    """(severity, audit) of a refusal. would_block is one level lower and audit=True."""
    try:
        base = SEVERITY_BY_REASON.get(Reason(reason), Severity.WARNING)
    except ValueError:
        base = Severity.WARNING
    if verdict == Verdict.WOULD_BLOCK:
        return _LOWER[base], True
    return base, False


# ----------------------------------------------------------------------------- limits

PATH_LIMIT = 200
DETAIL_LIMIT = 200
HOST_LIMIT = 253
SHORT_LIMIT = 64
REDACTED = "[REDACTED]"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_KNOWN_PREFIX = re.compile(
    r"(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|(?:sk-(?:proj-|ant-|live_|test_)?|rk_live_|pk_live_|ghp_|gho_|ghs_|ghu_|github_pat_"
    r"|glpat-|hf_|xox[abposr]-|AIza|AKIA|ASIA|eyJ)[A-Za-z0-9_+/=%~.-]{8,}"
)
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_+=%~-]{32,}")
# AWS secret access keys: 40 characters of base64 that may include "/".
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_HAS_ALPHA = re.compile(r"[A-Za-z]")
_HAS_DIGIT = re.compile(r"[0-9]")


def _long_token(match: re.Match[str]) -> str:
    token = match.group(0)
    if _HAS_ALPHA.search(token) and _HAS_DIGIT.search(token):
        return REDACTED
    return token


def redact(text: str | None, limit: int) -> str | None:
    """Bound, de-control and redact one attacker-influenced text field."""
    if text is None:
        return None
    text = _CONTROL.sub("?", str(text)[:limit])
    text = _KNOWN_PREFIX.sub(REDACTED, text)
    text = _AWS_SECRET.sub(_long_token, text)
    return _LONG_TOKEN.sub(_long_token, text)


def redact_path(path: str | None) -> str | None:
    if path is None:
        return None
    path = str(path)[: PATH_LIMIT * 2]
    for sep in ("?", "#"):
        cut = path.find(sep)
        if cut >= 0:
            path = path[:cut]
    return redact(path, PATH_LIMIT)


_LABEL_SAFE = re.compile(r"[^A-Za-z0-9._:@/*-]")


def label_value(text: str | None, limit: int = SHORT_LIMIT) -> str:
    """A short identifier (tenant, rule, provider, pod) made safe for labels and keys."""
    if not text:
        return ""
    cleaned = _LABEL_SAFE.sub("_", str(text)[:limit])
    return redact(cleaned, limit) or ""


# ------------------------------------------------------------------ destination class

_SPECIFIC_RULES_EXCLUDED = frozenset({RULE_DEFAULT_DENY, RULE_NETGUARD, RULE_HOST_AGREEMENT, ""})
OVERFLOW_DESTINATION = "*"


def _candidate(host: str) -> str:
    """First step of `registrable_domain` (no regex): used as a cache key."""
    host = host[:HOST_LIMIT].strip().lower().rstrip(".")
    if not host:
        return ""
    if host.startswith("[") or ":" in host:
        return "ip:v6"
    if host.rsplit(".", 1)[-1].isdigit():
        return host  # an IPv4 literal (checked in _finish) or nonsense
    return domains.registrable_domain(host)


def _finish(name: str) -> str:
    if not name:
        return "invalid"
    if name == "ip:v6":
        return name
    if name.rsplit(".", 1)[-1].isdigit():
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return "invalid"
        return "ip:v4"
    return redact(_LABEL_SAFE.sub("_", name), SHORT_LIMIT) or "invalid"


def registrable_domain(host: str) -> str:
    """eTLD+1 (Public Suffix List): the part of a name an attacker must own. Bounded.

    Random labels under one domain (``<data>.evil.example``) collapse into one class;
    spraying many registrable domains is bounded separately by the grouper.
    """
    return _finish(_candidate(host))


def destination_class(decision: Decision) -> str:
    """Bounded description of where the refused attempt went.

    A policy entry's name when one decided (bounded by the policy), else the
    registrable domain of the host (``ip:v4`` / ``ip:v6`` for literals).
    """
    rule = decision.rule or ""
    if rule not in _SPECIFIC_RULES_EXCLUDED:
        return "rule:" + label_value(rule)
    return registrable_domain(decision.host or "")


@dataclasses.dataclass(frozen=True, slots=True)
class AlertKey:
    """What makes two refusals "the same alert"."""

    reason: str
    audit: bool
    destination: str
    tenant: str

    def fingerprint(self, namespace: str = "") -> str:
        raw = "\x1f".join(
            (
                "v1",
                self.reason,
                "audit" if self.audit else "enforce",
                self.destination,
                self.tenant,
                namespace,
            )
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _reason_text(reason: object) -> str:
    if isinstance(reason, Reason):
        return reason.value
    return label_value(str(reason)) or "unknown"


def key_for(decision: Decision, destination: str | None = None) -> AlertKey:
    _severity, audit = severity_for(decision.reason, decision.verdict)
    return AlertKey(
        reason=_reason_text(decision.reason),
        audit=audit,
        destination=destination if destination is not None else destination_class(decision),
        tenant=label_value(decision.tenant),
    )


_SEVERITY_FAST: dict[tuple[object, object], tuple[Severity, bool]] = {
    (reason, verdict): severity_for(reason, verdict)
    for reason in Reason
    for verdict in (Verdict.BLOCK, Verdict.WOULD_BLOCK)
}


class KeyMemo:
    """`key_for` + severity for the request path, memoised in bounded dictionaries
    (each is cleared when it reaches `size` entries, so memory stays bounded whatever
    an attacker sprays)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._dest: dict[str, str] = {}
        self._tenant: dict[str | None, str] = {}

    def key(self, decision: Decision) -> tuple[AlertKey, Severity]:
        reason, verdict = decision.reason, decision.verdict
        sev = _SEVERITY_FAST.get((reason, verdict))
        if sev is None:
            sev = severity_for(reason, verdict)
        rule = decision.rule or ""
        if rule in _SPECIFIC_RULES_EXCLUDED:
            candidate = _candidate(decision.host or "")
        else:
            candidate = "\x00" + rule[:SHORT_LIMIT]
        dest = self._dest.get(candidate)
        if dest is None:
            if candidate.startswith("\x00"):
                dest = "rule:" + label_value(candidate[1:])
            else:
                dest = _finish(candidate)
            if len(self._dest) >= self.size:
                self._dest.clear()
            self._dest[candidate] = dest
        raw_tenant = decision.tenant
        tenant = self._tenant.get(raw_tenant)
        if tenant is None:
            tenant = label_value(raw_tenant)
            if raw_tenant is None or isinstance(raw_tenant, str):
                if len(self._tenant) >= self.size:
                    self._tenant.clear()
                self._tenant[raw_tenant] = tenant
        return AlertKey(_reason_text(reason), sev[1], dest, tenant), sev[0]


# --------------------------------------------------------------------------- evidence


def safe_evidence(decision: Decision) -> dict[str, Any]:
    """What one refusal may tell a pager: no headers, no bodies, nothing unbounded."""
    port = decision.port if isinstance(decision.port, int) and 0 <= decision.port < 65536 else 0
    return {
        "verdict": str(decision.verdict.value),
        "reason": str(decision.reason.value),
        "host": redact(decision.host, HOST_LIMIT),
        "port": port,
        "method": label_value(decision.method, 16) or None,
        "path": redact_path(decision.path),
        "rule": label_value(decision.rule) or None,
        "provider": label_value(decision.provider) or None,
        "tenant": label_value(decision.tenant) or None,
        "mode": label_value(decision.mode, 16) or None,
        "address": redact(decision.address, SHORT_LIMIT),
        "source": redact(decision.source, 128),
        "detail": redact(decision.detail, DETAIL_LIMIT) or None,
    }


POD_ENV = {"name": "POD_NAME", "namespace": "POD_NAMESPACE", "node": "NODE_NAME"}


def pod_identity(
    override: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Pod identity from the downward API (POD_NAME, POD_NAMESPACE, NODE_NAME).

    `override` (the `pod=` argument of `AlertPipeline.from_config`) wins per field and
    may be keyed ``name``/``namespace``/``node`` or by the env var names."""
    source = os.environ if env is None else env
    given = override or {}
    result: dict[str, str] = {}
    for key, var in POD_ENV.items():
        # `override` may use either spelling: {"name": ...} or {"POD_NAME": ...}
        value = given.get(key) or given.get(var) or source.get(var, "")
        result[key] = label_value(value, 128)
    return result
