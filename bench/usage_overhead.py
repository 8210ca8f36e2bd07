"""Per-request cost of usage metering and limits (issue 15), local and with Redis,
against the same gate without them, in one run.

    .venv/bin/python -m bench.usage_overhead [--requests 3000] [--workers 3]

What one request costs the sidecar's event loop in `UsageGate`: `gate` (suspension
check, limits, anomaly baseline) at the request, `response` (tokens added) at its end,
exactly as the addon runs them, with a tenant (virtual key) and a provider:

- without:     no `usage_limits` and no tenant: the gate returns at once (the baseline);
- check only:  a tenant, no limits: the suspension check alone (local SQLite);
- local:       tenant rpm/tpm/tpd, provider rpm/tpm and the anomaly rule (SQLite);
- local xN:    the same with N processes hammering one state file (`run --workers N`);
- redis:       the same against a real redis-server on loopback (skipped if absent).

Prints one JSON object: CPU microseconds of the sidecar process per request (median
of rounds; Redis's own time and the network wait are not the event loop's) and the
ratio to `without`. For scale, a request through the sidecar costs about 1-2 ms of CPU
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.addons.usage import UsageGate
from sidecar.decision import Decision, Reason, Verdict
from sidecar.engine import PolicyEngine
from sidecar.policy.loader import load_policy_bytes
from sidecar.usage import USAGE_KEY, TokenUsage
from sidecar.usage_store import LocalStore, RedisStore, UsageStore
from tests.support.ports import free_port

BASE = "version: 1\nproviders:\n  openai: {hosts: [api.openai.com]}\n"
LIMITS = (
    "usage_limits:\n"
    "  tenants:\n"
    '    "*": {requests_per_minute: 100000000, tokens_per_minute: 100000000,\n'
    "          tokens_per_day: 1000000000000}\n"
    "  providers:\n"
    "    openai: {requests_per_minute: 100000000, tokens_per_minute: 100000000}\n"
    "  anomaly: {warmup_minutes: 100000}\n"
)


class _Flow:
    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}


def _decision(tenant: str | None) -> Decision:
    return Decision(
        verdict=Verdict.ALLOW, reason=Reason.ALLOWED, rule="providers.openai",
        host="api.openai.com", port=443, provider="openai", tenant=tenant,
    )  # fmt: skip


def _gate(policy_text: str, store: UsageStore) -> UsageGate:
    engine = PolicyEngine(load_policy_bytes([("bench.yaml", policy_text.encode())]), set())
    return UsageGate(lambda: engine, store, CollectorRegistry(), lambda *a, **k: None)


async def _per_request_us(gate: UsageGate, tenant: str | None, requests: int) -> float:
    """CPU time of this process per request: what the sidecar's event loop spends (the
    wall time on a shared machine mostly measures the neighbours)."""
    decision = _decision(tenant)
    usage = TokenUsage(120, 30, "gpt-4o-mini")
    start = time.process_time()
    for _ in range(requests):
        flow = _Flow()
        result = await gate.gate(flow, decision)  # type: ignore[arg-type]
        assert not result.blocked, result
        flow.metadata[USAGE_KEY] = usage
        await gate.response(flow)  # type: ignore[arg-type]
    return (time.process_time() - start) / requests * 1e6


def _measure(
    policy: str, store: UsageStore, tenant: str | None, requests: int, rounds: int
) -> float:
    async def run() -> list[float]:
        gate = _gate(policy, store)
        await _per_request_us(gate, tenant, 200)  # warm: tables, connections, script
        out = [await _per_request_us(gate, tenant, requests) for _ in range(rounds)]
        await store.close()
        return out

    return round(statistics.median(asyncio.run(run())), 1)


_CONTENDER = """
import sys
from bench.usage_overhead import LIMITS, BASE, _measure
from sidecar.usage_store import LocalStore
print(_measure(BASE + LIMITS, LocalStore(sys.argv[1], busy_timeout_ms=1000), "team-a",
               int(sys.argv[2]), 3))
"""


def _local_workers(tmp: Path, workers: int, requests: int) -> float:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(tmp / "shared"), str(requests)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for _ in range(workers)
    ]
    results = [float(p.communicate(timeout=600)[0]) for p in procs]
    return round(statistics.median(results), 1)


def _redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args(argv)
    n, rounds = args.requests, args.rounds
    with tempfile.TemporaryDirectory(prefix="usage-bench-") as directory:
        tmp = Path(directory)
        results: dict[str, Any] = {
            "without": _measure(BASE, LocalStore(tmp / "a"), None, n, rounds),
            "check_only": _measure(BASE, LocalStore(tmp / "b"), "team-a", n, rounds),
            "local": _measure(BASE + LIMITS, LocalStore(tmp / "c"), "team-a", n, rounds),
            f"local_x{args.workers}": _local_workers(tmp, args.workers, n),
        }
        redis = _redis(tmp)
        if redis is not None:
            proc, url = redis
            try:
                store = RedisStore(url, timeout=1.0)
                results["redis"] = _measure(BASE + LIMITS, store, "team-a", n, rounds)
            finally:
                proc.kill()
                proc.wait(10)
        else:
            results["redis"] = None
    base = results["without"] or 1.0
    report = {
        "unit": "CPU microseconds per request (gate + response), median of rounds",
        "per_request_us": results,
        "ratio_to_without": {
            k: (round(v / base, 1) if v is not None else None) for k, v in results.items()
        },
        "added_us": {
            k: (round(v - base, 1) if v is not None else None) for k, v in results.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
