"""The credential side of the enforcer (S7): strip, refuse gateway-held keys, inject,
and redact reflected keys from responses. Thin: the logic is in sidecar.credentials.

Called by the Enforcer only after the destination passed the policy, S3 and S5, with
the policy entry of that vetted destination: a key can only ever go to its provider.
"""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import http

from sidecar.credentials import (
    Outcome,
    ReflectionGuard,
    SecretStore,
    StreamRedactor,
    VirtualKeySource,
    prepare_request,
)
from sidecar.credentials.detect import redact_known_keys
from sidecar.decision import RULE_DEFAULT_DENY, Decision, Reason, Verdict
from sidecar.engine import PolicyEngine
from sidecar.policy.model import ANY_PATH, Endpoint, SourceRef

# The entry used for destinations audit mode lets through without a policy entry:
# nothing is injected, but gateway-held keys are still detected and stripped.
UNLISTED = Endpoint(
    rule=RULE_DEFAULT_DENY,
    provider=None,
    hosts=(),
    cidrs=(),
    ports=frozenset(),
    paths=ANY_PATH,
    methods=None,
    addresses=(),
    tls_required=False,
    credential=None,
    source=SourceRef("<none>", 0),
)

_INJECTED = "egress_injected"
_REDACTOR = "egress_redactor"
_HEADER_HITS = "egress_reflected_headers"
_BUFFERED = "egress_redact_whole_body"


class CredentialLayer:
    # A rotated key must be in use within a second (issue #3). The background loop
    # refreshes every 250 ms, but under load the event loop can run it late; a request
    # that finds the last refresh older than this refreshes first (a few stat calls).
    MAX_STALENESS = 0.25

    def __init__(
        self,
        store: SecretStore,
        virtual_keys: VirtualKeySource | None = None,
        on_injected: Any = None,
        on_changed: Any = None,
    ) -> None:
        self.store = store
        self.guard = ReflectionGuard(store)
        self.virtual_keys = virtual_keys
        self._on_injected = on_injected  # callable(provider) for the injections counter
        self._on_changed = on_changed  # callable(set of changed secret names)
        self._refreshed_at = time.monotonic()

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
            clean = redact_known_keys(text)
            if self.guard.patterns().may_contain(clean.encode()):
                clean = self.guard.redact_body(clean.encode())[0].decode(errors="replace")
            if clean != text:
                changes[field] = clean
        return decision.with_context(**changes) if changes else decision

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
            flow.request.query,
            self.store,
            virtual_keys=self.virtual_keys.current if self.virtual_keys else None,
            add_key=withheld is None,
        )
        if result.refused:
            assert result.reason is not None
            return engine.refusal(decision, result.reason, result.detail[:300]).with_context(
                tenant=result.tenant
            )
        if result.outcome is Outcome.INJECTED:
            flow.metadata[_INJECTED] = True
            if self._on_injected is not None:
                self._on_injected(result.provider)
        if result.outcome is Outcome.WITHHELD and decision.verdict is Verdict.WOULD_BLOCK:
            # Audit mode: say why the provider will answer 401 to this one.
            detail = f"{decision.detail}; provider key not added".lstrip("; ")
            return decision.with_context(tenant=result.tenant, detail=detail)
        return decision.with_context(tenant=result.tenant)

    # --- responses --------------------------------------------------------------------

    def guard_response(self, flow: http.HTTPFlow) -> None:
        """Called at response headers. Streams everything; scans where a key went out."""
        response = flow.response
        assert response is not None
        if not flow.metadata.get(_INJECTED):
            response.stream = True
            return
        flow.metadata[_HEADER_HITS] = self.guard.redact_headers(response.headers)
        if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
            # We asked for identity; a provider that compresses anyway is redacted whole
            # (decoded first) in the response hook, not streamed.
            flow.metadata[_BUFFERED] = True
            return
        redactor = self.guard.redactor()
        flow.metadata[_REDACTOR] = redactor
        response.stream = redactor.stream_callable()
        if "content-length" in response.headers:
            # Redaction changes the length: re-frame instead of announcing a wrong one.
            del response.headers["content-length"]
            if flow.request.http_version == "HTTP/1.1":
                response.headers["transfer-encoding"] = "chunked"

    def reflection_found(self, flow: http.HTTPFlow) -> Decision | None:
        """At the end of a response: redact a buffered body; one decision if a key echoed."""
        if not flow.metadata.pop(_INJECTED, False):
            return None
        places: list[str] = [f"header {h}" for h in flow.metadata.pop(_HEADER_HITS, [])]
        redactor: StreamRedactor | None = flow.metadata.pop(_REDACTOR, None)
        if redactor is not None and redactor.found:
            places.append("streamed body")
        if flow.metadata.pop(_BUFFERED, False) and flow.response is not None:
            flow.response.decode(strict=False)
            body, count = self.guard.redact_body(flow.response.content or b"")
            if count:
                flow.response.content = body
                places.append("body")
        if not places:
            return None
        decision: Decision | None = flow.metadata.get("egress_decision")
        if decision is None:
            return None
        return decision.with_context(
            verdict=Verdict.BLOCK,
            reason=Reason.CREDENTIAL_REFLECTED,
            detail=f"injected key echoed in {', '.join(places)}; redacted",
        )
