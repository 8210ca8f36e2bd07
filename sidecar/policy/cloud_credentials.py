"""Typed `credential:` forms for cloud providers (issue 16). Pure: no network.

Next to the header form (`{header, format, secret}`), a provider's credential may be

    credential: {type: aws_sigv4, secret: bedrock}
    credential:
      type: aws_sigv4
      web_identity:            # EKS IRSA: the pod's projected token, exchanged at STS
        role_arn: arn:aws:iam::123456789012:role/egress-sidecar-bedrock
        token_file: /var/run/secrets/eks.amazonaws.com/serviceaccount/token
    credential: {type: google_oauth, secret: vertex}

`aws_sigv4`: the sidecar signs every request itself (AWS Signature Version 4) for the
region in the vetted host's name and the signing name `service` (default `bedrock`).
The secret is a JSON object `{"AccessKeyId", "SecretAccessKey", "SessionToken"?}` (the
shape `aws configure export-credentials` prints); `web_identity` instead exchanges the
token file for temporary credentials at STS (AssumeRoleWithWebIdentity).

`google_oauth`: the sidecar mints OAuth access tokens and adds `Authorization: Bearer`.
The secret is a Google credential JSON file: a service-account key
(`"type": "service_account"`) or a workload identity federation config
(`"type": "external_account"`).
"""

from __future__ import annotations

import dataclasses
import re
from enum import StrEnum
from typing import Protocol

from yaml.nodes import MappingNode, Node, ScalarNode

__all__ = [
    "AWS_DEFAULT_SERVICE",
    "AwsWebIdentity",
    "CloudCredential",
    "CloudKind",
    "aws_region",
    "is_typed",
    "read_cloud_credential",
]

AWS_DEFAULT_SERVICE = "bedrock"


class CloudKind(StrEnum):
    AWS_SIGV4 = "aws_sigv4"
    GOOGLE_OAUTH = "google_oauth"


@dataclasses.dataclass(frozen=True, slots=True)
class AwsWebIdentity:
    """IRSA: a projected service-account token exchanged for a role at STS."""

    role_arn: str
    token_file: str
    session_name: str = "egress-sidecar"


@dataclasses.dataclass(frozen=True, slots=True)
class CloudCredential:
    """A credential the sidecar computes per request. Names only, never values."""

    kind: CloudKind
    secret: str | None  # secret name (file in the secrets directory); None for web identity
    web_identity: AwsWebIdentity | None = None
    service: str = AWS_DEFAULT_SERVICE  # AWS signing name (aws_sigv4 only)

    @property
    def source(self) -> str:
        """Safe text naming where the credential comes from (for logs and details)."""
        if self.web_identity is not None:
            return f"web identity {self.web_identity.role_arn}"
        return f"secret {self.secret!r}"


# bedrock-runtime.us-east-1.amazonaws.com, bedrock-runtime-fips.us-gov-west-1.amazonaws.com,
# bedrock-runtime.cn-north-1.amazonaws.com.cn: the region is the label before the domain.
_AWS_HOST = re.compile(
    r"^[a-z0-9-]+\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)\.amazonaws\.com(?:\.cn)?$"
)
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
_SESSION_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{2,64}$")
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

_KEYS = {
    CloudKind.AWS_SIGV4: ("type", "secret", "web_identity", "service"),
    CloudKind.GOOGLE_OAUTH: ("type", "secret"),
}
_WEB_IDENTITY_KEYS = ("role_arn", "token_file", "session_name")


def aws_region(host: str) -> str | None:
    """The AWS region in a regional endpoint name, or None."""
    found = _AWS_HOST.match(host)
    return found.group("region") if found else None


def is_typed(node: Node) -> bool:
    """A `credential:` mapping that has a `type:` key (the header form has none)."""
    return isinstance(node, MappingNode) and any(
        isinstance(k, ScalarNode) and k.value == "type" for k, _ in node.value
    )


class _Reader(Protocol):
    def err(self, where: Node | int, key: str, message: str) -> None: ...

    def mapping(
        self, node: Node, key: str, allowed: tuple[str, ...] | None, hints: dict[str, str] | None
    ) -> dict[str, tuple[ScalarNode, Node]] | None: ...

    def string(self, node: Node, key: str, what: str = ...) -> str | None: ...


def read_cloud_credential(
    reader: _Reader, node: Node, key: str, hosts: list[str]
) -> tuple[CloudCredential | None, tuple[str, int] | None]:
    """Check a typed `credential:`; errors go to `reader` as file:line: key: message.

    Returns the credential (None if anything was wrong) and, for the loader's
    one-secret-per-provider check, the secret name with its line.
    """
    fields = reader.mapping(node, key, None, None)
    if fields is None:
        return None, None
    kind_text = reader.string(fields["type"][1], f"{key}.type")
    if kind_text is None:
        return None, None
    if kind_text not in _KEYS:
        reader.err(
            fields["type"][1],
            f"{key}.type",
            f"unknown credential type {kind_text!r}: use aws_sigv4 or google_oauth, or the "
            "header form {header, format, secret} without 'type'",
        )
        return None, None
    kind = CloudKind(kind_text)
    ok = True
    for name, (knode, _) in fields.items():
        if name not in _KEYS[kind]:
            reader.err(
                knode,
                f"{key}.{name}",
                f"unknown key for type {kind.value}: allowed are {', '.join(_KEYS[kind])}",
            )
            ok = False
    secret, secret_ref = None, None
    if "secret" in fields:
        vnode = fields["secret"][1]
        secret = reader.string(vnode, f"{key}.secret")
        if secret is not None and not _SECRET_NAME.match(secret):
            reader.err(
                vnode,
                f"{key}.secret",
                "a secret name is lower-case letters, digits, '.', '_' or '-' "
                "(the file name in the secrets directory)",
            )
            secret = None
        ok = ok and secret is not None
        if secret is not None:
            secret_ref = (secret, vnode.start_mark.line + 1)
    web_identity = None
    if "web_identity" in fields:
        web_identity = _web_identity(reader, fields["web_identity"][1], f"{key}.web_identity")
        ok = ok and web_identity is not None
    if ("secret" in fields) == ("web_identity" in fields) and kind is CloudKind.AWS_SIGV4:
        reader.err(
            node,
            key,
            "an aws_sigv4 credential takes exactly one of 'secret' (a JSON access key) or "
            "'web_identity' (role_arn and token_file, as EKS IRSA provides)",
        )
        ok = False
    if "secret" not in fields and kind is CloudKind.GOOGLE_OAUTH:
        reader.err(
            node,
            f"{key}.secret",
            "missing: a google_oauth credential names the secret holding a service-account "
            "key or a workload identity federation config",
        )
        ok = False
    service = AWS_DEFAULT_SERVICE
    if "service" in fields:
        text = reader.string(fields["service"][1], f"{key}.service")
        if text is None or not _SERVICE.match(text):
            if text is not None:
                reader.err(
                    fields["service"][1],
                    f"{key}.service",
                    "the AWS signing name is lower-case letters, digits and '-' (e.g. bedrock)",
                )
            ok = False
        else:
            service = text
    if kind is CloudKind.AWS_SIGV4:
        for host in hosts:
            if aws_region(host) is None:
                reader.err(
                    node,
                    key,
                    f"host {host!r} names no AWS region: aws_sigv4 signs for the region in "
                    "the host name, e.g. bedrock-runtime.us-east-1.amazonaws.com",
                )
                ok = False
    if not ok:
        return None, secret_ref
    return CloudCredential(kind, secret, web_identity, service), secret_ref


def _web_identity(reader: _Reader, node: Node, key: str) -> AwsWebIdentity | None:
    fields = reader.mapping(node, key, _WEB_IDENTITY_KEYS, None)
    if fields is None:
        return None
    values: dict[str, str] = {}
    for name in ("role_arn", "token_file"):
        if name not in fields:
            reader.err(node, f"{key}.{name}", "missing: web_identity needs role_arn and token_file")
    for name, (_, vnode) in fields.items():
        text = reader.string(vnode, f"{key}.{name}")
        if text is None:
            continue
        problem = _web_identity_problem(name, text)
        if problem:
            reader.err(vnode, f"{key}.{name}", problem)
            continue
        values[name] = text
    if "role_arn" not in values or "token_file" not in values:
        return None
    return AwsWebIdentity(
        values["role_arn"], values["token_file"], values.get("session_name", "egress-sidecar")
    )


def _web_identity_problem(name: str, text: str) -> str | None:
    if name == "role_arn" and not _ROLE_ARN.match(text):
        return "expected an IAM role ARN, arn:aws:iam::<12-digit account>:role/<name>"
    if name == "token_file" and not text.startswith("/"):
        return "an absolute path, e.g. /var/run/secrets/eks.amazonaws.com/serviceaccount/token"
    if name == "session_name" and not _SESSION_NAME.match(text):
        return "2 to 64 characters from letters, digits and +=,.@_-"
    return None
