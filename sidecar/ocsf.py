"""Decision events in OCSF 1.5.0 (Open Cybersecurity Schema Framework), for SIEMs. Pure.

`--decision-format ocsf` (`EGRESS_SIDECAR_DECISION_FORMAT=ocsf`) writes each decision
line as an OCSF event instead of our own record (docs/ocsf.md):

- HTTP Activity (4002) for a decision about an HTTP request (it has a method),
- DNS Activity (4003) for the DNS listener's decisions,
- Network Activity (4001) for the rest: connection-level decisions (a refused CONNECT
  or TLS ClientHello, a connection that ended without a request, limits).

Our reason code is `status_code` and `metadata.event_code`, the deciding rule is
`firewall_rule` (the Security Control profile's object: `uid` the rule id, `desc`
its file:line), and everything OCSF has no attribute for (the reason, rule, source,
our verdict, tenant, mode, provider) is also under `unmapped.egress_sidecar`, the
place OCSF documents for a producer's own fields. Like the JSON line, an event holds
no header, body or query: the path only.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from sidecar.decision import REASONS, Decision, Severity, Verdict

OCSF_VERSION = "1.5.0"
PRODUCT = {"name": "egress-sidecar", "vendor_name": "egress-sidecar"}
NETWORK_ACTIVITY, HTTP_ACTIVITY, DNS_ACTIVITY = 4001, 4002, 4003
_CATEGORY_NETWORK = 4
_CLASS_NAMES = {
    NETWORK_ACTIVITY: "Network Activity",
    HTTP_ACTIVITY: "HTTP Activity",
    DNS_ACTIVITY: "DNS Activity",
}
# HTTP Activity activity_id by method; also OCSF's http_method enum (1.5.0 has no PATCH:
# activity 99 Other, the method in unmapped only).
_HTTP_ACTIVITIES = {
    "CONNECT": (1, "Connect"), "DELETE": (2, "Delete"), "GET": (3, "Get"), "HEAD": (4, "Head"),
    "OPTIONS": (5, "Options"), "POST": (6, "Post"), "PUT": (7, "Put"), "TRACE": (8, "Trace"),
}  # fmt: skip
_OTHER = (99, "Other")
# severity_id: a block at the reason's severity; a would_block one level lower.
_SEVERITY = {
    (Verdict.BLOCK, Severity.CRITICAL): (5, "Critical"),
    (Verdict.BLOCK, Severity.WARNING): (3, "Medium"),
    (Verdict.WOULD_BLOCK, Severity.CRITICAL): (4, "High"),
    (Verdict.WOULD_BLOCK, Severity.WARNING): (2, "Low"),
}
_INFORMATIONAL = (1, "Informational")
# (action_id, disposition_id, status_id): audit mode let a would_block through, logged.
_OUTCOME = {
    Verdict.ALLOW: (1, 1, 1),  # Allowed, Allowed, Success
    Verdict.BLOCK: (2, 2, 2),  # Denied, Blocked, Failure
    Verdict.WOULD_BLOCK: (1, 17, 1),  # Allowed, Logged, Success
}


def event_class(decision: Decision) -> int:
    if decision.mode == "dns":
        return DNS_ACTIVITY
    if decision.method is not None:
        return HTTP_ACTIVITY
    return NETWORK_ACTIVITY


def to_ocsf(decision: Decision) -> dict[str, Any]:
    """The OCSF event for one decision (validated against the published schema in tests)."""
    class_uid = event_class(decision)
    activity_id, activity = _activity(class_uid, decision)
    severity_id, severity = _SEVERITY.get(
        (decision.verdict, REASONS[decision.reason].severity), _INFORMATIONAL
    )
    action_id, disposition_id, status_id = _OUTCOME[decision.verdict]
    event: dict[str, Any] = {
        "category_uid": _CATEGORY_NETWORK,
        "category_name": "Network Activity",
        "class_uid": class_uid,
        "class_name": _CLASS_NAMES[class_uid],
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id,
        "time": int(decision.at * 1000),
        "severity_id": severity_id,
        "severity": severity,
        "action_id": action_id,
        "disposition_id": disposition_id,
        "status_id": status_id,
        "status_code": decision.reason.value,
        "message": REASONS[decision.reason].meaning,
        "metadata": {
            "version": OCSF_VERSION,
            "product": PRODUCT,
            "profiles": ["security_control"],
            "event_code": decision.reason.value,
        },
        "firewall_rule": _rule(decision),
        "unmapped": {"egress_sidecar": _ours(decision)},
    }
    if decision.detail:
        event["status_detail"] = decision.detail
    destination = _endpoint(decision.host, decision.port, decision.address)
    if destination and class_uid != DNS_ACTIVITY:
        event["dst_endpoint"] = destination
    source = _client(decision.client)
    if source or "dst_endpoint" not in event:
        # OCSF wants one endpoint at least: name what we have, even when it is no address.
        event["src_endpoint"] = source or {"name": _printable(decision.client or "-")}
    if class_uid == HTTP_ACTIVITY:
        event["http_request"] = _http_request(decision)
    if class_uid == DNS_ACTIVITY and decision.host not in ("", "-"):
        event["query"] = {"hostname": decision.host}
    return event


def _activity(class_uid: int, decision: Decision) -> tuple[int, str]:
    if class_uid == HTTP_ACTIVITY:
        return _HTTP_ACTIVITIES.get(decision.method or "", _OTHER)
    if class_uid == DNS_ACTIVITY:
        return 1, "Query"
    return (5, "Refuse") if decision.verdict is Verdict.BLOCK else (1, "Open")


def _rule(decision: Decision) -> dict[str, str]:
    rule = {"uid": decision.rule, "name": decision.rule}
    if decision.source:
        rule["desc"] = f"policy entry at {decision.source}"
    return rule


def _ours(decision: Decision) -> dict[str, Any]:
    ours: dict[str, Any] = {
        "decision": decision.verdict.value,
        "reason": decision.reason.value,
        "rule": decision.rule,
    }
    for name in ("source", "provider", "tenant", "mode", "method"):
        value = getattr(decision, name)
        if value is not None:
            ours[name] = value
    return ours


def _endpoint(host: str, port: int, address: str | None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {}
    literal = _ip(host)
    if literal:
        endpoint["ip"] = literal
    elif host and host != "-":
        endpoint["hostname"] = host
    if address and _ip(address):
        endpoint["ip"] = address
    if 0 < port < 65536:
        endpoint["port"] = port
    return endpoint


def _client(client: str | None) -> dict[str, Any]:
    """`host:port` as the adapters write it (IPv6 unbracketed: split at the last colon)."""
    if not client:
        return {}
    host, _, port = client.rpartition(":")
    ip = _ip(host.strip("[]"))
    if not ip:
        return {}
    return {"ip": ip, "port": int(port)} if port.isdigit() and 0 < int(port) < 65536 else {"ip": ip}


def _printable(text: str) -> str:
    return text[:256].encode("ascii", "backslashreplace").decode()


@functools.lru_cache(maxsize=4096)  # pure; hosts and gateway addresses repeat
def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _http_request(decision: Decision) -> dict[str, Any]:
    url: dict[str, Any] = {"port": decision.port}
    if decision.path is not None:
        url["path"] = decision.path
    if not _ip(decision.host):
        url["hostname"] = decision.host
    request: dict[str, Any] = {"url": url}
    if decision.method in _HTTP_ACTIVITIES:  # OCSF's method enum: PATCH is only unmapped
        request["http_method"] = decision.method
    return request
