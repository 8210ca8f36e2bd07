"""mitmproxy addon for the pod's DNS listener: answer allowed names, refuse the rest.

Unlisted names are refused here and never asked upstream, so nothing reaches an
attacker's authoritative server. Allowed names are answered from the same resolver
(and cache) the proxy dials with, so a redirected connection's original destination
matches what the sidecar itself vetted. Every question also feeds the tunnelling
detector, which flags even questions that end up refused.

Requires that mitmproxy's own `dns_resolver` addon is NOT loaded: this addon is the
only one that answers, and it answers every question (fail closed: REFUSED).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable

from mitmproxy import dns
from mitmproxy.net.dns import response_codes, types

from sidecar.addons.enforcer import EngineHolder
from sidecar.decision import RULE_DEFAULT_DENY, RULE_NETGUARD, Decision, Reason, Verdict
from sidecar.dnsguard import DnsTunnelDetector
from sidecar.hostnames import HostError, parse_host
from sidecar.resolver import ResolutionError, Resolver

logger = logging.getLogger("egress_sidecar")

TYPE_A = 1
TYPE_AAAA = 28
ANSWER_TTL = 5  # short: the sidecar's own cache decides what stays valid


class DnsListener:
    def __init__(
        self,
        holder: EngineHolder,
        resolver: Resolver,
        record: Callable[[Decision], None],
        refuse_with: str = "refused",
    ) -> None:
        self.holder = holder
        self.resolver = resolver
        self.record = record
        self.detector = DnsTunnelDetector()
        self._refuse_code = (
            response_codes.NXDOMAIN if refuse_with == "nxdomain" else response_codes.REFUSED
        )

    async def dns_request(self, flow: dns.DNSFlow) -> None:
        try:
            flow.response = await self._answer(flow)
        except Exception:
            logger.exception("dns listener failed; refusing")
            flow.response = flow.request.fail(response_codes.SERVFAIL)

    async def _answer(self, flow: dns.DNSFlow) -> dns.DNSMessage:
        request = flow.request
        client = f"{flow.client_conn.peername[0]}:{flow.client_conn.peername[1]}"
        engine = self.holder.engine
        if len(request.questions) != 1 or request.query is False:
            # Resolvers send exactly one question; anything else is a side channel.
            self.record(Decision(Verdict.BLOCK, Reason.PROTOCOL_NOT_ALLOWED, RULE_NETGUARD,
                                 "-", 53, client=client, mode="dns",
                                 detail=f"DNS message with {len(request.questions)} questions"))
            return request.fail(response_codes.FORMERR)
        question = request.questions[0]
        tunnel = self.detector.observe(
            question.name, question.type, client=str(flow.client_conn.peername[0]),
            now=time.monotonic(),
        )

        def refuse(
            reason: Reason, rule: str, detail: str, host: str, provider: str | None = None
        ) -> dns.DNSMessage | None:
            """Record the refusal; None when audit mode only logs it (would_block)."""
            decision = engine.refusal(
                Decision(Verdict.ALLOW, Reason.ALLOWED, rule, host, 53, provider=provider,
                         client=client, mode="dns", method=types.to_str(question.type)),
                reason,
                detail,
            )
            self.record(decision)
            return request.fail(self._refuse_code) if decision.refused else None

        try:
            host = parse_host(question.name)
        except HostError as exc:
            return refuse(Reason.INVALID_HOST, RULE_NETGUARD, str(exc)[:200],
                          question.name[:256]) or request.fail(self._refuse_code)
        if host.name is None:  # an address-shaped name: nothing to resolve
            return refuse(Reason.INVALID_HOST, RULE_NETGUARD, "address as a name",
                          host.text) or request.fail(self._refuse_code)
        endpoint = engine.match_name(host.name)
        if endpoint is None:
            if tunnel.suspicious:
                refused = refuse(Reason.DNS_TUNNEL_SUSPECTED, RULE_DEFAULT_DENY,
                                 f"{tunnel.detail}; name not allowed", host.name)
            else:
                refused = refuse(Reason.DNS_NAME_NOT_ALLOWED, RULE_DEFAULT_DENY,
                                 "no policy entry", host.name)
            if refused is not None:
                return refused
            # audit mode: logged as would_block, answered as usual below
        elif tunnel.suspicious:
            # An allowed name with a tunnel's shape: answered, but made seen.
            self.record(Decision(Verdict.WOULD_BLOCK, Reason.DNS_TUNNEL_SUSPECTED,
                                 endpoint.rule, host.name, 53, provider=endpoint.provider,
                                 client=client, mode="dns", detail=tunnel.detail))
        if question.type not in (TYPE_A, TYPE_AAAA):
            return request.succeed([])  # NODATA: no TXT/HTTPS/SVCB side channels
        try:
            answers = await self.resolver.resolve(host.name)
        except ResolutionError as exc:
            # A failing resolver is SERVFAIL (the gateway retries), not "no such name".
            return request.fail(response_codes.SERVFAIL if exc.upstream_failed
                                else response_codes.NXDOMAIN)
        vetting = engine.vet_answers(answers, endpoint)
        if vetting.address is None:
            # S3 applies to answers handed to the gateway too: no rebinding via our DNS.
            return refuse(vetting.reason, RULE_NETGUARD, vetting.detail, host.name,
                          endpoint.provider if endpoint else None) or request.fail(
                self._refuse_code)
        version = 4 if question.type == TYPE_A else 6
        records = [
            dns.ResourceRecord.A(question.name, a, ttl=ANSWER_TTL)
            if isinstance(a, ipaddress.IPv4Address)
            else dns.ResourceRecord.AAAA(question.name, a, ttl=ANSWER_TTL)
            for a in answers
            if a.version == version
        ]
        return request.succeed(records)

