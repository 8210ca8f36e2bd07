"""The DNS listener's sockets: our own asyncio UDP and TCP server (issue 10).

Why not mitmproxy's `dns@` mode: it keeps a client connection per UDP source
address:port until a timeout, runs each question through its layer machinery and
offers no hook before that state exists. Measured on one core (bench.dns_flood):
~550 questions/s and +83 MB RSS for 6,000 questions from fresh source ports, not
released. Here a datagram costs one admission check before it is even parsed, UDP
keeps no per-flow state at all, and everything that is kept is bounded:

- per source address: a token bucket and a refusal count, at most `max_sources`
  (LRU, `sidecar.dns_limits`);
- questions being answered at once (waiting for the upstream resolver): `max_pending`;
- TCP connections: `max_tcp_connections`, each closed after `TCP_IDLE_SECONDS` without
  a complete question, and answering one question at a time.

A question over a limit is answered REFUSED right away (same size as the question:
no amplification; a resolver stub fails fast instead of retrying for seconds) and
counted in `egress_sidecar_dns_questions_limited{limit}`; decision lines (and so
alerts) are rate limited per source, see `sidecar.dns_limits`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode

from sidecar.addons.dns_listener import DnsListener, dns_protocol_refusal, reply
from sidecar.decision import RULE_NETGUARD, Decision, Reason, Verdict
from sidecar.dns_limits import DnsAdmission, DnsLimits, LimitReport

logger = logging.getLogger("egress_sidecar")

TCP_IDLE_SECONDS = 10.0
UDP_PLAIN_SIZE = 512  # RFC 1035 without EDNS
LIMIT_PENDING = "pending"
LIMIT_TCP = "tcp_connections"
_LIMIT_TEXT = {
    "per_source": "questions per second from this source address over {per_source:g}",
    "total": "questions per second from all sources over {total:g}",
    LIMIT_PENDING: "more than {pending} questions being answered at once",
    LIMIT_TCP: "more than {tcp} DNS-over-TCP connections open",
}


def _question_end(wire: bytes) -> int | None:
    """Offset just past the first question of a query, or None if it is not plain."""
    pos = 12
    for _ in range(128):
        if pos >= len(wire):
            return None
        length = wire[pos]
        if length == 0:
            end = pos + 5
            return end if end <= len(wire) else None
        if length & 0xC0:  # a pointer or an extended label: not in a plain query
            return None
        pos += 1 + length
    return None


def refusal_wire(wire: bytes, rcode: int = int(dns.rcode.REFUSED)) -> bytes | None:
    """A reply built from the query's raw bytes, without parsing it (cheap under a flood).

    None for what must not be answered at all: runts and responses (no reflection loops).
    The question is echoed when it is a plain one; stub resolvers ignore replies whose
    question does not match theirs.
    """
    if len(wire) < 12:
        return None
    flags = int.from_bytes(wire[2:4], "big")
    if flags & 0x8000:
        return None
    qdcount = int.from_bytes(wire[4:6], "big")
    end = _question_end(wire) if qdcount == 1 else None
    question = wire[12:end] if end is not None else b""
    out = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | (rcode & 0xF)
    counts = struct.pack("!HHHH", 1 if question else 0, 0, 0, 0)
    return wire[:2] + out.to_bytes(2, "big") + counts + question


class DnsServer:
    """UDP and TCP DNS on the given addresses, answering through a `DnsListener`."""

    def __init__(
        self,
        listener: DnsListener,
        limits: DnsLimits,
        record: Callable[[Decision], None],
        on_limited: Callable[[str], None],
        *,
        max_pending: int = 256,
        max_tcp_connections: int = 64,
    ) -> None:
        self.listener = listener
        self.limits = limits
        self.admission = DnsAdmission(limits, time.monotonic())
        self.record = record
        self.on_limited = on_limited  # counts every refused question (a metric)
        self.max_pending = max_pending
        self.max_tcp_connections = max_tcp_connections
        self.pending = 0
        self.tcp_connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self.listen_addrs: list[tuple[str, int]] = []
        self._reporter: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------

    async def start(self, addresses: tuple[tuple[str, int], ...]) -> None:
        loop = asyncio.get_running_loop()
        for host, port in addresses:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            bound = transport.get_extra_info("sockname")
            self._udp.append(transport)
            server = await asyncio.start_server(self._tcp_client, host, bound[1])
            self._tcp.append(server)
            self.listen_addrs.append((host, int(bound[1])))
        self._reporter = asyncio.create_task(self._report_loop(), name="dns-limit-reports")

    @property
    def is_running(self) -> bool:
        return all(not t.is_closing() for t in self._udp) and all(s.is_serving() for s in self._tcp)

    async def stop(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        self._flush(time.monotonic() + self.limits.report_interval)
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for task in list(self._tasks):
            task.cancel()

    # --- admission and reporting ---------------------------------------------------

    def _admit(self, source: str) -> bool:
        admission = self.admission.admit(source, time.monotonic())
        if admission.allowed:
            return True
        self._limited(source, admission.limit, admission.first)
        return False

    def _limited(self, source: str, limit: str, first: bool) -> None:
        self.on_limited(limit)
        if first:
            self._decision(LimitReport(source, limit, 1), first=True)

    def _refuse_other(self, source: str, limit: str) -> None:
        """A refusal by a server-wide bound (pending, TCP): reported like a rate limit."""
        admission = self.admission.note_refusal(source, limit, time.monotonic())
        self._limited(source, limit, admission.first)

    def _decision(self, report: LimitReport, *, first: bool) -> None:
        what = _LIMIT_TEXT.get(report.limit, report.limit).format(
            per_source=self.limits.max_qps_per_source,
            total=self.limits.max_qps,
            pending=self.max_pending,
            tcp=self.max_tcp_connections,
        )
        if first:
            detail = (
                f"{what}; refusing (further refusals counted, reported every "
                f"{self.limits.report_interval:g}s)"
            )
        else:
            detail = f"{what}; {report.count} more questions refused"
        self.record(
            Decision(
                Verdict.BLOCK,
                Reason.DNS_RATE_LIMITED,
                RULE_NETGUARD,
                "-",
                53,
                client=report.source,
                mode="dns",
                detail=detail,
            )
        )

    def _flush(self, now: float) -> None:
        for report in self.admission.summaries(now):
            self._decision(report, first=False)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.limits.report_interval))
            try:
                self._flush(time.monotonic())
            except Exception:  # never let reporting stop the listener
                logger.exception("dns limit report failed")

    # --- answering -------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respond(
        self, wire: bytes, peer: tuple[str, int], max_size: int | None
    ) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, IndexError, struct.error):  # malformed
            return refusal_wire(wire, dns.rcode.FORMERR)
        if max_size is None:  # UDP: what the client said it can take
            max_size = (
                max(UDP_PLAIN_SIZE, min(query.payload, 4096)) if query.edns >= 0 else UDP_PLAIN_SIZE
            )
        response = await self.listener.answer(query, peer)
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            truncated = reply(query, response.rcode())
            truncated.flags |= dns.flags.TC
            return truncated.to_wire()

    def udp_received(self, transport: asyncio.DatagramTransport, wire: bytes, addr: Any) -> None:
        peer = (str(addr[0]), int(addr[1]))
        if not self._admit(peer[0]):
            self._send(transport, refusal_wire(wire), addr)
            return
        if self.pending >= self.max_pending:
            self._refuse_other(peer[0], LIMIT_PENDING)
            self._send(transport, refusal_wire(wire), addr)
            return
        self.pending += 1
        self._spawn(self._udp_answer(transport, wire, peer, addr))

    async def _udp_answer(
        self, transport: asyncio.DatagramTransport, wire: bytes, peer: tuple[str, int], addr: Any
    ) -> None:
        try:
            self._send(transport, await self._respond(wire, peer, None), addr)
        except Exception:
            logger.exception("dns listener failed; dropping the question")
        finally:
            self.pending -= 1

    @staticmethod
    def _send(transport: asyncio.DatagramTransport, data: bytes | None, addr: Any) -> None:
        if data is not None and not transport.is_closing():
            transport.sendto(data, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = (str(addr[0]), int(addr[1])) if addr else ("?", 0)
        if self.tcp_connections >= self.max_tcp_connections:
            self._refuse_other(peer[0], LIMIT_TCP)
            writer.close()
            return
        self.tcp_connections += 1
        answered = 0
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_SECONDS)
                wire = await asyncio.wait_for(
                    reader.readexactly(int.from_bytes(head, "big")), TCP_IDLE_SECONDS
                )
                if not self._admit(peer[0]):
                    out = refusal_wire(wire)
                elif self.pending >= self.max_pending:
                    self._refuse_other(peer[0], LIMIT_PENDING)
                    out = refusal_wire(wire)
                else:
                    self.pending += 1
                    try:
                        out = await self._respond(wire, peer, 65535)
                    finally:
                        self.pending -= 1
                if out is None:
                    break
                writer.write(len(out).to_bytes(2, "big") + out)
                await writer.drain()
                answered += 1
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            logger.exception("dns listener (tcp) failed; closing the connection")
        finally:
            self.tcp_connections -= 1
            writer.close()
            if not answered:
                # S9: every TCP connection redirected to port 53 that carried no DNS
                # question (HTTP, junk, nothing) is seen, like the proxy's connections.
                self.record(
                    dns_protocol_refusal(
                        f"{peer[0]}:{peer[1]}",
                        "DNS-over-TCP connection ended without a DNS question",
                    )
                )


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        try:
            self.server.udp_received(self.transport, data, addr)
        except Exception:
            logger.exception("dns listener failed; dropping the question")

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        pass


async def start_dns_server(
    settings: Any, holder: Any, resolver: Any, record: Callable[[Decision], None], registry: Any
) -> DnsServer:
    """The runner's one call: build the listener and server from the settings, bind them."""
    from sidecar.records import DnsMetrics

    limited = DnsMetrics(registry).limited
    server = DnsServer(
        DnsListener(holder, resolver, record, settings.dns_refuse_with),
        DnsLimits(settings.dns_max_qps, settings.dns_max_qps_per_source, settings.dns_max_sources),
        record,
        lambda limit: limited.labels(limit).inc(),
        max_pending=settings.dns_max_pending,
        max_tcp_connections=settings.dns_max_tcp_connections,
    )
    await server.start(settings.dns)
    return server
