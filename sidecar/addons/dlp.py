"""mitmproxy addon: request DLP (issue 13), secrets in what the gateway sends a provider.

Thin: the scanning is `sidecar.dlp`, the rules `sidecar.dlp.rules`. Two hooks:

- `requestheaders` (after the enforcer's): a request the enforcer allowed towards a
  provider whose `dlp:` is enabled has its body buffered instead of streamed (bounded
  by the provider's `max_request_body`, counted by the limits layer), so that
- `request` can scan it whole, then: forward it, forward it redacted (Content-Length
  fixed, content codings undone), or refuse it in the provider's error format.

One decision line per request still holds: the enforcer left its allow decision in
`flow.metadata[PENDING_DECISION_KEY]` and writes it when the response starts; this
addon replaces it there, so the line that is written says what DLP decided. A refusal
set here goes through the enforcer's `responseheaders` like any local answer.
Every hook fails closed: an exception refuses the request.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Awaitable, Callable

from mitmproxy import http
from prometheus_client import CollectorRegistry

from sidecar.addons.enforcer import EngineHolder
from sidecar.addons.flows import (
    DECISION_KEY,
    DOCUMENT_KEY,
    PENDING_DECISION_KEY,
    internal_error,
    off_loop_if_large,
    refusal_response,
)
from sidecar.credentials import SecretStore
from sidecar.credentials.decoding import header_codings
from sidecar.credentials.fields import values_of
from sidecar.credentials.inject import is_credential_header, is_credential_param
from sidecar.decision import Decision, Reason, Verdict
from sidecar.dlp.detectors import Detector, own_key_patterns
from sidecar.dlp.document import BodyScan, HeadScan, scan_body, scan_head
from sidecar.dlp.kinds import SecretKind
from sidecar.dlp.rules import EffectiveRules, Plan, describe, effective, plan
from sidecar.policy.dlp import Action
from sidecar.policy.model import Mode
from sidecar.records import DlpMetrics

logger = logging.getLogger("egress_sidecar")

_SCAN = "egress_dlp_scan"  # flow metadata: buffered for DLP, scan it in `request`
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _fail_closed[F: Callable[..., Awaitable[None]]](hook: F) -> F:
    @functools.wraps(hook)
    async def wrapper(self: RequestDlp, flow: http.HTTPFlow) -> None:
        try:
            await hook(self, flow)
        except Exception:
            logger.exception("request DLP hook %s failed; refusing", hook.__name__)
            self.refuse_on_error(flow)

    return wrapper  # type: ignore[return-value]


class RequestDlp:
    def __init__(
        self,
        holder: EngineHolder,
        store: SecretStore,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.holder = holder
        self.store = store
        self._generation = -1
        self._detector = Detector()
        metrics = DlpMetrics(registry)  # declared in sidecar/records.py
        self.findings = metrics.findings
        self.parses = metrics.parses

    def detector(self) -> Detector:
        """Rebuilt when the mounted keys change (rotation), like the reflection guard."""
        generation = self.store.generation
        if generation != self._generation:
            self._detector = Detector(own_key_patterns(self.store.redaction_values()))
            self._generation = generation
        return self._detector

    @_fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        pending = flow.metadata.get(PENDING_DECISION_KEY)
        if not isinstance(pending, Decision) or flow.response is not None:
            return
        rules = self._rules(pending)
        if rules is None:
            return
        request = flow.request
        length, transfer = values_of(request.headers, ("content-length", "transfer-encoding"))
        declared = ", ".join(length).strip()  # as Headers.get
        bodyless = request.method in _BODYLESS and declared in ("", "0")
        if bodyless and not transfer:
            await self._inspect(flow, pending, rules, None)  # the URL and headers only
            return
        request.stream = False  # buffered, bounded by the body limit (addons/limits.py)
        flow.metadata[_SCAN] = True

    @_fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.pop(_SCAN, False) or flow.response is not None:
            return
        pending = flow.metadata.get(PENDING_DECISION_KEY)
        if not isinstance(pending, Decision):
            return
        rules = self._rules(pending)
        if rules is not None:
            await self._inspect(flow, pending, rules, flow.request.raw_content or b"")

    async def _inspect(
        self, flow: http.HTTPFlow, pending: Decision, rules: EffectiveRules, body: bytes | None
    ) -> None:
        request = flow.request
        detector = self.detector()
        endpoint = self.holder.engine.endpoint(pending.rule)
        ours = endpoint.credential.header if endpoint and endpoint.credential else ""
        head = scan_head(
            request.path,
            [
                (n.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
                for n, v in request.headers.fields
            ],
            detector,
            skip_header=lambda name: name.lower() == ours or is_credential_header(name),
            skip_param=is_credential_param,
            allowed=rules.allowed,
        )
        result = None
        if body is not None:
            content_encoding, transfer_encoding = header_codings(request.headers)
            scan = functools.partial(
                scan_body,
                body,
                detector,
                content_encoding=content_encoding,
                transfer_encoding=transfer_encoding,
                document=flow.metadata.get(DOCUMENT_KEY),
                allowed=rules.allowed,
            )
            result = await off_loop_if_large(len(body), scan)
            if result.parsed:
                self.parses.inc()
        findings = head.findings + (result.findings if result is not None else ())
        verdict_plan = plan(findings, rules)
        if verdict_plan.action is Action.IGNORE:
            return
        audit = self.holder.engine.policy.mode is Mode.AUDIT
        decision, outcome = self._decision(pending, verdict_plan, audit)
        if outcome is _Outcome.REDACT:
            why = self._redact(flow, verdict_plan.redact_kinds, head, result)
            if why is not None:  # never forward what could not be redacted
                detail = f"{why}, refused: {describe(verdict_plan.reported())}"
                decision = self._overrule(pending, Reason.SECRET_IN_REQUEST, detail)
                decision = decision.with_context(verdict=Verdict.BLOCK)
                outcome = _Outcome.REFUSE
        self._count(verdict_plan, pending.provider)
        flow.metadata[PENDING_DECISION_KEY] = decision
        flow.metadata[DECISION_KEY] = decision
        if outcome is _Outcome.REFUSE:
            flow.response = refusal_response(decision)

    @staticmethod
    def _redact(
        flow: http.HTTPFlow, kinds: frozenset[SecretKind], head: HeadScan, result: BodyScan | None
    ) -> str | None:
        """Replace the secrets of `kinds`; the reason it cannot be done, or None."""
        if head.url_kinds & kinds:
            return "a secret in the URL cannot be redacted"
        rewritten = None
        if result is not None and result.kinds & kinds:
            rewritten = result.redacted(kinds)
            if rewritten is None:
                return "could not redact the body exactly"
        request = flow.request
        fields = list(request.headers.fields)
        for index, value in sorted(head.header_rewrites(kinds).items(), reverse=True):
            if value is None:
                del fields[index]
            else:
                fields[index] = (fields[index][0], value.encode("utf-8", "surrogateescape"))
        request.headers.fields = tuple(fields)
        if rewritten is not None:
            if result is not None and result.decoded:  # what was scanned goes out, decoded
                request.headers.pop("content-encoding", None)
                request.headers.pop("transfer-encoding", None)  # framed by Content-Length now
            request.content = rewritten  # sets Content-Length
        return None

    # --- decisions ----------------------------------------------------------------------

    def _rules(self, pending: Decision) -> EffectiveRules | None:
        if pending.blocked:
            return None
        engine = self.holder.engine
        endpoint = engine.endpoint(pending.rule)
        if endpoint is None or endpoint.provider is None:
            return None  # `allow:` entries: DLP guards what goes to providers
        rules = effective(engine.policy.dlp, endpoint.dlp)
        return rules if rules.enabled else None

    def _decision(
        self, pending: Decision, verdict_plan: Plan, audit: bool
    ) -> tuple[Decision, _Outcome]:
        reported = verdict_plan.reported()
        what = describe(reported)
        if verdict_plan.own_key:  # S7: always refused, audit mode too
            own = tuple(f for f in reported if f.kind is SecretKind.SIDECAR_KEY)
            detail = f"the sidecar's own provider key in the request: {describe(own)}"
            return self._overrule(pending, Reason.GATEWAY_HOLDS_CREDENTIAL, detail), (
                _Outcome.REFUSE
            )
        action = verdict_plan.action
        if action is Action.BLOCK and not audit:
            return self._overrule(pending, Reason.SECRET_IN_REQUEST, f"refused: {what}"), (
                _Outcome.REFUSE
            )
        if action is Action.ALERT:
            detail, outcome = f"alert only, forwarded unchanged: {what}", _Outcome.FORWARD
        elif audit:
            detail = f"audit mode: forwarded with the secrets redacted: {what}"
            outcome = _Outcome.REDACT
        else:
            detail, outcome = f"forwarded with the secrets redacted: {what}", _Outcome.REDACT
        decision = self._overrule(pending, Reason.SECRET_IN_REQUEST, detail)
        # Forwarded: a redaction in enforce mode is a block of the secret (as for
        # credential_reflected); an alert, or anything in audit mode, is would_block.
        enforced = action is Action.REDACT and not audit
        return decision.with_context(
            verdict=Verdict.BLOCK if enforced else Verdict.WOULD_BLOCK
        ), outcome

    def _overrule(self, pending: Decision, reason: Reason, detail: str) -> Decision:
        return self.holder.engine.overrule(pending, reason, detail[:600])

    def _count(self, verdict_plan: Plan, provider: str | None) -> None:
        for action, findings in verdict_plan.by_action.items():
            for kind in {f.kind for f in findings}:
                self.findings.labels(kind.value, action.value, provider or "none").inc()

    def refuse_on_error(self, flow: http.HTTPFlow) -> None:
        pending = flow.metadata.get(PENDING_DECISION_KEY)
        if isinstance(pending, Decision):
            decision = pending.with_context(
                verdict=Verdict.BLOCK,
                reason=Reason.SECRET_IN_REQUEST,
                detail="request DLP failed (internal error); refused",
            )
            flow.metadata[PENDING_DECISION_KEY] = decision
            flow.metadata[DECISION_KEY] = decision
            flow.response = refusal_response(decision)
        else:
            flow.response = internal_error()


class _Outcome(enum.Enum):
    REFUSE = "refuse"
    REDACT = "redact"  # forwarded with the secrets replaced
    FORWARD = "forward"  # forwarded unchanged (alert)
