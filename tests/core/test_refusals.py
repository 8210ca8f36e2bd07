"""Refusal bodies (sidecar/refusals.py): each destination's error format, the reason in
every shape's machine-readable places, and the headers that stop SDK retries."""

from __future__ import annotations

import json

import pytest

from sidecar.decision import Decision, Reason, Verdict
from sidecar.refusals import ErrorFormat, answered_in_tunnel, error_format, proxy_error, render


def refused(host: str, reason: Reason = Reason.PATH_NOT_ALLOWED, detail: str = "") -> Decision:
    return Decision(Verdict.BLOCK, reason, "providers.x", host, 443, detail=detail)


@pytest.mark.parametrize(
    ("host", "fmt"),
    [
        ("api.openai.com", ErrorFormat.OPENAI),
        ("myres.openai.azure.com", ErrorFormat.OPENAI),
        ("api.mistral.ai", ErrorFormat.OPENAI),
        ("api.groq.com", ErrorFormat.OPENAI),
        ("openrouter.ai", ErrorFormat.OPENAI),
        ("api.anthropic.com", ErrorFormat.ANTHROPIC),
        ("generativelanguage.googleapis.com", ErrorFormat.GENERIC),
        ("models.litellm.cloud", ErrorFormat.GENERIC),
        ("openai.azure.com", ErrorFormat.GENERIC),  # the suffix needs a label before it
        ("api.openai.com.evil.com", ErrorFormat.GENERIC),
        ("evil-api.anthropic.com", ErrorFormat.GENERIC),
        ("169.254.169.254", ErrorFormat.GENERIC),
        ("bedrock-runtime.us-east-1.amazonaws.com", ErrorFormat.AWS),
        ("bedrock-runtime-fips.us-gov-west-1.amazonaws.com", ErrorFormat.AWS),
        ("attacker-bucket.s3.us-east-1.amazonaws.com", ErrorFormat.GENERIC),
        ("bedrock-runtime.us-east-1.amazonaws.com.evil.com", ErrorFormat.GENERIC),
    ],
)
def test_error_format_by_destination_host(host, fmt):
    assert error_format(host) is fmt
    assert answered_in_tunnel(host) is (fmt is not ErrorFormat.GENERIC)


# (host, where the SDK finds the code) for every shape
SHAPES = [
    ("api.openai.com", lambda b: b["error"]["code"]),
    ("api.anthropic.com", lambda b: b["error"]["details"]["error_code"]),
    ("unlisted.example.com", lambda b: b["reason"]),
    ("bedrock-runtime.us-east-1.amazonaws.com", lambda b: b["reason"]),
]


def test_aws_shape_is_what_botocore_parses():
    """botocore's rest-json errors: the code from `x-amzn-errortype`, the message from
    the body; parsed here by botocore itself."""
    from botocore.parsers import RestJSONParser

    answer = render(
        refused("bedrock-runtime.us-east-1.amazonaws.com", Reason.GATEWAY_HOLDS_CREDENTIAL), 403
    )
    parsed = RestJSONParser().parse(
        {"status_code": 403, "headers": answer.headers, "body": answer.body}, None
    )
    assert parsed["Error"]["Code"] == "gateway_holds_credential"
    assert parsed["Error"]["Message"].startswith("egress-sidecar refused this request: ")


@pytest.mark.parametrize(("host", "code_of"), SHAPES)
@pytest.mark.parametrize("reason", list(Reason))
def test_reason_is_machine_readable_in_every_shape(host, code_of, reason):
    answer = render(refused(host, reason), 403)
    body = json.loads(answer.body)
    assert code_of(body) == reason.value
    assert body["reason"] == reason.value
    assert answer.headers["x-egress-sidecar-reason"] == reason.value
    assert answer.headers["x-should-retry"] == "false"
    assert answer.headers["content-type"] == "application/json"


def test_openai_shape_is_what_the_openai_sdk_parses():
    body = json.loads(render(refused("api.openai.com", detail="path not listed"), 403).body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "egress_refused"
    assert body["error"]["message"].startswith("egress-sidecar refused this request: ")
    assert "path_not_allowed (path not listed)" in body["error"]["message"]


@pytest.mark.parametrize(
    ("status", "anthropic_type"),
    [
        (401, "authentication_error"),
        (403, "permission_error"),
        (502, "api_error"),
        (503, "api_error"),
    ],
)
def test_anthropic_shape_types_follow_the_status(status, anthropic_type):
    answer = render(refused("api.anthropic.com"), status)
    body = json.loads(answer.body)
    assert answer.status == status
    assert body["type"] == "error"
    assert body["error"]["type"] == anthropic_type
    assert "egress-sidecar" in body["error"]["message"]


def test_generic_shape_keeps_the_documented_fields():
    body = json.loads(render(refused("evil.com", Reason.HOST_NOT_ALLOWED, "no entry"), 403).body)
    assert body["error"] == "egress_refused"
    assert (body["reason"], body["host"], body["port"], body["detail"]) == (
        "host_not_allowed",
        "evil.com",
        443,
        "no entry",
    )


def test_close_is_only_added_when_asked():
    assert "connection" not in render(refused("evil.com"), 403).headers
    assert render(refused("evil.com"), 403, close=True).headers["connection"] == "close"


@pytest.mark.parametrize("status", [400, 413, 502, 504, 599])
def test_proxy_errors_are_json_and_never_name_mitmproxy(status):
    answer = proxy_error(status)
    assert answer.status == status
    assert json.loads(answer.body)["error"] == "egress_sidecar_error"
    assert b"mitmproxy" not in answer.body.lower()
    assert "x-egress-sidecar-reason" not in answer.headers
