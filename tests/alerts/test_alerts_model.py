"""Alert model: severity table, bounded destination class, fingerprint, redaction."""

from __future__ import annotations

import random
import string

import pytest
from alerts_helpers import PLANTED_KEY, refusal
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.alerts.model import (
    DETAIL_LIMIT,
    PATH_LIMIT,
    REDACTED,
    SEVERITY_BY_REASON,
    destination_class,
    key_for,
    pod_identity,
    redact,
    redact_path,
    registrable_domain,
    safe_evidence,
    severity_for,
)
from sidecar.decision import Reason, Severity, Verdict

CRITICAL = [
    Reason.METADATA_ADDRESS,
    Reason.PRIVATE_ADDRESS,
    Reason.GATEWAY_HOLDS_CREDENTIAL,
    Reason.CREDENTIAL_REFLECTED,
    Reason.DNS_TUNNEL_SUSPECTED,
    Reason.DESTINATION_MISMATCH,
    Reason.HOST_MISMATCH,
]
WARNING = [
    Reason.HOST_NOT_ALLOWED,
    Reason.PORT_NOT_ALLOWED,
    Reason.PATH_NOT_ALLOWED,
    Reason.METHOD_NOT_ALLOWED,
    Reason.IP_LITERAL,
    Reason.DNS_NAME_NOT_ALLOWED,
]


@pytest.mark.parametrize("reason", CRITICAL)
def test_critical_reasons(reason: Reason) -> None:
    assert severity_for(reason, Verdict.BLOCK) == (Severity.CRITICAL, False)
    assert severity_for(reason, Verdict.WOULD_BLOCK) == (Severity.WARNING, True)


@pytest.mark.parametrize("reason", WARNING)
def test_warning_reasons(reason: Reason) -> None:
    assert severity_for(reason, Verdict.BLOCK) == (Severity.WARNING, False)
    assert severity_for(reason, Verdict.WOULD_BLOCK) == (Severity.INFO, True)


def test_every_reason_has_a_severity() -> None:
    assert set(SEVERITY_BY_REASON) == set(Reason)
    assert severity_for("some_future_reason", Verdict.BLOCK) == (Severity.WARNING, False)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("models.litellm.cloud", "litellm.cloud"),
        ("a.b.c.evil.example", "evil.example"),
        ("EVIL.example.", "evil.example"),
        ("x.y.bbc.co.uk", "bbc.co.uk"),
        ("localhost", "localhost"),
        ("169.254.169.254", "ip:v4"),
        ("[fd00:ec2::254]", "ip:v6"),
        ("fd00:ec2::254", "ip:v6"),
        ("1.2.3", "invalid"),
        ("", "invalid"),
    ],
)
def test_registrable_domain(host: str, expected: str) -> None:
    assert registrable_domain(host) == expected


def test_spraying_subdomains_keeps_one_destination_class() -> None:
    rng = random.Random(1)
    classes = {
        destination_class(
            refusal(host="".join(rng.choices(string.ascii_lowercase, k=40)) + f".{i}.exfil.example")
        )
        for i in range(500)
    }
    assert classes == {"exfil.example"}


def test_data_in_the_domain_label_is_redacted_from_the_class() -> None:
    data = "aGVsbG8gd29ybGQgc2stcHJvai0xMjM0NTY3ODkw"  # base64 with digits, 40 chars
    assert destination_class(refusal(host=f"{data}.com")) == f"{REDACTED}.com"


def test_policy_rule_is_the_destination_class_when_an_entry_decided() -> None:
    d = refusal(
        Reason.PATH_NOT_ALLOWED, host="api.openai.com", rule="providers.openai", path="/v1/files"
    )
    assert destination_class(d) == "rule:providers.openai"
    d2 = refusal(Reason.METADATA_ADDRESS, host="169.254.169.254", rule="netguard")
    assert destination_class(d2) == "ip:v4"


def test_fingerprint_is_stable_and_separates_tenant_audit_and_reason() -> None:
    base = key_for(refusal(host="a.evil.example", tenant="team-a"))
    assert base == key_for(refusal(host="b.evil.example", tenant="team-a", path="/x"))
    assert base.fingerprint("llm") == key_for(
        refusal(host="c.evil.example", tenant="team-a")
    ).fingerprint("llm")
    others = [
        key_for(refusal(host="a.evil.example", tenant="team-b")),
        key_for(refusal(host="a.evil.example", tenant="team-a", verdict=Verdict.WOULD_BLOCK)),
        key_for(refusal(Reason.PORT_NOT_ALLOWED, host="a.evil.example", tenant="team-a")),
        key_for(refusal(host="a.other.example", tenant="team-a")),
    ]
    fps = {k.fingerprint("llm") for k in others} | {base.fingerprint("llm")}
    assert len(fps) == 5
    assert base.fingerprint("llm") != base.fingerprint("other-namespace")
    # Pinned: the fingerprint is the dedup key at receivers; it must not drift.
    assert len(base.fingerprint("llm")) == 16


# ----------------------------------------------------------------------- redaction

REDACTION_ROWS = [
    # (field text, must not contain, must contain)
    (f"key {PLANTED_KEY} leaked", PLANTED_KEY[:12], REDACTED),
    ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop", REDACTED),
    ("aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE", REDACTED),
    ("secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY x", "wJalrXUtnFEMI", REDACTED),
    ("anthropic sk-ant-api03-abcdefghijklmnop", "abcdefghijklmnop", REDACTED),
    ("slack xoxb-1234-5678-abcdefgh", "xoxb-1234", REDACTED),
    ("google AIzaSyA1234567890abcdefghijklmnopqrstu", "AIzaSy", REDACTED),
    ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abc", REDACTED),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGci", REDACTED),
    ("pct sk%2Dproj%2DAbC123xYzAbC123xYzAbC123xYzAbC123", "AbC123xYzAbC", REDACTED),
    ("upstream said 403 for api.openai.com", "", "upstream said 403 for api.openai.com"),
    ("line\nbreak\x00and\x1b[31mansi", "\n", "line?break?and?[31mansi"),
]


@pytest.mark.parametrize(("text", "absent", "present"), REDACTION_ROWS)
def test_redact_rows(text: str, absent: str, present: str) -> None:
    out = redact(text, DETAIL_LIMIT)
    assert out is not None
    if absent:
        assert absent not in out
    assert present in out


def test_redact_path_drops_query_and_bounds_length() -> None:
    assert redact_path("/v1/chat/completions?key=" + PLANTED_KEY) == "/v1/chat/completions"
    assert redact_path("/a#frag") == "/a"
    long = "/" + "a" * 10_000
    out = redact_path(long)
    assert out is not None and len(out) <= PATH_LIMIT
    assert redact_path("/v1/models/gpt-4o-mini-2024-07-18") == "/v1/models/gpt-4o-mini-2024-07-18"


def test_safe_evidence_never_carries_the_planted_key() -> None:
    d = refusal(
        Reason.GATEWAY_HOLDS_CREDENTIAL,
        host="api.openai.com",
        rule="providers.openai",
        path=f"/v1/{PLANTED_KEY}/x?api_key={PLANTED_KEY}",
        detail=f"authorization header held {PLANTED_KEY}" + "x" * 5000,
        tenant=f"t-{PLANTED_KEY}",
        method="POST",
    )
    ev = safe_evidence(d)
    text = repr(ev)
    assert PLANTED_KEY[8:20] not in text
    assert len(ev["detail"]) <= DETAIL_LIMIT
    assert ev["path"].startswith("/v1/")


@settings(max_examples=300, deadline=None)
@given(
    host=st.text(max_size=400),
    path=st.one_of(st.none(), st.text(max_size=2000)),
    detail=st.text(max_size=2000),
    tenant=st.one_of(st.none(), st.text(max_size=300)),
    rule=st.text(max_size=300),
    port=st.integers(min_value=-5, max_value=100_000),
)
def test_evidence_is_bounded_for_any_input(
    host: str, path: str | None, detail: str, tenant: str | None, rule: str, port: int
) -> None:
    d = refusal(host=host, path=path, detail=detail, tenant=tenant, rule=rule, port=port)
    ev = safe_evidence(d)
    assert len(ev["host"] or "") <= 253
    assert len(ev["path"] or "") <= PATH_LIMIT
    assert len(ev["detail"] or "") <= DETAIL_LIMIT
    assert 0 <= ev["port"] < 65536
    key = key_for(d)
    assert len(key.destination) <= 70 and len(key.tenant) <= 64
    for value in ev.values():
        if isinstance(value, str):
            assert "\n" not in value and "\r" not in value


def test_pod_identity_from_downward_api_env() -> None:
    env = {"POD_NAME": "gw-0", "POD_NAMESPACE": "llm", "NODE_NAME": "n1\nX"}
    assert pod_identity(env=env) == {"name": "gw-0", "namespace": "llm", "node": "n1_X"}
    assert pod_identity({"name": "override"}, env=env)["name"] == "override"
    assert pod_identity({"POD_NAMESPACE": "other"}, env=env)["namespace"] == "other"
    assert pod_identity(env={}) == {"name": "", "namespace": "", "node": ""}
