"""Response inspection (issue 14): tool calls, keys in decoded text, usage. Thin: the
logic is in sidecar.streams and sidecar.policy.tools.

For an allowed POST to an LLM API path (chat completions, responses, messages,
generateContent): the request body is read whole (bounded by the request body limit)
to learn the declared tools; a streamed response passes event by event through a
`ResponseInspector` (after the reflection redactor, when a key was added); a response
that was not streamed is read whole and replaced by a 502 if it breaks an enforced
rule. The request's one decision line is written at the response end, with its usage
(or at the cut, as the refusal). Registered right after the Enforcer.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from typing import Any

from mitmproxy import ctx, http
from prometheus_client import CollectorRegistry

from sidecar import refusals
from sidecar.addons.credentials import CredentialLayer, key_added, redact_whole_body
from sidecar.addons.enforcer import LINE_AT_END, EngineHolder
from sidecar.addons.flows import (
    DECISION_KEY,
    DOCUMENT_KEY,
    OFF_LOOP_BYTES,
    PENDING_DECISION_KEY,
    internal_error,
    off_loop_if_large,
    refusal_response,
)
from sidecar.credentials.decoding import (
    NotInspectable,
    decode_layers,
    header_codings,
    needs_decoding,
)
from sidecar.credentials.detect import redact_known_keys
from sidecar.decision import Decision, Reason, Verdict
from sidecar.inspection import body as request_body
from sidecar.inspection.policy import DEFAULT_MAX_INSPECTED_BODY
from sidecar.policy.tools import DeclaredTools, ToolRules
from sidecar.records import Children, TokenMetrics
from sidecar.streams.declared import (
    USAGE_OPTION_HOSTS,
    declared_tools,
    wants_stream,
    with_usage_requested,
)
from sidecar.streams.inspector import (
    MAX_HELD_ARGUMENTS,
    ResponseInspector,
    StreamViolation,
    api_for_path,
    error_document,
    foreign_charset,
    safe_tool_name,
    stream_framing,
)
from sidecar.streams.readers import parse_json
from sidecar.usage import USAGE_KEY, TokenUsage

logger = logging.getLogger("egress_sidecar")

_API = "egress_inspect_api"
_REQUEST = "egress_inspect_request"
_INSPECTOR = "egress_inspector"
_NOTED = "egress_inspector_noted"
_WS = "egress_inspect_websocket"
_RAW_USAGE = "egress_inspect_raw_usage"
_WS_NOTED = "egress_inspect_websocket_noted"
_WHOLE_STREAM = "egress_inspect_whole_stream"  # a stream read whole: content-coded
_WS_ERROR_SENT = "egress_inspect_websocket_error_sent"
_WS_HELD = "egress_inspect_websocket_held"  # server messages held while a call is open
_WS_REPLAY = "egress_inspect_websocket_replay"  # held messages replayed, not yet gone out
_MODEL = re.compile(r"^[A-Za-z0-9._:/@-]{1,100}$")
OTHER_MODEL = "other"


def request_document(flow: http.HTTPFlow) -> Any:
    """The parsed JSON of the request body (None if it is not JSON): the document the
    request inspection read (issue 13, one parse per request), else the same strict
    reader over the body, bounded like it (a body it did not read: not an inspected API)."""
    known = flow.metadata.get(DOCUMENT_KEY)
    if known is not None:
        return known
    request = flow.request
    try:
        raw = request_body.decode_body(
            request.raw_content or b"",
            request.headers.get_all("content-encoding"),
            DEFAULT_MAX_INSPECTED_BODY,
        )
        return request_body.parse_json(raw)
    except (request_body.Uninspectable, ValueError, RecursionError):
        return None


class ResponseInspection:
    def __init__(
        self,
        holder: EngineHolder,
        record: Any,
        credentials: CredentialLayer,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.holder = holder
        self.record = record
        self.credentials = credentials
        self.tokens = Children(TokenMetrics(registry).tokens)  # declared in sidecar/records.py

    # --- request ----------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        decision: Decision | None = flow.metadata.get(PENDING_DECISION_KEY)
        if decision is None or flow.response is not None:
            return
        api = api_for_path(flow.request.path)
        if api == "responses" and flow.request.method == "GET":
            if "websocket" in flow.request.headers.get("upgrade", "").lower():
                flow.metadata[_WS] = True  # the Responses WebSocket: read message by message
            return
        if api is None or flow.request.method != "POST":
            return
        flow.metadata[_API] = api
        flow.metadata[LINE_AT_END] = True
        flow.request.stream = False  # read whole (bounded, counted) for its declared tools
        # The answer is judged decoded, and a coded stream can only be judged read whole:
        # ask for identity, as key injection does, so streams stay streamed.
        flow.request.headers["accept-encoding"] = "identity"

    async def request(self, flow: http.HTTPFlow) -> None:
        api = flow.metadata.get(_API)
        if api is None or flow.response is not None:
            return
        try:
            size = len(flow.request.raw_content or b"")
            doc = await off_loop_if_large(size, lambda: request_document(flow))
            self._read_request(flow, api, doc)
        except Exception:
            logger.exception("request inspection failed; refusing")
            flow.response = internal_error()

    def _read_request(self, flow: http.HTTPFlow, api: str, doc: Any) -> None:
        declared = declared_tools(api, doc)
        streamed = wants_stream(api, flow.request.path, doc)
        flow.metadata[_REQUEST] = (declared, streamed)
        decision: Decision | None = flow.metadata.get(DECISION_KEY)
        host = decision.host if decision is not None else ""
        if api == "chat" and streamed and isinstance(doc, dict) and host in USAGE_OPTION_HOSTS:
            body = with_usage_requested(doc)
            if body is not None:
                flow.request.content = body
        rules = self._rules(flow)
        if rules is None or rules.allow is None:
            return
        refused = sorted(n for n in declared.names if rules.name_refused(n))
        if not refused:
            return
        detail = f"{api} request declares tool {safe_tool_name(refused[0])!r}, not in tools.allow"
        self._violation(flow, StreamViolation(Reason.TOOL_NOT_ALLOWED, detail), request=True)

    # --- response ---------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._start(flow)
        except Exception:
            logger.exception("response inspection failed to start; killing the flow")
            flow.kill()

    def _start(self, flow: http.HTTPFlow) -> None:
        api, request, response = flow.metadata.get(_API), flow.metadata.get(_REQUEST), flow.response
        if api is None or request is None or response is None:
            return
        if not 200 <= response.status_code < 300:
            return  # an error body carries no tool calls; the redactor still runs
        declared: DeclaredTools = request[0]
        streamed: bool = request[1]
        inspector = flow.metadata[_INSPECTOR] = self._inspector(flow, api, declared)
        content_type = response.headers.get("content-type", "")
        shaped_as_stream = streamed or "text/event-stream" in content_type
        if (
            not shaped_as_stream
            or needs_decoding(*header_codings(response.headers))
            or foreign_charset(content_type)
        ):
            # Read whole: a 502 can still replace it. A content-coded stream too (we ask
            # for identity): its events are judged once decoded, never as coded bytes.
            response.stream = False
            redact_whole_body(flow)
            flow.metadata[_WHOLE_STREAM] = shaped_as_stream
            return
        inner = response.stream

        def stream(chunk: bytes) -> list[bytes]:
            given = inner(chunk) if callable(inner) else chunk
            pieces = [given] if isinstance(given, bytes) else list(given)
            out = [inspector.feed(piece) for piece in pieces if piece]
            if not chunk:
                out.append(inspector.finish())
            self._note(flow, inspector)
            return [piece for piece in out if piece]

        response.stream = stream
        if "content-length" in response.headers:  # a cut changes the length
            del response.headers["content-length"]
            if flow.request.http_version == "HTTP/1.1":
                response.headers["transfer-encoding"] = "chunked"

    async def response(self, flow: http.HTTPFlow) -> None:
        inspector: ResponseInspector | None = flow.metadata.get(_INSPECTOR)
        try:
            if inspector is not None and flow.response is not None and not flow.response.stream:
                # Bounded by mitmproxy's body_size_limit (64 MiB); a large or coded body
                # is read in a worker thread so it does not stall every other connection.
                response = flow.response
                codings = header_codings(response.headers)
                size = len(response.raw_content or b"")
                if needs_decoding(*codings):
                    size = OFF_LOOP_BYTES + 1  # a small coded body can decode to 64 MiB
                violation = await off_loop_if_large(
                    size, lambda: self._judge_whole(flow, response, codings, inspector)
                )
                self._note(flow, inspector)
                if violation is not None:
                    decision = flow.metadata.get(_NOTED)
                    if isinstance(decision, Decision):
                        answer = refusals.render(decision, 502)
                        flow.response = http.Response.make(502, answer.body, answer.headers)
        except Exception:
            logger.exception("response inspection failed; killing the flow")
            flow.kill()
        self._write_line(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        flow.metadata.pop(_INSPECTOR, None)

    def _judge_whole(
        self,
        flow: http.HTTPFlow,
        response: http.Response,
        codings: tuple[list[str], list[str]],
        inspector: ResponseInspector,
    ) -> StreamViolation | None:
        """A body read whole, judged as the gateway's client will read it: decoded by our
        own bounded decoder, every layer (mitmproxy's knows one coding per header and
        hands on what it cannot decode as it is), and then sent decoded, so the gateway
        gets exactly the bytes judged. A stream read whole keeps its events up to a cut."""
        if foreign_charset(response.headers.get("content-type", "")):
            return inspector.not_inspectable("response body in a charset other than UTF-8")
        content, transfer = codings  # read once by the caller
        body = response.raw_content or b""
        budget = self.credentials.decode_budget
        charged = 0
        if needs_decoding(content, transfer):
            try:
                decoded = decode_layers(body, content, transfer, budget=budget)
            except NotInspectable as exc:
                return inspector.not_inspectable(f"response body not inspectable: {exc}")
            charged = len(decoded) if decoded is not body else 0
            response.headers.pop("content-encoding", None)
            response.headers.pop("transfer-encoding", None)
            response.content = body = decoded  # sets content-length
        try:
            if not flow.metadata.get(_WHOLE_STREAM):
                return inspector.inspect_body(body)
            out, _cut = inspector.stream_body(body)
            if out != body:
                response.content = out
            return None  # a cut stream ends with its own error event, as if streamed
        finally:
            if budget is not None and charged:
                budget.give(charged)

    # --- the Responses WebSocket ------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get(_WS) or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        if message.injected:
            replay: collections.deque[bytes] | None = flow.metadata.get(_WS_REPLAY)
            if not message.from_client and replay and replay[0] == message.content:
                replay.popleft()  # a held message we replayed has gone out, in order
            return
        if message.dropped:
            return
        try:
            self._websocket_message(flow, message)
        except Exception:
            logger.exception("WebSocket inspection failed; dropping the message")
            message.drop()

    def _websocket_message(self, flow: http.HTTPFlow, message: Any) -> None:
        if message.from_client:
            doc = parse_json(message.content)
            if isinstance(doc, dict) and doc.get("type") == "response.create":
                self._websocket_usage(flow)
                flow.metadata.pop(_WS_HELD, None)  # a call left open: never judged, dropped
                body = doc.get("response") if isinstance(doc.get("response"), dict) else doc
                declared = declared_tools("responses", body)
                flow.metadata[_INSPECTOR] = self._inspector(flow, "responses", declared)
                rules = self._rules(flow)
                refused = sorted(n for n in declared.names if rules and rules.name_refused(n))
                if refused:  # as for HTTP: refused before it reaches the provider
                    name = safe_tool_name(refused[0])
                    detail = f"responses request declares tool {name!r}, not in tools.allow"
                    self._websocket_refusal(
                        flow, message, StreamViolation(Reason.TOOL_NOT_ALLOWED, detail)
                    )
            return
        inspector: ResponseInspector | None = flow.metadata.get(_INSPECTOR)
        if inspector is None:  # the server speaks before any response.create
            inspector = flow.metadata[_INSPECTOR] = self._inspector(
                flow, "responses", DeclaredTools()
            )
        violation = inspector.message(message.content.decode("utf-8", "replace"))
        for found in inspector.violations[flow.metadata.get(_WS_NOTED, 0) :]:
            self._websocket_record(flow, found)
        flow.metadata[_WS_NOTED] = len(inspector.violations)
        if violation is None:
            self._websocket_hold(flow, message, inspector)
            return
        flow.metadata.pop(_WS_HELD, None)  # the held pieces of the refused call never go
        message.drop()  # this and every later message of the response
        self._websocket_error(flow, violation)

    def _websocket_hold(
        self, flow: http.HTTPFlow, message: Any, inspector: ResponseInspector
    ) -> None:
        """Server messages carrying a call's arguments are held (dropped and kept) until
        the call is judged, then replayed in order with `inject.websocket`; until every
        replayed message has gone out, later ones are replayed behind them."""
        held: list[tuple[bytes, bool]] = flow.metadata.setdefault(_WS_HELD, [])
        replay: collections.deque[bytes] = flow.metadata.setdefault(_WS_REPLAY, collections.deque())
        if inspector.holding_arguments:
            message.drop()
            held.append((message.content, message.is_text))
            if sum(len(content) for content, _ in held) > MAX_HELD_ARGUMENTS:
                flow.metadata.pop(_WS_HELD, None)
                detail = "a tool call's arguments held unjudged past 16 MiB; response dropped"
                violation = StreamViolation(Reason.RESPONSE_NOT_INSPECTABLE, detail)
                inspector.cut = violation
                self._websocket_record(flow, violation)
                self._websocket_error(flow, violation)
            return
        if not held and not replay:
            return
        message.drop()
        for content, is_text in [*held, (message.content, message.is_text)]:
            replay.append(content)
            ctx.master.commands.call("inject.websocket", flow, True, content, is_text)
        held.clear()

    def _websocket_refusal(
        self, flow: http.HTTPFlow, message: Any, violation: StreamViolation
    ) -> None:
        """A refused client message: recorded; in enforce mode dropped, with an error."""
        if self._websocket_record(flow, violation) is Verdict.BLOCK:
            message.drop()
            self._websocket_error(flow, violation)

    def _websocket_record(self, flow: http.HTTPFlow, violation: StreamViolation) -> Verdict | None:
        decision: Decision | None = flow.metadata.get(DECISION_KEY)
        if decision is None:
            return None
        refusal = self.holder.engine.overrule(decision, violation.reason, violation.detail)
        self.record(refusal.with_context(detail=f"{refusal.detail} (WebSocket)"))
        return refusal.verdict

    def _websocket_error(self, flow: http.HTTPFlow, violation: StreamViolation) -> None:
        if flow.metadata.get(_WS_ERROR_SENT):
            return
        flow.metadata[_WS_ERROR_SENT] = True
        error = error_document("responses", violation.reason.value, self._message(flow, violation))
        ctx.master.commands.call("inject.websocket", flow, True, json.dumps(error).encode(), True)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(_WS):
            self._websocket_usage(flow)

    def _websocket_usage(self, flow: http.HTTPFlow) -> None:
        """Count the usage of the previous response on this socket (one per response)."""
        flow.metadata.pop(_WS_ERROR_SENT, None)
        flow.metadata[_WS_NOTED] = 0
        previous: ResponseInspector | None = flow.metadata.pop(_INSPECTOR, None)
        if previous is not None and previous.usage is not None:
            flow.metadata[USAGE_KEY] = self._safe(previous.usage)
            usage = self._safe_usage(flow)
            if usage is not None:
                self._count(flow, usage)

    # --- records ----------------------------------------------------------------------

    def _note(self, flow: http.HTTPFlow, inspector: ResponseInspector) -> None:
        """Keep the request's line up to date: usage, and the first violation."""
        if inspector.usage is not None and inspector.usage != flow.metadata.get(_RAW_USAGE):
            flow.metadata[_RAW_USAGE] = inspector.usage
            flow.metadata[USAGE_KEY] = self._safe(inspector.usage)
        count = flow.metadata.get("egress_inspector_count", 0)
        for violation in inspector.violations[count:]:
            self._violation(flow, violation)
        flow.metadata["egress_inspector_count"] = len(inspector.violations)

    def _violation(
        self, flow: http.HTTPFlow, violation: StreamViolation, *, request: bool = False
    ) -> None:
        pending: Decision | None = flow.metadata.get(PENDING_DECISION_KEY)
        if pending is None or (pending.verdict is not Verdict.ALLOW and not violation.enforced):
            return  # already a refusal (or its line written): one line per request
        decision = self.holder.engine.overrule(pending, violation.reason, violation.detail)
        if decision.verdict is Verdict.BLOCK:
            flow.metadata.pop(PENDING_DECISION_KEY, None)
            flow.metadata[_NOTED] = decision
            self.record(decision.with_context(usage=self._safe_usage(flow)))
            if request:
                flow.response = refusal_response(decision)
        else:
            flow.metadata[PENDING_DECISION_KEY] = decision  # audit: would_block, written at the end

    def _write_line(self, flow: http.HTTPFlow) -> None:
        usage = self._safe_usage(flow)
        decision: Decision | None = flow.metadata.pop(PENDING_DECISION_KEY, None)
        if usage is not None:
            self._count(flow, usage)
        if decision is not None:
            self.record(decision.with_context(usage=usage))

    def _safe_usage(self, flow: http.HTTPFlow) -> TokenUsage | None:
        usage: TokenUsage | None = flow.metadata.get(USAGE_KEY)
        return usage

    def _safe(self, usage: TokenUsage) -> TokenUsage:
        """The usage as stored for the line and the meters: the model name is the
        provider's text, so one that is not a plain name, or that shares 8 bytes with a
        key (a hostile upstream echoing our key as the model), is not kept."""
        model = usage.model
        if model is None:
            return usage
        raw = model.encode()
        patterns = self.credentials.guard.patterns()
        q = patterns.q
        if (
            not _MODEL.match(model)
            or redact_known_keys(model) != model
            or (q and any(raw[i : i + q] in patterns.qgrams for i in range(len(raw) - q + 1)))
        ):
            model = "(unprintable)"
        return TokenUsage(usage.input_tokens, usage.output_tokens, model)

    def _count(self, flow: http.HTTPFlow, usage: TokenUsage) -> None:
        decision: Decision | None = flow.metadata.get(DECISION_KEY)
        if decision is None:
            return
        endpoint = self.holder.engine.endpoint(decision.rule)
        known = getattr(endpoint, "models", None) or ()
        model = usage.model if usage.model in known else OTHER_MODEL
        provider = decision.provider or "none"
        tenant = decision.tenant or "none"
        self.tokens(tenant, provider, model, "input").inc(usage.input_tokens)
        self.tokens(tenant, provider, model, "output").inc(usage.output_tokens)

    # --- helpers ----------------------------------------------------------------------

    def _inspector(
        self, flow: http.HTTPFlow, api: str, declared: DeclaredTools
    ) -> ResponseInspector:
        return ResponseInspector(
            api,
            rules=self._rules(flow),
            declared=declared,
            patterns=self.credentials.guard.patterns() if key_added(flow) else None,
            enforce_tools=self.holder.engine.verdict_for(Reason.TOOL_NOT_ALLOWED) is Verdict.BLOCK,
            describe=lambda v: self._message(flow, v),
            framing=request_framing(flow.request, api),
        )

    def _rules(self, flow: http.HTTPFlow) -> ToolRules | None:
        decision: Decision | None = flow.metadata.get(DECISION_KEY)
        if decision is None:
            return None
        endpoint = self.holder.engine.endpoint(decision.rule)
        policy = endpoint.tools if endpoint is not None else None
        return policy.for_tenant(decision.tenant) if policy is not None else None

    def _message(self, flow: http.HTTPFlow, violation: StreamViolation) -> str:
        decision: Decision | None = flow.metadata.get(DECISION_KEY)
        if decision is None:
            return f"egress-sidecar cut this response: {violation.reason.value}"
        return refusals.message(
            decision.with_context(reason=violation.reason, detail=violation.detail)
        )


def request_framing(request: http.Request, api: str) -> str:
    """`stream_framing` of the request's query. Only Gemini's framing reads the query, and
    a path without "?" has none: the query view parses the URL on every use (~6 us a
    response, issue 17), so it is read only where it can matter."""
    query = request.query.items(multi=True) if api == "gemini" and "?" in request.path else ()
    return stream_framing(api, list(query))
