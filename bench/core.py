"""The pure decision core alone: `PolicyEngine.decide` with a generated 10,000-entry policy.

Run in its own process (one core; Python runs one thread at a time):
    python -m bench.core --entries 10000 --seconds 3
Prints one JSON line. The mix of attempts: 60 % allowed requests (exact names, method,
path), 15 % wildcard names, 25 % refused (unknown names, wrong path or port).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from sidecar.engine import Attempt, PolicyEngine
from sidecar.policy.loader import load_policy


def generate_policy(entries: int) -> str:
    lines = ["version: 1", "mode: enforce", "allow:"]
    for i in range(entries):
        host = f"*.zone{i}.wild.example" if i % 10 == 0 else f"svc{i}.team{i % 97}.example"
        lines += [
            f"  - name: entry{i}",
            f'    host: "{host}"',
            "    ports: [443]",
            '    paths: ["/v1/*", "/health"]',
            "    methods: [GET, POST]",
        ]
    return "\n".join(lines) + "\n"


def attempts(entries: int, count: int) -> list[Attempt]:
    rng = random.Random(7)
    out: list[Attempt] = []
    for _ in range(count):
        i = rng.randrange(entries)
        roll = rng.random()
        if i % 10 == 0:
            host = f"api{rng.randrange(9)}.zone{i}.wild.example"
        else:
            host = f"svc{i}.team{i % 97}.example"
        path = "/v1/chat/completions"
        port = 443
        if roll < 0.15:
            host = f"unknown{i}.evil.example"
        elif roll < 0.20:
            path = "/admin/keys"
        elif roll < 0.25:
            port = 8443
        out.append(
            Attempt(
                host=host,
                port=port,
                mode="explicit",
                client="127.0.0.1:40000",
                scheme="https",
                method="POST",
                path=path,
                sni=host,
                host_header=host,
            )
        )
    return out


def run(entries: int, seconds: float) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(generate_policy(entries))
        t0 = time.perf_counter()
        policy = load_policy([path])
        load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = PolicyEngine(policy)
    index_s = time.perf_counter() - t0
    batch = attempts(entries, 20000)
    decide = engine.decide
    for attempt in batch[:2000]:  # warm up
        decide(attempt)
    done = 0
    refused = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for attempt in batch:
            if decide(attempt).blocked:
                refused += 1
        done += len(batch)
    elapsed = time.perf_counter() - start
    return {
        "entries": len(policy.endpoints),
        "decisions": done,
        "decisions_per_s": round(done / elapsed),
        "refused_share": round(refused / done, 3),
        "load_policy_s": round(load_s, 2),
        "index_s": round(index_s, 3),
        "us_per_decision": round(elapsed / done * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(run(args.entries, args.seconds)))


if __name__ == "__main__":
    main()
