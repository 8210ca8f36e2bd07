"""Cloud credentials on the wire (issue 16): the gateway's signature out, ours in. Pure.

No mitmproxy, no network: botocore's SigV4 signer is a computation over the request.

What the gateway may send towards an `aws_sigv4` or `google_oauth` provider is the
documented dummy credential, nothing else:

- AWS: a SigV4 signature made with access key id `EGRESS-SIDECAR-DUMMY` (any secret
  key), or no signature. Any other access key id, in the `Authorization` header or in
  a presigned URL's `X-Amz-Credential`, or any session token, means the gateway holds
  an AWS credential: `gateway_holds_credential`.
- Google: `Authorization: Bearer egress-sidecar-dummy-token`, or nothing. Any other
  bearer token (a real `ya29.` access token, an ID token, anything) is refused the same
  way.

Whatever the gateway sent is then removed: the SigV4 headers (`Authorization`,
`X-Amz-Date`, `X-Amz-Security-Token`, `X-Amz-Content-Sha256`) and every `X-Amz-*`
query parameter of a presigned URL, and the sidecar signs the request itself.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from sidecar.credentials.detect import CredentialFinding
from sidecar.credentials.fields import MultiMap, by_name
from sidecar.credentials.secret_store import Secret
from sidecar.credentials.virtual_keys import is_virtual_key
from sidecar.policy.cloud_credentials import CloudKind

__all__ = [
    "DUMMY_AWS_ACCESS_KEY_ID",
    "DUMMY_GOOGLE_TOKEN",
    "AwsKeys",
    "CloudCredentialError",
    "gateway_signature_findings",
    "is_gateway_signature",
    "parse_aws_keys",
    "sign_aws",
    "strip_aws_signature",
    "unsignable_because",
]

# Shaped like an access key id (20 characters, [A-Z0-9-]): SDKs accept it as one.
DUMMY_AWS_ACCESS_KEY_ID = "EGRESS-SIDECAR-DUMMY"
DUMMY_GOOGLE_TOKEN = "egress-sidecar-dummy-token"  # noqa: S105  (documented, not a secret)

# botocore logs canonical requests and signatures at DEBUG; google-auth logs token
# responses at DEBUG. Neither is ever wanted in the sidecar's output.
for _name in ("botocore", "google.auth", "google.oauth2", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_SIGV4 = re.compile(r"^\s*AWS4-HMAC-SHA256\s", re.IGNORECASE)
_CREDENTIAL = re.compile(r"Credential=([^/,\s]*)", re.IGNORECASE)
# Headers a gateway's SigV4 signature leaves behind; all are recomputed by us.
_AWS_SIGNATURE_HEADERS = ("authorization", "x-amz-date", "x-amz-security-token",
                          "x-amz-content-sha256")  # fmt: skip
# The headers we sign: what SigV4 needs (host, x-amz-date) and what the provider reads
# (content type, Bedrock's x-amzn-bedrock-* options). Other headers may be dropped or
# rewritten by a hop (connection, content-length under HTTP/2): left unsigned.
_SIGNED_PREFIXES = ("x-amz-", "x-amzn-")
_SIGNED_NAMES = frozenset({"content-type", "accept", "content-encoding"})


class CloudCredentialError(Exception):
    """A cloud credential cannot be produced. The message is safe: names, never values."""


@dataclass(frozen=True, slots=True)
class AwsKeys:
    """AWS credentials. The secret parts are `Secret`s: their repr shows no value."""

    access_key_id: str
    secret_access_key: Secret = field(repr=False)
    session_token: Secret | None = field(default=None, repr=False)
    expires_at: float | None = None  # epoch seconds (temporary credentials)

    def secrets(self) -> tuple[Secret, ...]:
        return (self.secret_access_key,) + ((self.session_token,) if self.session_token else ())


def parse_aws_keys(document: Secret) -> AwsKeys:
    """`{"AccessKeyId", "SecretAccessKey", "SessionToken"?}` (also snake_case keys)."""
    name = document.name
    try:
        data = json.loads(document.reveal())
    except ValueError:
        raise CloudCredentialError(f"secret {name!r} is not JSON") from None
    if not isinstance(data, dict):
        raise CloudCredentialError(f"secret {name!r} is not a JSON object")

    def pick(*keys: str) -> str | None:
        for key in keys:
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
        return None

    key_id = pick("AccessKeyId", "aws_access_key_id", "access_key_id")
    secret = pick("SecretAccessKey", "aws_secret_access_key", "secret_access_key")
    token = pick("SessionToken", "aws_session_token", "session_token")
    if key_id is None or secret is None:
        raise CloudCredentialError(
            f"secret {name!r} needs AccessKeyId and SecretAccessKey (strings); "
            "SessionToken is optional"
        )
    if not re.fullmatch(r"[A-Z0-9]{16,128}", key_id):
        raise CloudCredentialError(f"secret {name!r}: AccessKeyId is not an access key id")
    return AwsKeys(
        key_id,
        Secret(name, secret),
        Secret(name, token) if token is not None else None,
    )


def is_gateway_signature(kind: CloudKind, header: str, value: str) -> bool:
    """A header value that this module judges (the generic key rules must not: a SigV4
    signature is 64 random hex digits by design)."""
    if header != "authorization":
        return False
    if kind is CloudKind.AWS_SIGV4:
        return bool(_SIGV4.match(value))
    return _bearer(value) is not None


def gateway_signature_findings(
    kind: CloudKind, headers: MultiMap, query: MultiMap | None
) -> list[CredentialFinding]:
    """Credentials the gateway holds, as seen in its own signature or token."""
    findings: list[CredentialFinding] = []
    for name, values in by_name(headers):
        lower = name.lower()
        if kind is CloudKind.AWS_SIGV4:
            if lower == "authorization":
                findings += _aws_key_ids(values, "header authorization")
            elif lower == "x-amz-security-token" and any(v.strip() for v in values):
                findings.append(
                    CredentialFinding(
                        "header x-amz-security-token",
                        "aws_session_token",
                        "AWS session token (the gateway holds temporary AWS credentials)",
                    )
                )
        elif lower == "authorization":
            for value in values:
                token = _bearer(value)
                if token is not None and token != DUMMY_GOOGLE_TOKEN and not is_virtual_key(token):
                    findings.append(
                        CredentialFinding(
                            "header authorization",
                            "google_oauth_token",
                            "Google OAuth token other than the documented dummy",
                        )
                    )
    if kind is CloudKind.AWS_SIGV4 and query is not None:
        for name, values in by_name(query, fold_case=False):
            lower = name.lower()
            if lower == "x-amz-credential":
                findings += _aws_key_ids(values, "query x-amz-credential")
            elif lower == "x-amz-security-token":
                findings.append(
                    CredentialFinding(
                        "query x-amz-security-token", "aws_session_token", "AWS session token"
                    )
                )
    return findings


def unsignable_because(kind: CloudKind, path: str) -> str | None:
    """Why a request cannot get our credential, whatever its body: None if it can."""
    if kind is CloudKind.AWS_SIGV4 and path.split("?", 1)[0].endswith(
        "/invoke-with-bidirectional-stream"
    ):
        # Each event of the request stream is signed with the previous signature, as
        # the client sends it; the sidecar signs whole requests (it reads the body first).
        return "bidirectional streams cannot be signed by the sidecar"
    return None


def strip_aws_signature(headers: MultiMap, query: MultiMap | None) -> list[str]:
    """Remove the gateway's SigV4 headers and presigned-URL parameters."""
    stripped: list[str] = []
    for name in list(headers):
        if name.lower() in _AWS_SIGNATURE_HEADERS:
            headers.set_all(name, [])
            stripped.append(f"header {name.lower()}")
    if query is not None:
        for name in list(query):
            if name.lower().startswith("x-amz-"):
                query.set_all(name, [])
                stripped.append(f"query {name.lower()}")
    return stripped


def sign_aws(
    *,
    method: str,
    host: str,
    path: str,
    headers: MultiMap,
    body: bytes,
    keys: AwsKeys,
    region: str,
    service: str,
) -> None:
    """Sign the request with botocore's SigV4 signer; set the signature headers.

    `host` is the vetted destination's name (the one the TLS connection verified),
    `path` the request target as sent (with its query). The body is hashed in full.
    """
    selected: dict[str, str] = {}
    for name, values in by_name(headers):
        lower = name.lower()
        if lower in _AWS_SIGNATURE_HEADERS or lower == "x-amzn-trace-id":
            continue
        if lower in _SIGNED_NAMES or lower.startswith(_SIGNED_PREFIXES):
            selected[lower] = ",".join(v.strip() for v in values)
    selected["host"] = host
    request = AWSRequest(method=method, url=f"https://{host}{path}", headers=selected, data=body)
    token = keys.session_token.reveal() if keys.session_token is not None else None
    credentials = ReadOnlyCredentials(keys.access_key_id, keys.secret_access_key.reveal(), token)
    SigV4Auth(credentials, service, region).add_auth(request)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        value = request.headers.get(name)
        if value is not None:
            headers.set_all(name.lower(), [value])


def _aws_key_ids(values: Iterable[str], location: str) -> list[CredentialFinding]:
    found: list[CredentialFinding] = []
    for value in values:
        if location.startswith("query "):
            key_ids = [value.split("/", 1)[0]]
        elif _SIGV4.match(value):
            key_ids = _CREDENTIAL.findall(value) or [""]  # every Credential= it holds
        else:
            continue  # not SigV4 (a bearer value): the generic rules judge it
        if any(key_id != DUMMY_AWS_ACCESS_KEY_ID for key_id in key_ids):
            found.append(
                CredentialFinding(
                    location,
                    "aws_access_key_id",
                    "AWS signature with an access key id other than the documented dummy",
                )
            )
    return found


def _bearer(value: str) -> str | None:
    parts = value.strip().split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip()
    return None
