"""OCSF decision events validate against the published OCSF 1.5.0 schema.

The schema is the one schema.ocsf.io exports, as the `ocsf-json-schema` package carries
it (offline), turned into a JSON Schema per class with the Security Control profile.
The class schemas are closed (additionalProperties false), so a misspelled or invented
attribute fails here.
"""

from __future__ import annotations

import functools
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from sidecar.decision import Decision, Reason, Verdict
from sidecar.engine import PolicyEngine
from sidecar.ocsf import (
    DNS_ACTIVITY,
    HTTP_ACTIVITY,
    NETWORK_ACTIVITY,
    OCSF_VERSION,
    event_class,
    to_ocsf,
)
from sidecar.policy.loader import load_policy
from sidecar.policy.simulate import SimRequest, simulate

CLASS_NAMES = {
    NETWORK_ACTIVITY: "network_activity",
    HTTP_ACTIVITY: "http_activity",
    DNS_ACTIVITY: "dns_activity",
}


@functools.cache
def validator(class_uid: int) -> jsonschema.Draft202012Validator:
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))
    class_schema = schema.get_class_schema(CLASS_NAMES[class_uid], ["security_control"])
    return jsonschema.Draft202012Validator(class_schema)


def valid(event: dict[str, Any]) -> dict[str, Any]:
    errors = sorted(validator(event["class_uid"]).iter_errors(event), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    return event


def test_the_schema_refuses_an_invented_attribute() -> None:
    event = to_ocsf(Decision(Verdict.ALLOW, Reason.ALLOWED, "providers.openai", "a.example", 443))
    event["egress_reason"] = "allowed"
    assert list(validator(event["class_uid"]).iter_errors(event))


ENGINE = PolicyEngine(
    load_policy([Path(__file__).resolve().parents[2] / "policies" / "default.yaml"])
)
REQUESTS = [
    SimRequest("https://api.openai.com/v1/chat/completions", "POST"),
    SimRequest("https://api.openai.com/v1/files/x", "DELETE"),
    SimRequest("https://api.openai.com/v1/files", "PATCH"),
    SimRequest("https://evil.example/steal", "PUT"),
    SimRequest("http://169.254.169.254/latest/meta-data/"),
    SimRequest("https://[2001:db8::1]/"),
    SimRequest("https://api.anthropic.com/v1/models", sni="evil.example"),
    SimRequest("https://api.anthropic.com/v1/models", addresses=(ip_address("10.0.0.1"),)),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: f"{r.method} {r.url}")
def test_http_decisions_are_http_activity(request_: SimRequest) -> None:
    decision = simulate(ENGINE, request_).decision.with_context(client="10.1.2.3:40000")
    event = valid(to_ocsf(decision))
    assert event["class_uid"] == HTTP_ACTIVITY
    assert event["type_uid"] == HTTP_ACTIVITY * 100 + event["activity_id"]
    assert event["status_code"] == decision.reason.value
    assert event["firewall_rule"]["uid"] == decision.rule
    ours = event["unmapped"]["egress_sidecar"]
    assert (ours["reason"], ours["rule"]) == (decision.reason.value, decision.rule)
    assert event["src_endpoint"] == {"ip": "10.1.2.3", "port": 40000}
    assert ours["method"] == request_.method
    if request_.method != "PATCH":  # not in OCSF's enum
        assert event["http_request"]["http_method"] == request_.method


def test_outcomes_map_to_action_and_disposition() -> None:
    base = Decision(Verdict.BLOCK, Reason.METADATA_ADDRESS, "netguard", "169.254.169.254", 80)
    blocked = valid(to_ocsf(base))
    assert (blocked["action_id"], blocked["disposition_id"], blocked["severity_id"]) == (2, 2, 5)
    audit = valid(
        to_ocsf(base.with_context(verdict=Verdict.WOULD_BLOCK, reason=Reason.HOST_NOT_ALLOWED))
    )
    assert (audit["action_id"], audit["disposition_id"], audit["severity_id"]) == (1, 17, 2)
    allowed = valid(to_ocsf(base.with_context(verdict=Verdict.ALLOW, reason=Reason.ALLOWED)))
    assert (allowed["action_id"], allowed["disposition_id"], allowed["severity_id"]) == (1, 1, 1)


CONNECTION_LEVEL = [
    Decision(Verdict.BLOCK, Reason.HOST_MISMATCH, "host_agreement", "api.openai.com", 443,
             client="::1:5555", mode="explicit", detail="sni names another host"),
    Decision(Verdict.BLOCK, Reason.PROTOCOL_NOT_ALLOWED, "netguard", "10.0.0.9", 22,
             client="127.0.0.1:1", mode="transparent", address="10.0.0.9"),
    Decision(Verdict.ALLOW, Reason.ALLOWED, "providers.openai", "api.openai.com", 443,
             provider="openai", mode="explicit", address="2606:4700::1", source="p.yaml:3"),
    Decision(Verdict.BLOCK, Reason.INVALID_HOST, "netguard", "a\\x00b", 443, mode="explicit"),
    Decision(Verdict.BLOCK, Reason.TOO_MANY_CONNECTIONS, "netguard", "-", 0, client="x"),
]  # fmt: skip


@pytest.mark.parametrize("decision", CONNECTION_LEVEL, ids=lambda d: d.reason.value)
def test_connection_level_decisions_are_network_activity(decision: Decision) -> None:
    event = valid(to_ocsf(decision))
    assert event_class(decision) == event["class_uid"] == NETWORK_ACTIVITY
    assert event["activity_id"] == (1 if decision.verdict is Verdict.ALLOW else 5)


DNS = [
    Decision(Verdict.BLOCK, Reason.DNS_NAME_NOT_ALLOWED, "default_deny", "exfil.example", 53,
             client="10.0.0.5:5353", mode="dns"),
    Decision(Verdict.BLOCK, Reason.PROTOCOL_NOT_ALLOWED, "netguard", "-", 53,
             client="10.0.0.5:5353", mode="dns", detail="several questions"),
    Decision(Verdict.ALLOW, Reason.ALLOWED, "providers.openai", "api.openai.com", 53,
             mode="dns", tenant="team-a"),
]  # fmt: skip


@pytest.mark.parametrize("decision", DNS, ids=lambda d: f"{d.reason.value}-{d.host}")
def test_dns_listener_decisions_are_dns_activity(decision: Decision) -> None:
    event = valid(to_ocsf(decision))
    assert event["class_uid"] == DNS_ACTIVITY
    if decision.host != "-":
        assert event["query"] == {"hostname": decision.host}
    assert event["unmapped"]["egress_sidecar"]["mode"] == "dns"


def _settings(argv: list[str]) -> str:
    import argparse

    from sidecar import settings

    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.resolve(parser.parse_args(argv)).decision_format


def test_decision_format_flag_environment_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings([]) == "json"
    monkeypatch.setenv("EGRESS_SIDECAR_DECISION_FORMAT", "OCSF")
    assert _settings([]) == "ocsf"
    assert _settings(["--decision-format", "json"]) == "json"


def test_unknown_decision_format_is_a_clear_error() -> None:
    from sidecar.settings import SettingsError

    with pytest.raises(SettingsError, match="--decision-format 'cef': expected json or ocsf"):
        _settings(["--decision-format", "cef"])
