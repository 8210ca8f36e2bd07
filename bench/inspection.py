"""`python -m bench.inspection`: what request inspection (issue 13) costs.

1. Throughput of `sidecar.inspection.body_inspection.inspect_body` on realistic provider
   requests (a long Chat Completions conversation, a Responses request with function
   tools and input items, an Anthropic Messages request, a request carrying a base64
   image), in MB/s, against `json.loads` of the same bytes (the floor: any reader must
   parse) measured in the same run.
2. The latency a 100 KB request gains: p50 and p99 of a 100 KB Chat Completions request
   (one keep-alive connection, requests back to back) through the sidecar of this tree
   and through the sidecar *without* inspection (the source tree of the commit before
   it, from `git archive`, or `--baseline-tree DIR`), started side by side on the same
   fake provider, rounds alternating so machine noise hits both alike.

Prints one JSON object. Every process it starts is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import contenders as C
from bench.client import closed_loop
from bench.procs import Procs, wait_json_line
from bench.prompts import chat_request, image_request, mb_per_s, messages_request, responses_request
from sidecar.inspection.body_inspection import inspect_body
from sidecar.inspection.policy import RelayRules
from sidecar.inspection.readers import Api


def throughput(seconds: float) -> dict[str, Any]:
    rng = random.Random(13)
    cases = {
        "chat_100k": (Api.OPENAI_CHAT, chat_request(rng, 100_000)),
        "chat_1m": (Api.OPENAI_CHAT, chat_request(rng, 1_000_000)),
        "responses_tools_1m": (Api.OPENAI_RESPONSES, responses_request(rng, 1_000_000)),
        "anthropic_messages_1m": (Api.ANTHROPIC_MESSAGES, messages_request(rng, 1_000_000)),
        "base64_image_5m": (Api.OPENAI_CHAT, image_request(rng, 5_000_000)),
    }
    rules = RelayRules()
    out: dict[str, Any] = {}
    for name, (api, body) in cases.items():

        def inspect(body: bytes = body, api: Api = api) -> int:
            result = inspect_body(body, api=api, rules=rules, limit=64 << 20)
            assert result.violation is None, result.violation
            return len(body)

        def parse(body: bytes = body) -> int:
            json.loads(body)
            return len(body)

        inspected, parsed = mb_per_s(inspect, seconds, 1), mb_per_s(parse, seconds, 1)
        out[name] = {
            "bytes": len(body),
            "inspect_mb_s": inspected,
            "json_loads_mb_s": parsed,
            "inspect_over_json_loads": round(inspected / parsed, 2) if parsed else None,
        }
    return out


def baseline_tree(tmp: Path) -> Path:
    """The source tree of the commit before request inspection was added."""
    repo = C.REPO
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "sidecar/inspection/policy.py"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not added:
        raise SystemExit(
            "cannot find the commit that added request inspection; use --baseline-tree"
        )
    target = tmp / "baseline-tree"
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", f"{added[-1]}^"], cwd=repo, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def latency(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, Any]:
    world = C.start_world(procs, tmp)
    trees = {
        "without_inspection": args.baseline_tree or str(baseline_tree(tmp)),
        "with_inspection": str(C.REPO),
    }
    sidecars = []
    for name, tree in trees.items():
        C.SIDECAR_TREE = str(Path(tree).resolve())
        sidecar = C.start_sidecar(procs, world, label=f"sidecar-{name}")
        sidecar.name = name
        sidecars.append(sidecar)
    body = chat_request(random.Random(100), 100_000)
    samples: dict[str, list[float]] = {s.name: [] for s in sidecars}
    for r in range(args.rounds):
        for sidecar in sidecars[r % 2 :] + sidecars[: r % 2]:
            result = await closed_loop(sidecar.target, 1, count=args.requests, body=body)
            if result.errors:
                raise SystemExit(f"{sidecar.name}: {result.errors} errors")
            samples[sidecar.name].extend(result.latencies)
    out: dict[str, Any] = {
        "request_bytes": len(body),
        "requests_each": len(samples[sidecars[0].name]),
    }
    for name, values in samples.items():
        out[name] = {
            "p50_ms": round(pct(values, 50) * 1000, 2),
            "p99_ms": round(pct(values, 99) * 1000, 2),
            "mean_ms": round(statistics.mean(values) * 1000, 2),
        }
    # The comparison means something only if the one sidecar read the bodies and the
    # other did not: ask each for its inspected-bytes counter.
    for sidecar in sidecars:
        out[sidecar.name]["inspected_bytes"] = inspected_bytes(procs, sidecar)
    if not out["with_inspection"]["inspected_bytes"]:
        raise SystemExit("the sidecar with inspection inspected nothing: the comparison is void")
    base, new = out["without_inspection"]["p50_ms"], out["with_inspection"]["p50_ms"]
    out["added_p50_ms"] = round(new - base, 2)
    out["p50_ratio"] = round(new / base, 2) if base else None
    return out


def inspected_bytes(procs: Procs, sidecar: C.Contender) -> int | None:
    """`egress_sidecar_request_inspected_bytes_total` of a running sidecar (None: it has
    no such counter, i.e. no inspection)."""
    import urllib.request

    assert sidecar.proc is not None
    banner = wait_json_line(procs.logdir / f"sidecar-{sidecar.name}.err", sidecar.proc,
                            "event", "listening")  # fmt: skip
    with urllib.request.urlopen(f"http://{banner['admin']}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("egress_sidecar_request_inspected_bytes_total "):
            return int(float(line.split()[1]))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.inspection", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="per throughput case")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50, help="100 KB requests per round")
    parser.add_argument("--baseline-tree", help="sidecar source tree without inspection")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"throughput": throughput(args.seconds)}
    print(json.dumps(result["throughput"], indent=1), file=sys.stderr)
    if not args.skip_latency:
        with tempfile.TemporaryDirectory(prefix="bench-inspection-") as tmp:
            procs = Procs(Path(tmp))
            try:
                result["latency_100k"] = asyncio.run(latency(args, procs, Path(tmp)))
            finally:
                procs.stop_all()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
