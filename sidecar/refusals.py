"""What the gateway receives when the sidecar refuses: status, headers and body (pure).

One shape per destination kind, each carrying the reason code in the same places:

- the `x-egress-sidecar-reason` header (every shape),
- a top-level `"reason"` key in the JSON body (every shape),
- where the SDKs look for a machine-readable code: OpenAI's `error.code`,
  Anthropic's `error.details.error_code`.

Towards a provider whose API error format is known (by destination host), the body is
that provider's error object, so an SDK or a gateway (LiteLLM) raises its usual
status error with our reason in it instead of a parse failure. Everything else gets
the generic `{"error": "egress_refused", "reason": ...}` body.

Every refusal carries `x-should-retry: false`: the official OpenAI and Anthropic SDKs
obey it before looking at the status (they retry 408, 409, 429 and 5xx otherwise), so
one refusal stays one attempt, one decision line and one alert count. The exception
is a rate limit (issue 15): it carries `Retry-After` and `x-should-retry: true`, so
the SDKs back off as they do for the provider's own 429.
"""

from __future__ import annotations

import dataclasses
import json
import re
from enum import StrEnum
from typing import Any

from sidecar.decision import Decision

REASON_HEADER = "x-egress-sidecar-reason"
NAME = "egress-sidecar"


class ErrorFormat(StrEnum):
    GENERIC = "generic"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    AWS = "aws"  # Bedrock runtime: `x-amzn-errortype` + `{"message"}` (botocore's rest-json)


# Provider API hosts whose error format is known. OpenAI-compatible APIs (Azure OpenAI,
# Mistral, Groq, Together, OpenRouter, DeepSeek, xAI, Fireworks) answer errors in
# OpenAI's shape, so their SDK-compatible clients parse it.
_EXACT_HOSTS: dict[str, ErrorFormat] = {
    "api.openai.com": ErrorFormat.OPENAI,
    "api.mistral.ai": ErrorFormat.OPENAI,
    "api.groq.com": ErrorFormat.OPENAI,
    "api.together.xyz": ErrorFormat.OPENAI,
    "openrouter.ai": ErrorFormat.OPENAI,
    "api.deepseek.com": ErrorFormat.OPENAI,
    "api.x.ai": ErrorFormat.OPENAI,
    "api.fireworks.ai": ErrorFormat.OPENAI,
    "api.anthropic.com": ErrorFormat.ANTHROPIC,
}
_SUFFIX_HOSTS: tuple[tuple[str, ErrorFormat], ...] = ((".openai.azure.com", ErrorFormat.OPENAI),)
# Bedrock runtime endpoints only, not any *.amazonaws.com name (anyone's buckets live there).
_BEDROCK_HOST = re.compile(
    r"^bedrock-runtime(?:-fips)?\.[a-z]{2}(?:-[a-z]+)+-[0-9]+\.amazonaws\.com(?:\.cn)?$"
)

# Anthropic's error types by status (docs.anthropic.com, "Errors").
_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A complete HTTP answer, independent of any proxy library."""

    status: int
    headers: dict[str, str]
    body: bytes


def error_format(host: str) -> ErrorFormat:
    """The error format of the provider at `host` (already in its one spelling)."""
    known = _EXACT_HOSTS.get(host)
    if known is not None:
        return known
    for suffix, fmt in _SUFFIX_HOSTS:
        if host.endswith(suffix):
            return fmt
    if _BEDROCK_HOST.match(host):
        return ErrorFormat.AWS
    return ErrorFormat.GENERIC


def answered_in_tunnel(host: str) -> bool:
    """Whether a refused CONNECT to `host` is accepted and refused inside the tunnel.

    Only for provider API hosts with a known error format: their SDK clients then show
    the reason. Every other refused CONNECT (unlisted names, addresses, rebinding
    names) is answered at CONNECT, so a spray of invented names never costs a
    certificate and a TLS handshake each."""
    return error_format(host) is not ErrorFormat.GENERIC


def message(decision: Decision) -> str:
    """One sentence for a human: who refused, why, and what."""
    where = f"{decision.host}:{decision.port}"
    detail = f" ({decision.detail})" if decision.detail else ""
    return f"{NAME} refused this request: {decision.reason.value}{detail}; destination {where}"


def render(decision: Decision, status: int, *, close: bool = False) -> Refusal:
    """The gateway's answer to a refused request, in the destination's error format.

    `status` comes from the enforcer's table (403 unless the reason says otherwise)."""
    fmt = error_format(decision.host)
    reason = decision.reason.value
    body: dict[str, Any]
    if fmt is ErrorFormat.OPENAI:
        body = {
            "error": {
                "message": message(decision),
                "type": "egress_refused",
                "param": None,
                "code": reason,
            },
            "reason": reason,
        }
    elif fmt is ErrorFormat.ANTHROPIC:
        body = {
            "type": "error",
            "error": {
                "type": _ANTHROPIC_TYPES.get(status, "api_error"),
                "message": message(decision),
                "details": {"error_code": reason},
            },
            "reason": reason,
        }
    elif fmt is ErrorFormat.AWS:
        # botocore takes the error code from `x-amzn-errortype` (set below) and the
        # message from the body: boto3 raises ClientError with Code = our reason.
        body = {"message": message(decision), "reason": reason}
    else:
        body = {
            "error": "egress_refused",
            "reason": reason,
            "rule": decision.rule,
            "host": decision.host,
            "port": decision.port,
            "message": message(decision),
        }
        if decision.detail:
            body["detail"] = decision.detail
    headers = {
        "content-type": "application/json",
        REASON_HEADER: reason,
        "x-should-retry": "false",
    }
    if fmt is ErrorFormat.AWS:
        headers["x-amzn-errortype"] = reason
    if decision.retry_after is not None:
        # A rate limit (issue 15): the SDKs retry a 429 after `Retry-After` (OpenAI's
        # also reads `retry-after-ms`), as they do for the provider's own 429.
        headers["retry-after"] = str(decision.retry_after)
        headers["retry-after-ms"] = str(decision.retry_after * 1000)
        headers["x-should-retry"] = "true"
    if close:
        headers["connection"] = "close"
    return Refusal(status, headers, json.dumps(body).encode() + b"\n")


def proxy_error(status: int) -> Refusal:
    """What replaces mitmproxy's own HTML error pages (a request it could not parse or
    forward, not a policy decision): JSON, no product name or version, no echo of the
    request (its line can carry keys in the query string)."""
    body = {
        "error": "egress_sidecar_error",
        "status": status,
        "message": _PROXY_ERRORS.get(status, "the sidecar could not handle this request"),
    }
    return Refusal(
        status,
        {"content-type": "application/json", "connection": "close"},
        json.dumps(body).encode() + b"\n",
    )


_PROXY_ERRORS: dict[int, str] = {
    400: "malformed HTTP request",
    413: "request body too large",
    502: "the upstream connection failed",
    504: "the upstream did not answer in time",
}
