"""Typed cloud `credential:` forms (issue 16): what loads, and every mistake named with
file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import dedent, load_text, problems_of

from sidecar.policy.cloud_credentials import (
    AwsWebIdentity,
    CloudCredential,
    CloudKind,
    aws_region,
)

BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
ROLE = "arn:aws:iam::123456789012:role/egress-sidecar"


def _provider(hosts: str, credential: str) -> str:
    """Provider `p`; the first credential line is file line 5."""
    lines = dedent(credential).splitlines()
    return (
        "version: 1\nproviders:\n  p:\n    hosts: ["
        + hosts
        + "]\n"
        + "".join(f"    {ln}\n" for ln in lines)
    )


def test_aws_sigv4_with_a_secret(tmp_path: Path) -> None:
    policy = load_text(tmp_path, _provider(BEDROCK, "credential: {type: aws_sigv4, secret: br}"))
    (endpoint,) = policy.endpoints
    assert endpoint.credential is None
    assert endpoint.cloud_credential == CloudCredential(CloudKind.AWS_SIGV4, "br")
    assert endpoint.secret_name == "br"


def test_aws_sigv4_with_web_identity_and_service(tmp_path: Path) -> None:
    text = f"""\
        credential:
          type: aws_sigv4
          service: bedrock
          web_identity:
            role_arn: "{ROLE}"
            token_file: /var/run/secrets/eks.amazonaws.com/serviceaccount/token
    """
    (endpoint,) = load_text(tmp_path, _provider(BEDROCK, text)).endpoints
    assert endpoint.cloud_credential == CloudCredential(
        CloudKind.AWS_SIGV4,
        None,
        AwsWebIdentity(ROLE, "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"),
    )
    assert endpoint.secret_name is None


def test_google_oauth(tmp_path: Path) -> None:
    text = "credential: {type: google_oauth, secret: vertex}"
    (endpoint,) = load_text(tmp_path, _provider("aiplatform.googleapis.com", text)).endpoints
    assert endpoint.cloud_credential == CloudCredential(CloudKind.GOOGLE_OAUTH, "vertex")


def test_default_policy_signs_bedrock_and_mints_for_vertex() -> None:
    from policy_helpers import REPO

    from sidecar.policy.loader import load_policy

    policy = load_policy([REPO / "policies" / "default.yaml"])
    bedrock, vertex = policy.provider("bedrock"), policy.provider("vertex-ai")
    assert bedrock is not None and bedrock.cloud_credential is not None
    assert bedrock.cloud_credential.kind is CloudKind.AWS_SIGV4
    assert vertex is not None and vertex.cloud_credential is not None
    assert vertex.cloud_credential.kind is CloudKind.GOOGLE_OAUTH


K = "providers.p.credential"
VERTEX = "aiplatform.googleapis.com"
WI = f'{{role_arn: "{ROLE}", token_file: /t}}'


def c(inner: str) -> str:
    return "credential: {" + inner + "}"


# (id, hosts, credential text, [(line, key)], message fragment)
CASES = [
    ("unknown_type", BEDROCK, c("type: aws_sigv2, secret: b"), [(5, f"{K}.type")], "aws_sigv2"),
    (
        "header_key_in_typed",
        BEDROCK,
        c("type: aws_sigv4, secret: b, header: authorization"),
        [(5, f"{K}.header")],
        "allowed are type, secret",
    ),
    ("no_secret_nor_identity", BEDROCK, c("type: aws_sigv4"), [(5, K)], "exactly one of 'secret'"),
    (
        "both_secret_and_identity",
        BEDROCK,
        c(f"type: aws_sigv4, secret: b, web_identity: {WI}"),
        [(5, K)],
        "exactly one of",
    ),
    (
        "host_without_region",
        "bedrock.example.com",
        c("type: aws_sigv4, secret: b"),
        [(5, K)],
        "names no AWS region",
    ),
    (
        "bad_role_arn",
        BEDROCK,
        c("type: aws_sigv4, web_identity: {role_arn: admin, token_file: /t}"),
        [(5, f"{K}.web_identity.role_arn")],
        "IAM role ARN",
    ),
    (
        "relative_token_file",
        BEDROCK,
        c(f'type: aws_sigv4, web_identity: {{role_arn: "{ROLE}", token_file: t}}'),
        [(5, f"{K}.web_identity.token_file")],
        "absolute path",
    ),
    (
        "missing_token_file",
        BEDROCK,
        c(f'type: aws_sigv4, web_identity: {{role_arn: "{ROLE}"}}'),
        [(5, f"{K}.web_identity.token_file")],
        "needs role_arn and token_file",
    ),
    (
        "unknown_web_identity_key",
        BEDROCK,
        c(f'type: aws_sigv4, web_identity: {{role_arn: "{ROLE}", token_file: /t, region: x}}'),
        [(5, f"{K}.web_identity.region")],
        "unknown key",
    ),
    (
        "bad_service",
        BEDROCK,
        c("type: aws_sigv4, secret: b, service: Bed Rock"),
        [(5, f"{K}.service")],
        "signing name",
    ),
    ("google_no_secret", VERTEX, c("type: google_oauth"), [(5, f"{K}.secret")], "names the secret"),
    (
        "google_with_web_identity",
        VERTEX,
        c(f"type: google_oauth, secret: v, web_identity: {WI}"),
        [(5, f"{K}.web_identity")],
        "allowed are type, secret",
    ),
    (
        "bad_secret_name",
        BEDROCK,
        c("type: aws_sigv4, secret: ../etc/passwd"),
        [(5, f"{K}.secret")],
        "secret name",
    ),
    (
        "wildcard_host",
        '"*.amazonaws.com"',
        c("type: aws_sigv4, secret: b"),
        [(5, K), (5, K)],
        "names no AWS region",
    ),
]


@pytest.mark.parametrize(
    ("hosts", "text", "where", "fragment"), [x[1:] for x in CASES], ids=[x[0] for x in CASES]
)
def test_cloud_credential_mistakes(
    tmp_path: Path, hosts: str, text: str, where: list, fragment: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(_provider(hosts, text), encoding="utf-8")
    problems = problems_of([path])
    assert [(p.line, p.key) for p in problems] == where, problems
    assert fragment in problems[0].message
    assert all(p.file == str(path) for p in problems)


def test_one_secret_per_provider_covers_typed_forms(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nproviders:\n"
        f"  a:\n    hosts: [{BEDROCK}]\n    credential: {{type: aws_sigv4, secret: s}}\n"
        "  b:\n    hosts: [api.example.com]\n"
        '    credential: {header: authorization, format: "Bearer {secret}", secret: s}\n',
        encoding="utf-8",
    )
    problems = problems_of([path])
    assert any("already bound" in p.message for p in problems), problems


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("bedrock-runtime.us-east-1.amazonaws.com", "us-east-1"),
        ("bedrock-runtime-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("bedrock-runtime.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("bedrock-runtime.ap-southeast-2.amazonaws.com", "ap-southeast-2"),
        ("bedrock-runtime.amazonaws.com", None),
        ("bedrock-runtime.us-east-1.amazonaws.com.evil.example", None),
        ("us-east-1.amazonaws.com", None),
    ],
)
def test_aws_region_comes_from_the_host_name(host: str, region: str | None) -> None:
    assert aws_region(host) == region
