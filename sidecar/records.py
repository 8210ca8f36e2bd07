"""Sinks fed by one `Decision`: the JSON decision log and the Prometheus counters.

Every Prometheus metric of the sidecar is declared here, one class per area (`Metrics`
for decisions and the policy, then credentials, workers, usage, tokens, DLP, request
inspection, client TLS, DNS and alerts); the addons take their series from these.

Label values are bounded: decision and reason come from enums, provider from the
policy's provider names (anything else is "none"), so an attacker choosing host
names cannot grow the label set.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

from sidecar.decision import Decision, Severity
from sidecar.line_writer import LineWriter

NO_PROVIDER = "none"
# One encoder for every line: json.dumps with non-default options builds a new one per
# call, which shows in the profile of a refusal flood.
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)

# *_created series double the exposition for no use to alerting rules.
disable_created_metrics()
# Gauges say multiprocess_mode="livemax": with --workers only the supervisor sets them
# (workers leave theirs at 0), and a dead process's value must not linger. Ignored in
# one process.


class Children[M: MetricWrapperBase]:
    """A labelled metric's children, found with one dict look-up: `labels()` turns every
    value into a str and takes a lock on each call (~5 us; a request made 3-4, issue 17).
    Holds what the metric itself holds (one child per label set, never removed here), so
    it is bounded as the metric's label values are."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[object, ...], M] = {}

    def __call__(self, *values: object) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "egress_sidecar_decisions",
            "Egress decisions by outcome, reason code and provider.",
            ["decision", "reason", "provider"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "egress_sidecar_policy_reload",
            "Policy (re)loads by result.",
            ["result"],
            registry=self.registry,
        )
        self.reload_ok = Gauge(
            "egress_sidecar_policy_last_reload_success",
            "1 if the last policy (re)load succeeded, 0 if the last good policy is kept.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.policy_loaded_at = Gauge(
            "egress_sidecar_policy_loaded_timestamp_seconds",
            "When the policy in force was loaded.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.policy_endpoints = Gauge(
            "egress_sidecar_policy_endpoints",
            "Number of endpoints in the policy in force.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.dns_errors = Counter(
            "egress_sidecar_upstream_dns_errors",
            "Upstream name resolutions that failed, by kind (sidecar.resolver.ERROR_KINDS).",
            ["error"],
            registry=self.registry,
        )
        self.refusals_paced = Counter(  # issue 10: refusal pacing (--refusal-rate)
            "egress_sidecar_refusals_paced",
            "Refusals whose answer was held back because refusals came faster than "
            "--refusal-rate (each is still logged, counted and alerted at once).",
            registry=self.registry,
        )
        self.decision_lines_lost = Counter(
            "egress_sidecar_decision_lines_lost",
            "Decision lines not written because stdout's reader was gone or too slow "
            "(the decision itself was still counted and alerted).",
            registry=self.registry,
        )
        self.ready = Gauge(
            "egress_sidecar_ready",
            "1 once the policy is loaded and every listener is bound.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._providers: frozenset[str] = frozenset()
        self._decisions = Children(self.decisions)

    def set_providers(self, providers: frozenset[str]) -> None:
        self._providers = providers

    def provider_label(self, provider: str | None) -> str:
        return provider if provider in self._providers else NO_PROVIDER

    def record(self, decision: Decision) -> None:
        self._decisions(
            decision.verdict.value,
            decision.reason.value,
            self.provider_label(decision.provider),
        ).inc()


class CredentialMetrics:
    """Provider keys added, secret rotations seen, and which policy secrets have a value
    (sidecar.runner.credential_layer feeds them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.injections = Counter(
            "egress_sidecar_credential_injections",
            "Provider keys added.",
            ["provider"],
            registry=registry,
        )
        self.changes = Counter(
            "egress_sidecar_secret_changes",
            "Secret value changes seen (rotations), by policy secret name.",
            ["secret"],
            registry=registry,
        )
        self.available = Gauge(
            "egress_sidecar_secret_available",
            "1 if the secret a provider's credential names has a usable value.",
            ["secret"],
            registry=registry,
            multiprocess_mode="livemax",
        )


class WorkerMetrics:
    """`run --workers N` (sidecar/supervisor.py): the supervisor's own series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.running = Gauge(
            "egress_sidecar_workers",
            "Proxy worker processes running and ready (--workers).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.restarts = Counter(
            "egress_sidecar_worker_restarts",
            "Worker processes restarted after they died.",
            registry=registry,
        )


class UsageMetrics:
    """Usage limits and key suspension (sidecar/addons/usage.py)."""

    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self.backend_up = Gauge(
            "egress_sidecar_usage_backend_up",
            "1 while the usage-limit backend answers (local state file or Redis).",
            ["backend"],
            registry=registry,
            multiprocess_mode="livemin",  # with --workers: 0 if any process lost it
        ).labels(backend)
        self.backend_failures = Counter(
            "egress_sidecar_usage_backend_failures",
            "Usage-limit backend failures, by what was done about them.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("refused", "allowed", "suspension_from_cache"):
            self.backend_failures.labels(outcome)
        self.suspensions = Counter(
            "egress_sidecar_key_suspensions",
            "Tenants suspended, automatically (anomaly) or by an admin.",
            ["by"],
            registry=registry,
        )
        for by in ("automatic", "admin"):
            self.suspensions.labels(by)
        self.rate_limited = Counter(
            "egress_sidecar_rate_limited",
            "Requests refused by a usage limit, by scope kind and limit.",
            ["scope", "limit"],
            registry=registry,
        )


class TokenMetrics:
    """Tokens read from provider responses (sidecar/addons/responses.py)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.tokens = Counter(
            "egress_sidecar_tokens",
            "Tokens in provider responses, by tenant, provider, model (the policy's names, "
            "else 'other') and direction (input | output).",
            ["tenant", "provider", "model", "direction"],
            registry=registry,
        )


class DlpMetrics:
    """Secrets found in request bodies (sidecar/addons/dlp.py)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.findings = Counter(
            "egress_sidecar_dlp_findings",
            "Secrets found in request bodies, by kind and the action taken.",
            ["kind", "action", "provider"],
            registry=registry,
        )
        self.parses = Counter(
            "egress_sidecar_dlp_body_parses",
            "Request bodies DLP parsed itself: request inspection left no parsed document "
            "for them (each body is parsed once).",
            registry=registry,
        )


class RequestInspectionMetrics:
    """Request inspection (sidecar/addons/request_inspection.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refusals = Counter(
            "egress_sidecar_request_inspection_refusals",
            "Provider requests (or WebSocket messages) refused or would_block by request "
            "inspection, by reason and the kind of field that triggered it.",
            ["reason", "field"],
            registry=registry,
        )
        self.inspected = Counter(
            "egress_sidecar_request_inspected_bytes",
            "Decoded bytes of provider request bodies and WebSocket messages inspected.",
            registry=registry,
        )


class ClientTlsMetrics:
    """Failed TLS handshakes with the gateway (sidecar/addons/client_tls.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter(
            "egress_sidecar_client_tls_failures",
            "TLS handshakes with the gateway that failed, by cause "
            "(untrusted_ca: the client rejected the sidecar CA) and listener mode.",
            ["cause", "mode"],
            registry=registry,
        )


class DnsMetrics:
    """The DNS listener (sidecar/dns_server.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.limited = Counter(
            "egress_sidecar_dns_questions_limited",
            "DNS questions refused by a listener limit (every one, unlike decision lines).",
            ["limit"],
            registry=registry,
        )


# Label values of the alert pipeline's series (AlertMetrics), all fixed.
ALERT_DROP_REASONS = ("rejected", "queue_full", "expired")
ALERT_SUPPRESS_CAUSES = ("rate_cap", "table_full")
ALERT_KINDS = ("trigger", "update", "resolve")
ALERT_ERROR_PLACES = ("submit", "flush", "deliver", "state")


class AlertMetrics:
    """The alert pipeline (sidecar/alerts/pipeline.py), `egress_sidecar_alerts_*`.

    Every label is bounded: ``sink`` is a configured sink name (validated, at most a
    few), ``severity`` / ``kind`` / ``reason`` / ``cause`` / ``where`` take the fixed
    values above.
    """

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
        for cause in ALERT_SUPPRESS_CAUSES:
            self.suppressed.labels(cause)
        for kind in ALERT_KINDS:
            self.notifications.labels(kind)
        for where in ALERT_ERROR_PLACES:
            self.internal_errors.labels(where)
        for sink in sinks:
            self.sent.labels(sink)
            self.retried.labels(sink)
            self.queue_depth.labels(sink)
            self.last_success.labels(sink)
            self.spool_errors.labels(sink)
            for reason in ALERT_DROP_REASONS:
                self.dropped.labels(sink, reason)


class LineStream(Protocol):
    """Where decision lines go: stdout, or a worker's stream to its supervisor."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class DecisionLog:
    """One JSON object per line on stdout (or another stream).

    Stdout is written by a `LineWriter`: a reader that stops reading or goes away
    never blocks the proxy or its shutdown; lines it cannot take are counted as lost.
    """

    def __init__(
        self,
        stream: LineStream | None = None,
        render: Callable[[Decision], dict[str, Any]] | None = None,
        on_lost: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._stream = stream
        self._writer = LineWriter(sys.stdout.fileno(), on_lost) if stream is None else None
        self._render = (
            render or Decision.as_log_record
        )  # our record, or sidecar.ocsf.to_ocsf (--decision-format)

    def record(self, decision: Decision) -> None:
        self.write(self._render(decision))

    def write_lines(self, data: bytes) -> None:
        """Whole lines already encoded (a worker's, relayed by the supervisor), through
        the same writer as this process's own lines: never interleaved, never blocking."""
        if self._writer is not None:
            self._writer.write(data)
        elif self._stream is not None:
            self._stream.write(data.decode())
            self._stream.flush()

    def write(self, record: dict[str, Any]) -> None:
        line = _LINE_ENCODER.encode(record) + "\n"
        if self._writer is not None:
            self._writer.write(line.encode())
        elif self._stream is not None:
            self._stream.write(line)
            self._stream.flush()


class Recorder:
    """Fans one decision out to every sink; a failing sink never fails the request."""

    def __init__(
        self,
        sinks: list[Callable[[Decision], None]],
        on_error: Callable[[str], None],
        scrub: Callable[[Decision], Decision] | None = None,
    ) -> None:
        self._sinks = sinks
        self._on_error = on_error
        self._scrub = scrub

    def add(self, sink: Callable[[Decision], None]) -> None:
        self._sinks.append(sink)

    def __call__(self, decision: Decision) -> None:
        if self._scrub is not None:
            try:
                decision = self._scrub(decision)
            except Exception:  # noqa: BLE001 - never log an unscrubbed decision
                self._on_error("decision scrubber failed; decision dropped from records")
                return
        for sink in self._sinks:
            try:
                sink(decision)
            except Exception as exc:  # noqa: BLE001 - a sink must never break the proxy
                self._on_error(f"decision sink {type(exc).__name__}")
