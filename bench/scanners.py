"""Scanner throughput on the request path: typical input vs the worst inputs we know.

    .venv/bin/python -m bench.scanners [--seconds 0.5]

Issue 10 (bounded detector cost): key detection (`sidecar.credentials.detect`, as the
credential layer runs it on a credential-bearing header), the reflection guard
(`StreamRedactor` over a response body with two provider keys loaded) and the DNS
tunnel detector (`DnsTunnelDetector.observe`). For each: MB/s on typical input and on
each adversarial input, and the worst over typical ratio. One JSON line; run in its
own process (one core).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
import time
from collections.abc import Callable

from sidecar.credentials.detect import scan_generic, scan_prefixed
from sidecar.credentials.reflection import StreamRedactor, compile_patterns
from sidecar.dnsguard import DnsTunnelDetector

B64URL = string.ascii_letters + string.digits + "-_"


def rate(work: Callable[[], int], seconds: float) -> float:
    """MB/s of `work` (which returns the bytes it processed), repeated for `seconds`."""
    done = 0
    start = time.perf_counter()
    while True:
        done += work()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return round(done / elapsed / 1e6, 3)


def _rand(rng: random.Random, n: int, alphabet: str = B64URL) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# --- key detection -----------------------------------------------------------------------


def detection(seconds: float) -> dict[str, object]:
    rng = random.Random(1)

    def scan(values: list[str], others: tuple[str, ...] = ()) -> Callable[[], int]:
        """As the credential layer does: prefixed families in every header value, the
        generic rules in the credential-bearing one (`values`)."""

        def work() -> int:
            for value in others:
                scan_prefixed(value, "header other")
            for value in values:
                scan_prefixed(value, "header authorization")
                scan_generic(value, "header authorization", header="authorization")
            return sum(len(v) for v in values) + sum(len(v) for v in others)

        return work

    # A gateway's request headers: a dummy or virtual key, and the usual others.
    typical_auth = ["Bearer vk-" + _rand(rng, 43)]
    typical_others = (
        "application/json",
        "AsyncOpenAI/Python 1.54.0",
        "gzip, deflate",
        "api.openai.com",
        "keep-alive",
        "1.54.0",
        "async:asyncio",
        "Linux",
        "x86_64",
        "CPython",
        "3.12.7",
        "2",
        "600",
        "stainless-retry-count=0",
        "req_" + _rand(rng, 24, string.hexdigits.lower()),
    )
    medium, n = [], 0
    while sum(len(t) + 1 for t in medium) < 41_000:  # the 41 KB header
        medium.append(("ab1" * 200)[: 32 + n % 480] + "Q" * (n % 3) + "_-.~+/"[: n % 7])
        n += 1
    near_bar = [_rand(rng, rng.randrange(32, 600), "abcdefgh0123") for _ in range(100)]
    worst = {
        "41KB_medium_low_entropy_tokens": ["Bearer " + " ".join(medium)],
        "eyJ_repeated_42KB": ["Bearer " + "eyJ" * 14_000],
        "jwt_runs_42KB": ["Bearer " + ("eyJ" + "a" * 9 + ".") * 3_200],
        "sk_proj_repeated_40KB": ["Bearer " + "sk-proj-" * 5_000],
        "one_char_tokens_40KB": ["Bearer " + "a " * 20_000],
        "near_bar_tokens": ["Bearer " + " ".join(near_bar)],
        "basic_of_medium_tokens": ["Basic " + base64.b64encode(" ".join(medium).encode()).decode()],
    }
    return _summary(
        rate(scan(typical_auth, typical_others), seconds),
        {name: rate(scan(v), seconds) for name, v in worst.items()},
    )


# --- reflection guard ---------------------------------------------------------------------


def reflection(seconds: float) -> dict[str, object]:
    rng = random.Random(2)
    key = ("sk-proj-" + _rand(rng, 156)).encode()
    other = ("sk-ant-api03-" + _rand(rng, 93) + "AA").encode()
    patterns = compile_patterns([key, other])

    def body(data: bytes, chunk: int) -> Callable[[], int]:
        chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]

        def work() -> int:
            r = StreamRedactor(patterns)
            for c in chunks:
                r.feed(c)
            r.finish()
            return len(data)

        return work

    sse = b'data: {"choices":[{"delta":{"content":"hello world, here is a token "}}]}\n\n'
    typical = sse * (1_000_000 // len(sse))
    prefix_heavy = (key[:-1] + b".") * (1_000_000 // len(key))
    b64 = base64.b64encode(key)
    b64_heavy = (b64[:-4] + b"!") * (1_000_000 // len(b64))
    out = _summary(
        rate(body(typical, 16_384), seconds),
        {
            "key_prefixes_16KB_chunks": rate(body(prefix_heavy, 16_384), seconds),
            "base64_key_prefixes_16KB_chunks": rate(body(b64_heavy, 16_384), seconds),
            "key_prefixes_1B_chunks": rate(body(prefix_heavy[:20_000], 1), seconds),
            "base64_key_prefixes_1B_chunks": rate(body(b64_heavy[:20_000], 1), seconds),
        },
    )
    out["typical_1B_chunks_mb_s"] = rate(body(typical[:20_000], 1), seconds)
    return out


# --- DNS tunnel detector ----------------------------------------------------------------


def dnsguard(seconds: float) -> dict[str, object]:
    rng = random.Random(3)

    def observe(names: list[str], qtype: int = 1) -> Callable[[], int]:
        detector = DnsTunnelDetector()
        clock = [0.0]

        def work() -> int:
            for i, name in enumerate(names):
                clock[0] += 0.001
                detector.observe(name, qtype, client=f"10.0.0.{i % 200}", now=clock[0])
            return sum(len(n) for n in names)

        return work

    typical = [
        "api.openai.com",
        "api.anthropic.com",
        "litellm.llm.svc.cluster.local",
        "generativelanguage.googleapis.com",
        "redis.llm.svc.cluster.local",
    ] * 20
    lower = string.ascii_lowercase + string.digits
    longest = [
        ".".join(_rand(rng, 63, lower) for _ in range(3)) + f".t{i}.example" for i in range(200)
    ]
    spray = [f"{_rand(rng, 40, lower)}.d{i}.example" for i in range(2000)]
    deep = [".".join(["a"] * 120) + f".{i}.svc.cluster.local" for i in range(100)]
    return _summary(
        rate(observe(typical), seconds),
        {
            "max_length_random_labels": rate(observe(longest), seconds),
            "unique_domain_spray": rate(observe(spray), seconds),
            "many_one_char_labels": rate(observe(deep), seconds),
            "rare_qtype_max_length": rate(observe(longest, 16), seconds),
        },
    )


def _summary(typical: float, worst: dict[str, float]) -> dict[str, object]:
    name = min(worst, key=lambda k: worst[k])
    return {
        "typical_mb_s": typical,
        "worst_mb_s": worst[name],
        "worst_input": name,
        "worst_over_typical": round(worst[name] / typical, 3) if typical else None,
        "inputs_mb_s": worst,
    }


def run(seconds: float) -> dict[str, object]:
    return {
        "key_detection": detection(seconds),
        "reflection_guard": reflection(seconds),
        "dns_tunnel_detector": dnsguard(seconds),
        "seconds_per_input": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args(argv)
    sys.stdout.write(json.dumps(run(args.seconds)) + "\n")


if __name__ == "__main__":
    main()
