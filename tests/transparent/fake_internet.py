"""The "internet" namespace's servers, served from the test process's asyncio loop.

Their listening sockets are created inside the internet namespace (a short-lived
thread joins it, see `tests.support.netns.in_netns`); the servers then run on the
session's `BackgroundLoop` like the loopback fakes in `tests/support/fakes.py`, so
a test reads what they recorded directly.

- `NetnsProvider`: the fake provider (OpenAI/Anthropic shapes) on a given socket.
- `NetnsDNS`: the upstream resolver (FakeDNS) on a given UDP socket.
- `Attacker`: everything an attacker runs at its own address: a TCP listener per
  port (plain or TLS with a certificate for the provider's name from the same test
  CA: right name, wrong address), UDP listeners, and a DNS server. It records every
  connection at accept time (before any TLS), every request and datagram, and every
  DNS question, and answers "pwned" so that a leak would also show to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import time

import dns.message
import dns.rdatatype
import dns.rrset
import trustme
from aiohttp import web

from tests.support.fakes import BackgroundLoop, FakeDNS, FakeProvider, _DNSProtocol

ATTACKER_BANNER = b"pwned-by-attacker"


def listening_socket(address: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A bound (and, for TCP, listening) non-blocking socket; call inside a namespace."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    sock.setblocking(False)
    return sock


class NetnsProvider(FakeProvider):
    """FakeProvider served on a socket made in another namespace."""

    def __init__(
        self, bg: BackgroundLoop, ca: trustme.CA, names: list[str], sock: socket.socket
    ) -> None:
        super().__init__(bg, ca, names)
        self._sock = sock

    async def _listen(self, runner: web.AppRunner, context: ssl.SSLContext | None) -> int:
        await web.SockSite(runner, self._sock, ssl_context=context).start()
        return int(self._sock.getsockname()[1])


class NetnsDNS(FakeDNS):
    """FakeDNS answering on a UDP socket made in another namespace."""

    def __init__(self, bg: BackgroundLoop, sock: socket.socket) -> None:
        super().__init__(bg)
        self._sock = sock

    async def _start(self) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DNSProtocol(self.answer, self.delay_of), sock=self._sock
        )
        self._transport = transport
        return int(self._sock.getsockname()[1])


@dataclasses.dataclass
class Seen:
    kind: str  # "tcp", "request", "udp", "dns"
    local: str  # address:port the attacker was reached at
    peer: str
    data: bytes
    at: float


class _AttackerDNS(NetnsDNS):
    """A hostile resolver: records the question, answers every A with its own address."""

    def __init__(self, bg: BackgroundLoop, sock: socket.socket, own: str, seen: list[Seen]) -> None:
        super().__init__(bg, sock)
        self._own, self._seen, self._local = own, seen, _name(sock.getsockname())

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        self.questions.append((name, dns.rdatatype.to_text(question.rdtype)))
        self._seen.append(Seen("dns", self._local, "?", wire, time.monotonic()))
        response = dns.message.make_response(query)
        if question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A", self._own))
        return response.to_wire()


class Attacker:
    def __init__(self, bg: BackgroundLoop, ca: trustme.CA, tls_names: list[str]) -> None:
        self._bg = bg
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*tls_names).configure_cert(self._tls)
        self.seen: list[Seen] = []
        self.dns: list[_AttackerDNS] = []
        self._servers: list[asyncio.Server] = []
        self._transports: list[asyncio.BaseTransport] = []

    # --- what it saw ----------------------------------------------------------------

    @property
    def dns_questions(self) -> list[tuple[str, str]]:
        return [q for server in self.dns for q in server.questions]

    def snapshot(self) -> int:
        return len(self.seen)

    def since(self, mark: int) -> list[Seen]:
        return self.seen[mark:]

    # --- serving ----------------------------------------------------------------------

    def serve_tcp(self, sock: socket.socket, tls: bool) -> None:
        self._servers.append(self._bg.run(self._serve_tcp(sock, tls)))

    def serve_udp(self, sock: socket.socket) -> None:
        self._transports.append(self._bg.run(self._serve_udp(sock)))

    def serve_dns(self, sock: socket.socket, own_address: str) -> None:
        self.dns.append(_AttackerDNS(self._bg, sock, own_address, self.seen).start())

    async def _serve_tcp(self, sock: socket.socket, tls: bool) -> asyncio.Server:
        local = _name(sock.getsockname())

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = _name(writer.get_extra_info("peername"))
            self.seen.append(Seen("tcp", local, peer, b"", time.monotonic()))
            try:
                if tls:
                    await asyncio.wait_for(writer.start_tls(self._tls), 5)
                data = await asyncio.wait_for(reader.read(65536), 5)
                self.seen.append(Seen("request", local, peer, data, time.monotonic()))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                    % (len(ATTACKER_BANNER), ATTACKER_BANNER)
                )
                await writer.drain()
            except (OSError, TimeoutError, ssl.SSLError):
                pass
            finally:
                writer.close()

        return await asyncio.start_server(handle, sock=sock)

    async def _serve_udp(self, sock: socket.socket) -> asyncio.BaseTransport:
        local = _name(sock.getsockname())
        seen = self.seen

        class Recorder(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                seen.append(Seen("udp", local, _name(addr), data, time.monotonic()))
                assert isinstance(self.transport, asyncio.DatagramTransport)
                self.transport.sendto(ATTACKER_BANNER, addr)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Recorder, sock=sock
        )
        return transport

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for transport in self._transports:
                transport.close()

        with contextlib.suppress(Exception):
            self._bg.run(close())
        for server in self.dns:
            server.stop()


def _name(sockaddr: tuple[str, int] | tuple[str, int, int, int] | None) -> str:
    if not sockaddr:
        return "?"
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
