"""From findings to one action per request, under the policy's `dlp:` sections. Pure.

Defaults: high-confidence findings are blocked, low-confidence ones alerted. A
provider's `dlp:` changes the top-level `dlp:`, which changes these defaults. The
sidecar's own keys are always blocked, whatever the policy says (the loader refuses a
line that tries). A request gets the strongest action among its findings.

Audit mode (`Plan.in_audit`): nothing is refused, and a secret that `block` or
`redact` would have stopped is redacted. Why not simply let it through as audit mode
does with other refusals: audit mode exists so that a rollout never breaks traffic,
and a redacted request still gets its answer; a secret that left in audit mode is gone
for good (a provider key leaving in audit mode was a real finding of this project's
red team). The sidecar's own keys are refused in audit mode too.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import re

from sidecar.dlp.document import DlpFinding
from sidecar.dlp.kinds import Confidence, SecretKind
from sidecar.policy.dlp import STRENGTH, Action, AllowRule, DlpRules

__all__ = ["EffectiveRules", "Plan", "effective", "plan"]


@dataclasses.dataclass(frozen=True, slots=True)
class EffectiveRules:
    enabled: bool
    high: Action
    low: Action
    actions: dict[SecretKind, Action]
    allow: tuple[tuple[AllowRule, re.Pattern[str] | None, re.Pattern[str] | None], ...]

    def action(self, finding: DlpFinding) -> Action:
        if finding.kind is SecretKind.SIDECAR_KEY:
            return Action.BLOCK
        chosen = self.actions.get(finding.kind)
        if chosen is not None:
            return chosen
        return self.high if finding.confidence is Confidence.HIGH else self.low

    def allowed(self, kind: SecretKind, value: str, location: str) -> bool:
        """True when an allow pattern covers this hit (never for the sidecar's keys)."""
        if kind is SecretKind.SIDECAR_KEY:
            return False
        for rule, value_re, field_re in self.allow:
            if rule.kinds is not None and kind not in rule.kinds:
                continue
            if value_re is not None and not value_re.fullmatch(value):
                continue
            if field_re is not None and not field_re.fullmatch(location):
                continue
            if rule.sha256 is not None:
                if hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest() != (
                    rule.sha256
                ):
                    continue
            return True
        return False


@functools.lru_cache(maxsize=256)
def effective(top: DlpRules | None, provider: DlpRules | None) -> EffectiveRules:
    """The rules one provider's requests are judged by (cached per policy load)."""
    layers = [r for r in (top, provider) if r is not None]
    enabled, high, low = True, Action.BLOCK, Action.ALERT
    actions: dict[SecretKind, Action] = {}
    allow: list[AllowRule] = []
    for layer in layers:
        enabled = layer.enabled if layer.enabled is not None else enabled
        high = layer.high or high
        low = layer.low or low
        actions.update(layer.actions)
        allow.extend(layer.allow)
    compiled = tuple((rule, _glob(rule.value), _glob(rule.field)) for rule in allow)
    return EffectiveRules(enabled, high, low, actions, compiled)


def _glob(pattern: str | None) -> re.Pattern[str] | None:
    # fnmatch's translation has no nested quantifiers: linear on the (bounded) hit.
    return None if pattern is None else re.compile(fnmatch.translate(pattern), re.DOTALL)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one request."""

    action: Action  # the strongest; IGNORE: nothing to report
    by_action: dict[Action, tuple[DlpFinding, ...]]
    own_key: bool  # the sidecar's own key is in the body (gateway_holds_credential)

    @property
    def redact_kinds(self) -> frozenset[SecretKind]:
        """What a forwarded request has replaced: redact findings, and in audit mode the
        block ones too."""
        found = self.by_action.get(Action.REDACT, ()) + self.by_action.get(Action.BLOCK, ())
        return frozenset(f.kind for f in found)

    def reported(self) -> tuple[DlpFinding, ...]:
        return tuple(f for a in (Action.BLOCK, Action.REDACT, Action.ALERT)
                     for f in self.by_action.get(a, ()))  # fmt: skip


def plan(findings: tuple[DlpFinding, ...], rules: EffectiveRules) -> Plan:
    by_action: dict[Action, list[DlpFinding]] = {}
    for finding in findings:
        by_action.setdefault(rules.action(finding), []).append(finding)
    by_action.pop(Action.IGNORE, None)
    strongest = max(by_action, key=STRENGTH.__getitem__, default=Action.IGNORE)
    own = any(f.kind is SecretKind.SIDECAR_KEY for f in findings)
    return Plan(strongest, {a: tuple(f) for a, f in by_action.items()}, own)


def describe(findings: tuple[DlpFinding, ...], limit: int = 6) -> str:
    """`aws_secret_access_key at $.messages[1].content, ... (+3 more)`: kinds and
    fields, never a value."""
    shown = ", ".join(f.describe() for f in findings[:limit])
    more = len(findings) - limit
    return shown + (f" (+{more} more)" if more > 0 else "")
