"""The kinds of secret request DLP reports: a closed set (they are metric labels)."""

from __future__ import annotations

import dataclasses
from enum import StrEnum


class Confidence(StrEnum):
    HIGH = "high"  # the shape alone (or with its context) is a secret: blocked by default
    LOW = "low"  # could be a secret: alerted by default, the request passes


class SecretKind(StrEnum):
    AWS_ACCESS_KEY_ID = "aws_access_key_id"
    AWS_SECRET_ACCESS_KEY = "aws_secret_access_key"
    AWS_SESSION_TOKEN = "aws_session_token"
    PRIVATE_KEY = "private_key"
    SSH_PRIVATE_KEY = "ssh_private_key"
    GCP_CREDENTIALS = "gcp_credentials"
    GOOGLE_OAUTH_TOKEN = "google_oauth_token"
    GITHUB_TOKEN = "github_token"
    GITLAB_TOKEN = "gitlab_token"
    SLACK_TOKEN = "slack_token"
    SLACK_WEBHOOK = "slack_webhook"
    STRIPE_KEY = "stripe_key"
    PROVIDER_API_KEY = "provider_api_key"
    JWT = "jwt"
    KUBERNETES_TOKEN = "kubernetes_service_account_token"
    KUBECONFIG = "kubeconfig"
    ENV_DUMP = "env_dump"
    SECRET_ASSIGNMENT = "secret_assignment"
    SIDECAR_KEY = "sidecar_key"
    UNSCANNABLE_BODY = "unscannable_body"


@dataclasses.dataclass(frozen=True, slots=True)
class KindSpec:
    label: str  # for docs and details
    what: str  # what is matched (docs/dlp.md lists these)


KINDS: dict[SecretKind, KindSpec] = {
    SecretKind.AWS_ACCESS_KEY_ID: KindSpec(
        "AWS access key id", "AKIA/ASIA + 16 (credentials.detect)"
    ),
    SecretKind.AWS_SECRET_ACCESS_KEY: KindSpec(
        "AWS secret access key",
        "40 base64 characters named aws_secret_access_key / SecretAccessKey, or right after "
        "an access key id",
    ),
    SecretKind.AWS_SESSION_TOKEN: KindSpec("AWS session token", "the value of aws_session_token"),
    SecretKind.PRIVATE_KEY: KindSpec(
        "private key", "a PEM private key block with a body, raw or base64-encoded"
    ),
    SecretKind.SSH_PRIVATE_KEY: KindSpec("SSH private key", "OpenSSH and PuTTY private keys"),
    SecretKind.GCP_CREDENTIALS: KindSpec(
        "GCP credentials JSON",
        "service-account / authorized_user (ADC) JSON: private_key, private_key_id, "
        "client_secret, refresh_token",
    ),
    SecretKind.GOOGLE_OAUTH_TOKEN: KindSpec(
        "Google OAuth token", "ya29. access, 1//0 refresh tokens"
    ),
    SecretKind.GITHUB_TOKEN: KindSpec("GitHub token", "ghp_/gho_/ghu_/ghs_/ghr_, github_pat_"),
    SecretKind.GITLAB_TOKEN: KindSpec("GitLab token", "glpat-, gldt-, glrt-, glptt-, ..."),
    SecretKind.SLACK_TOKEN: KindSpec("Slack token", "xoxb-/xoxp-/xoxa-/xoxr-/xoxs-, xapp-"),
    SecretKind.SLACK_WEBHOOK: KindSpec(
        "Slack webhook URL", "hooks.slack.com/services/T.../B.../..."
    ),
    SecretKind.STRIPE_KEY: KindSpec("Stripe key", "sk_live_/rk_live_ (test keys: low confidence)"),
    SecretKind.PROVIDER_API_KEY: KindSpec(
        "LLM provider key", "the provider key families of credentials.detect"
    ),
    SecretKind.JWT: KindSpec("JWT", "a signed JWT (low confidence: often a sample)"),
    SecretKind.KUBERNETES_TOKEN: KindSpec(
        "Kubernetes service-account token", "a JWT whose claims name kubernetes"
    ),
    SecretKind.KUBECONFIG: KindSpec(
        "kubeconfig credentials", "client-key-data, token, password of a kubeconfig"
    ),
    SecretKind.ENV_DUMP: KindSpec(
        "environment dump", "4+ KEY=value lines, 2+ of them secret-named with real values"
    ),
    SecretKind.SECRET_ASSIGNMENT: KindSpec(
        "secret assignment", "one secret-named KEY=value with a random-looking value"
    ),
    SecretKind.SIDECAR_KEY: KindSpec(
        "the sidecar's own provider key",
        "a mounted key, raw, base64, hex, percent-encoded or in a compressed body",
    ),
    SecretKind.UNSCANNABLE_BODY: KindSpec(
        "unscannable body", "a body whose content encoding cannot be decoded within bounds"
    ),
}
