"""Sending the probes: stdlib sockets and TLS, dnspython for DNS. No mitmproxy.

Two positions:
- pod (default): as the gateway in its pod, dialling destinations directly; the
  pod's init rules must hand every connection to the sidecar and every DNS question
  to its DNS listener. Run it as a non-sidecar UID (`kubectl debug --target`).
- proxy (`--proxy URL`): through the sidecar's explicit proxy listener, for a local
  check of a policy; probes that only make sense inside a pod are not run.

A compromised gateway does not verify certificates, so the probes do not either:
what stops them must be the sidecar's decision, which its reason header names.
"""

from __future__ import annotations

import dataclasses
import http.client
import shutil
import socket
import ssl
import subprocess
import urllib.parse

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.resolver

from sidecar.redteam.catalogue import Datagram, Dns, Http, Ping, Probe, RawTcp
from sidecar.redteam.scorecard import Observation

REASON_HEADER = "x-egress-sidecar-reason"
MARK_HEADER = "x-egress-redteam"


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    run_id: str
    proxy: tuple[str, int] | None  # None: pod mode
    target: str  # an outside address for direct-egress probes
    target6: str
    timeout: float = 5.0
    dns_server: str | None = None  # pod mode: default from /etc/resolv.conf

    @property
    def in_pod(self) -> bool:
        return self.proxy is None


def send(probe: Probe, where: Position) -> Observation:
    action = probe.action
    if probe.pod_only and not where.in_pod:
        return Observation(not_run=True, detail="pod mode only (run it inside the pod)")
    try:
        if isinstance(action, Http):
            return _http(action, where)
        if isinstance(action, Dns):
            return _dns(action, where)
        if isinstance(action, Datagram):
            return _datagram(action, where)
        if isinstance(action, RawTcp):
            return _raw_tcp(action, where)
        return _ping(action, where)
    except (TimeoutError, ConnectionRefusedError) as exc:
        return Observation(detail=f"{type(exc).__name__}")
    except OSError as exc:
        return Observation(detail=f"{type(exc).__name__}: {exc.strerror or exc}"[:200])


def _address(where: Position, name: str | None) -> str:
    return {"target": where.target, "target6": where.target6}.get(name or "", name or "")


def _http(action: Http, where: Position) -> Observation:
    url = action.url.format(target=where.target, target6=where.target6)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    authority = parts.netloc.rsplit("@", 1)[-1]
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    headers = dict(action.headers)
    headers.setdefault("host", authority)
    headers[MARK_HEADER] = where.run_id
    if where.proxy is not None:
        sock = socket.create_connection(where.proxy, timeout=where.timeout)
        if tls:
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            connect = f"CONNECT {hostport} HTTP/1.1\r\nhost: {hostport}\r\n\r\n"
            reply = _exchange(sock, connect.encode(), "CONNECT")
            if reply.reason is not None or reply.reached:
                sock.close()
                return reply
        else:
            target = url  # absolute form to an explicit proxy
    else:
        dial = _address(where, action.connect_to) if action.connect_to else host
        try:
            sock = socket.create_connection((dial, port), timeout=where.timeout)
        except socket.gaierror:
            return Observation(reason="dns_refused", detail=f"{host} did not resolve")
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        server_name = action.sni or (host if not _is_literal(host) else None)
        try:
            sock = context.wrap_socket(sock, server_hostname=server_name)
        except (ssl.SSLError, ConnectionResetError) as exc:
            sock.close()
            return Observation(reason="tls_refused", detail=f"TLS refused: {exc}"[:200])
    head = f"{action.method} {target} HTTP/1.1\r\n"
    headers["content-length"] = str(len(action.body))
    headers["connection"] = "close"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return _exchange(sock, head.encode() + action.body, action.method)


def _exchange(sock: socket.socket, request: bytes, method: str) -> Observation:
    try:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
    except (http.client.HTTPException, ConnectionResetError, ssl.SSLError) as exc:
        sock.close()
        return Observation(
            reason="closed", detail=f"closed without an answer ({type(exc).__name__})"
        )
    reason = response.getheader(REASON_HEADER)
    status = response.status
    if method == "CONNECT" and status == 200 and reason is None:
        return Observation()  # tunnel open: the caller goes on (nothing decided yet)
    response.close()
    if method != "CONNECT":
        sock.close()
    if reason is not None:
        return Observation(reason=reason, detail=f"HTTP {status}")
    return Observation(reached=True, detail=f"HTTP {status} without the sidecar's reason")


def _dns(action: Dns, where: Position) -> Observation:
    if action.server == "target":
        server = where.target
    else:
        server = where.dns_server or str(dns.resolver.Resolver().nameservers[0])
    query = dns.message.make_query(action.name, action.qtype)
    try:
        answer = dns.query.udp(query, str(server), timeout=where.timeout)
    except dns.exception.Timeout:
        return Observation(detail=f"no DNS answer from {server}")
    rcode = answer.rcode()
    if rcode == dns.rcode.REFUSED:
        return Observation(reason="dns_refused", detail=f"REFUSED by {server}")
    if rcode == dns.rcode.NXDOMAIN:
        return Observation(reason="dns_nxdomain", detail=f"NXDOMAIN from {server}")
    if answer.answer:
        return Observation(reached=True, detail=f"{server} answered {rcode_text(rcode)}")
    return Observation(reason="dns_empty", detail=f"{rcode_text(rcode)} without records")


def rcode_text(rcode: int) -> str:
    return str(dns.rcode.to_text(dns.rcode.Rcode(rcode)))


def _datagram(action: Datagram, where: Position) -> Observation:
    address = _address(where, action.to)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(where.timeout)
        sock.sendto(action.payload, (address, action.port))
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return Observation(detail="no reply")
    return Observation(reached=True, detail=f"{len(data)} bytes came back")


def _raw_tcp(action: RawTcp, where: Position) -> Observation:
    address = _address(where, action.to)
    with socket.create_connection((address, action.port), timeout=where.timeout) as sock:
        sock.sendall(action.payload)
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return Observation(detail="connected, no reply")
        except ConnectionResetError:
            return Observation(reason="closed", detail="reset")
    if not data:
        return Observation(reason="closed", detail="closed without a byte")
    return Observation(reached=True, detail=f"{len(data)} bytes came back")


def _ping(action: Ping, where: Position) -> Observation:
    binary = shutil.which("ping")
    if binary is None:
        return Observation(not_run=True, detail="no ping binary")
    address = _address(where, action.to)
    wait = str(max(1, int(where.timeout)))
    proc = subprocess.run(
        [binary, "-c", "1", "-W", wait, address],
        capture_output=True, text=True, timeout=where.timeout + 5, check=False,
    )  # fmt: skip
    if proc.returncode == 0:
        return Observation(reached=True, detail="echo reply")
    return Observation(detail="no echo reply")


def _is_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
