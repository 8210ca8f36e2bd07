"""From what each probe observed to the scorecard: outcome, summary, exit code. Pure."""

from __future__ import annotations

import dataclasses
import json
from enum import StrEnum
from typing import Any

from sidecar.redteam.catalogue import ALLOWED_THEN_FAILED, Probe


class ProbeOutcome(StrEnum):
    BLOCKED = "blocked"
    BLOCKED_ALERTED = "blocked and alerted"
    NO_ANSWER = "no answer"  # nothing came back: held, but not proven to be the sidecar
    NOT_RUN = "not run"
    INCONCLUSIVE = "inconclusive"  # the check under test never ran (provider unreachable)
    MISSED = "MISSED"


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """What came back. `reason` is the sidecar's reason code (its header), or what the
    client saw when no HTTP answer can carry one (`tls_refused`, `dns_refused`,
    `dns_nxdomain`, `closed`). `reached` is True when something other than the
    sidecar answered: the probe got out."""

    reason: str | None = None
    reached: bool = False
    detail: str = ""
    not_run: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    probe: Probe
    outcome: ProbeOutcome
    reason: str | None
    detail: str
    alert: str = "not checked"  # "alerted", "no alert found", "not checked"

    def as_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe.name,
            "group": self.probe.group,
            "attack": self.probe.attack,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "expected": sorted(self.probe.expected),
            "alert": self.alert,
            "detail": self.detail,
        }


def judge(probe: Probe, seen: Observation) -> Result:
    if seen.not_run:
        return Result(probe, ProbeOutcome.NOT_RUN, None, seen.detail)
    if seen.reason in ALLOWED_THEN_FAILED and probe.through_provider:
        detail = (
            f"the provider could not be reached ({seen.reason}), so the check under test "
            "never ran: re-run where the provider resolves and answers"
        )
        return Result(probe, ProbeOutcome.INCONCLUSIVE, seen.reason, detail)
    if seen.reason in ALLOWED_THEN_FAILED:
        # The policy let it through; only a failing network stopped it.
        detail = f"the sidecar let it through to the network ({seen.reason})"
        return Result(probe, ProbeOutcome.MISSED, seen.reason, detail)
    if seen.reason is not None:
        detail = seen.detail
        if probe.expected and seen.reason not in probe.expected:
            detail = f"refused, but not as expected ({'/'.join(sorted(probe.expected))}); " + detail
        return Result(probe, ProbeOutcome.BLOCKED, seen.reason, detail.rstrip("; "))
    if seen.reached:
        return Result(probe, ProbeOutcome.MISSED, None, seen.detail or "answered from outside")
    return Result(probe, ProbeOutcome.NO_ANSWER, None, seen.detail)


def summary(results: list[Result]) -> dict[str, int]:
    counts = {outcome.value: 0 for outcome in ProbeOutcome}
    for result in results:
        counts[result.outcome.value] += 1
    return counts


EXIT_MISSED = 1
EXIT_INCONCLUSIVE = 3


def exit_code(results: list[Result]) -> int:
    """0 only when nothing was missed and nothing was left unproven; 1 when anything
    got out; 3 when nothing got out but some checks could not run."""
    outcomes = {r.outcome for r in results}
    if ProbeOutcome.MISSED in outcomes:
        return EXIT_MISSED
    return EXIT_INCONCLUSIVE if ProbeOutcome.INCONCLUSIVE in outcomes else 0


def render_text(results: list[Result], header: str) -> str:
    width = max((len(r.probe.name) for r in results), default=10) + 2
    lines = [header, ""]
    group = None
    for result in results:
        if result.probe.group != group:
            group = result.probe.group
            lines.append(group)
        reason = result.reason or "-"
        alert = "" if result.alert == "not checked" else f"  [{result.alert}]"
        lines.append(f"  {result.probe.name:<{width}}{result.outcome.value:<20}{reason}{alert}")
        if result.outcome in (ProbeOutcome.MISSED, ProbeOutcome.INCONCLUSIVE):
            lines.append(f"      attack: {result.probe.attack}; {result.detail}")
    counts = summary(results)
    lines += ["", "summary: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)]
    return "\n".join(lines) + "\n"


def render_json(results: list[Result], meta: dict[str, Any]) -> str:
    document = {
        **meta,
        "summary": summary(results),
        "missed": [r.probe.name for r in results if r.outcome is ProbeOutcome.MISSED],
        "probes": [r.as_json() for r in results],
    }
    return json.dumps(document, indent=2) + "\n"
