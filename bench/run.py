"""`python -m bench [--quick]`: every scenario against every contender, in one run.

Starts the fake provider + DNS, mitmdump, the trimmed Master, egress-sidecar and Squid on
loopback; runs the scenarios of issue 7 in alternating rounds (the contender order
rotates every round so machine noise hits all alike); prints tables with medians, p99
and ratios; writes bench/results/latest.json; says where each target of the issue
stands. Every process it starts is stopped on the way out. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import contenders as C
from bench.client import Conn, Refused, closed_loop
from bench.procs import Procs, memory

RESULTS = Path(__file__).resolve().parent / "results"
NA = "n/a"


@dataclasses.dataclass(frozen=True)
class Config:
    mode: str
    rounds: int
    small_seconds: float
    stream_chunks: int
    streams_per_round: int
    large_requests: int
    flood_seconds: float
    mem_counts: tuple[int, int]
    open_streams: int
    wrk_seconds: int
    core_entries: int
    core_seconds: float
    dns_seconds: float


QUICK = Config(
    "quick",
    rounds=1,
    small_seconds=0.4,
    stream_chunks=30,
    streams_per_round=1,
    large_requests=2,
    flood_seconds=1.0,
    mem_counts=(500, 1000),
    open_streams=20,
    wrk_seconds=1,
    core_entries=1000,
    core_seconds=0.5,
    dns_seconds=0.5,
)
# 100k requests through today's sidecar (~200 req/s on 2 cores) would take ~8 minutes alone,
# so the full run stops at 30k; `--memory-requests 10000,100000` runs the counts.
FULL = Config(
    "full",
    rounds=3,
    small_seconds=2.5,
    stream_chunks=200,
    streams_per_round=2,
    large_requests=8,
    flood_seconds=3.0,
    mem_counts=(10_000, 30_000),
    open_streams=500,
    wrk_seconds=3,
    core_entries=10_000,
    core_seconds=3.0,
    dns_seconds=2.0,
)

SIDECAR_R5 = "sidecar (reconnect every 5)"


# --- statistics ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def na(why: str) -> dict[str, str]:
    return {"status": NA, "why": why}


# --- scenarios ---------------------------------------------------------------------------


async def small(
    contender: C.Contender,
    concurrency: int,
    seconds: float,
    per_connection: int = 0,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    result = await closed_loop(
        contender.target,
        concurrency,
        duration=seconds,
        per_connection=per_connection,
        on_start=on_start,
    )
    return {"rps": result.rps, "errors": result.errors, "latencies": result.latencies}


def summarize_small(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for r in rounds for x in r["latencies"]]
    return {
        "rps_median": round(med([r["rps"] for r in rounds]) or 0, 1),
        "rps_rounds": [round(r["rps"], 1) for r in rounds],
        "lat_p50_ms": ms(pct(latencies, 50)),
        "lat_p99_ms": ms(pct(latencies, 99)),
        "requests": len(latencies),
        "errors": sum(r["errors"] for r in rounds),
    }


async def stream(contender: C.Contender, chunks: int, count: int) -> dict[str, Any]:
    body = json.dumps(
        {"model": "gpt-fake", "stream": True, "chunks": chunks, "interval": 0.01}
    ).encode()
    ttfc: list[float] = []
    worst: list[float] = []
    delays: list[float] = []
    errors = 0
    for _ in range(count):
        conn = await Conn.open(contender.target, contender.target.ssl_context())
        try:
            await conn.request("GET", "/v1/models")  # warm: upstream connection open
            first, chunk_delays = await conn.stream(body, timeout=chunks * 0.01 + 20)
            if len(chunk_delays) != chunks:
                errors += 1
            ttfc.append(first)
            worst.append(max(chunk_delays))
            delays += chunk_delays
        except (OSError, TimeoutError, RuntimeError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            conn.close()
    return {"ttfc": ttfc, "worst": worst, "delays": delays, "errors": errors}


async def shape_stream(
    contender: C.Contender, path: str, chunks: int, count: int
) -> dict[str, Any]:
    from bench.stream_shapes import shape_round

    got = await shape_round(contender, path, chunks, count)
    return {"ttfc": got["ttfc"], "worst": got["worst"], "delays": got["worst"],
            "errors": count - len(got["ttfc"])}  # fmt: skip


def summarize_stream(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ttfc = [x for r in rounds for x in r["ttfc"]]
    worst = [x for r in rounds for x in r["worst"]]
    delays = [x for r in rounds for x in r["delays"]]
    return {
        "ttfc_ms_median": ms(med(ttfc)),
        "ttfc_ms_p99": ms(pct(ttfc, 99)),
        "worst_chunk_delay_ms_median": ms(med(worst)),
        "worst_chunk_delay_ms_max": ms(max(worst) if worst else None),
        "chunk_delay_ms_p50": ms(pct(delays, 50)),
        "chunk_delay_ms_p99": ms(pct(delays, 99)),
        "streams": len(ttfc),
        "errors": sum(r["errors"] for r in rounds),
    }


LARGE_BODY = json.dumps(
    {"model": "gpt-fake", "messages": [{"role": "user", "content": "x" * (1024 * 1024 - 80)}]}
).encode()


async def large(contender: C.Contender, count: int) -> dict[str, Any]:
    """1 MB POSTs, one per fresh (warmed) connection: the body's cost, not keep-alive's."""
    latencies: list[float] = []
    errors = 0
    for _ in range(count):
        try:
            conn = await Conn.open(contender.target, contender.target.ssl_context())
        except (OSError, TimeoutError, Refused):
            errors += 1
            continue
        try:
            await conn.request("GET", "/v1/models")
            t0 = time.perf_counter()
            status, _ = await conn.request("POST", "/v1/chat/completions", LARGE_BODY, timeout=30)
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            errors += 1
        finally:
            conn.close()
    return {"latencies": latencies, "errors": errors}


def summarize_large(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for r in rounds for x in r["latencies"]]
    p50 = pct(latencies, 50)
    return {
        "lat_p50_ms": ms(p50),
        "lat_p99_ms": ms(pct(latencies, 99)),
        "mb_per_s": round(len(LARGE_BODY) / 1e6 / p50, 1) if p50 else None,
        "requests": len(latencies),
        "errors": sum(r["errors"] for r in rounds),
    }


FLOOD_LUA = """\
wrk.method = "GET"
wrk.path = "http://exfil.attacker.example/v1/upload"
wrk.headers["Host"] = "exfil.attacker.example"
"""

POST_LUA = """\
wrk.method = "POST"
wrk.body = '{"model":"gpt-fake","messages":[{"role":"user","content":"Say hello."}]}'
wrk.headers["Content-Type"] = "application/json"
"""


def parse_wrk(text: str) -> dict[str, Any]:
    def to_ms(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    out: dict[str, Any] = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    for q in ("50", "99"):
        if m := re.search(rf"^\s+{q}%\s+([\d.]+\w+)", text, re.M):
            out[f"p{q}_ms"] = round(to_ms(m.group(1)), 2)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    return out


async def wrk(url: str, script: Path, seconds: int, connections: int) -> dict[str, Any]:
    binary = shutil.which("wrk")
    assert binary is not None
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "3s",
        "-s",
        str(script),
        url,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return parse_wrk(out.decode(errors="replace"))


async def flood_round(contender: C.Contender, seconds: float, script: Path) -> dict[str, Any]:
    """Allowed throughput (8 connections) without, then during, a refused-request flood."""
    assert contender.target.proxy is not None
    quiet = await closed_loop(contender.target, 8, duration=seconds, per_connection=5)
    proxy = "http://{}:{}".format(*contender.target.proxy)
    flood_task = asyncio.create_task(wrk(proxy, script, int(seconds) + 2, 16))
    await asyncio.sleep(0.7)
    loud = await closed_loop(contender.target, 8, duration=seconds, per_connection=5)
    flood = await flood_task
    return {
        "quiet_rps": quiet.rps,
        "flood_rps": loud.rps,
        "refused_per_s": flood.get("rps"),
        "flood_non2xx": flood.get("non2xx"),
        "flood_requests": flood.get("requests"),
        "errors": quiet.errors + loud.errors,
    }


def summarize_flood(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    quiet = med([r["quiet_rps"] for r in rounds])
    loud = med([r["flood_rps"] for r in rounds])
    refused = [r["refused_per_s"] for r in rounds if r["refused_per_s"] is not None]
    return {
        "allowed_rps_without": round(quiet or 0, 1),
        "allowed_rps_during": round(loud or 0, 1),
        "during_over_without": ratio(loud, quiet),
        "refused_per_s_median": round(med(refused) or 0, 1),
        "flood_refused_all": all(r["flood_non2xx"] == r["flood_requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
    }


async def open_streams(
    contender: C.Contender,
    count: int,
    world: C.World,
    while_open: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Hold `count` SSE streams open through the proxy; RSS once the fake serves them all
    (and `while_open` called then: bench.workers_memory reads every worker's)."""
    assert contender.pid is not None
    direct = C.direct(world)
    body = json.dumps(
        {"model": "gpt-fake", "stream": True, "chunks": 100000, "interval": 0.5}
    ).encode()
    before = memory(contender.pid)
    conns: list[Conn] = []
    context = contender.target.ssl_context()
    probe = await Conn.open(direct.target, direct.target.ssl_context())
    active = 0
    try:
        for _ in range(count):
            conn = await Conn.open(contender.target, context)
            conn._send("POST", "/v1/chat/completions", body, "application/json")
            conns.append(conn)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, data = await probe.request("GET", "/bench/active")
            active = json.loads(data)["active_streams"]
            if active >= count:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)
        during = memory(contender.pid)
        if while_open is not None:
            while_open()
    finally:
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            _, data = await probe.request("GET", "/bench/active")
            if json.loads(data)["active_streams"] == 0:
                break
        probe.close()
    return {
        "streams_requested": count,
        "streams_open": active,
        "rss_before_mb": before.get("vmrss_mb"),
        "rss_with_streams_mb": during.get("vmrss_mb"),
        "peak_rss_mb": during.get("vmhwm_mb"),
    }


async def memory_growth(procs: Procs, world: C.World, counts: tuple[int, int]) -> dict[str, Any]:
    """A fresh sidecar: RSS after counts[0] and counts[1] small requests (32 connections,
    a new connection every 5 requests)."""
    sidecar = C.start_sidecar(procs, world, label="sidecar-memory")
    assert sidecar.pid is not None
    try:
        out: dict[str, Any] = {"start": memory(sidecar.pid)}
        done = 0
        errors = 0
        t0 = time.perf_counter()
        for target in counts:
            result = await closed_loop(
                sidecar.target, 32, count=target - done, per_connection=5, warmup=0, duration=1800
            )
            done += result.completed + result.errors
            errors += result.errors
            await asyncio.sleep(0.5)
            out[f"after_{target}"] = {**memory(sidecar.pid), "requests": done}
        out["errors"] = errors
        out["seconds"] = round(time.perf_counter() - t0, 1)
        a, b = (out[f"after_{n}"]["vmrss_mb"] for n in counts)
        out["rss_growth"] = ratio(b, a)
        return out
    finally:
        procs.stop(sidecar.proc)  # type: ignore[arg-type]


async def dns_queries(port: int, seconds: float, name: str) -> dict[str, Any]:
    """UDP queries back to back (8 in flight) against the sidecar's DNS listener."""
    import dns.message
    import dns.rcode

    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=("127.0.0.1", port))
    wire = dns.message.make_query(name, "A").to_wire()
    done = 0
    rcodes: dict[str, int] = {}
    start = time.perf_counter()
    try:
        for _ in range(8):
            transport.sendto(wire)
        while time.perf_counter() - start < seconds:
            try:
                data = await asyncio.wait_for(answers.get(), 2)
            except TimeoutError:
                transport.sendto(wire)  # a lost datagram: keep 8 in flight
                continue
            done += 1
            code = dns.rcode.to_text(dns.message.from_wire(data).rcode())
            rcodes[code] = rcodes.get(code, 0) + 1
            transport.sendto(wire)
    finally:
        transport.close()
    return {"qps": round(done / (time.perf_counter() - start), 1), "rcodes": rcodes}


# --- running ---------------------------------------------------------------------------


def rotate(items: list[Any], n: int) -> list[Any]:
    n %= len(items)
    return items[n:] + items[:n]


async def rounds(
    name: str,
    contenders: list[C.Contender],
    count: int,
    measure: Callable[[C.Contender], Awaitable[dict[str, Any]]],
    log: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:
    collected: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
    for r in range(count):
        for contender in rotate(contenders, r):
            t0 = time.perf_counter()
            try:
                collected[contender.name].append(await measure(contender))
            except Exception as exc:
                collected[contender.name].append({"exception": f"{type(exc).__name__}: {exc}"})
            log(f"  {name} round {r + 1}/{count} {contender.name}: {time.perf_counter() - t0:.1f}s")
    return collected


def finish(
    collected: dict[str, list[dict[str, Any]]],
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, results in collected.items():
        good = [r for r in results if "exception" not in r]
        failures = [r["exception"] for r in results if "exception" in r]
        out[name] = summarize(good) if good else {"status": "error", "why": failures[:3]}
        if failures and good:
            out[name]["failures"] = failures[:3]
    return out


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import mitmproxy.version

    squid = C.squid_binary()
    squid_version = ""
    if squid:
        with contextlib.suppress(Exception):
            squid_version = subprocess.run(
                [squid, "-v"], capture_output=True, text=True, timeout=10
            ).stdout.splitlines()[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "squid": squid_version,
        "kernel": platform.release(),
    }


async def run_all(
    cfg: Config, procs: Procs, tmp: Path, log: Callable[[str], None], profile: bool
) -> dict[str, Any]:
    log("starting fake provider, mitmdump, trimmed Master, egress-sidecar, squid ...")
    world = C.start_world(procs, tmp)
    mitmdump = C.start_mitmdump(procs, world)
    trimmed = C.start_trimmed(procs, world)
    sidecar = C.start_sidecar(procs, world)
    squid = C.start_squid(procs, world)
    C.wait_mitm(mitmdump)
    C.wait_mitm(trimmed)
    direct = C.direct(world)
    everyone = [direct, mitmdump, trimmed, sidecar, squid]
    proxies = everyone[1:]
    by_name = {c.name: c for c in everyone}
    scenarios: dict[str, Any] = {}
    lua_post = tmp / "post.lua"
    lua_post.write_text(POST_LUA)
    lua_flood = tmp / "flood.lua"
    lua_flood.write_text(FLOOD_LUA)

    # (1) small JSON, keep-alive, concurrency 1 and 32
    for conc in (1, 32):
        log(f"scenario: small JSON, concurrency {conc}")
        collected = await rounds(
            f"small_c{conc}",
            everyone,
            cfg.rounds,
            lambda c, n=conc: small(c, n, cfg.small_seconds),
            log,
        )
        variant = await rounds(
            f"small_c{conc}",
            [dataclasses.replace(sidecar, name=SIDECAR_R5)],
            cfg.rounds,
            lambda c, n=conc: small(c, n, cfg.small_seconds, per_connection=5),
            log,
        )
        scenarios[f"small_c{conc}"] = finish({**collected, **variant}, summarize_small)

    # (1b) reverse listeners with wrk (plain HTTP in, TLS out); direct = wrk over TLS
    if shutil.which("wrk"):
        log("scenario: reverse mode with wrk, 32 connections")
        reverse = [c for c in everyone if c.reverse_url]

        async def wrk_reverse(c: C.Contender) -> dict[str, Any]:
            return await wrk(f"{c.reverse_url}/v1/chat/completions", lua_post, cfg.wrk_seconds, 32)

        collected = await rounds("reverse_wrk_c32", reverse, cfg.rounds, wrk_reverse, log)

        def summarize_wrk(rs: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "rps_median": round(med([r.get("rps", 0) for r in rs]) or 0, 1),
                "lat_p50_ms": med([r["p50_ms"] for r in rs if "p50_ms" in r]),
                "lat_p99_ms": med([r["p99_ms"] for r in rs if "p99_ms" in r]),
                "errors": sum(r.get("non2xx", 0) + r.get("socket_errors", 0) for r in rs),
            }

        scenarios["reverse_wrk_c32"] = finish(collected, summarize_wrk)
        scenarios["reverse_wrk_c32"]["squid"] = na("no reverse listener (CONNECT allowlist)")
    else:
        scenarios["reverse_wrk_c32"] = {c.name: na("wrk not installed") for c in everyone}

    # (2) streaming
    log("scenario: SSE streaming")
    collected = await rounds(
        "stream_sse",
        everyone,
        cfg.rounds,
        lambda c: stream(c, cfg.stream_chunks, cfg.streams_per_round),
        log,
    )
    scenarios["stream_sse"] = finish(collected, summarize_stream)

    # (2b) issue 14: each API's stream shape, inspection on (direct vs sidecar)
    from bench.stream_shapes import SHAPES

    for shape, path in SHAPES.items():
        log(f"scenario: SSE stream shape {shape}")
        collected = await rounds(
            f"stream_shape_{shape}",
            [direct, sidecar],
            cfg.rounds,
            lambda c, p=path: shape_stream(c, p, cfg.stream_chunks, cfg.streams_per_round),
            log,
        )
        scenarios[f"stream_shape_{shape}"] = finish(collected, summarize_stream)

    # (3) 1 MB request bodies
    log("scenario: 1 MB request bodies")
    collected = await rounds(
        "large_body_1mb", everyone, cfg.rounds, lambda c: large(c, cfg.large_requests), log
    )
    scenarios["large_body_1mb"] = finish(collected, summarize_large)

    # (4) refused-request flood
    log("scenario: refused-request flood")
    refusing = [c for c in everyone if c.refuses]
    if shutil.which("wrk"):
        collected = await rounds(
            "refused_flood",
            refusing,
            cfg.rounds,
            lambda c: flood_round(c, cfg.flood_seconds, lua_flood),
            log,
        )
        scenarios["refused_flood"] = finish(collected, summarize_flood)
    else:
        scenarios["refused_flood"] = {c.name: na("wrk not installed") for c in refusing}
    for c in everyone:
        if not c.refuses:
            scenarios["refused_flood"][c.name] = na("no policy: refuses nothing")

    # (5) memory: fresh sidecar for growth; every proxy with open streams
    log(f"scenario: memory (sidecar after {cfg.mem_counts[0]} and {cfg.mem_counts[1]} requests)")
    mem: dict[str, Any] = {c.name: {} for c in everyone}
    mem["direct"] = na("no proxy process")
    try:
        mem["sidecar"]["growth"] = await memory_growth(procs, world, cfg.mem_counts)
    except Exception as exc:
        mem["sidecar"]["growth"] = {"status": "error", "why": f"{type(exc).__name__}: {exc}"}
    for c in proxies:
        assert c.pid is not None
        mem[c.name]["after_scenarios"] = memory(c.pid)
        log(f"  {cfg.open_streams} open streams through {c.name}")
        try:
            mem[c.name]["open_streams"] = await open_streams(c, cfg.open_streams, world)
        except Exception as exc:
            mem[c.name]["open_streams"] = {"status": "error", "why": f"{type(exc).__name__}: {exc}"}
    scenarios["memory"] = mem

    # (6) decision core
    log(f"scenario: decision core ({cfg.core_entries} entries)")
    core_env = {**os.environ, "PYTHONPATH": C.SIDECAR_TREE or str(C.REPO)}
    core = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("core.py")),
            "--entries",
            str(cfg.core_entries),
            "--seconds",
            str(cfg.core_seconds),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        env=core_env,
    )
    core_result: dict[str, Any] = (
        json.loads(core.stdout.splitlines()[-1])
        if core.returncode == 0
        else {"status": "error", "why": core.stderr[-500:]}
    )
    scenarios["decision_core"] = {
        c.name: na("the decision core is the sidecar's") for c in everyone
    }
    scenarios["decision_core"]["sidecar"] = core_result

    # (7) DNS listener
    scenarios["dns_listener"] = {c.name: na("no DNS listener") for c in everyone}
    if C.has_dns_listener():
        log("scenario: DNS listener")
        try:
            from bench.procs import free_port

            port = free_port()
            dns_sidecar = C.start_sidecar(procs, world, label="sidecar-dns", dns_port=port)
            try:
                allowed = await dns_queries(port, cfg.dns_seconds, C.PROVIDER_HOST)
                refused = await dns_queries(port, cfg.dns_seconds, "exfil.attacker.example")
            finally:
                procs.stop(dns_sidecar.proc)  # type: ignore[arg-type]
            scenarios["dns_listener"]["sidecar"] = {"allowed": allowed, "refused": refused}
        except Exception as exc:
            scenarios["dns_listener"]["sidecar"] = {
                "status": "error",
                "why": f"{type(exc).__name__}: {exc}",
            }
    else:
        scenarios["dns_listener"]["sidecar"] = na("not available: no --dns listener in this build")

    # (8) scanners on the request path (issue 10): worst-case vs typical MB/s
    log("scenario: scanners (key detection, reflection guard, DNS tunnel detector)")
    scan_run = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("scanners.py")),
            "--seconds",
            "0.2" if cfg.mode == "quick" else "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd="/",
        env=core_env,
    )
    scenarios["scanners"] = {c.name: na("the scanners are the sidecar's") for c in everyone}
    scenarios["scanners"]["sidecar"] = (
        json.loads(scan_run.stdout.splitlines()[-1])
        if scan_run.returncode == 0
        else {"status": "error", "why": scan_run.stderr[-500:]}
    )
    # (9) hostile: each attack of issue 10 against the sidecar, mitmdump and Squid
    from bench.hostile import run_hostile

    log("scenario: hostile (issue 10 attacks)")
    scenarios["hostile"] = await run_hostile(
        cfg.mode, world, tmp, log, {"mitmdump": mitmdump, "squid": squid}
    )

    profiles: dict[str, Any] = {}
    if profile:
        from bench.pyspy import profile_sidecar

        log("profiling the sidecar under load (py-spy)")
        profiles = await profile_sidecar(sidecar, tmp, seconds=10 if cfg.mode == "full" else 3)
    del by_name
    return {"scenarios": scenarios, "profiles": profiles}


# --- targets and tables ------------------------------------------------------------------


def get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str, threshold: float, detail: str) -> None:
        if value is None:
            status = "unknown"
        else:
            ok = value >= threshold if op == ">=" else value <= threshold
            status = "met" if ok else "missed"
        out.append(
            {
                "target": name,
                "status": status,
                "value": value,
                "op": op,
                "threshold": threshold,
                "detail": detail,
            }
        )

    for conc in (1, 32):
        sc = get(s, f"small_c{conc}", "sidecar", "rps_median")
        md = get(s, f"small_c{conc}", "mitmdump", "rps_median")
        tr = get(s, f"small_c{conc}", "trimmed", "rps_median")
        add(
            f"throughput c={conc} >= 1.5x mitmdump",
            ratio(sc, md),
            ">=",
            1.5,
            f"sidecar {sc} req/s, mitmdump {md} req/s",
        )
        add(
            f"throughput c={conc} >= 0.8x trimmed Master",
            ratio(sc, tr),
            ">=",
            0.8,
            f"sidecar {sc} req/s, trimmed {tr} req/s",
        )
    for q, limit in (("p50", 1.0), ("p99", 5.0)):
        a = get(s, "small_c1", "sidecar", f"lat_{q}_ms")
        b = get(s, "small_c1", "trimmed", f"lat_{q}_ms")
        add(
            f"added {q} latency over trimmed Master at c=1 < {limit} ms",
            diff(a, b),
            "<=",
            limit,
            f"sidecar {a} ms, trimmed {b} ms",
        )
    a = get(s, "stream_sse", "sidecar", "ttfc_ms_median")
    b = get(s, "stream_sse", "direct", "ttfc_ms_median")
    add(
        "streaming: first chunk within 5 ms of direct",
        diff(a, b),
        "<=",
        5.0,
        f"sidecar {a} ms, direct {b} ms (median time to first chunk)",
    )
    worst = get(s, "stream_sse", "sidecar", "worst_chunk_delay_ms_max")
    add(
        "streaming: no chunk held back more than 10 ms",
        worst,
        "<=",
        10.0,
        f"worst chunk delay over all streams (direct: "
        f"{get(s, 'stream_sse', 'direct', 'worst_chunk_delay_ms_max')} ms)",
    )
    for shape in ("chat", "responses", "anthropic", "gemini"):  # issue 14
        name = f"stream_shape_{shape}"
        a, b = get(s, name, "sidecar", "ttfc_ms_median"), get(s, name, "direct", "ttfc_ms_median")
        add(
            f"{shape} stream, inspection on: first text event within 5 ms of direct",
            diff(a, b),
            "<=",
            5.0,
            f"sidecar {a} ms, direct {b} ms",
        )
        a = get(s, name, "sidecar", "worst_chunk_delay_ms_max")
        b = get(s, name, "direct", "worst_chunk_delay_ms_max")
        add(
            f"{shape} stream, inspection on: no event held back more than 10 ms",
            a,
            "<=",
            10.0,
            f"worst event delay over all streams (direct: {b} ms)",
        )
    growth = get(s, "memory", "sidecar", "growth", "rss_growth")
    add(
        "memory flat between the two request counts (within 10%)",
        growth,
        "<=",
        1.10,
        "RSS after the larger count / after the smaller count",
    )
    streams_rss = get(s, "memory", "sidecar", "open_streams", "rss_with_streams_mb")
    n_streams = get(s, "memory", "sidecar", "open_streams", "streams_open")
    add(
        "memory under 200 MB with the open streams",
        streams_rss,
        "<=",
        200.0,
        f"RSS with {n_streams} streams open",
    )
    add(
        "decision core >= 200,000 decisions/s on one core",
        get(s, "decision_core", "sidecar", "decisions_per_s"),
        ">=",
        200_000,
        f"{get(s, 'decision_core', 'sidecar', 'entries')}-entry policy",
    )
    add(
        "allowed throughput during refused flood >= 70% of without",
        get(s, "refused_flood", "sidecar", "during_over_without"),
        ">=",
        0.70,
        f"refused/s during flood: {get(s, 'refused_flood', 'sidecar', 'refused_per_s_median')}",
    )
    return out


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    head = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    lines = [f"\n## {title}", f"| {head} |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in cells[1:]:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    s = result["scenarios"]
    out: list[str] = []

    def status_of(entry: Any) -> str | None:
        if isinstance(entry, dict) and "status" in entry:
            why = entry.get("why")
            return f"{entry['status']}: {why}" if why else entry["status"]
        return None

    for key, title in (
        ("small_c1", "Small JSON over HTTPS, keep-alive, concurrency 1"),
        ("small_c32", "Small JSON over HTTPS, keep-alive, concurrency 32"),
        (
            "reverse_wrk_c32",
            "Reverse listener, wrk, 32 connections (plain HTTP in, TLS out; direct = wrk over TLS)",
        ),
    ):
        rows = []
        base = s[key]
        for name, entry in base.items():
            if (st := status_of(entry)) is not None:
                rows.append([name, st, "", "", "", "", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    entry["rps_median"],
                    entry["lat_p50_ms"],
                    entry["lat_p99_ms"],
                    diff(entry["lat_p50_ms"], get(base, "direct", "lat_p50_ms")),
                    ratio(entry["rps_median"], get(base, "direct", "rps_median")),
                    ratio(entry["rps_median"], get(base, "mitmdump", "rps_median")),
                    ratio(entry["rps_median"], get(base, "trimmed", "rps_median")),
                    entry.get("errors"),
                ]
            )
        out.append(
            table(
                title,
                [
                    "contender",
                    "req/s (median)",
                    "p50 ms",
                    "p99 ms",
                    "added p50 ms vs direct",
                    "x direct",
                    "x mitmdump",
                    "x trimmed",
                    "errors",
                ],
                rows,
            )
        )

    rows = []
    base = s["stream_sse"]
    for name, e in base.items():
        if (st := status_of(e)) is not None:
            rows.append([name, st, "", "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                e["ttfc_ms_median"],
                e["ttfc_ms_p99"],
                diff(e["ttfc_ms_median"], get(base, "direct", "ttfc_ms_median")),
                e["chunk_delay_ms_p50"],
                e["chunk_delay_ms_p99"],
                e["worst_chunk_delay_ms_max"],
                e["errors"],
            ]
        )
    out.append(
        table(
            "SSE streaming (chunks 10 ms apart): first chunk, and chunk delay (arrival - send)",
            [
                "contender",
                "first chunk ms (median)",
                "p99",
                "vs direct ms",
                "chunk delay p50 ms",
                "p99 ms",
                "worst ms",
                "errors",
            ],
            rows,
        )
    )

    rows = []
    base = s["large_body_1mb"]
    for name, e in base.items():
        if (st := status_of(e)) is not None:
            rows.append([name, st, "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                e["lat_p50_ms"],
                e["lat_p99_ms"],
                e["mb_per_s"],
                ratio(e["lat_p50_ms"], get(base, "direct", "lat_p50_ms")),
                ratio(e["lat_p50_ms"], get(base, "trimmed", "lat_p50_ms")),
                e["errors"],
            ]
        )
    out.append(
        table(
            "1 MB request bodies (latency of one POST)",
            [
                "contender",
                "p50 ms",
                "p99 ms",
                "MB/s",
                "x direct (latency)",
                "x trimmed (latency)",
                "errors",
            ],
            rows,
        )
    )

    rows = []
    for name, e in s["refused_flood"].items():
        if (st := status_of(e)) is not None:
            rows.append([name, st, "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                e["allowed_rps_without"],
                e["allowed_rps_during"],
                e["during_over_without"],
                e["refused_per_s_median"],
                e["flood_refused_all"],
                e["errors"],
            ]
        )
    out.append(
        table(
            "Refused-request flood (wrk, 16 connections, absolute-form requests to an "
            "unlisted host) vs 8 allowed connections",
            [
                "contender",
                "allowed req/s without",
                "during flood",
                "during/without",
                "refused/s",
                "all flood refused",
                "errors",
            ],
            rows,
        )
    )

    rows = []
    for name, e in s["memory"].items():
        if (st := status_of(e)) is not None:
            rows.append([name, st, "", "", "", ""])
            continue
        g = e.get("growth") or {}
        keys = [k for k in g if k.startswith("after_")]
        growth = " -> ".join(f"{k[6:]}: {g[k]['vmrss_mb']} MB" for k in keys)
        if g.get("status"):
            growth = f"{g['status']}: {g.get('why')}"
        os_ = e.get("open_streams") or {}
        rows.append(
            [
                name,
                growth or "not measured (sidecar only)",
                g.get("rss_growth"),
                get(e, "after_scenarios", "vmhwm_mb"),
                f"{os_.get('streams_open')} open: {os_.get('rss_with_streams_mb')} MB"
                if "rss_with_streams_mb" in os_
                else status_of(os_),
                os_.get("peak_rss_mb"),
            ]
        )
    out.append(
        table(
            "Memory (RSS from /proc)",
            [
                "contender",
                "RSS after N requests (fresh process)",
                "growth",
                "peak RSS after scenarios MB",
                "RSS with open streams",
                "peak RSS MB",
            ],
            rows,
        )
    )

    core = s["decision_core"]["sidecar"]
    dns_row = s["dns_listener"]["sidecar"]
    rows = [
        [
            "decision core",
            fmt(core.get("decisions_per_s")) + " decisions/s",
            f"{core.get('entries')} entries, {core.get('us_per_decision')} us/decision, "
            f"policy load {core.get('load_policy_s')} s",
        ]
    ]
    if "allowed" in dns_row:
        rows.append(
            [
                "DNS listener",
                f"{dns_row['allowed']['qps']} q/s allowed, {dns_row['refused']['qps']} q/s refused",
                f"rcodes {dns_row['allowed']['rcodes']} / {dns_row['refused']['rcodes']}",
            ]
        )
    else:
        rows.append(["DNS listener", status_of(dns_row) or "-", ""])
    out.append(table("Sidecar alone", ["what", "result", "detail"], rows))

    scan = s.get("scanners", {}).get("sidecar", {})
    rows = [
        [
            name.replace("_", " "),
            e["typical_mb_s"],
            e["worst_mb_s"],
            e["worst_over_typical"],
            e["worst_input"],
        ]
        for name, e in scan.items()
        if isinstance(e, dict) and "worst_mb_s" in e
    ]
    out.append(
        table(
            "Scanners on the request path, one core (issue 10)",
            ["scanner", "typical MB/s", "worst MB/s", "worst/typical", "worst input"],
            rows or [["-", status_of(scan) or "-", "", "", ""]],
        )
    )
    if "hostile" in s:
        from bench.hostile import report as hostile_report

        out.append(hostile_report(s["hostile"]))

    rows = [
        [t["target"], t["status"].upper(), t["value"], f"{t['op']} {t['threshold']}", t["detail"]]
        for t in result["targets"]
    ]
    out.append(table("Targets (issue 7)", ["target", "status", "value", "needed", "detail"], rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: seconds, tiny counts")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample the sidecar with py-spy under load (needs py-spy)",
    )
    parser.add_argument(
        "--memory-requests",
        metavar="N,M",
        help="request counts for the memory-growth scenario "
        "(default 500,1000 quick; 10000,30000 full)",
    )
    parser.add_argument(
        "--sidecar-tree",
        metavar="DIR",
        help="run egress-sidecar (and the decision core) from this source tree, "
        "e.g. a `git archive HEAD` snapshot (default: the venv's install)",
    )
    parser.add_argument("--output", default=str(RESULTS / "latest.json"))
    args = parser.parse_args(argv)
    if args.sidecar_tree:
        C.SIDECAR_TREE = str(Path(args.sidecar_tree).resolve())
    cfg = QUICK if args.quick else FULL
    if args.memory_requests:
        first, second = (int(x) for x in args.memory_requests.split(","))
        cfg = dataclasses.replace(cfg, mem_counts=(first, second))
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    missing = [
        tool
        for tool, found in (("squid", C.squid_binary()), ("wrk", shutil.which("wrk")))
        if not found
    ]
    if missing:
        log(f"missing tools: {', '.join(missing)} (apt-get install -y squid wrk)")
        if "squid" in missing:
            return 3
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    del soft
    tmp = Path(tempfile.mkdtemp(prefix="egress-bench-"))
    procs = Procs(tmp)
    load_before = load_average()
    try:
        result = asyncio.run(run_all(cfg, procs, tmp, log, args.profile))
    finally:
        procs.stop_all()
        if os.environ.get("BENCH_KEEP_TMP") != "1":  # logs of every process live there
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = load_average()
    result = {
        "meta": {
            "mode": cfg.mode,
            "config": dataclasses.asdict(cfg),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "seconds": round(time.monotonic() - started, 1),
            "contenders": C.CONTENDERS,
            "missing_tools": missing,
            "sidecar": C.sidecar_command(),
            "sidecar_tree": C.SIDECAR_TREE,
        },
        **result,
    }
    result["targets"] = targets(result["scenarios"])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1, default=str))
    m = result["meta"]
    print(
        f"# egress-sidecar benchmark ({cfg.mode}), {m['date']}\n"
        f"machine: {m['machine']['nproc']} CPUs, {m['machine']['cpu']}; "
        f"load average before {load_before}, after {load_after}; took {m['seconds']} s"
    )
    print(report(result))
    if result.get("profiles"):
        print("\n## Profile (py-spy, sidecar under load)\n" + result["profiles"].get("text", ""))
    print(f"\nresults: {output}")
    return 0
