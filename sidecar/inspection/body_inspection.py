"""`inspect_body`: the one entry point of request inspection (issue 13), for HTTP bodies
and WebSocket messages alike: bytes in, an `Inspection` out (the parsed document for the
other request addons, the API family, and the first violation, if any).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from sidecar.decision import Reason
from sidecar.inspection.body import Uninspectable, decode_body, is_json, parse_json
from sidecar.inspection.check import InspectionViolation, check
from sidecar.inspection.policy import RelayRules
from sidecar.inspection.readers import Api, Dialect, api_for, minting_endpoint, read_request

__all__ = [
    "Api",
    "Inspection",
    "InspectionViolation",
    "api_for",
    "inspect_body",
    "minting_endpoint",
]

BODY_FIELD = "body"


@dataclasses.dataclass(frozen=True, slots=True)
class Inspection:
    api: Api
    document: Any  # the parsed JSON body; None when the body is not JSON (or unreadable)
    violation: InspectionViolation | None
    inspected_bytes: int  # decoded size


def inspect_body(
    raw: bytes,
    *,
    api: Api,
    rules: RelayRules,
    limit: int,
    content_encoding: Iterable[str] = (),
    content_type: str = "",
    own_hosts: frozenset[str] = frozenset(),
    json_required: bool | None = None,
) -> Inspection:
    """Decode (bounded), parse strictly, read and check one request body or message.

    `json_required`: a body that must be JSON (a known JSON API, a WebSocket text
    message); None decides by `api` (known APIs) or by content (elsewhere)."""
    try:
        body = decode_body(raw, content_encoding, limit)
    except Uninspectable as exc:
        return Inspection(api, None, _unreadable(str(exc)), len(raw))
    if json_required is None:
        json_required = api is not Api.OTHER
    if not body or not (json_required or is_json(content_type, body)):
        return Inspection(api, None, None, len(body))
    dialect = api.dialect
    try:
        document = parse_json(body, proto_names=dialect is Dialect.GEMINI)
    except Uninspectable as exc:
        return Inspection(api, None, _unreadable(str(exc)), len(body))
    violation = check(read_request(document, dialect), rules, own_hosts)
    return Inspection(api, document, violation, len(body))


def _unreadable(why: str) -> InspectionViolation:
    return InspectionViolation(Reason.REQUEST_NOT_INSPECTABLE, BODY_FIELD, why)
