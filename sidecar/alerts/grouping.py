"""Grouping and rate limits: many refusals become few alerts.

`Grouper.submit()` is what the request path calls (through `AlertPipeline.submit`):
a few dictionary operations under an uncontended lock, no I/O, no allocation that
grows with input, never raises. `Grouper.due()` is called by the pipeline's flusher
task, off the request path, and turns the table into notifications:

- ``trigger``: the first refusal of a fingerprint (pages once);
- ``update``: every ``resend_interval`` while refusals of that fingerprint continue
  (Alertmanager needs resends; other sinks may ignore updates);
- ``resolve``: after ``resolve_after`` seconds without a refusal of that fingerprint.

Bounds, so a flood cannot defeat grouping or the pager:

- at most ``max_destinations_per_reason`` distinct destination classes per
  (reason, audit, tenant) are tracked; more collapse into destination ``*``;
- new fingerprints are admitted by a token bucket (``max_new_per_minute``, ``burst``)
  and only while fewer than ``max_active`` alerts are active; refusals refused a new
  alert are counted into one ``alert_flood`` alert per severity that says how many
  refusals were suppressed and of which reasons.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.alerts.model import (
    HOST_LIMIT,
    OVERFLOW_DESTINATION,
    SEVERITY_RANK,
    AlertKey,
    KeyMemo,
    label_value,
    redact,
    safe_evidence,
)
from sidecar.decision import Decision, Severity, Verdict, iso_time
from sidecar.pacing import TokenBucket

FLOOD_REASON = "alert_flood"
TRIGGER = "trigger"
UPDATE = "update"
RESOLVE = "resolve"


@dataclasses.dataclass(frozen=True, slots=True)
class GroupingSettings:
    resend_interval: float = 60.0
    resolve_after: float = 300.0
    max_new_per_minute: float = 30.0
    burst: int = 10
    max_active: int = 1000
    max_destinations_per_reason: int = 20
    sample_hosts: int = 5


@dataclasses.dataclass(slots=True)
class ActiveAlert:
    key: AlertKey
    fingerprint: str
    severity: Severity
    first_seen: float  # wall clock (decision time)
    last_seen: float
    last_seen_tick: float  # grouper clock, for windows
    count: int = 0
    last: Decision | None = None
    evidence: dict[str, Any] | None = None  # restored from state when `last` is None
    sample_hosts: list[str] = dataclasses.field(default_factory=list)
    suppressed: int = 0
    suppressed_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    triggered: bool = False
    notified_tick: float = 0.0
    notified_count: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    kind: str  # trigger | update | resolve
    fingerprint: str
    severity: Severity
    audit: bool
    changed: bool  # count changed since the previous notification
    alert: dict[str, Any]  # JSON-able snapshot, see `snapshot()`


class Grouper:
    def __init__(
        self,
        settings: GroupingSettings | None = None,
        *,
        pod: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_suppressed: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or GroupingSettings()
        self.pod = dict(pod or {})
        self._namespace = self.pod.get("namespace", "")
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._active: dict[AlertKey, ActiveAlert] = {}
        self._dest_counts: dict[tuple[str, bool, str], int] = {}
        self._bucket = TokenBucket(
            max(self.settings.max_new_per_minute, 0.0) / 60.0,
            float(max(self.settings.burst, 1)),
            clock(),
        )
        self._memo = KeyMemo()
        self._on_suppressed = on_suppressed
        self.submitted = 0
        self.suppressed = 0

    # ------------------------------------------------------------ request path

    def submit(self, decision: Decision) -> Severity | None:
        """Record one refusal; returns its severity (None for allow). O(1)."""
        if decision.verdict is Verdict.ALLOW:
            return None
        now = self._clock()
        key, severity = self._memo.key(decision)
        cause: str | None = None
        with self._lock:
            self.submitted += 1
            alert = self._active.get(key)
            if alert is None:
                group = (key.reason, key.audit, key.tenant)
                if self._dest_counts.get(group, 0) >= self.settings.max_destinations_per_reason:
                    key = dataclasses.replace(key, destination=OVERFLOW_DESTINATION)
                    alert = self._active.get(key)
            if alert is None:
                if len(self._active) >= self.settings.max_active:
                    cause = "table_full"
                elif not self._bucket.take(now):
                    cause = "rate_cap"
                else:
                    alert = self._new(key, severity, decision, now)
            if alert is None:
                alert = self._flood(severity, decision, now)
                alert.suppressed += 1
                reason = key.reason
                if reason in alert.suppressed_by_reason or len(alert.suppressed_by_reason) < 32:
                    alert.suppressed_by_reason[reason] = (
                        alert.suppressed_by_reason.get(reason, 0) + 1
                    )
                self.suppressed += 1
            alert.count += 1
            alert.last_seen = self._at(decision)
            alert.last_seen_tick = now
            alert.last = decision
            hosts = alert.sample_hosts
            if len(hosts) < self.settings.sample_hosts:
                host = (decision.host or "")[:HOST_LIMIT]
                if host not in hosts:
                    hosts.append(host)
        if cause is not None and self._on_suppressed is not None:
            self._on_suppressed(cause)
        return severity

    def _at(self, decision: Decision) -> float:
        at = decision.at
        return float(at) if isinstance(at, float | int) else self._wall()

    def _open(
        self, key: AlertKey, severity: Severity, decision: Decision, now: float
    ) -> ActiveAlert:
        alert = ActiveAlert(
            key=key,
            fingerprint=key.fingerprint(self._namespace),
            severity=severity,
            first_seen=self._at(decision),
            last_seen=self._at(decision),
            last_seen_tick=now,
        )
        self._active[key] = alert
        return alert

    def _new(
        self, key: AlertKey, severity: Severity, decision: Decision, now: float
    ) -> ActiveAlert:
        alert = self._open(key, severity, decision, now)
        if key.destination != OVERFLOW_DESTINATION and key.reason != FLOOD_REASON:
            group = (key.reason, key.audit, key.tenant)
            self._dest_counts[group] = self._dest_counts.get(group, 0) + 1
        return alert

    def _flood(self, severity: Severity, decision: Decision, now: float) -> ActiveAlert:
        key = AlertKey(reason=FLOOD_REASON, audit=False, destination=str(severity), tenant="")
        return self._active.get(key) or self._open(key, severity, decision, now)

    # ------------------------------------------------------------- flusher side

    def active_count(self) -> dict[Severity, int]:
        counts = {s: 0 for s in Severity}
        with self._lock:
            for alert in self._active.values():
                counts[alert.severity] += 1
        return counts

    def due(self, *, force_update: bool = False) -> list[Notification]:
        """Notifications that are due now. Called off the request path."""
        now = self._clock()
        s = self.settings
        out: list[Notification] = []
        with self._lock:
            for key, alert in list(self._active.items()):
                if not alert.triggered:
                    alert.triggered = True
                    out.append(self._note(TRIGGER, alert, now, changed=True))
                elif now - alert.last_seen_tick >= s.resolve_after:
                    del self._active[key]
                    if key.destination != OVERFLOW_DESTINATION and key.reason != FLOOD_REASON:
                        group = (key.reason, key.audit, key.tenant)
                        left = self._dest_counts.get(group, 1) - 1
                        if left > 0:
                            self._dest_counts[group] = left
                        else:
                            self._dest_counts.pop(group, None)
                    out.append(self._note(RESOLVE, alert, now, changed=True))
                elif force_update or now - alert.notified_tick >= s.resend_interval:
                    changed = alert.count != alert.notified_count
                    out.append(self._note(UPDATE, alert, now, changed=changed))
        return out

    def _note(self, kind: str, alert: ActiveAlert, now: float, *, changed: bool) -> Notification:
        alert.notified_tick = now
        alert.notified_count = alert.count
        return Notification(
            kind=kind,
            fingerprint=alert.fingerprint,
            severity=alert.severity,
            audit=alert.key.audit,
            changed=changed,
            alert=self.snapshot(alert, kind),
        )

    def snapshot(self, alert: ActiveAlert, kind: str) -> dict[str, Any]:
        key = alert.key
        if alert.last is not None:
            evidence = safe_evidence(alert.last)
        else:
            evidence = dict(alert.evidence or {})
        flood = key.reason == FLOOD_REASON
        if flood:
            summary = (
                f"egress alert flood: {alert.suppressed} refusals suppressed by the alert "
                f"rate cap (reasons: {', '.join(sorted(alert.suppressed_by_reason))})"
            )
        else:
            what = "would block (audit)" if key.audit else "blocked"
            summary = f"egress {what}: {key.reason} to {key.destination} ({alert.count}x)"
            if key.tenant:
                summary += f" tenant {key.tenant}"
        return {
            "fingerprint": alert.fingerprint,
            "status": "resolved" if kind == RESOLVE else "firing",
            "kind": kind,
            "severity": str(alert.severity),
            "audit": key.audit,
            "reason": key.reason,
            "destination": key.destination,
            "tenant": key.tenant or None,
            "count": alert.count,
            "first_seen": iso_time(alert.first_seen),
            "last_seen": iso_time(alert.last_seen),
            "first_seen_ts": alert.first_seen,
            "last_seen_ts": alert.last_seen,
            "suppressed": alert.suppressed,
            "suppressed_by_reason": dict(alert.suppressed_by_reason),
            "sample_hosts": [redact(h, HOST_LIMIT) for h in alert.sample_hosts],
            "evidence": evidence,
            "pod": dict(self.pod),
            "summary": summary,
        }

    # ---------------------------------------------------------------- restart

    def export_state(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {**self.snapshot(a, UPDATE), "notified_count": a.notified_count}
                for a in self._active.values()
                if a.triggered
            ]

    def import_state(self, items: list[dict[str, Any]]) -> int:
        """Restore alerts saved by `export_state` (after a restart). Returns how many."""
        now = self._clock()
        wall = self._wall()
        restored = 0
        with self._lock:
            for item in items:
                if len(self._active) >= self.settings.max_active:
                    break
                key = AlertKey(
                    reason=label_value(str(item["reason"])),
                    audit=bool(item["audit"]),
                    destination=label_value(str(item["destination"])),
                    tenant=label_value(item.get("tenant") or ""),
                )
                if key in self._active:
                    continue
                last_seen = float(item["last_seen_ts"])
                quiet = min(max(wall - last_seen, 0.0), self.settings.resolve_after)
                alert = ActiveAlert(
                    key=key,
                    fingerprint=str(item["fingerprint"]),
                    severity=Severity(item["severity"]),
                    first_seen=float(item["first_seen_ts"]),
                    last_seen=last_seen,
                    last_seen_tick=now - quiet,
                    count=int(item["count"]),
                    evidence=dict(item.get("evidence") or {}),
                    sample_hosts=[str(h) for h in item.get("sample_hosts") or []][
                        : self.settings.sample_hosts
                    ],
                    suppressed=int(item.get("suppressed") or 0),
                    suppressed_by_reason={
                        label_value(str(k)): int(v)
                        for k, v in dict(item.get("suppressed_by_reason") or {}).items()
                    },
                    triggered=True,
                    notified_tick=now,
                    notified_count=int(item.get("notified_count") or item["count"]),
                )
                self._active[key] = alert
                if key.destination != OVERFLOW_DESTINATION and key.reason != FLOOD_REASON:
                    group = (key.reason, key.audit, key.tenant)
                    self._dest_counts[group] = self._dest_counts.get(group, 0) + 1
                restored += 1
        return restored


def worst(severities: list[Severity]) -> Severity:
    return max(severities, key=lambda s: SEVERITY_RANK[s], default=Severity.INFO)
