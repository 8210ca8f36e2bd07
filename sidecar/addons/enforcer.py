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

import functools
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import connection, http, tls
from mitmproxy.proxy import mode_specs, server_hooks

from sidecar.addons.credentials import CredentialLayer
from sidecar.credentials import SecretStore
from sidecar.decision import RULE_NETGUARD, Decision, Reason, Verdict
from sidecar.engine import Attempt, PolicyEngine
from sidecar.hostnames import HostError, IPAddress, parse_host, split_host_port
from sidecar.limits import LIMIT_ERROR_PREFIX
from sidecar.resolver import ResolutionError, Resolver

logger = logging.getLogger("egress_sidecar")

# Status codes for refusals the gateway sees. Everything else is 403.
_STATUS: dict[Reason, int] = {
    Reason.DNS_FAILURE: 502,
    Reason.UPSTREAM_TLS_FAILURE: 502,
    Reason.CREDENTIAL_UNAVAILABLE: 503,
    Reason.UNKNOWN_VIRTUAL_KEY: 401,
    Reason.TENANT_NOT_ALLOWED: 403,
    # issue 10 (sidecar/addons/limits.py)
    Reason.REQUEST_HEADERS_TOO_LARGE: 431,
    Reason.RESPONSE_HEADERS_TOO_LARGE: 502,
    Reason.REQUEST_BODY_TOO_LARGE: 413,
    Reason.REQUEST_TIMEOUT: 408,
    Reason.TOO_MANY_CONNECTIONS: 429,
    Reason.TOO_MANY_STREAMS: 429,
}


def refusal_status(decision: Decision) -> int:
    return _STATUS.get(decision.reason, 403)



class EngineHolder:
    """The policy in force. Reload swaps the engine in one assignment."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine


def refusal_response(decision: Decision, *, close: bool = False) -> http.Response:
    """The local answer to a refused request. Inside a kept-alive connection the next
    request is decided on its own; closing would only make a flood cost us a TLS
    handshake per refusal. A refused CONNECT closes (there is no tunnel to keep)."""
    body = {
        "error": "egress_refused",
        "reason": decision.reason.value,
        "rule": decision.rule,
        "host": decision.host,
        "port": decision.port,
    }
    if decision.detail:
        body["detail"] = decision.detail
    return http.Response.make(
        refusal_status(decision),
        json.dumps(body).encode() + b"\n",
        {
            "content-type": "application/json",
            "x-egress-sidecar-reason": decision.reason.value,
            **({"connection": "close"} if close else {}),
        },
    )


def _fail_closed[F: Callable[..., Awaitable[None]]](hook: F) -> F:
    @functools.wraps(hook)
    async def wrapper(self: Enforcer, target: Any) -> None:
        try:
            await hook(self, target)
        except Exception:
            logger.exception("enforcer hook %s failed; refusing", hook.__name__)
            if isinstance(target, http.HTTPFlow):
                target.response = http.Response.make(
                    500, b'{"error":"egress_sidecar_internal_error"}\n',
                    {"content-type": "application/json", "connection": "close"},
                )
            elif isinstance(target, server_hooks.ServerConnectionHookData):
                target.server.error = "egress-sidecar internal error"

    return wrapper  # type: ignore[return-value]


class Enforcer:
    def __init__(
        self,
        holder: EngineHolder,
        resolver: Resolver,
        record: Callable[[Decision], None],
        credentials: CredentialLayer | None = None,
        limit_check: Callable[[http.HTTPFlow, Decision, Any], Decision] | None = None,
    ) -> None:
        self.limit_check = limit_check  # issue 10: request body limit (addons/limits.py)
        self.holder = holder
        self.resolver = resolver
        self.record = record
        self.credentials = credentials or CredentialLayer(SecretStore(None))
        self._tunnels: dict[str, tuple[str, int]] = {}  # client id -> CONNECT authority
        # client id -> {(vetted address, port): name}. Requests are routed by the vetted
        # address so mitmproxy reuses the pinned upstream connection (it matches
        # connections by address); server_connect maps the address back to its name.
        self._pins: dict[str, dict[tuple[str, int], str]] = {}
        self._spoke_http: set[str] = set()  # client ids that sent at least one request

    # --- explicit proxy: CONNECT ------------------------------------------------------

    @_fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        attempt = Attempt(
            host=flow.request.host,
            port=flow.request.port,
            mode="explicit",
            client=_client(flow.client_conn),
        )
        decision = await self._decide_and_vet(attempt)
        if decision.refused:
            self.record(decision)
            flow.response = refusal_response(decision, close=True)
            return
        if decision.verdict is Verdict.WOULD_BLOCK:
            self.record(decision)
        self._tunnels[flow.client_conn.id] = (flow.request.host, flow.request.port)

    # --- every HTTP request -----------------------------------------------------------

    @_fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        self._spoke_http.add(flow.client_conn.id)
        host, port, mode = self._destination(
            flow.client_conn, request.host, request.port, request.host_header
        )
        in_tunnel = (mode == "explicit" and flow.client_conn.id in self._tunnels) or (
            mode == "transparent"
        )
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
            host_header=_host_part(request.host_header) if mode != "reverse" else None,
            authority=_host_part(request.authority),
        )
        engine = self.holder.engine
        original = _original(flow.client_conn)
        if _is_h2c_upgrade(request.headers):
            # Cleartext HTTP/2 upgrade: a second protocol inside an allowed connection.
            decision = engine.refusal(
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
            if not decision.refused:
                decision = engine.refusal(
                    decision, Reason.PROTOCOL_NOT_ALLOWED, "TLS without SNI"
                )
        else:
            decision = await self._decide_and_vet(attempt, original)
        if not decision.refused:
            # S7, after S3/S5 passed: strip what the gateway sent, refuse real keys it
            # holds, add ours only for the provider of the vetted destination.
            decision = self.credentials.prepare(
                flow, decision, engine.endpoint(decision.rule), engine
            )
        if not decision.refused and self.limit_check is not None:
            decision = self.limit_check(flow, decision, engine.endpoint(decision.rule))
        self.record(decision)
        if decision.refused:
            flow.response = refusal_response(decision)
            return
        if mode == "transparent" and not flow.client_conn.sni:
            self._tunnels[flow.client_conn.id] = (host, port)
        if decision.address is not None:
            pins = self._pins.setdefault(flow.client_conn.id, {})
            pins[(decision.address, request.port)] = host
            request.data.host = decision.address  # routing only: Host header untouched
        if mode == "reverse":
            # mitmproxy rewrote Host to the server address, which is the pinned IP
            # after the first connect: the provider must see its own name.
            request.host_header = host if port == 443 else f"{host}:{port}"
        flow.metadata["egress_decision"] = decision

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # S10: hand every response to the gateway as it arrives; where we added a key,
        # through the reflection redactor (S7).
        try:
            if flow.response is not None:
                self.credentials.guard_response(flow)
        except Exception:
            # Unscanned bytes must not reach the gateway: drop the connection instead.
            logger.exception("response guard failed; killing the flow")
            flow.kill()

    def response(self, flow: http.HTTPFlow) -> None:
        try:
            reflected = self.credentials.reflection_found(flow)
        except Exception:
            logger.exception("reflection check failed; killing the flow")
            flow.kill()
            return
        if reflected:
            self.record(reflected)

    def error(self, flow: http.HTTPFlow) -> None:
        reflected = self.credentials.reflection_found(flow)
        if reflected:
            self.record(reflected)

    # --- the only place an upstream connection is opened --------------------------------

    @_fail_closed
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        assert data.server.address is not None
        address, address_port = data.server.address[:2]
        pinned = self._pins.get(data.client.id, {}).get((address, address_port))
        host, port, mode = self._destination(data.client, pinned or address, address_port)
        attempt = Attempt(host=host, port=port, mode=mode, client=_client(data.client))
        decision = await self._decide_and_vet(attempt, _original(data.client))
        if decision.refused or decision.address is None:
            if decision.refused:
                self.record(decision)
            data.server.error = f"egress refused: {decision.reason.value}"
            return
        # S3: dial exactly the vetted address; keep the name for SNI and cert checks.
        parsed = parse_host(host)
        data.server.address = (decision.address, port)
        data.server.sni = parsed.name  # None for an allowed IP literal: verify the IP SAN

    def tls_failed_server(self, data: tls.TlsData) -> None:
        server = data.conn
        assert isinstance(server, connection.Server)
        host = server.sni or (server.address[0] if server.address else "?")
        port = server.address[1] if server.address else 0
        self.record(
            Decision(
                verdict=Verdict.BLOCK,
                reason=Reason.UPSTREAM_TLS_FAILURE,
                rule=RULE_NETGUARD,
                host=host,
                port=port,
                client=_client(data.context.client),
                address=str(server.peername[0]) if server.peername else None,
                detail=(server.error or "handshake failed")[:200],
            )
        )

    def client_disconnected(self, client: connection.Client) -> None:
        tunnel = self._tunnels.pop(client.id, None)
        self._pins.pop(client.id, None)
        if (client.error or "").startswith(LIMIT_ERROR_PREFIX):
            self._spoke_http.discard(client.id)
            return  # issue 10: a limit refused it and recorded that already
        if client.id in self._spoke_http:
            self._spoke_http.discard(client.id)
            return
        # A redirected connection (or a CONNECT tunnel) that ended without one HTTP
        # request and without TLS: SSH, raw bytes, a port probe. mitmproxy refused it
        # (rawtcp is off) without any flow hook; S9 wants it seen.
        if client.tls:
            return
        if isinstance(client.proxy_mode, mode_specs.TransparentMode):
            (host, port), mode = _original_destination(client), "transparent"
        elif tunnel is not None:
            (host, port), mode = tunnel, "explicit"
        else:
            return
        self.record(
            Decision(
                verdict=Verdict.BLOCK,
                reason=Reason.PROTOCOL_NOT_ALLOWED,
                rule=RULE_NETGUARD,
                host=host,
                port=port,
                client=_client(client),
                mode=mode,
                detail="connection ended without an HTTP request or TLS (non-HTTP protocol)",
            )
        )

    # --- helpers ----------------------------------------------------------------------

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
            remembered = self._tunnels.get(client.id)  # plain HTTP: the Host that passed
            name = (
                client.sni
                or _host_part(host_header)
                or (remembered[0] if remembered else None)
                or original_ip
            )
            return name, original_port, "transparent"
        tunnel = self._tunnels.get(client.id)
        if tunnel is not None:
            return tunnel[0], tunnel[1], "explicit"
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
        if decision.refused:
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
                return engine.refusal(decision, Reason.DNS_FAILURE, str(exc)[:200])
        vetting = engine.vet_answers(answers, endpoint)
        if vetting.address is None:
            return engine.refusal(decision, vetting.reason, vetting.detail)
        if original is None:
            return decision.with_context(address=str(vetting.address))
        if original not in answers:
            return engine.refusal(
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


def _is_h2c_upgrade(headers: Any) -> bool:
    upgrade = headers.get("upgrade", "").lower()
    return "h2c" in upgrade or "http2-settings" in headers


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
