"""The pure side of cloud credentials (issue 16): what a gateway may send to a signed
provider, what is stripped, and the signature botocore computes for us."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.credentials import HeaderList, Outcome, SecretStore, prepare_request
from sidecar.credentials.cloud_signing import (
    DUMMY_AWS_ACCESS_KEY_ID,
    DUMMY_GOOGLE_TOKEN,
    CloudCredentialError,
    gateway_signature_findings,
    parse_aws_keys,
    sign_aws,
    strip_aws_signature,
)
from sidecar.credentials.secret_store import Secret
from sidecar.policy.cloud_credentials import CloudKind
from tests.credentials import helpers as h
from tests.support.cloud_fakes import SignedRequest, expected_signature, new_aws_credentials

HOST = "bedrock-runtime.us-east-1.amazonaws.com"
PATH = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"


def sigv4(key_id: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential={key_id}/20261201/us-east-1/bedrock/aws4_request, "
        f"SignedHeaders=content-type;host;x-amz-date, Signature={h.hexs(64)}"
    )


AWS, GOOGLE, AUTH = CloudKind.AWS_SIGV4, CloudKind.GOOGLE_OAUTH, "Authorization"
SCOPE = "/20261201/us-east-1/bedrock/aws4_request"

# (id, kind, headers, query, families found)
FINDINGS = [
    ("dummy_sigv4", AWS, [(AUTH, sigv4(DUMMY_AWS_ACCESS_KEY_ID))], [], []),
    ("no_signature", AWS, [("content-type", "application/json")], [], []),
    ("attacker_akia", AWS, [(AUTH, sigv4(h.aws_key_id()))], [], ["aws_access_key_id"]),
    ("attacker_odd_id", AWS, [(AUTH, sigv4("MYOWNACCOUNTKEY00000"))], [], ["aws_access_key_id"]),
    (
        "lowercase_scheme",
        AWS,
        [(AUTH, sigv4("X").replace("AWS4-HMAC-SHA256", "aws4-hmac-sha256"))],
        [],
        ["aws_access_key_id"],
    ),
    (
        "dummy_then_attacker_credential",
        AWS,
        [(AUTH, sigv4(DUMMY_AWS_ACCESS_KEY_ID) + ", Credential=EVIL/x")],
        [],
        ["aws_access_key_id"],
    ),
    (
        "sigv4_without_credential",
        AWS,
        [(AUTH, "AWS4-HMAC-SHA256 Signature=ab")],
        [],
        ["aws_access_key_id"],
    ),
    ("session_token", AWS, [("X-Amz-Security-Token", h.rand(300))], [], ["aws_session_token"]),
    (
        "second_authorization",
        AWS,
        [(AUTH, sigv4(DUMMY_AWS_ACCESS_KEY_ID)), (AUTH, sigv4("EVIL"))],
        [],
        ["aws_access_key_id"],
    ),
    (
        "presigned_attacker",
        AWS,
        [],
        [("X-Amz-Credential", "EVILKEY" + SCOPE)],
        ["aws_access_key_id"],
    ),
    ("presigned_dummy", AWS, [], [("X-Amz-Credential", DUMMY_AWS_ACCESS_KEY_ID + SCOPE)], []),
    ("presigned_token", AWS, [], [("X-Amz-Security-Token", "abc")], ["aws_session_token"]),
    ("google_dummy", GOOGLE, [(AUTH, f"Bearer {DUMMY_GOOGLE_TOKEN}")], [], []),
    ("google_virtual_key", GOOGLE, [(AUTH, "Bearer vk-" + "a" * 40)], [], []),
    (
        "google_real_token",
        GOOGLE,
        [(AUTH, f"Bearer {h.google_oauth_token()}")],
        [],
        ["google_oauth_token"],
    ),
    ("google_any_other", GOOGLE, [(AUTH, "Bearer hello")], [], ["google_oauth_token"]),
]


@pytest.mark.parametrize(
    ("kind", "headers", "query", "families"),
    [f[1:] for f in FINDINGS],
    ids=[f[0] for f in FINDINGS],
)
def test_gateway_signature_findings(kind, headers, query, families) -> None:
    found = gateway_signature_findings(
        kind, HeaderList(headers), HeaderList(query, fold_case=False)
    )
    assert sorted({f.family for f in found}) == families
    for finding in found:  # names the place and family, never the value
        for _, value in headers + query:
            assert value not in finding.describe()


def test_strip_removes_the_gateways_signature_and_presign_parameters() -> None:
    headers = HeaderList(
        [
            (AUTH, sigv4(DUMMY_AWS_ACCESS_KEY_ID)),
            ("X-Amz-Date", "20261201T000000Z"),
            ("X-Amz-Security-Token", "t"),
            ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
            ("X-Amzn-Bedrock-Trace", "ENABLED"),
            ("content-type", "application/json"),
        ]
    )
    query = HeaderList(
        [("X-Amz-Signature", "ab"), ("x-amz-date", "x"), ("v", "1")], fold_case=False
    )
    stripped = strip_aws_signature(headers, query)
    assert [n.lower() for n, _ in headers.fields] == ["x-amzn-bedrock-trace", "content-type"]
    assert query.fields == [("v", "1")]
    assert "query x-amz-signature" in stripped


def _received(headers: HeaderList, body: bytes, path: str = PATH, query: str = "") -> SignedRequest:
    sent = {k.lower(): v for k, v in headers.fields} | {"host": HOST}  # as it goes on the wire
    return SignedRequest("POST", path, query, sent, body, 0.0, raw_path=path)


@settings(max_examples=30, deadline=None)
@given(
    body=st.binary(max_size=2048),
    session=st.booleans(),
    extra=st.dictionaries(
        st.sampled_from(["x-amzn-bedrock-trace", "accept", "x-amz-meta", "user-agent"]),
        st.text("abcdefghij0123456789-/", min_size=1, max_size=20),
        max_size=3,
    ),
)
def test_signature_verifies_with_the_keys_it_was_made_with(body, session, extra) -> None:
    creds = new_aws_credentials(session=session)
    keys = parse_aws_keys(Secret("bedrock", creds.document()))
    headers = HeaderList([("content-type", "application/json"), *extra.items()])
    sign_aws(
        method="POST",
        host=HOST,
        path=PATH,
        headers=headers,
        body=body,
        keys=keys,
        region="us-east-1",
        service="bedrock",
    )
    authorization = headers.get("authorization") or ""
    seen = _received(headers, body)
    assert expected_signature(seen, HOST, creds) == authorization.rpartition("Signature=")[2]
    assert headers.get("x-amz-security-token") == creds.session_token
    assert "user-agent" not in authorization  # unsigned: a hop may rewrite it
    # Any change to the body breaks it: SigV4 covers the payload.
    tampered = _received(headers, body + b" ")
    assert expected_signature(tampered, HOST, creds) != authorization.rpartition("Signature=")[2]
    # Another account's keys would not verify it.
    other = dataclasses.replace(creds, secret_access_key=new_aws_credentials().secret_access_key)
    assert expected_signature(seen, HOST, other) != authorization.rpartition("Signature=")[2]


def test_signature_scope_is_the_vetted_hosts_region_and_the_service() -> None:
    keys = parse_aws_keys(Secret("b", new_aws_credentials().document()))
    headers = HeaderList([])
    sign_aws(
        method="POST",
        host=f"{HOST}:8443",
        path=PATH,
        headers=headers,
        body=b"{}",
        keys=keys,
        region="eu-west-3",
        service="bedrock",
    )
    assert "/eu-west-3/bedrock/aws4_request" in (headers.get("authorization") or "")
    assert f"Credential={keys.access_key_id}/" in (headers.get("authorization") or "")


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"AccessKeyId": "AKIAAAAAAAAAAAAAAAAA"}', "needs AccessKeyId and SecretAccessKey"),
        ('{"AccessKeyId": "lower case", "SecretAccessKey": "s"}', "not an access key id"),
    ],
)
def test_bad_aws_secret_is_named_never_shown(document: str, fragment: str) -> None:
    with pytest.raises(CloudCredentialError) as info:
        parse_aws_keys(Secret("bedrock", document))
    assert fragment in str(info.value) and "'bedrock'" in str(info.value)
    assert document not in str(info.value) or document in ("not json", "[1]")


def test_aws_keys_repr_shows_no_secret() -> None:
    creds = new_aws_credentials(session=True)
    keys = parse_aws_keys(Secret("bedrock", creds.document()))
    assert creds.secret_access_key not in repr(keys)
    assert creds.session_token not in repr(keys)  # type: ignore[operator]
    snake = json.dumps(
        {"aws_access_key_id": creds.access_key_id, "aws_secret_access_key": creds.secret_access_key}
    )
    assert parse_aws_keys(Secret("b", snake)).access_key_id == creds.access_key_id


# --- through prepare_request: detection, stripping, deferral ------------------------------


@pytest.fixture
def store(tmp_path) -> SecretStore:
    (tmp_path / "bedrock").write_text(new_aws_credentials().document())
    (tmp_path / "vertex").write_text(json.dumps({"type": "service_account"}, indent=2))
    return SecretStore(tmp_path)


def test_signed_provider_defers_and_strips_the_dummy_signature(store) -> None:
    headers = HeaderList(
        [(AUTH, sigv4(DUMMY_AWS_ACCESS_KEY_ID)), ("X-Amz-Date", "20261201T000000Z")]
    )
    result = prepare_request(h.provider("bedrock"), headers, HeaderList([]), store)
    assert result.outcome is Outcome.DEFERRED
    assert headers.get("authorization") is None and headers.get("x-amz-date") is None
    assert headers.get("accept-encoding") == "identity"


def test_signed_provider_refuses_the_attackers_signature_and_strips_it(store) -> None:
    headers = HeaderList([(AUTH, sigv4("ATTACKERACCOUNTKEY01"))])
    result = prepare_request(h.provider("bedrock"), headers, HeaderList([]), store)
    assert result.outcome is Outcome.GATEWAY_HOLDS_CREDENTIAL
    assert headers.get("authorization") is None


def test_google_provider_defers_with_the_dummy_and_refuses_a_real_token(store) -> None:
    vertex = h.provider("vertex-ai")
    ok = prepare_request(vertex, HeaderList([(AUTH, f"Bearer {DUMMY_GOOGLE_TOKEN}")]), None, store)
    assert ok.outcome is Outcome.DEFERRED
    bad = prepare_request(
        vertex, HeaderList([(AUTH, f"Bearer {h.google_oauth_token()}")]), None, store
    )
    assert bad.outcome is Outcome.GATEWAY_HOLDS_CREDENTIAL


def test_missing_cloud_secret_is_credential_unavailable_before_the_body(tmp_path) -> None:
    result = prepare_request(h.provider("bedrock"), HeaderList([]), None, SecretStore(tmp_path))
    assert result.outcome is Outcome.CREDENTIAL_UNAVAILABLE
    assert "'bedrock'" in result.detail


def test_google_token_sent_to_another_provider_is_a_leak(store) -> None:
    result = prepare_request(
        h.provider("openai"), HeaderList([("x-trace", h.google_oauth_token())]), None, store
    )
    assert result.outcome is Outcome.GATEWAY_HOLDS_CREDENTIAL
