"""What the 2026 LiteLLM 1.82.7/1.82.8 stealer collected, with canary values.

The poisoned releases read, at interpreter start, the process environment, the AWS
shared credentials file, Google's application-default credentials, the Kubernetes
service-account token and a kubeconfig, and SSH private keys, and POSTed them out.
This module rebuilds that harvest file by file, in the formats those tools write,
filled with values that have the shapes of real secrets and are not secrets: every
one is derived from a fixed seed and carries the word CANARY where the format allows.

`HARVEST` is the whole harvest as one text (how a subverted gateway pastes it into a
prompt); `SECTIONS` the files one by one, with the DLP kind each must be caught as.
"""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap


def _stream(label: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes (sha256 in counter mode): canary material."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}:{counter}".encode()).digest()
        counter += 1
    return out[:size]


def _b64(label: str, size: int) -> str:
    return base64.b64encode(_stream(label, size)).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _alnum(label: str, size: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(alphabet[b % len(alphabet)] for b in _stream(label, size))


def _lines(text: str, width: int = 64) -> str:
    return "\n".join(textwrap.wrap(text, width))


AWS_ACCESS_KEY_ID = "AKIACANARY" + "7Q2W4E6R8T"  # AKIA + 16 upper-case letters and digits
AWS_SECRET_ACCESS_KEY = (_b64("aws-secret", 30).replace("=", "") + "CaNaRy")[:40]
AWS_SESSION_TOKEN = "IQoJb3JpZ2luX2VjE" + _b64("aws-session", 300).replace("=", "")
GCP_CLIENT_SECRET = "GOCSPX-" + _alnum("gcp-client-secret", 28)
GCP_REFRESH_TOKEN = "1//0" + _alnum("gcp-refresh", 100)
GCP_PRIVATE_KEY_ID = _stream("gcp-key-id", 20).hex()
RSA_PRIVATE_KEY = (
    "-----BEGIN PRIVATE KEY-----\n"
    + _lines("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ" + _b64("rsa", 1180))
    + "\n-----END PRIVATE KEY-----\n"
)
OPENSSH_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    + _lines(base64.b64encode(b"openssh-key-v1\0" + _stream("ssh-ed25519", 380)).decode(), 70)
    + "\n-----END OPENSSH PRIVATE KEY-----\n"
)
GITHUB_TOKEN = "ghp_" + _alnum("github", 36)
OPENAI_KEY = "sk-proj-" + _alnum("openai-leaked", 48)
DATABASE_PASSWORD = "Canary-" + _alnum("db-password", 16)


def _kubernetes_token() -> str:
    header = {"alg": "RS256", "kid": _alnum("kid", 43)}
    claims = {
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "exp": 1798761600,
        "iat": 1767225600,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "kubernetes.io": {
            "namespace": "llm",
            "pod": {"name": "litellm-7d9f-abcde", "uid": "0b5e3b39-canary"},
            "serviceaccount": {"name": "litellm", "uid": "5d1c0c2a-canary"},
        },
        "nbf": 1767225600,
        "sub": "system:serviceaccount:llm:litellm",
    }
    signature = _stream("k8s-signature", 256)
    return ".".join(
        (
            _b64url(json.dumps(header, separators=(",", ":")).encode()),
            _b64url(json.dumps(claims, separators=(",", ":")).encode()),
            _b64url(signature),
        )
    )


KUBERNETES_TOKEN = _kubernetes_token()
KUBE_CLIENT_KEY_DATA = base64.b64encode(
    ("-----BEGIN RSA PRIVATE KEY-----\n" + _lines(_b64("kube-client-key", 1190)) + "\n"
     "-----END RSA PRIVATE KEY-----\n").encode()
).decode()  # fmt: skip

ENVIRONMENT = f"""\
PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
HOSTNAME=litellm-7d9f-abcde
HOME=/root
LANG=C.UTF-8
PYTHON_VERSION=3.12.8
KUBERNETES_SERVICE_HOST=10.96.0.1
KUBERNETES_SERVICE_PORT=443
LITELLM_MASTER_KEY=sk-{_alnum("litellm-master", 32)}
DATABASE_URL=postgresql://litellm:{DATABASE_PASSWORD}@postgres.llm.svc:5432/litellm
REDIS_PASSWORD={_alnum("redis", 24)}
OPENAI_API_KEY={OPENAI_KEY}
GITHUB_TOKEN={GITHUB_TOKEN}
AWS_ACCESS_KEY_ID={AWS_ACCESS_KEY_ID}
AWS_SECRET_ACCESS_KEY={AWS_SECRET_ACCESS_KEY}
AWS_DEFAULT_REGION=us-east-1
"""

AWS_CREDENTIALS = f"""\
[default]
aws_access_key_id = {AWS_ACCESS_KEY_ID}
aws_secret_access_key = {AWS_SECRET_ACCESS_KEY}

[prod]
aws_access_key_id = ASIACANARY9Y8U7I6O5P
aws_secret_access_key = {AWS_SECRET_ACCESS_KEY[::-1]}
aws_session_token = {AWS_SESSION_TOKEN}
"""

GCP_ADC = json.dumps(
    {
        "account": "",
        "client_id": "764086051850-canary.apps.googleusercontent.com",
        "client_secret": GCP_CLIENT_SECRET,
        "quota_project_id": "canary-project",
        "refresh_token": GCP_REFRESH_TOKEN,
        "type": "authorized_user",
        "universe_domain": "googleapis.com",
    },
    indent=2,
)

GCP_SERVICE_ACCOUNT = json.dumps(
    {
        "type": "service_account",
        "project_id": "canary-project",
        "private_key_id": GCP_PRIVATE_KEY_ID,
        "private_key": RSA_PRIVATE_KEY,
        "client_email": "litellm@canary-project.iam.gserviceaccount.com",
        "client_id": "109876543210987654321",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    },
    indent=2,
)

KUBECONFIG = f"""\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {_b64("kube-ca", 600)}
    server: https://canary.eks.amazonaws.com
  name: prod
contexts:
- context:
    cluster: prod
    user: admin
  name: prod
current-context: prod
users:
- name: admin
  user:
    client-certificate-data: {_b64("kube-client-cert", 600)}
    client-key-data: {KUBE_CLIENT_KEY_DATA}
- name: ci
  user:
    token: {_alnum("kube-static-token", 40)}
"""

# (file the stealer read, its content, a DLP kind it must be caught as)
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("environ", ENVIRONMENT, "env_dump"),
    ("~/.aws/credentials", AWS_CREDENTIALS, "aws_secret_access_key"),
    ("~/.config/gcloud/application_default_credentials.json", GCP_ADC, "gcp_credentials"),
    ("service-account.json", GCP_SERVICE_ACCOUNT, "gcp_credentials"),
    ("~/.kube/config", KUBECONFIG, "kubeconfig"),
    (
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        KUBERNETES_TOKEN,
        "kubernetes_service_account_token",
    ),
    ("~/.ssh/id_ed25519", OPENSSH_PRIVATE_KEY, "ssh_private_key"),
)

HARVEST = "\n".join(f"==> {name} <==\n{content}" for name, content, _ in SECTIONS)

# Every value that must never reach the provider (substrings of the harvest).
CANARIES: tuple[str, ...] = (
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    GCP_CLIENT_SECRET,
    GCP_REFRESH_TOKEN,
    GCP_PRIVATE_KEY_ID,
    KUBERNETES_TOKEN,
    KUBE_CLIENT_KEY_DATA,
    OPENAI_KEY,
    GITHUB_TOKEN,
    DATABASE_PASSWORD,
    OPENSSH_PRIVATE_KEY.splitlines()[1],
    RSA_PRIVATE_KEY.splitlines()[1],
)
