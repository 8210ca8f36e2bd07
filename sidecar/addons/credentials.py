"""The credential addon (S7): strip, refuse gateway-held keys, inject, and redact
reflected keys from responses. Thin: the logic is in sidecar.credentials.

Two halves. The Enforcer calls `prepare` (and `hold_body`) as a step of its decision,
only after the destination passed the policy, S3 and S5, with the policy entry of that
vetted destination: a key can only ever go to its provider. Everything after that is
this addon's own hooks (`request`: cloud signing; `responseheaders`, `response`,
`error`, `websocket_message`: the reflection guard), registered right after the
Enforcer so they run in the same order as its own.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from sidecar.addons.flows import (
    DECISION_KEY,
    OFF_LOOP_BYTES,
    PENDING_DECISION_KEY,
    fail_closed,
    off_loop_if_large,
    refusal_response,
)
from sidecar.credentials import (
    Outcome,
    ReflectionGuard,
    SecretStore,
    StreamRedactor,
    VirtualKeySource,
    prepare_request,
)
from sidecar.credentials.cloud_signing import (
    CloudCredentialError,
    sign_aws,
    unsignable_because,
)
from sidecar.credentials.cloud_sources import CloudCredentialSource
from sidecar.credentials.confinement import UNLISTED
from sidecar.credentials.decoding import (
    DecodeBudget,
    NotInspectable,
    decode_layers,
    header_codings,
    needs_decoding,
)
from sidecar.credentials.detect import redact_known_keys
from sidecar.credentials.eventstream import EventStreamCutter, cut_body, is_event_stream
from sidecar.credentials.messages import MessageRedactor, uninspectable_extensions
from sidecar.credentials.reflection import HEADER_NAME_HIT, UNNAMED_HEADER_HIT
from sidecar.decision import Decision, Reason, Verdict
from sidecar.engine import PolicyEngine
from sidecar.policy.cloud_credentials import CloudCredential, CloudKind, aws_region
from sidecar.policy.model import Endpoint

if TYPE_CHECKING:
    from sidecar.addons.enforcer import EngineHolder

_PERCENT_LAYERS = 4  # percent-encoding layers a logged path is decoded through to scrub it
logger = logging.getLogger("egress_sidecar")

_INJECTED = "egress_injected"
_REDACTOR = "egress_redactor"
_HEADER_HITS = "egress_reflected_headers"
_BUFFERED = "egress_redact_whole_body"
_WS_REDACTOR = "egress_websocket_redactor"
_REASON_HIT = "egress_reflected_reason_phrase"
_CLOUD = "egress_cloud_credential"  # (credential, authority, provider): added at `request`


class CredentialLayer:
    # A rotated key must be in use within a second (issue #3). The background loop
    # refreshes every 250 ms, but under load the event loop can run it late; a request
    # that finds the last refresh older than this refreshes first (a few stat calls).
    MAX_STALENESS = 0.25
    # Process-wide budget of decoded response bytes (issue 10; set by the runner from
    # `--max-decoded-bytes`): concurrent compressed responses share it.
    decode_budget: DecodeBudget | None = None

    def __init__(
        self,
        store: SecretStore,
        virtual_keys: VirtualKeySource | None = None,
        on_injected: Any = None,
        on_changed: Any = None,
        cloud: CloudCredentialSource | None = None,
    ) -> None:
        self.store = store
        self.cloud = cloud or CloudCredentialSource(store)
        self.guard = ReflectionGuard(store)
        self.virtual_keys = virtual_keys
        self._on_injected = on_injected  # callable(provider) for the injections counter
        self._on_changed = on_changed  # callable(set of changed secret names)
        self._refreshed_at = time.monotonic()
        self._holder: EngineHolder | None = None
        self._record: Callable[[Decision], None] = lambda _decision: None

    def bind(self, holder: EngineHolder, record: Callable[[Decision], None]) -> None:
        """The Enforcer's policy in force and recorder: what the hooks decide is
        recorded like every other decision."""
        self._holder = holder
        self._record = record

    # --- mitmproxy hooks ----------------------------------------------------------------

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        # Issue 16: cloud credentials (SigV4 covers the body) are added with the body.
        if self._holder is None:
            return
        refusal = await self.add_cloud_credential(flow, self._holder.engine)
        if refusal is not None:
            flow.metadata.pop(PENDING_DECISION_KEY, None)  # its one line is the refusal
            self._record(refusal)
            flow.response = refusal_response(refusal)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # S10 + S7: every response streams on; where we added a key, redacted.
        try:
            if flow.response is not None:
                self.guard_response(flow)
        except Exception:
            # Unscanned bytes must not reach the gateway: drop the connection instead.
            logger.exception("response guard failed; killing the flow")
            flow.kill()

    async def response(self, flow: http.HTTPFlow) -> None:
        if self._holder is None:
            return
        try:
            reflected = await self.finish_response(flow, self._holder.engine)
        except Exception:
            logger.exception("reflection check failed; killing the flow")
            flow.kill()
            return
        if reflected:
            self._record(reflected)
            if reflected.reason is Reason.RESPONSE_NOT_INSPECTABLE:
                # Nothing of a buffered response was sent yet: answer with the refusal
                # (and no WebSocket follows a refused handshake).
                flow.response = refusal_response(reflected)
                flow.websocket = None

    def error(self, flow: http.HTTPFlow) -> None:
        if self._holder is None:
            return
        reflected = self.reflection_found(flow, self._holder.engine, sending=False)
        if reflected:
            self._record(reflected)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        # S7 after a WebSocket handshake that carried a key: every provider message.
        try:
            reflected = self._redact_websocket_message(flow)
        except Exception:
            logger.exception("WebSocket reflection check failed; dropping the message")
            if flow.websocket is not None and flow.websocket.messages:
                flow.websocket.messages[-1].drop()
            return
        if reflected:
            self._record(reflected)

    # --- secrets ------------------------------------------------------------------------

    def refresh(self) -> set[str]:
        """Re-read the secret sources; report changed names once, whoever noticed."""
        self._refreshed_at = time.monotonic()
        changed = self.store.refresh()
        if changed and self._on_changed is not None:
            self._on_changed(changed)
        return changed

    # --- records ----------------------------------------------------------------------

    def scrub(self, decision: Decision) -> Decision:
        """Remove our keys and anything key-shaped from the attacker-chosen text of a
        decision (host, path, detail) before any sink sees it: a gateway that puts a key
        in a URL must not get it written to logs, metrics or pages."""
        changes = {}
        for field in ("host", "path", "detail"):
            text = getattr(decision, field)
            if not text:
                continue
            clean = self._scrubbed(text)
            # A path is logged as sent: `/v1/%73k-proj-...` is a key to whoever decodes
            # it. Layers of percent-encoding are undone (bounded); where one reveals a
            # key, the decoded text is written, redacted.
            decoded = clean
            for _ in range(_PERCENT_LAYERS):
                step = urllib.parse.unquote(decoded) if "%" in decoded else decoded
                if step == decoded:
                    break
                decoded = step
                if (redacted := self._scrubbed(decoded)) != decoded:
                    clean = redacted
                    break
            if clean != text:
                changes[field] = clean
        return decision.with_context(**changes) if changes else decision

    def _scrubbed(self, text: str) -> str:
        clean = redact_known_keys(text)
        if self.guard.patterns().may_contain(clean.encode()):
            clean = self.guard.redact_body(clean.encode())[0].decode(errors="replace")
        return clean

    # --- requests ---------------------------------------------------------------------

    def prepare(
        self,
        flow: http.HTTPFlow,
        decision: Decision,
        endpoint: Endpoint | None,
        engine: PolicyEngine,
        withheld: str | None = None,
    ) -> Decision:
        """`withheld`: why no key may be added (confinement.key_withheld_because)."""
        if time.monotonic() - self._refreshed_at > self.MAX_STALENESS:
            self.refresh()
        result = prepare_request(
            endpoint or UNLISTED,
            flow.request.headers,
            # A query view parses the path on every use: none to read without a "?".
            flow.request.query if "?" in flow.request.path else None,
            self.store,
            virtual_keys=self.virtual_keys.current if self.virtual_keys else None,
            add_key=withheld is None,
        )
        if result.reason is not None:
            return engine.overrule(decision, result.reason, result.detail[:300]).with_context(
                tenant=result.tenant
            )
        if result.outcome is Outcome.INJECTED:
            flow.metadata[_INJECTED] = True
            if self._on_injected is not None:
                self._on_injected(result.provider)
        if result.outcome is Outcome.DEFERRED and endpoint is not None:
            credential = endpoint.cloud_credential
            assert credential is not None
            why = unsignable_because(credential.kind, flow.request.path)
            if why is not None:
                return engine.overrule(decision, Reason.PROTOCOL_NOT_ALLOWED, why).with_context(
                    tenant=result.tenant
                )
            # Signed once the body is here (SigV4 covers it): see add_cloud_credential.
            port = decision.port or 443
            authority = decision.host if port == 443 else f"{decision.host}:{port}"
            flow.metadata[_CLOUD] = (credential, authority, result.provider)
        if result.outcome is Outcome.WITHHELD and decision.verdict is Verdict.WOULD_BLOCK:
            # Audit mode: say why the provider will answer 401 to this one.
            detail = f"{decision.detail}; provider key not added".lstrip("; ")
            return decision.with_context(tenant=result.tenant, detail=detail)
        if result.tenant is decision.tenant:  # no virtual key (None): a copy would be equal
            return decision
        return decision.with_context(tenant=result.tenant)

    def hold_body(self, flow: http.HTTPFlow) -> None:
        """After the body limits chose streaming: a request we sign is read whole first
        (SigV4 hashes the body; still counted against the same body limit)."""
        if _CLOUD in flow.metadata:
            flow.request.stream = False

    async def add_cloud_credential(
        self, flow: http.HTTPFlow, engine: PolicyEngine
    ) -> Decision | None:
        """At the `request` hook, body read: sign for AWS, or add a Google access token.
        Returns the refusal when no credential can be had (nothing goes upstream)."""
        pending = flow.metadata.pop(_CLOUD, None)
        if pending is None or flow.response is not None:  # answered locally: nothing goes up
            return None
        credential, authority, provider = pending
        decision: Decision = flow.metadata[DECISION_KEY]
        try:
            await self._add_cloud_credential(flow, credential, authority)
        except CloudCredentialError as exc:
            return engine.overrule(decision, Reason.CREDENTIAL_UNAVAILABLE, str(exc)[:300])
        except Exception as exc:  # noqa: BLE001  fail closed, no text that may hold a value
            return engine.overrule(
                decision,
                Reason.CREDENTIAL_UNAVAILABLE,
                f"{credential.kind.value} credential could not be added: {type(exc).__name__}",
            )
        flow.metadata[_INJECTED] = True
        if self._on_injected is not None:
            self._on_injected(provider)
        return None

    async def _add_cloud_credential(
        self, flow: http.HTTPFlow, credential: CloudCredential, authority: str
    ) -> None:
        request = flow.request
        if credential.kind is CloudKind.GOOGLE_OAUTH:
            token = await self.cloud.google_token(credential)
            request.headers["authorization"] = f"Bearer {token.reveal()}"
            return
        keys = await self.cloud.aws_keys(credential)
        region = aws_region(authority.split(":", 1)[0])
        if region is None:  # the loader refuses such hosts; never sign for a guess
            raise CloudCredentialError(f"no AWS region in host {authority!r}")
        body = request.raw_content or b""

        def sign() -> None:
            sign_aws(
                method=request.method,
                host=authority,
                path=request.path,
                headers=request.headers,
                body=body,
                keys=keys,
                region=region,
                service=credential.service,
            )

        await off_loop_if_large(len(body), sign)  # hashing 32 MiB takes tens of ms

    # --- responses --------------------------------------------------------------------

    def guard_response(self, flow: http.HTTPFlow) -> None:
        """Called at response headers. Streams everything; scans where a key went out."""
        response = flow.response
        assert response is not None
        if not flow.metadata.get(_INJECTED):
            response.stream = True
            return
        flow.metadata[_HEADER_HITS] = self.guard.redact_headers(response.headers)
        if response.reason:  # HTTP/1.1 reason phrase: free text sent on to the gateway
            phrase, count = self.guard.redact_body(response.reason.encode("utf-8", "replace"))
            if count:
                response.reason = phrase.decode("utf-8", "replace")
                flow.metadata[_REASON_HIT] = True
        if self._encoded(response):
            # We asked for identity; a provider that compresses anyway (any number of
            # layers, content or transfer codings) is decoded, bounded, and redacted
            # whole in the response hook, not streamed: or refused if it cannot be.
            flow.metadata[_BUFFERED] = True
            return
        redactor: StreamRedactor | EventStreamCutter = self.guard.redactor()
        if is_event_stream(response.headers.get("content-type", "")):
            # Binary frames: cut, never rewritten.
            redactor = EventStreamCutter(self.guard.redactor())
        flow.metadata[_REDACTOR] = redactor
        response.stream = redactor.stream_callable()
        if "content-length" in response.headers:
            # Redaction changes the length: re-frame instead of announcing a wrong one.
            del response.headers["content-length"]
            if flow.request.http_version == "HTTP/1.1":
                response.headers["transfer-encoding"] = "chunked"

    def reflection_found(
        self, flow: http.HTTPFlow, engine: PolicyEngine | None = None, *, sending: bool = True
    ) -> Decision | None:
        """At the end of a response (before mitmproxy sends a buffered body and the
        trailers): redact what is left; one decision if a key echoed.

        Returns a `response_not_inspectable` refusal when a buffered body cannot be
        decoded within bounds; the caller must then replace the response (nothing of
        it was sent). `sending=False` (the error hook): nothing more will be sent.
        """
        if not flow.metadata.pop(_INJECTED, False):
            return None
        decision: Decision | None = flow.metadata.get(DECISION_KEY)
        response = flow.response
        places: list[str] = [_place("header", h) for h in flow.metadata.pop(_HEADER_HITS, [])]
        if flow.metadata.pop(_REASON_HIT, False):
            places.insert(0, "status reason phrase")
        redactor: StreamRedactor | EventStreamCutter | None = flow.metadata.pop(_REDACTOR, None)
        if redactor is not None and redactor.found:
            places.append("streamed body")
        buffered = flow.metadata.pop(_BUFFERED, False)
        if sending and response is not None:
            if response.trailers:
                # HTTP/2 trailers arrive after the body and mitmproxy sends them after
                # this hook, streamed or not: this is the last chance to scan them.
                places += [
                    _place("trailer", h) for h in self.guard.redact_headers(response.trailers)
                ]
            if buffered:
                try:
                    count = self._redact_encoded_body(response)
                except NotInspectable as exc:
                    if decision is None or engine is None:
                        raise  # the caller kills the flow: never pass unscanned bytes
                    return engine.overrule(
                        decision,
                        Reason.RESPONSE_NOT_INSPECTABLE,
                        f"response body not inspectable: {exc}; refused",
                    )
                if count:
                    places.append("body")
            if flow.websocket is not None:
                # A WebSocket handshake that carried a key: scan what the provider sends,
                # unless it negotiated an extension mitmproxy does not decode.
                if uninspectable_extensions(response.headers.get_all("sec-websocket-extensions")):
                    if decision is None or engine is None:
                        raise NotInspectable("WebSocket extension")
                    return engine.overrule(
                        decision,
                        Reason.RESPONSE_NOT_INSPECTABLE,
                        "WebSocket extension other than permessage-deflate; refused",
                    )
                flow.metadata[_WS_REDACTOR] = MessageRedactor(self.guard.patterns())
        if not places or decision is None:
            return None
        return decision.with_context(
            verdict=Verdict.BLOCK,
            reason=Reason.CREDENTIAL_REFLECTED,
            detail=f"injected key echoed in {', '.join(places)}; redacted",
        )

    async def finish_response(
        self, flow: http.HTTPFlow, engine: PolicyEngine | None = None
    ) -> Decision | None:
        """`reflection_found` for the response hook. Decoding and scanning a large or
        compressed buffered body (up to 64 MiB decoded) runs in a worker thread, so one
        large or hostile response does not stall every other connection on the event
        loop (mitmproxy does not touch the flow while this hook is pending); a small
        one is scanned in place, as the thread hop would cost more than the scan."""
        response = flow.response
        if not flow.metadata.get(_BUFFERED) or response is None:
            return self.reflection_found(flow, engine)  # streamed: scanned as it passed
        size = len(response.raw_content or b"")
        if self._encoded(response):
            size = OFF_LOOP_BYTES + 1  # a small compressed body can decode to 64 MiB
        return await off_loop_if_large(size, lambda: self.reflection_found(flow, engine))

    @staticmethod
    def _encoded(response: http.Response) -> bool:
        return needs_decoding(*header_codings(response.headers))

    def _redact_encoded_body(self, response: http.Response) -> int:
        """Decode every layer (bounded), redact, and send the decoded bytes: exactly
        what was scanned, whatever the gateway's decoders would make of the original."""
        raw = response.raw_content or b""
        if not raw:
            return 0
        budget = self.decode_budget
        content, transfer = header_codings(response.headers)
        decoded = decode_layers(raw, content, transfer, budget=budget)
        try:  # the decoded body stays charged while we redact and hand it on
            body, count = self.guard.redact_body(decoded)
            if count and is_event_stream(response.headers.get("content-type", "")):
                body = cut_body(self.guard.redactor(), decoded)  # frames kept well-formed
            response.headers.pop("content-encoding", None)
            response.headers.pop("transfer-encoding", None)
            response.content = body  # sets content-length
        finally:
            if budget is not None and decoded is not raw:
                budget.give(len(decoded))
        return count

    def _redact_websocket_message(self, flow: http.HTTPFlow) -> Decision | None:
        """Redact the key from a WebSocket message the provider sent; a decision if cut."""
        redactor: MessageRedactor | None = flow.metadata.get(_WS_REDACTOR)
        if redactor is None or flow.websocket is None or not flow.websocket.messages:
            return None
        message = flow.websocket.messages[-1]
        if message.from_client or message.injected:
            return None
        content = redactor.redact(message.content)
        if not redactor.count:
            return None
        message.content = content
        decision: Decision | None = flow.metadata.get(DECISION_KEY)
        if decision is None:
            return None
        return decision.with_context(
            verdict=Verdict.BLOCK,
            reason=Reason.CREDENTIAL_REFLECTED,
            detail="injected key echoed in a WebSocket message; redacted",
        )


def key_added(flow: http.HTTPFlow) -> bool:
    """Whether the credential layer added a provider key to this flow's request (for a
    WebSocket, after its handshake: whether its messages are being redacted)."""
    return bool(flow.metadata.get(_INJECTED)) or _WS_REDACTOR in flow.metadata


def redact_whole_body(flow: http.HTTPFlow) -> None:
    """For a response buffered whole (issue 14 reads non-streamed bodies whole): redact
    it in the response hook instead of through the stream redactor."""
    if flow.metadata.pop(_REDACTOR, None) is not None:
        flow.metadata[_BUFFERED] = True


def _place(where: str, hit: str) -> str:
    """ "header x-echo" / "a header name" / "a header": never a name holding key bytes."""
    if hit == HEADER_NAME_HIT:
        return f"a {where} name"
    return f"a {where}" if hit == UNNAMED_HEADER_HIT else f"{where} {hit}"
