"""mitmproxy addon that enforces the policy: hooks -> Attempt -> Decision -> action.

Runs first in the addon chain. Every hook fails closed: an exception refuses the
flow (mitmproxy itself would log the exception and carry on, i.e. fail open).

Where the destination comes from, per mode, never from what mitmproxy later
rewrites (it replaces the server address with the pinned IP after connect):
- explicit, inside a CONNECT tunnel: the CONNECT authority, remembered per client;
- explicit, absolute-form plain HTTP: the request URL;
- reverse: the listener's configured provider host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import connection, http, tls
from mitmproxy.proxy import mode_specs, server_hooks

from sidecar import refusals
from sidecar.addons import error_pages
from sidecar.addons.credentials import CredentialLayer
from sidecar.addons.flows import DECISION_KEY, PENDING_DECISION_KEY, fail_closed, refusal_response
from sidecar.addons.h2_guard import H2HostMismatches
from sidecar.addons.tls_hello import printable_sni, refusing_tls_connection
from sidecar.client_connections import ClientConnections, ClientConnectionState
from sidecar.credentials import SecretStore
from sidecar.credentials.confinement import key_withheld_because
from sidecar.credentials.fields import values_of
from sidecar.decision import RULE_HOST_AGREEMENT, RULE_NETGUARD, Decision, Reason, Verdict
from sidecar.engine import Attempt, PolicyEngine
from sidecar.hostnames import HostError, IPAddress, parse_host, split_host_port
from sidecar.limits import LIMIT_ERROR_PREFIX
from sidecar.netguard import AddressClass, classify_address
from sidecar.pacing import RefusalPacer
from sidecar.resolver import ResolutionError, Resolver
from sidecar.usage import USAGE_KEY

logger = logging.getLogger("egress_sidecar")

_UNRECORDED = PENDING_DECISION_KEY  # see addons/flows.py
LINE_AT_END = "egress_line_at_response_end"  # set by the response inspector (responses.py)


class EngineHolder:
    """The policy in force. Reload swaps the engine in one assignment."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine


class Enforcer:
    def __init__(
        self,
        holder: EngineHolder,
        resolver: Resolver,
        record: Callable[[Decision], None],
        credentials: CredentialLayer | None = None,
        pacer: RefusalPacer | None = None,
        h2_mismatches: H2HostMismatches | None = None,
        limit_check: Callable[[http.HTTPFlow, Decision, Any], Decision] | None = None,
        usage_gate: Callable[[http.HTTPFlow, Decision], Awaitable[Decision]] | None = None,
    ) -> None:
        self.usage_gate = usage_gate  # issue 15: rate limits, suspensions (addons/usage.py)
        self.limit_check = limit_check  # issue 10: request body limit (addons/limits.py)
        self.holder = holder
        self.pacer = pacer or RefusalPacer()  # issue 10: a refusal flood is slowed
        self.resolver = resolver
        self.record = record
        self.credentials = credentials or CredentialLayer(SecretStore(None))
        # S7 is a step of this addon's decision (prepare, hold_body); the credential
        # addon's own hooks (registered right after this one) record what they find here.
        self.credentials.bind(holder, record)
        # What each client connection may reach (tunnel, pins) and what was recorded
        # about it; see sidecar/client_connections.py. Pinning by vetted address keeps
        # upstream connections reused (without it the sixth request on a connection
        # stalls: docs/mitmproxy-traps.md).
        self.connections = ClientConnections()
        self.h2_mismatches = h2_mismatches  # connections h2 closed for :authority != host

    # --- explicit proxy: CONNECT ------------------------------------------------------

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        attempt = Attempt(
            host=flow.request.host,
            port=flow.request.port,
            mode="explicit",
            client=_client(flow.client_conn),
        )
        decision = await self._decide_and_vet(attempt)
        if decision.blocked and refusals.answered_in_tunnel(decision.host):
            # A provider API host (docs/refusals.md): accepted, and the client's first
            # request gets the refusal in the provider's error format, so SDKs surface
            # the reason instead of a connection error. No upstream connection is ever
            # opened for it; recorded once: per request in it, or at its end.
            self.connections.of(flow.client_conn.id).refused_tunnel = decision
            return
        if decision.blocked:
            self.record(decision)
            self.connections.of(flow.client_conn.id).refused_at_connect = True
            flow.response = refusal_response(decision, close=True)
            await self._pace()
            return
        if decision.verdict is Verdict.WOULD_BLOCK:
            self.record(decision)
        self.connections.of(flow.client_conn.id).tunnel = (flow.request.host, flow.request.port)

    # --- TLS ClientHello (see tls_hello.py) ----------------------------------------------

    async def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        try:
            decision = await self._decide_hello(client, data.client_hello.sni)
        except Exception:
            logger.exception("ClientHello check failed; refusing the handshake")
            decision = Decision(
                verdict=Verdict.BLOCK, reason=Reason.PROTOCOL_NOT_ALLOWED, rule=RULE_NETGUARD,
                host=_original_destination(client)[0], port=_original_destination(client)[1],
                client=_client(client), detail="internal error at the TLS ClientHello",
            )  # fmt: skip
        if decision is not None and decision.blocked:
            self.connections.of(client.id).refused_at_hello = True
            self.record(decision)

    def tls_start_client(self, data: tls.TlsData) -> None:
        # Runs before mitmproxy's tlsconfig, which leaves a connection already set alone.
        state = self.connections.peek(data.context.client.id)
        if state is not None and state.refused_at_hello:
            data.ssl_conn = refusing_tls_connection()

    async def _decide_hello(self, client: connection.Client, sni: str | None) -> Decision | None:
        """The decision a ClientHello gets; None when there is nothing to decide there."""
        engine = self.holder.engine
        if isinstance(client.proxy_mode, mode_specs.TransparentMode):
            address, port = _original_destination(client)
            original = ipaddress.ip_address(address)
            attempt = Attempt(host=sni or address, port=port, mode="transparent",
                              client=_client(client))  # fmt: skip
            literal = dataclasses.replace(attempt, host=address)
            if _is_metadata(original, engine):
                decision = engine.decide(literal)  # metadata_address, whatever the SNI says
            elif not sni and engine.match_address(original) is None:
                decision = engine.decide(literal)  # as in requestheaders: no SNI, no name
                if not decision.blocked:
                    decision = engine.overrule(
                        decision, Reason.PROTOCOL_NOT_ALLOWED, "TLS without SNI"
                    )
            else:
                decision = await self._decide_and_vet(attempt, original)
        else:
            state = self.connections.peek(client.id)
            tunnel = state.tunnel if state is not None else None
            if tunnel is None or not sni:
                return None
            decision = engine.decide(Attempt(host=tunnel[0], port=tunnel[1], mode="explicit",
                                             client=_client(client), sni=sni))  # fmt: skip
            if decision.reason is not Reason.HOST_MISMATCH:
                return None  # the CONNECT itself was decided (and logged) already
        if not decision.blocked:
            return decision
        sni_text = f"SNI {sni[:100]!r}" if sni else "no SNI"
        detail = f"{decision.detail}; refused at the TLS ClientHello ({sni_text})"
        return decision.with_context(detail=detail.lstrip("; "))

    # --- every HTTP request -----------------------------------------------------------

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        state = self.connections.of(flow.client_conn.id)
        state.spoke_http = True
        if state.refused_tunnel is not None:
            decision = state.refused_tunnel.with_context(
                method=request.method, path=request.path.split("?", 1)[0], at=time.time()
            )
            self.record(decision)
            flow.response = refusal_response(decision, close=True)
            return
        host_header = request.host_header  # each read looks through every header
        host, port, mode = self._destination(
            flow.client_conn, request.host, request.port, host_header
        )
        in_tunnel = (mode == "explicit" and state.tunnel is not None) or mode == "transparent"
        attempt = Attempt(
            host=host,
            port=port,
            mode=mode,
            client=_client(flow.client_conn),
            scheme=request.scheme,
            method=request.method,
            path=request.path,
            # Reverse mode: the gateway addresses 127.0.0.1; the listener fixes the host.
            sni=flow.client_conn.sni if in_tunnel else None,
            host_header=_host_part(host_header) if mode != "reverse" else None,
            authority=_host_part(request.authority),
        )
        engine = self.holder.engine
        original = _original(flow.client_conn)
        if original is not None and _is_metadata(original, engine):
            # A redirected connection to a metadata address: that, whatever Host says.
            decision = engine.decide(dataclasses.replace(
                attempt, host=str(original), sni=None, host_header=None, authority=None
            ))  # fmt: skip
        elif _is_h2c_upgrade(request.headers):
            # Cleartext HTTP/2 upgrade: a second protocol inside an allowed connection.
            decision = engine.overrule(
                engine.decide(attempt), Reason.PROTOCOL_NOT_ALLOWED, "h2c upgrade"
            )
        elif (
            original is not None
            and flow.client_conn.tls
            and not flow.client_conn.sni
            and engine.match_address(original) is None
        ):
            # Redirected TLS without SNI: the name would come only from inside the
            # tunnel. Refused unless a cidr: entry allows that destination itself; an
            # address refusal (metadata, private, literal) is the more telling reason.
            decision = engine.decide(attempt)
            if not decision.blocked:
                decision = engine.overrule(decision, Reason.PROTOCOL_NOT_ALLOWED, "TLS without SNI")
        else:
            decision = await self._decide_and_vet(attempt, original)
        if not decision.blocked and decision.address is not None:
            decision = self._one_host_per_upstream(state, flow, decision, host, engine)
        if not decision.blocked:
            # S7, after S3/S5 passed: strip what the gateway sent, refuse real keys it
            # holds, add ours only for the provider of the vetted destination.
            endpoint = engine.endpoint(decision.rule)
            decision = self.credentials.prepare(
                flow,
                decision,
                endpoint,
                engine,
                withheld=key_withheld_because(decision, endpoint, request.scheme),
            )
        if not decision.blocked and self.usage_gate is not None:
            # Before limit_check: it streams the request body, and a streamed request
            # can no longer be answered locally (mitmproxy).
            decision = await self.usage_gate(flow, decision)
        if not decision.blocked and self.limit_check is not None:
            decision = self.limit_check(flow, decision, engine.endpoint(decision.rule))
        self.credentials.hold_body(flow)  # issue 16: a request we sign is read whole
        if decision.blocked:
            self.record(decision)
            flow.response = refusal_response(decision)
            await self._pace()
            return
        if mode == "transparent" and not flow.client_conn.sni:
            state.tunnel = (host, port)  # plain HTTP: the Host that passed
        if decision.address is not None:
            state.pin(decision.address, request.port, host)
            request.data.host = decision.address  # routing only: Host header untouched
        if mode == "reverse":
            # mitmproxy rewrote Host to the server address, which is the pinned IP
            # after the first connect: the provider must see its own name.
            request.host_header = host if port == 443 else f"{host}:{port}"
        flow.metadata[DECISION_KEY] = decision
        # Recorded when the response starts or the flow fails (see error): an upstream
        # TLS failure then makes this request's one line a block, not allow + block.
        flow.metadata[_UNRECORDED] = decision

    def _one_host_per_upstream(
        self,
        state: ClientConnectionState,
        flow: http.HTTPFlow,
        decision: Decision,
        host: str,
        engine: PolicyEngine,
    ) -> Decision:
        """mitmproxy reuses an upstream connection by address alone, not by TLS name.
        Requests are routed by the vetted address (ClientConnectionState.pins), so a
        second host that resolves to the same address (a shared CDN address) on this
        client connection would ride the TLS session opened and verified for the first
        one, with our key in it (S5, S7). Refused: one host per upstream connection."""
        if state.other_host_pinned(decision.address or "", flow.request.port, host) is None:
            return decision
        return engine.overrule(
            decision,
            Reason.HOST_MISMATCH,
            f"this client connection already reaches {decision.address} for another host; "
            "open a new connection per host",
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # S10: hand every response to the gateway as it arrives (the credential addon,
        # next, redacts where we added a key). Provider API responses get their line at
        # the end, with usage (sidecar/addons/responses.py).
        if not flow.metadata.get(LINE_AT_END):
            self._record_allowed(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record_allowed(flow)

    # --- the only place an upstream connection is opened --------------------------------

    @fail_closed
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        assert data.server.address is not None
        address, address_port = data.server.address[:2]
        state = self.connections.peek(data.client.id)
        pinned = state.pinned_host(address, address_port) if state is not None else None
        if state is not None and state.refused_tunnel is not None:
            # Never reached (requests in a refused tunnel are answered locally); the
            # refusal is recorded with the request, not here a second time.
            data.server.error = "egress refused: tunnel refused"
            return
        host, port, mode = self._destination(data.client, pinned or address, address_port)
        attempt = Attempt(host=host, port=port, mode=mode, client=_client(data.client))
        decision = await self._decide_and_vet(attempt, _original(data.client))
        if decision.blocked or decision.address is None:
            if decision.blocked:
                self.record(decision)
            data.server.error = f"egress refused: {decision.reason.value}"
            return
        # S3: dial exactly the vetted address; keep the name for SNI and cert checks.
        parsed = parse_host(host)
        data.server.address = (decision.address, port)
        data.server.sni = parsed.name  # None for an allowed IP literal: verify the IP SAN

    def tls_failed_server(self, data: tls.TlsData) -> None:
        # S6 held (mitmproxy refused the certificate). The decision is recorded by the
        # error hook of the flow that wanted this connection, as its only line.
        server = data.conn
        assert isinstance(server, connection.Server)
        if server.error:
            self.connections.of(data.context.client.id).note_tls_failure(server.error)

    def _record_allowed(self, flow: http.HTTPFlow) -> None:
        """Write the decision line of an allowed request, once: when its response
        starts, or when it fails. Failing on upstream TLS verification, it becomes a
        refusal (upstream_tls_failure) with our body instead of mitmproxy's page."""
        decision = flow.metadata.pop(_UNRECORDED, None)
        if decision is None:
            return
        state = self.connections.peek(flow.client_conn.id)
        failures = state.tls_failures if state is not None else {}
        if flow.response is None and flow.error is not None and flow.error.msg in failures:
            decision = decision.with_context(
                verdict=Verdict.BLOCK,
                reason=Reason.UPSTREAM_TLS_FAILURE,
                rule=RULE_NETGUARD,
                detail=failures[flow.error.msg],
            )
            error_pages.expect(flow.error.msg, refusal_response(decision, close=True))
        elif flow.response is None and flow.error is not None:
            # S9: allowed by policy, then the exchange failed (upstream unreachable or
            # malformed, or the gateway's own framing rejected): the line says so.
            failed = f"allowed, then the exchange failed: {flow.error.msg[:200]}"
            decision = decision.with_context(detail=f"{decision.detail}; {failed}".lstrip("; "))
        self.record(decision.with_context(usage=flow.metadata.get(USAGE_KEY)))

    def client_disconnected(self, client: connection.Client) -> None:
        state = self.connections.close(client.id)
        tunnel = state.tunnel
        if (client.error or "").startswith(LIMIT_ERROR_PREFIX):
            return  # issue 10: a limit refused it and recorded that already
        mismatch = self.h2_mismatches.pop(client.peername) if self.h2_mismatches else None
        if mismatch is not None:
            self.record(self._h2_mismatch_decision(client, tunnel, *mismatch))
            return
        if state.refused_at_hello or state.refused_at_connect or state.spoke_http:
            return  # its line was written at the hello or CONNECT, or per request
        if state.refused_tunnel is not None:
            # A refused tunnel without a request (the client rejected our CA, or spoke
            # no HTTP): the CONNECT's refusal is its one line.
            self.record(state.refused_tunnel)
            return
        # A redirected connection (or a CONNECT tunnel) that ended without one HTTP
        # request: SSH, raw bytes, a port probe, or TLS followed by no request (DNS over
        # TLS, junk, a bare handshake). mitmproxy dropped it (rawtcp is off) without any
        # flow hook; S9 wants it seen.
        detail = "connection ended without an HTTP request or TLS (non-HTTP protocol)"
        if client.tls:
            detail = (
                "TLS connection ended without an HTTP request (non-HTTP protocol or none)"
                if client.tls_established
                else "TLS handshake with the client failed (does it trust the sidecar CA?)"
            )
        if isinstance(client.proxy_mode, mode_specs.RegularMode) and tunnel is None:
            # Explicit listener: mitmproxy answered a malformed request (garbage, no
            # Host, a CONNECT without a valid port) with 400 before any hook saw one.
            detail = "connection ended without a valid HTTP request (malformed or none)"
        decision = self._connection_decision(
            client, tunnel, Reason.PROTOCOL_NOT_ALLOWED, RULE_NETGUARD, detail,
            explicit_too=True,
        )  # fmt: skip
        if decision is not None:
            self.record(decision)

    def _connection_decision(
        self,
        client: connection.Client,
        tunnel: tuple[str, int] | None,
        reason: Reason,
        rule: str,
        detail: str,
        *,
        reverse_too: bool = False,
        explicit_too: bool = False,
    ) -> Decision | None:
        """A refusal of a connection that carried no request of its own (S9), towards
        where it was going; None where that is not known (or, for a reverse listener's
        connection without a request, not a refusal unless `reverse_too`; for an
        explicit listener's connection that named no destination, `explicit_too`
        records it towards "unknown")."""
        proxy_mode = client.proxy_mode
        if isinstance(proxy_mode, mode_specs.TransparentMode):
            (host, port), mode = _original_destination(client), "transparent"
            host = printable_sni(client.sni) if client.sni else host
        elif tunnel is not None:
            (host, port), mode = tunnel, "explicit"
        elif reverse_too and isinstance(proxy_mode, mode_specs.ReverseMode):
            (host, port), mode = (proxy_mode.address[0], proxy_mode.address[1]), "reverse"
        elif explicit_too and isinstance(proxy_mode, mode_specs.RegularMode):
            (host, port), mode = ("unknown", 0), "explicit"
        else:
            return None
        return Decision(
            verdict=Verdict.BLOCK,
            reason=reason,
            rule=rule,
            host=host,
            port=port,
            client=_client(client),
            mode=mode,
            detail=detail,
        )

    def _h2_mismatch_decision(
        self, client: connection.Client, tunnel: tuple[str, int] | None, authority: str, host: str
    ) -> Decision:
        """See h2_guard.py: the stream never became a request, so decide on the connection."""
        detail = (
            f"HTTP/2 :authority {authority!r} and host {host!r} differ; the "
            "connection was closed (PROTOCOL_ERROR) before a request existed"
        )
        decision = self._connection_decision(
            client, tunnel, Reason.HOST_MISMATCH, RULE_HOST_AGREEMENT, detail, reverse_too=True
        )
        if decision is None:  # explicit mode without a CONNECT: only the SNI names it
            decision = Decision(
                verdict=Verdict.BLOCK, reason=Reason.HOST_MISMATCH, rule=RULE_HOST_AGREEMENT,
                host=printable_sni(client.sni or "?"), port=0, client=_client(client),
                mode="explicit", detail=detail,
            )  # fmt: skip
        return decision

    # --- helpers ----------------------------------------------------------------------

    async def _pace(self) -> None:
        """Hold a refusal's answer (already recorded: S9) while refusals flood in."""
        delay = self.pacer.delay()
        if delay > 0:
            await asyncio.sleep(delay)

    def _destination(
        self, client: connection.Client, host: str, port: int, host_header: str | None = None
    ) -> tuple[str, int, str]:
        proxy_mode = client.proxy_mode
        if isinstance(proxy_mode, mode_specs.ReverseMode):
            return proxy_mode.address[0], proxy_mode.address[1], "reverse"
        if isinstance(proxy_mode, mode_specs.TransparentMode):
            # The name comes from SNI (or, for plain HTTP, the Host header); the
            # original destination address is only ever checked against its answers.
            original_ip, original_port = _original_destination(client)
            state = self.connections.peek(client.id)
            remembered = state.tunnel if state is not None else None  # plain HTTP's Host
            name = (
                client.sni
                or _host_part(host_header)
                or (remembered[0] if remembered else None)
                or original_ip
            )
            return name, original_port, "transparent"
        state = self.connections.peek(client.id)
        if state is not None and state.tunnel is not None:
            return state.tunnel[0], state.tunnel[1], "explicit"
        return host, port, "explicit"

    async def _decide_and_vet(
        self, attempt: Attempt, original: IPAddress | None = None
    ) -> Decision:
        """Policy decision, then S3 on the resolved name; the vetted address is recorded.

        `original` is a redirected connection's original destination (transparent
        mode): it must be one of the name's answers, and is then the address dialled.
        """
        engine = self.holder.engine
        decision = engine.decide(attempt)
        if decision.blocked:
            return decision
        host = parse_host(attempt.host)  # decide() accepted it, so it parses
        endpoint = engine.endpoint(decision.rule)
        if host.address is not None:
            answers: tuple[IPAddress, ...] = (host.address,)
        else:
            assert host.name is not None
            try:
                answers = await self.resolver.resolve(host.name)
            except ResolutionError as exc:
                return engine.overrule(decision, Reason.DNS_FAILURE, str(exc)[:200])
        vetting = engine.vet_answers(answers, endpoint)
        if vetting.address is None:
            return engine.overrule(decision, vetting.reason, vetting.detail)
        if original is None:
            return decision.with_context(address=str(vetting.address))
        if original not in answers:
            return engine.overrule(
                decision,
                Reason.DESTINATION_MISMATCH,
                f"redirected to {original}, which {attempt.host} does not resolve to",
            )
        return decision.with_context(address=str(original))


def _original_destination(client: connection.Client) -> tuple[str, int]:
    # mitmproxy stores SO_ORIGINAL_DST of a redirected connection as the client's sockname.
    host, port, *_ = client.sockname
    return str(host), int(port)


def _original(client: connection.Client) -> IPAddress | None:
    if not isinstance(client.proxy_mode, mode_specs.TransparentMode):
        return None
    return ipaddress.ip_address(_original_destination(client)[0])


def _is_metadata(address: IPAddress, engine: PolicyEngine) -> bool:
    return classify_address(address, engine.own_addresses) is AddressClass.METADATA


def _is_h2c_upgrade(headers: Any) -> bool:
    upgrade, settings = values_of(headers, ("upgrade", "http2-settings"))
    return "h2c" in ", ".join(upgrade).lower() or bool(settings)


def _client(client: connection.Client) -> str:
    host, port, *_ = client.peername
    return f"{host}:{port}"


def _host_part(authority: str | None) -> str | None:
    if not authority:
        return None
    try:
        return split_host_port(authority, default_port=0)[0]
    except HostError:
        return authority  # the engine refuses it as unparseable
