"""mitmproxy addon: provider request bodies held to the provider's relay policy (issue 13).

Runs after the enforcer. On `requestheaders` the enforcer has decided on the headers
and left its pending allow decision in the flow's metadata (written when the response
starts): here minting endpoints are refused, a declared body over
`max_inspected_body` is refused, and any other provider request is buffered instead of
streamed so that its body can be read. On `request` the body is decoded, parsed and
checked (sidecar/inspection); a refusal *replaces* the pending allow decision, so each
request still gets one decision line. Audit mode: the pending line becomes the
would_block and the request goes on. The parsed body is left in
`flow.metadata[DOCUMENT_KEY]` (and the API family in `API_KEY`) for the other request
addons (DLP, tool calls), so a body is parsed once.

WebSocket (OpenAI Realtime, Responses over WebSocket, Gemini Live): every client message
to a provider goes through the same reader and rules; a refused message is dropped and
the gateway gets an error event instead (docs/request-inspection.md).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, http
from prometheus_client import CollectorRegistry

from sidecar.addons.enforcer import EngineHolder
from sidecar.addons.flows import (
    API_KEY,
    DECISION_KEY,
    DOCUMENT_KEY,
    PENDING_DECISION_KEY,
    internal_error,
    off_loop_if_large,
    refusal_response,
)
from sidecar.addons.limits import BODY_LIMIT_KEY
from sidecar.credentials.fields import values_of
from sidecar.decision import Decision, Reason
from sidecar.inspection.body import NOT_JSON_TYPES
from sidecar.inspection.body_inspection import (
    Api,
    Inspection,
    InspectionViolation,
    api_for,
    inspect_body,
    minting_endpoint,
)
from sidecar.policy.model import Endpoint
from sidecar.records import RequestInspectionMetrics

logger = logging.getLogger("egress_sidecar")

_INSPECT = "egress_inspect_body"  # set on requestheaders: read this body on request
# Metric label for the field: its last key, from the readers' fixed vocabulary.
_FIELD_LABELS = frozenset({
    "body", "server_url", "connector_id", "image_url", "url", "file_url", "file_uri",
    "fileUri", "uri", "allowed_domains", "domain", "tools", "web_search_options", "plugins",
    "mcp_servers", "network_policy", "file_data", "fileData", "session", "container",
    "environment", "filters", "domain_secrets", "source", "endpoint",
})  # fmt: skip
_INDEX = re.compile(r"\[\d+\]")


def field_label(field: str) -> str:
    last = _INDEX.sub("", field).rsplit(".", 1)[-1]
    return last if last in _FIELD_LABELS else "other"


class RequestInspection:
    def __init__(
        self,
        holder: EngineHolder,
        record: Callable[[Decision], None],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.holder = holder
        self.record = record
        registry = registry or CollectorRegistry()
        metrics = RequestInspectionMetrics(registry)  # declared in sidecar/records.py
        self.refusals = metrics.refusals
        self.inspected = metrics.inspected

    # --- HTTP ------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._on_headers(flow)
        except Exception:
            logger.exception("request inspection failed on the headers; refusing")
            self._fail_closed(flow)

    def _on_headers(self, flow: http.HTTPFlow) -> None:
        pending, endpoint = self._pending(flow)
        if pending is None or endpoint is None:
            return
        request = flow.request
        rules = endpoint.relay.for_tenant(pending.tenant)
        minted = minting_endpoint(request.method, request.path)
        if minted is not None and not rules.credential_minting:
            violation = InspectionViolation(
                Reason.CREDENTIAL_MINTING_NOT_ALLOWED,
                "endpoint",
                f"POST {minted} mints a token usable from outside the pod; "
                "credential_minting is not enabled for this provider",
            )
            self._apply(flow, pending, violation)
            if flow.response is not None:
                return
        api = api_for(request.path, pending.host)
        content_type, length = values_of(request.headers, ("content-type", "content-length"))
        kind = ", ".join(content_type).split(";", 1)[0].strip().lower()  # as Headers.get
        if api is Api.OTHER and kind.startswith(NOT_JSON_TYPES):
            return  # a file or audio upload: streamed, not read (docs/request-inspection.md)
        limit = endpoint.relay.max_inspected_body
        declared = ", ".join(length).strip()
        if declared.isdigit() and int(declared) > limit:
            violation = InspectionViolation(
                Reason.REQUEST_NOT_INSPECTABLE,
                "body",
                f"content-length {int(declared)} exceeds max_inspected_body ({limit} bytes)",
            )
            self._apply(flow, pending, violation)
            if flow.response is not None:
                return
        request.stream = False  # buffered so that it can be read
        # A body without a declared length (chunked, HTTP/2) is cut off where reading it
        # would stop anyway: no request makes the sidecar hold more than it inspects.
        body_limit = flow.metadata.get(BODY_LIMIT_KEY)
        if isinstance(body_limit, int) and body_limit > limit:
            flow.metadata[BODY_LIMIT_KEY] = limit
        flow.metadata[_INSPECT] = api

    async def request(self, flow: http.HTTPFlow) -> None:
        try:
            await self._on_body(flow)
        except Exception:
            logger.exception("request inspection failed on the body; refusing")
            self._fail_closed(flow)

    async def _on_body(self, flow: http.HTTPFlow) -> None:
        api = flow.metadata.pop(_INSPECT, None)
        if api is None or flow.response is not None:
            return
        pending, endpoint = self._pending(flow)
        if pending is None or endpoint is None:
            return
        request = flow.request
        raw = request.raw_content or b""
        encoding, content_type = values_of(request.headers, ("content-encoding", "content-type"))
        inspect = _inspector(
            raw,
            api=api,
            endpoint=endpoint,
            tenant=pending.tenant,
            content_encoding=encoding,
            content_type=", ".join(content_type),
        )
        result = await off_loop_if_large(len(raw), inspect)
        self.inspected.inc(result.inspected_bytes)
        flow.metadata[API_KEY] = result.api.value
        if result.document is not None:
            flow.metadata[DOCUMENT_KEY] = result.document
        if result.violation is not None:
            self._apply(flow, pending, result.violation)

    # --- WebSocket ---------------------------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        try:
            self._on_message(flow)
        except Exception:
            logger.exception("WebSocket message inspection failed; dropping the message")
            if flow.websocket is not None and flow.websocket.messages:
                flow.websocket.messages[-1].drop()

    def _on_message(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client or message.injected:
            return
        allowed = flow.metadata.get(DECISION_KEY)
        endpoint = self._endpoint(allowed)
        if not isinstance(allowed, Decision) or endpoint is None:
            return
        api = api_for(flow.request.path, allowed.host)
        if not message.is_text:
            result = Inspection(api, None, _binary_message(), len(message.content))
        else:
            result = _inspector(message.content, api=api, endpoint=endpoint,
                                tenant=allowed.tenant, json_required=True)()  # fmt: skip
        self.inspected.inc(result.inspected_bytes)
        violation = result.violation
        if violation is None:
            return
        engine = self.holder.engine
        decision = engine.overrule(
            allowed, violation.reason, f"{violation.detail} (WebSocket message)"
        ).with_context(at=time.time())
        self.refusals.labels(decision.reason.value, field_label(violation.field)).inc()
        self.record(decision)
        if decision.blocked:
            message.drop()
            _send_error(flow, decision)

    # --- shared --------------------------------------------------------------------------------

    def _pending(self, flow: http.HTTPFlow) -> tuple[Decision | None, Endpoint | None]:
        pending = flow.metadata.get(PENDING_DECISION_KEY)
        if not isinstance(pending, Decision) or flow.response is not None:
            return None, None
        return pending, self._endpoint(pending)

    def _endpoint(self, decision: Any) -> Endpoint | None:
        if not isinstance(decision, Decision):
            return None
        endpoint = self.holder.engine.endpoint(decision.rule)
        if endpoint is None or endpoint.provider is None:
            return None  # allow: entries are not providers: nothing is relayed
        return endpoint

    def _apply(
        self, flow: http.HTTPFlow, pending: Decision, violation: InspectionViolation
    ) -> None:
        """The request's one line becomes the refusal (or, in audit mode, the
        would_block that is written when the response starts)."""
        engine = self.holder.engine
        decision = engine.overrule(pending, violation.reason, violation.detail)
        decision = decision.with_context(at=time.time())
        self.refusals.labels(decision.reason.value, field_label(violation.field)).inc()
        flow.metadata[DECISION_KEY] = decision
        if not decision.blocked:
            flow.metadata[PENDING_DECISION_KEY] = decision
            return
        flow.metadata.pop(PENDING_DECISION_KEY, None)
        flow.metadata.pop(_INSPECT, None)
        self.record(decision)
        flow.request.stream = False  # mitmproxy cannot both stream a body and answer it
        flow.response = refusal_response(decision)

    def _fail_closed(self, flow: http.HTTPFlow) -> None:
        pending = flow.metadata.get(PENDING_DECISION_KEY)
        if isinstance(pending, Decision):
            detail = "internal error while inspecting the request"
            decision = pending.with_context(
                verdict=self.holder.engine.verdict_for(Reason.REQUEST_NOT_INSPECTABLE),
                reason=Reason.REQUEST_NOT_INSPECTABLE,
                detail=detail,
            )
            if not decision.blocked:
                flow.metadata[PENDING_DECISION_KEY] = decision
                return
            flow.metadata.pop(PENDING_DECISION_KEY, None)
            self.record(decision)
            flow.request.stream = False
            flow.response = refusal_response(decision)
            return
        flow.response = internal_error()


def _inspector(
    raw: bytes,
    *,
    api: Api,
    endpoint: Endpoint,
    tenant: str | None,
    content_encoding: list[str] | None = None,
    content_type: str = "",
    json_required: bool | None = None,
) -> Callable[[], Inspection]:
    relay = endpoint.relay
    own_hosts = frozenset(h for h in endpoint.hosts if not h.startswith("*."))

    def run() -> Inspection:
        return inspect_body(
            raw,
            api=api,
            rules=relay.for_tenant(tenant),
            limit=relay.max_inspected_body,
            content_encoding=content_encoding or (),
            content_type=content_type,
            own_hosts=own_hosts,
            json_required=json_required,
        )

    return run


def _binary_message() -> InspectionViolation:
    return InspectionViolation(Reason.REQUEST_NOT_INSPECTABLE, "body", "a binary WebSocket message")


def _send_error(flow: http.HTTPFlow, decision: Decision) -> None:
    """Tell the gateway why its message went nowhere, as the provider's own error event
    (OpenAI Realtime and Responses WebSocket: `{"type": "error", "error": {...}}`)."""
    event = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": decision.reason.value,
            "message": f"egress-sidecar: {decision.reason.value}: {decision.detail}",
        },
        "reason": decision.reason.value,
    }
    payload = json.dumps(event).encode()
    ctx.master.commands.call("inject.websocket", flow, True, payload, True)
