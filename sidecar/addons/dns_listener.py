"""The pod's DNS listener: answer allowed names, refuse the rest.

Unlisted names are refused here and never asked upstream, so nothing reaches an
attacker's authoritative server. Allowed names are answered from the same resolver
(and cache) the proxy dials with, so a redirected connection's original destination
matches what the sidecar itself vetted. Every question also feeds the tunnelling
detector, which flags even questions that end up refused.

This is the policy half; `sidecar.dns_server` owns the sockets, the rate limits and
the listener's bounded state (issue 10). It used to be a mitmproxy `dns@` mode, which
keeps a client connection object per UDP source address:port until it times out: a
flood from many source ports grew the process by ~80 MB. It stays in `addons/` because
it is the DNS counterpart of the enforcer; it uses no mitmproxy type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from sidecar.addons.enforcer import EngineHolder
from sidecar.decision import RULE_DEFAULT_DENY, RULE_NETGUARD, Decision, Reason, Verdict
from sidecar.dnsguard import DnsTunnelDetector
from sidecar.hostnames import HostError, parse_host
from sidecar.resolver import ResolutionError, Resolver

logger = logging.getLogger("egress_sidecar")

TYPE_A = 1
TYPE_AAAA = 28
ANSWER_TTL = 5  # short: the sidecar's own cache decides what stays valid


def reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query, recursion_available=True)
    response.set_rcode(rcode)
    return response


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
        self.refuse_code = dns.rcode.NXDOMAIN if refuse_with == "nxdomain" else dns.rcode.REFUSED

    async def answer(
        self, query: dns.message.Message, client: tuple[str, int]
    ) -> dns.message.Message:
        """The reply to one parsed query; never raises (fail closed: SERVFAIL)."""
        try:
            return await self._answer(query, client)
        except Exception:
            logger.exception("dns listener failed; refusing")
            return reply(query, dns.rcode.SERVFAIL)

    async def _answer(
        self, request: dns.message.Message, peer: tuple[str, int]
    ) -> dns.message.Message:
        client = f"{peer[0]}:{peer[1]}"
        engine = self.holder.engine
        if (
            len(request.question) != 1
            or request.flags & dns.flags.QR
            or request.opcode() != dns.opcode.QUERY
        ):
            # Resolvers send exactly one question; anything else is a side channel.
            self.record(
                dns_protocol_refusal(
                    client,
                    f"DNS message with {len(request.question)} questions"
                    if len(request.question) != 1
                    else "DNS message that is not a standard query",
                )
            )
            return reply(request, dns.rcode.FORMERR)
        question = request.question[0]
        qname = question.name.to_text(omit_final_dot=True)
        qtype = dns.rdatatype.RdataType.make(question.rdtype)
        tunnel = self.detector.observe(qname, qtype, client=str(peer[0]), now=time.monotonic())

        def refuse(
            reason: Reason, rule: str, detail: str, host: str, provider: str | None = None
        ) -> dns.message.Message | None:
            """Record the refusal; None when audit mode only logs it (would_block)."""
            decision = engine.overrule(
                Decision(
                    Verdict.ALLOW,
                    Reason.ALLOWED,
                    rule,
                    host,
                    53,
                    provider=provider,
                    client=client,
                    mode="dns",
                    method=dns.rdatatype.to_text(qtype),
                ),
                reason,
                detail,
            )
            self.record(decision)
            return reply(request, self.refuse_code) if decision.blocked else None

        try:
            host = parse_host(qname)
        except HostError as exc:
            return refuse(Reason.INVALID_HOST, RULE_NETGUARD, str(exc)[:200], qname[:256]) or reply(
                request, self.refuse_code
            )
        if host.name is None:  # an address-shaped name: nothing to resolve
            return refuse(
                Reason.INVALID_HOST, RULE_NETGUARD, "address as a name", host.text
            ) or reply(request, self.refuse_code)
        endpoint = engine.match_name(host.name)
        if endpoint is None:
            if tunnel.suspicious:
                refused = refuse(
                    Reason.DNS_TUNNEL_SUSPECTED,
                    RULE_DEFAULT_DENY,
                    f"{tunnel.detail}; name not allowed",
                    host.name,
                )
            else:
                refused = refuse(
                    Reason.DNS_NAME_NOT_ALLOWED, RULE_DEFAULT_DENY, "no policy entry", host.name
                )
            if refused is not None:
                return refused
            # audit mode: logged as would_block, answered as usual below
        elif tunnel.suspicious:
            # An allowed name with a tunnel's shape: answered, but made seen.
            self.record(
                Decision(
                    Verdict.WOULD_BLOCK,
                    Reason.DNS_TUNNEL_SUSPECTED,
                    endpoint.rule,
                    host.name,
                    53,
                    provider=endpoint.provider,
                    client=client,
                    mode="dns",
                    detail=tunnel.detail,
                )
            )
        if qtype not in (TYPE_A, TYPE_AAAA):
            return reply(request, dns.rcode.NOERROR)  # NODATA: no TXT/HTTPS/SVCB side channels
        try:
            answers = await self.resolver.resolve(host.name)
        except ResolutionError as exc:
            # A failing resolver is SERVFAIL (the gateway retries), not "no such name".
            return reply(request, dns.rcode.SERVFAIL if exc.upstream_failed else dns.rcode.NXDOMAIN)
        vetting = engine.vet_answers(answers, endpoint)
        if vetting.address is None:
            # S3 applies to answers handed to the gateway too: no rebinding via our DNS.
            return refuse(
                vetting.reason,
                RULE_NETGUARD,
                vetting.detail,
                host.name,
                endpoint.provider if endpoint else None,
            ) or reply(request, self.refuse_code)
        version = 4 if qtype == TYPE_A else 6
        addresses = [str(a) for a in answers if a.version == version]
        response = reply(request, dns.rcode.NOERROR)
        if addresses:
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name, ANSWER_TTL, dns.rdataclass.IN, qtype, addresses
                )
            )
        return response


def dns_protocol_refusal(client: str, detail: str) -> Decision:
    """A DNS message or connection that is not one standard question (S9)."""
    return Decision(
        Verdict.BLOCK,
        Reason.PROTOCOL_NOT_ALLOWED,
        RULE_NETGUARD,
        "-",
        53,
        client=client,
        mode="dns",
        detail=detail,
    )


__all__ = ["ANSWER_TTL", "DnsListener", "dns_protocol_refusal", "reply"]
