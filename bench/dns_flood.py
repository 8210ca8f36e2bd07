"""DNS listener under a flood: answered queries/s, and RSS growth for queries from many ports.

    .venv/bin/python -m bench.dns_flood [--queries 6000] [--ports 6000] [--seconds 5]

Starts the real sidecar with a DNS listener and the rate limits switched off (so the
listener's own capacity and state are measured, not the limiter), then

- `sources`: sends `--queries` questions, each from a new UDP source port (a fresh
  socket per query, as a scanning or tunnelling client would), and reads VmRSS from
  /proc before, right after and 25 s... (`--settle`) after;
- `throughput`: one client keeps 64 questions in flight for `--seconds` and counts answers.

Prints one JSON line. The figures are compared in docs/limits.md ("DNS listener").
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.message

from tests.support.fakes import BackgroundLoop, FakeDNS
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess, loopback_args

POLICY = """\
version: 1
mode: enforce
allow:
  - name: openai
    host: api.openai.com
    ports: [443]
    addresses: [127.0.0.0/8]
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return -1.0


def flood_from_many_ports(host: str, port: int, queries: int, name: str) -> dict[str, int]:
    """One question per fresh source port; replies read with a short timeout each batch."""
    answered = 0
    batch: list[socket.socket] = []
    wire = dns.message.make_query(name, "A").to_wire()
    for i in range(queries):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.sendto(wire, (host, port))
        batch.append(s)
        if len(batch) == 200 or i == queries - 1:
            for sock in batch:
                sock.settimeout(0.5)
                try:
                    sock.recvfrom(4096)
                    answered += 1
                except OSError:
                    pass
                sock.close()
            batch = []
    return {"sent": queries, "answered": answered}


def throughput(host: str, port: int, seconds: float, name: str, window: int = 64) -> float:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    query = dns.message.make_query(name, "A")
    answered = 0
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()
    for _ in range(window):
        s.sendto(query.to_wire(), (host, port))
    while time.monotonic() < deadline:
        try:
            s.recvfrom(4096)
        except OSError:
            for _ in range(window):  # lost some: refill the window
                s.sendto(query.to_wire(), (host, port))
            continue
        answered += 1
        s.sendto(query.to_wire(), (host, port))
    elapsed = time.monotonic() - t0
    s.close()
    return answered / elapsed


def run(queries: int, seconds: float, settle: float, extra: list[str]) -> dict[str, Any]:
    bg = BackgroundLoop()
    upstream = FakeDNS(bg).start()
    upstream.records["api.openai.com"] = ["127.0.0.1"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    (tmp / "p.yaml").write_text(POLICY)
    dns_port = free_port()
    sc = SidecarProcess(
        [
            *loopback_args(tmp / "p.yaml", tmp / "ca", upstream.port),
            "--dns",
            f"127.0.0.1:{dns_port}",
            *extra,
        ]
    ).start()
    try:
        pid = sc.proc.pid
        time.sleep(1)
        before = rss_mb(pid)
        tput_refused = throughput("127.0.0.1", dns_port, seconds, "refused.example")
        tput_allowed = throughput("127.0.0.1", dns_port, seconds, "api.openai.com")
        after_tput = rss_mb(pid)
        flood = flood_from_many_ports("127.0.0.1", dns_port, queries, "refused.example")
        after_flood = rss_mb(pid)
        time.sleep(settle)
        settled = rss_mb(pid)
        return {
            "queries_per_s_refused": round(tput_refused),
            "queries_per_s_allowed": round(tput_allowed),
            "many_ports": flood,
            "rss_mb": {
                "start": round(before, 1),
                "after_throughput": round(after_tput, 1),
                "after_flood": round(after_flood, 1),
                "settled": round(settled, 1),
            },
            "rss_growth_flood_mb": round(after_flood - after_tput, 1),
            "rss_growth_settled_mb": round(settled - after_tput, 1),
        }
    finally:
        sc.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=6000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=25.0)
    parser.add_argument("extra", nargs="*", help="more `run` arguments (after --)")
    args = parser.parse_args(argv)
    sys.stdout.write(json.dumps(run(args.queries, args.seconds, args.settle, args.extra)) + "\n")


if __name__ == "__main__":
    main()
