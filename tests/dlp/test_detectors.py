"""Request DLP detectors, one table per detector: what must be caught (true positives)
and what must not (the realistic false positives of prompts: UUIDs, hashes, base64
images, code samples, documentation examples). Canary values only."""

from __future__ import annotations

import base64
import json

import pytest

from sidecar.dlp.detectors import Detector, is_secret_name, own_key_patterns
from sidecar.dlp.kinds import Confidence, SecretKind
from tests.support import harvest

DETECTOR = Detector()
AWS_ID = harvest.AWS_ACCESS_KEY_ID
AWS_SECRET = harvest.AWS_SECRET_ACCESS_KEY
GH = harvest.GITHUB_TOKEN


def kinds(text: str, key: str | None = None, detector: Detector = DETECTOR) -> set[str]:
    return {h.kind.value for h in detector.scan(text, key)}


def spans(text: str, kind: SecretKind) -> list[str]:
    return [text[h.start : h.end] for h in DETECTOR.scan(text) if h.kind is kind]


TRUE_POSITIVES = [
    # (case id, text, kind that must be found)
    ("aws id", f"use {AWS_ID} please", "aws_access_key_id"),
    ("aws temporary id", "ASIACANARY9Y8U7I6O5P", "aws_access_key_id"),
    ("aws pair on one line", f"{AWS_ID} {AWS_SECRET}", "aws_secret_access_key"),
    (
        "aws csv export",
        f"Access key ID,Secret access key\n{AWS_ID},{AWS_SECRET}\n",
        "aws_secret_access_key",
    ),
    ("aws credentials file", harvest.AWS_CREDENTIALS, "aws_secret_access_key"),
    ("aws session token", harvest.AWS_CREDENTIALS, "aws_session_token"),
    (
        "aws sts json",
        json.dumps({"Credentials": {"SecretAccessKey": AWS_SECRET}}),
        "aws_secret_access_key",
    ),
    ("aws env", f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "aws_secret_access_key"),
    ("pem rsa", harvest.RSA_PRIVATE_KEY, "private_key"),
    ("pem in escaped json text", json.dumps(harvest.RSA_PRIVATE_KEY)[1:-1], "private_key"),
    ("pem without end", harvest.RSA_PRIVATE_KEY.rsplit("-----END", 1)[0], "private_key"),
    ("pem ec", "-----BEGIN EC PRIVATE KEY-----\n" + "MHcCAQEEI" + "Ab1" * 30 + "\n", "private_key"),
    ("openssh", harvest.OPENSSH_PRIVATE_KEY, "ssh_private_key"),
    (
        "putty",
        "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPrivate-Lines: 1\nAAAA\n"
        "Private-MAC: 0a1b2c",
        "ssh_private_key",
    ),
    ("pem base64 (kube client-key-data)", harvest.KUBE_CLIENT_KEY_DATA, "private_key"),
    ("gcp service account text", harvest.GCP_SERVICE_ACCOUNT, "gcp_credentials"),
    ("gcp adc text", harvest.GCP_ADC, "gcp_credentials"),
    ("google refresh token", harvest.GCP_REFRESH_TOKEN, "google_oauth_token"),
    ("google access token", "ya29.a0AfB_" + "x1Y2z3" * 10, "google_oauth_token"),
    ("github classic", f"token {GH}", "github_token"),
    ("github fine-grained", "github_pat_11CANARY0" + "a1B2c3" * 12, "github_token"),
    ("gitlab", "glpat-" + "Canary12345678901234", "gitlab_token"),
    ("slack bot", "xoxb-123456789012-1234567890123-" + "aBcD1234" * 3, "slack_token"),
    ("slack app", "xapp-1-A0CANARY-1234567890-" + "ab12" * 16, "slack_token"),
    (
        "slack webhook",
        "https://hooks.slack.com/services/T00CANARY/B00CANARY/" + "Xx1" * 8,
        "slack_webhook",
    ),
    ("stripe live", "sk_live_" + "Canary1234567890abcdEFGH", "stripe_key"),
    ("openai key", harvest.OPENAI_KEY, "provider_api_key"),
    ("anthropic key", "sk-ant-api03-" + "Cn1_" * 20, "provider_api_key"),
    ("gemini key", "AIzaSy" + "Canary0123456789abcdefghijklmnopq", "provider_api_key"),
    ("kubernetes token", harvest.KUBERNETES_TOKEN, "kubernetes_service_account_token"),
    ("kubeconfig", harvest.KUBECONFIG, "kubeconfig"),
    ("env dump", harvest.ENVIRONMENT, "env_dump"),
    (
        "dotenv",
        "# .env\nDEBUG=1\nPORT=8080\nSTRIPE_SECRET=Canary-9f8e7d6c\nJWT_SECRET=c4n4ry-s1gn1ng\n",
        "env_dump",
    ),
    (
        "base64 of a credentials file",
        base64.b64encode(harvest.AWS_CREDENTIALS.encode()).decode(),
        "aws_secret_access_key",
    ),
]


@pytest.mark.parametrize(
    ("text", "kind"), [c[1:] for c in TRUE_POSITIVES], ids=[c[0] for c in TRUE_POSITIVES]
)
def test_true_positive(text: str, kind: str) -> None:
    assert kind in kinds(text)


FALSE_POSITIVES = [
    ("uuid", "request 123e4567-e89b-12d3-a456-426614174000 failed"),
    ("sha1", "commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"),
    ("sha256", "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"),
    ("aws doc example id", "AKIAIOSFODNN7EXAMPLE"),
    ("aws doc example pair", "AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("pem placeholder", "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----"),
    ("pem in code", 'if line.startswith("-----BEGIN RSA PRIVATE KEY-----"):\n    parse(line)'),
    ("png data url", "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 40).decode()),
    (
        "code reading env",
        "import os\napi_key = os.environ['OPENAI_API_KEY']\nclient = OpenAI(api_key=api_key)\n",
    ),
    (
        "config with placeholders",
        "OPENAI_API_KEY=<your-key>\nAWS_SECRET_ACCESS_KEY=${AWS_SECRET}\nDB_PASSWORD=changeme\nPORT=80\nHOST=x\n",
    ),
    (
        "yaml settings",
        "model: gpt-4o\nmax_tokens: 1000\ntoken_count: 12345678\n"
        "keyboard_layout: us-international\nsession_id: abcdef123456\n",
    ),
    (
        "json with key names",
        json.dumps({"private_key_id": "n/a", "token_type": "bearer", "keywords": "a b"}, indent=2),
    ),
    ("prose", "The password policy requires rotating every secret key and token quarterly."),
    ("short jwt-like", "eyJhbGciOi.eyJzdWIi.abc"),
    (
        "git lfs pointer",
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n",
    ),
    ("base64 binary", base64.b64encode(bytes((i * 37) % 256 for i in range(3000))).decode()),
    (
        "kubernetes manifest",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  serviceAccountName: default\n",
    ),
]


@pytest.mark.parametrize(
    "text", [c[1] for c in FALSE_POSITIVES], ids=[c[0] for c in FALSE_POSITIVES]
)
def test_false_positive(text: str) -> None:
    assert kinds(text) == set()


def test_a_jwt_is_low_confidence_and_a_kubernetes_token_is_high() -> None:
    plain = (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    )
    (jwt,) = DETECTOR.scan(plain)
    assert (jwt.kind, jwt.confidence) == (SecretKind.JWT, Confidence.LOW)
    (k8s,) = DETECTOR.scan(harvest.KUBERNETES_TOKEN)
    assert (k8s.kind, k8s.confidence) == (SecretKind.KUBERNETES_TOKEN, Confidence.HIGH)


def test_stripe_test_keys_are_low_confidence() -> None:
    (hit,) = DETECTOR.scan("sk_test_" + "Canary1234567890abcdEFGH")
    assert hit.confidence is Confidence.LOW


def test_spans_cover_the_secret_and_nothing_around_it() -> None:
    text = f"before {AWS_ID} middle aws_secret_access_key = {AWS_SECRET}\nafter"
    assert spans(text, SecretKind.AWS_ACCESS_KEY_ID) == [AWS_ID]
    assert spans(text, SecretKind.AWS_SECRET_ACCESS_KEY) == [AWS_SECRET]
    pem = "intro\n" + harvest.RSA_PRIVATE_KEY + "outro"
    (block,) = spans(pem, SecretKind.PRIVATE_KEY)
    assert block == harvest.RSA_PRIVATE_KEY.strip()


def test_env_dump_spans_are_the_secret_values_only() -> None:
    found = spans(harvest.ENVIRONMENT, SecretKind.ENV_DUMP)
    assert harvest.OPENAI_KEY in found and harvest.AWS_SECRET_ACCESS_KEY in found
    assert not any("/usr/local/bin" in s or "C.UTF-8" in s for s in found)


def test_a_single_random_secret_assignment_is_low_confidence() -> None:
    hits = DETECTOR.scan("some config\nSIGNING_SECRET=Q7fK2pLx9RtV4mZs8NwY\n")
    assert [(h.kind, h.confidence) for h in hits] == [
        (SecretKind.SECRET_ASSIGNMENT, Confidence.LOW)
    ]


NAMED = [
    # (object key, value, kind or None)
    ("aws_secret_access_key", AWS_SECRET, "aws_secret_access_key"),
    ("SecretAccessKey", AWS_SECRET, "aws_secret_access_key"),
    ("SessionToken", harvest.AWS_SESSION_TOKEN, "aws_session_token"),
    ("client-key-data", "LS0tLS1CRUdJTiBDQU5BUlk=", "kubeconfig"),
    ("api_key", "Q7fK2pLx9RtV4mZs8NwY3c", "secret_assignment"),
    ("api_key", "sk-dummy", None),
    ("max_tokens", "Q7fK2pLx9RtV4mZs8NwY3c", None),
    ("content", AWS_SECRET, None),  # a 40-character run alone, with no name, is not a key
]


@pytest.mark.parametrize(("key", "value", "kind"), NAMED)
def test_secret_named_json_fields(key: str, value: str, kind: str | None) -> None:
    assert kinds(value, key) == ({kind} if kind else set())


def test_gcp_object_fields_are_secrets_when_the_object_is_a_credential() -> None:
    detector = DETECTOR
    hits = detector.scan(harvest.GCP_PRIVATE_KEY_ID, "private_key_id", gcp_object=True)
    assert [h.kind for h in hits] == [SecretKind.GCP_CREDENTIALS]
    assert detector.scan(harvest.GCP_PRIVATE_KEY_ID, "private_key_id", gcp_object=False) == []


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("OPENAI_API_KEY", True),
        ("REDIS_PASSWORD", True),
        ("accessToken", True),
        ("client-key-data", True),
        ("SECRET_KEY_BASE", True),
        ("max_tokens", False),
        ("token_count", False),
        ("private_key_id", False),
        ("keyboard_layout", False),
        ("PUBLIC_KEY", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


OWN = "sk-ant-api03-" + "Zy9Xw8Vu" * 6
OWN_DETECTOR = Detector(own_key_patterns([OWN]))


@pytest.mark.parametrize(
    "text",
    [
        OWN,
        base64.b64encode(b"x" + OWN.encode()).decode(),  # any alignment
        base64.urlsafe_b64encode(OWN.encode()).decode(),
        OWN.encode().hex(),
        OWN.encode().hex().upper(),
        "".join(f"%{b:02x}" for b in OWN.encode()),
    ],
    ids=["raw", "base64", "base64url", "hex", "HEX", "percent"],
)
def test_own_keys_in_every_encoding(text: str) -> None:
    assert "sidecar_key" in kinds("prefix " + text + " suffix", detector=OWN_DETECTOR)


def test_own_keys_are_not_reported_without_a_store() -> None:
    assert "sidecar_key" not in kinds(OWN)
