"""Alert sinks: Alertmanager API v2, PagerDuty Events API v2, Slack, signed webhook.

A sink turns spooled entries (``{"id", "seq", "kind", "fingerprint", "alert"}``, the
alert being the snapshot built by the grouper) into one HTTP request and classifies
the answer:

- 2xx: delivered;
- 429 and 5xx: retry (``Retry-After`` honoured, seconds or HTTP date);
- any other status, 3xx included (redirects are never followed, so a routing key or
  token never travels to another host): rejected, not retried;
- connection errors and timeouts: retry.

Errors are logged with the sink's name and ``scheme://host`` only: never the full URL
(Slack and webhook URLs carry tokens), a routing key, or a response body.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import hmac
import json
import ssl
import time
from typing import Any

import aiohttp

from sidecar.alerts.config import DeliverySettings, SinkConfig
from sidecar.alerts.grouping import FLOOD_REASON, RESOLVE, TRIGGER
from sidecar.alerts.model import SEVERITY_RANK
from sidecar.decision import Severity, iso_time

SIGNATURE_HEADER = "X-Egress-Sidecar-Signature"
TIMESTAMP_HEADER = "X-Egress-Sidecar-Timestamp"
EVENT_ID_HEADER = "X-Egress-Sidecar-Event-Id"
DEDUP_HEADER = "X-Egress-Sidecar-Dedup-Key"
USER_AGENT = "egress-sidecar-alerts/1"


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryResult:
    ok: bool
    retry: bool = False
    retry_after: float | None = None
    status: int | None = None
    error: str = ""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(status: int, headers: Any) -> DeliveryResult:
    if 200 <= status < 300:
        return DeliveryResult(ok=True, status=status)
    if status == 429 or 500 <= status < 600:
        return DeliveryResult(
            ok=False,
            retry=True,
            retry_after=parse_retry_after(headers.get("Retry-After")),
            status=status,
            error=f"HTTP {status}",
        )
    return DeliveryResult(ok=False, retry=False, status=status, error=f"HTTP {status}")


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The webhook signature: ``v1=`` + hex HMAC-SHA256(key, timestamp + "." + body)."""
    mac = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    key: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Reference verifier (what a receiver does); see docs/alerts.md."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), signature)


class Sink:
    """Base class: filtering, request sending and answer classification."""

    max_batch = 1
    path = ""

    def __init__(
        self, config: SinkConfig, delivery: DeliverySettings, *, firing_ttl: float = 180.0
    ) -> None:
        self.config = config
        self.delivery = delivery
        self.firing_ttl = firing_ttl
        self.name = config.name
        self._ssl: ssl.SSLContext | None = None
        if config.ca_file:
            self._ssl = ssl.create_default_context()
            self._ssl.load_verify_locations(cafile=config.ca_file)

    def accepts(self, kind: str, severity: Severity, audit: bool) -> bool:
        if SEVERITY_RANK[severity] < SEVERITY_RANK[self.config.min_severity]:
            return False
        if audit and not self.config.include_audit:
            return False
        return kind in (TRIGGER, RESOLVE) or self.config.send_updates

    def url(self) -> str:
        return (
            self.config.url_value().rstrip("/") + self.path
            if self.path
            else (self.config.url_value())
        )

    def headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.config.bearer_token is not None:
            headers["Authorization"] = "Bearer " + self.config.bearer_token.reveal()
        return headers

    def render(self, entries: list[dict[str, Any]]) -> Any:
        raise NotImplementedError

    async def send(
        self, session: aiohttp.ClientSession, entries: list[dict[str, Any]]
    ) -> DeliveryResult:
        body = json.dumps(self.render(entries), separators=(",", ":"), ensure_ascii=True).encode()
        headers = self.headers(body)
        if len(entries) == 1:
            headers[EVENT_ID_HEADER] = str(entries[0]["id"])
            headers[DEDUP_HEADER] = str(entries[0]["fingerprint"])
        try:
            async with session.post(
                self.url(),
                data=body,
                headers=headers,
                allow_redirects=False,
                ssl=self._ssl if self._ssl is not None else True,
                timeout=aiohttp.ClientTimeout(total=self.delivery.timeout),
            ) as resp:
                await resp.read()
                return classify(resp.status, resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return DeliveryResult(ok=False, retry=True, error=type(exc).__name__)


def _alertname(alert: dict[str, Any]) -> str:
    return (
        "EgressSidecarAlertFlood" if alert["reason"] == FLOOD_REASON else ("EgressSidecarRefusal")
    )


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


class AlertmanagerSink(Sink):
    """POST /api/v2/alerts. Labels identify the alert; firing alerts are resent while
    active with ``endsAt`` a few resend intervals ahead (so a dead sidecar's alerts
    expire); a resolve sends ``endsAt`` = now."""

    path = "/api/v2/alerts"

    @property
    def max_batch(self) -> int:  # type: ignore[override]
        return self.delivery.batch_size

    def render(self, entries: list[dict[str, Any]]) -> Any:
        now = time.time()
        return [self.render_one(e["alert"], e["kind"], now) for e in entries]

    def render_one(self, alert: dict[str, Any], kind: str, now: float) -> dict[str, Any]:
        pod = alert.get("pod") or {}
        labels = {
            "alertname": _alertname(alert),
            "severity": alert["severity"],
            "reason": alert["reason"],
            "destination": alert["destination"],
            "audit": "true" if alert["audit"] else "false",
            "egress_fingerprint": alert["fingerprint"],
            "source": "egress-sidecar",
            "tenant": alert.get("tenant") or "",
            "namespace": pod.get("namespace") or "",
            "pod": pod.get("name") or "",
        }
        labels = {k: v for k, v in labels.items() if v}
        ev = alert.get("evidence") or {}
        annotations = {
            "summary": alert["summary"],
            "count": str(alert["count"]),
            "first_seen": alert["first_seen"],
            "last_seen": alert["last_seen"],
            "suppressed": str(alert.get("suppressed") or 0),
            "sample_hosts": ", ".join(h for h in alert.get("sample_hosts") or [] if h),
            "node": pod.get("node") or "",
        }
        for field in (
            "host",
            "port",
            "path",
            "method",
            "rule",
            "provider",
            "mode",
            "detail",
            "verdict",
        ):
            annotations[field] = _s(ev.get(field))
        if alert.get("suppressed_by_reason"):
            annotations["suppressed_by_reason"] = _s(alert["suppressed_by_reason"])
        annotations = {k: v for k, v in annotations.items() if v}
        starts = float(alert.get("first_seen_ts") or now)
        ends = now if kind == RESOLVE else now + self.firing_ttl
        out: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": iso_time(min(starts, now)),
            "endsAt": iso_time(max(ends, starts)),
        }
        if self.config.generator_url:
            out["generatorURL"] = self.config.generator_url
        return out


class PagerDutySink(Sink):
    """Events API v2: ``/v2/enqueue`` with routing_key, dedup_key = fingerprint."""

    path = "/v2/enqueue"

    def render(self, entries: list[dict[str, Any]]) -> Any:
        entry = entries[0]
        alert = entry["alert"]
        routing_key = self.config.routing_key.reveal() if self.config.routing_key else ""
        if entry["kind"] == RESOLVE:
            return {
                "routing_key": routing_key,
                "event_action": "resolve",
                "dedup_key": alert["fingerprint"],
            }
        pod = alert.get("pod") or {}
        details = {
            "reason": alert["reason"],
            "destination": alert["destination"],
            "tenant": alert.get("tenant"),
            "audit": alert["audit"],
            "count": alert["count"],
            "first_seen": alert["first_seen"],
            "last_seen": alert["last_seen"],
            "suppressed": alert.get("suppressed") or 0,
            "suppressed_by_reason": alert.get("suppressed_by_reason") or {},
            "sample_hosts": alert.get("sample_hosts") or [],
            "evidence": alert.get("evidence") or {},
            "pod": pod,
        }
        return {
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": alert["fingerprint"],
            "payload": {
                "summary": str(alert["summary"])[:1024],
                "source": (pod.get("name") or "egress-sidecar")[:255],
                "severity": alert["severity"],
                "timestamp": alert["last_seen"],
                "component": "egress-sidecar",
                "group": pod.get("namespace") or None,
                "class": alert["reason"],
                "custom_details": details,
            },
        }


def slack_escape(text: Any) -> str:
    """Slack mrkdwn escaping: no mentions (<!channel>), links or code-span breaks."""
    return (
        str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "'")
    )


class SlackSink(Sink):
    """Incoming webhook: one message per trigger and per resolve."""

    def render(self, entries: list[dict[str, Any]]) -> Any:
        alert = entries[0]["alert"]
        kind = entries[0]["kind"]
        ev = alert.get("evidence") or {}
        icon = {"critical": ":rotating_light:", "warning": ":warning:"}.get(
            alert["severity"], ":information_source:"
        )
        if kind == RESOLVE:
            head = f":white_check_mark: *RESOLVED* {slack_escape(alert['summary'])}"
        else:
            head = f"{icon} *{alert['severity'].upper()}* {slack_escape(alert['summary'])}"
        pod = alert.get("pod") or {}
        lines = [head]
        for label, value in (
            ("host", ev.get("host")),
            ("port", ev.get("port")),
            ("path", ev.get("path")),
            ("rule", ev.get("rule")),
            ("tenant", alert.get("tenant")),
            ("pod", f"{pod.get('namespace', '')}/{pod.get('name', '')}"),
            ("count", alert["count"]),
            ("fingerprint", alert["fingerprint"]),
        ):
            if value not in (None, "", "/"):
                lines.append(f"{label}: `{slack_escape(value)}`")
        return {"text": "\n".join(lines)}


class WebhookSink(Sink):
    """Generic JSON webhook, signed: see `sign` and docs/alerts.md."""

    def render(self, entries: list[dict[str, Any]]) -> Any:
        entry = entries[0]
        return {
            "version": 1,
            "id": entry["id"],
            "kind": entry["kind"],
            "status": entry["alert"]["status"],
            "dedup_key": entry["fingerprint"],
            "alert": {
                k: v
                for k, v in entry["alert"].items()
                if k not in ("first_seen_ts", "last_seen_ts")
            },
        }

    def headers(self, body: bytes) -> dict[str, str]:
        headers = super().headers(body)
        ts = str(int(time.time()))
        key = self.config.hmac_key.reveal().encode() if self.config.hmac_key else b""
        headers[TIMESTAMP_HEADER] = ts
        headers[SIGNATURE_HEADER] = sign(key, ts, body)
        return headers


SINK_CLASSES: dict[str, type[Sink]] = {
    "alertmanager": AlertmanagerSink,
    "pagerduty": PagerDutySink,
    "slack": SlackSink,
    "webhook": WebhookSink,
}


def build_sink(config: SinkConfig, delivery: DeliverySettings, *, firing_ttl: float) -> Sink:
    return SINK_CLASSES[config.type](config, delivery, firing_ttl=firing_ttl)
