"""Prometheus metrics of the alert pipeline (`egress_sidecar_alerts_*`).

Every label is bounded: ``sink`` is a configured sink name (validated, at most a few),
``severity`` / ``kind`` / ``reason`` / ``cause`` / ``where`` take the fixed values below.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from sidecar.decision import Severity

DROP_REASONS = ("rejected", "queue_full", "expired")
SUPPRESS_CAUSES = ("rate_cap", "table_full")
KINDS = ("trigger", "update", "resolve")
WHERE = ("submit", "flush", "deliver", "state")


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry, sinks: list[str]) -> None:
        p = "egress_sidecar_alerts_"
        self.refusals = Counter(
            p + "refusals",
            "Refusals (block and would_block) submitted to the alert pipeline.",
            ["severity"],
            registry=registry,
        )
        self.suppressed = Counter(
            p + "suppressed",
            "Refusals folded into an alert_flood alert by the alert caps.",
            ["cause"],
            registry=registry,
        )
        self.notifications = Counter(
            p + "notifications",
            "Alert notifications produced by grouping (before sinks).",
            ["kind"],
            registry=registry,
        )
        self.active = Gauge(
            p + "active",
            "Alerts currently firing (grouped).",
            ["severity"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.sent = Counter(
            p + "sent", "Alert notifications delivered (2xx).", ["sink"], registry=registry
        )
        self.retried = Counter(
            p + "retried",
            "Delivery attempts that failed and will be retried.",
            ["sink"],
            registry=registry,
        )
        self.dropped = Counter(
            p + "dropped",
            "Alert notifications given up (rejected = non-retryable 4xx/3xx).",
            ["sink", "reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            p + "queue_depth",
            "Alert notifications waiting for delivery.",
            ["sink"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.last_success = Gauge(
            p + "last_success_timestamp_seconds",
            "Unix time of the last delivery.",
            ["sink"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.spool_errors = Counter(
            p + "spool_errors",
            "Spool directory writes or removals that failed.",
            ["sink"],
            registry=registry,
        )
        self.quarantined = Counter(
            p + "spool_quarantined",
            "Spool files that could not be read and were quarantined.",
            registry=registry,
        )
        self.internal_errors = Counter(
            p + "internal_errors",
            "Unexpected errors inside the alert pipeline (contained).",
            ["where"],
            registry=registry,
        )
        for sev in Severity:
            self.refusals.labels(sev.value)
            self.active.labels(sev.value)
        for cause in SUPPRESS_CAUSES:
            self.suppressed.labels(cause)
        for kind in KINDS:
            self.notifications.labels(kind)
        for where in WHERE:
            self.internal_errors.labels(where)
        for sink in sinks:
            self.sent.labels(sink)
            self.retried.labels(sink)
            self.queue_depth.labels(sink)
            self.last_success.labels(sink)
            self.spool_errors.labels(sink)
            for reason in DROP_REASONS:
                self.dropped.labels(sink, reason)
