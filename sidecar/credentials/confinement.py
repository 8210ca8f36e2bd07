"""S7: when a provider key may be added to a request at all. Pure.

A key is added only to a request that is *allowed* (never `would_block`: audit mode
lets those through to see what policy would refuse, not to hand them a key), to the
vetted destination of the provider whose entry matched, over TLS (mitmproxy verifies
upstream certificates; `ssl_insecure` is pinned off), on a port that entry lists.
Everything else still has the gateway's credentials stripped and real keys refused:
only the adding is withheld.
"""

from __future__ import annotations

from sidecar.decision import RULE_DEFAULT_DENY, Decision, Verdict
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


def key_withheld_because(
    decision: Decision, endpoint: Endpoint | None, scheme: str | None
) -> str | None:
    """Why no key may be added to this request; None if it may."""
    if endpoint is None or endpoint.provider is None:
        return "no credential for this destination"
    if endpoint.credential is None and endpoint.cloud_credential is None:
        return "no credential for this destination"
    if decision.verdict is not Verdict.ALLOW:
        return f"request is {decision.verdict.value} ({decision.reason.value})"
    if decision.rule != endpoint.rule or decision.provider != endpoint.provider:
        return "the decision is not about this provider's entry"
    if decision.address is None:
        return "destination not vetted"
    if scheme != "https":
        return "upstream is not TLS"
    if decision.port not in endpoint.ports:
        return f"port {decision.port} not listed"
    return None
