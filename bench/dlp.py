"""Request DLP cost (issue 13): scanning throughput, and added latency through the sidecar.

    .venv/bin/python -m bench.dlp [--seconds 1] [--requests 200] [--baseline-tree DIR]

Core: MB/s of `scan_body` (parse + every detector over every string) on realistic
request bodies, against parsing the same body without scanning (`json.loads`), in the
same run; and on the LiteLLM 1.82.8 harvest and the adversarial pieces of the tests.
`scan_given_document_mb_s`: the same scan handed the document request inspection
parsed (what the sidecar runs: a body is parsed once).
End to end: p50/p90 of a 100 KB chat request, plain and gzip-compressed, through two
real sidecars started in this run (reverse listener, TLS to a local fake provider), one
with `dlp:` on (the default) and one with `dlp: {enabled: false}` (the body streams
through, unscanned); with `--baseline-tree DIR`, a third with `dlp:` on running the
source tree DIR (`git archive REV | tar -x -C DIR`), for a before/after in one run.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from random import Random
from typing import Any

from bench.prompts import chat_request, mb_per_s
from sidecar.dlp.detectors import Detector, own_key_patterns
from sidecar.dlp.document import scan_body

IMAGE_512KB = 512 * 1024 * 4 // 3  # base64 of 512 KB


def core(seconds: float) -> dict[str, Any]:
    from tests.support import harvest
    from tests.support.keys import KEYS

    detector = Detector(own_key_patterns(KEYS.values()))
    bodies = {
        "chat_100KB": chat_request(Random(1), 100_000),
        "chat_1MB": chat_request(Random(2), 1_000_000),
        "chat_100KB_plus_512KB_image": chat_request(Random(3), 100_000, image_size=IMAGE_512KB),
        "chat_100KB_with_harvest": chat_request(Random(4), 100_000, extra=harvest.HARVEST),
    }
    out: dict[str, Any] = {}
    for name, body in bodies.items():

        def scanned(body: bytes = body) -> int:
            scan_body(body, detector)
            return len(body)

        parsed_once = json.loads(body)  # as request inspection leaves it (plain dicts)

        def given_document(body: bytes = body, document: Any = parsed_once) -> int:
            scan_body(body, detector, document=document)
            return len(body)

        def parsed(body: bytes = body) -> int:
            json.loads(body)
            return len(body)

        scan_rate, parse_rate = mb_per_s(scanned, seconds), mb_per_s(parsed, seconds)
        out[name] = {
            "bytes": len(body),
            "scan_mb_s": scan_rate,
            "scan_given_document_mb_s": mb_per_s(given_document, seconds),
            "parse_only_mb_s": parse_rate,
            "scan_over_parse": round(scan_rate / parse_rate, 3),
            "scan_ms": round(len(body) / scan_rate / 1e3, 2),
        }
    from tests.dlp.test_document import PIECES

    worst: dict[str, float] = {}
    for piece in PIECES:
        text = (piece * (200_000 // len(piece))).encode()
        worst[repr(piece[:24])] = mb_per_s(
            lambda text=text: scan_body(text, detector) and len(text), seconds / 4
        )
    name = min(worst, key=worst.__getitem__)
    out["adversarial_worst"] = {"input": name, "mb_s": worst[name]}
    return out


def end_to_end(requests: int, baseline_tree: str | None = None) -> dict[str, Any]:
    """{"end_to_end_100KB": ..., "end_to_end_100KB_gzip": ...}"""
    import httpx
    import trustme

    from tests.support.fakes import BackgroundLoop, FakeDNS, FakeProvider
    from tests.support.ports import free_port
    from tests.support.sidecar import SidecarProcess, loopback_args

    bg = BackgroundLoop()
    ca = trustme.CA()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dlp-"))
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    provider = FakeProvider(bg, ca, ["api.openai.com"]).start()
    dns = FakeDNS(bg).start()
    dns.records["api.openai.com"] = ["127.0.0.1"]
    sidecars: dict[str, SidecarProcess] = {}
    body = chat_request(Random(1), 100_000)
    bodies = {
        "end_to_end_100KB": (body, {}),
        "end_to_end_100KB_gzip": (gzip.compress(body), {"content-encoding": "gzip"}),
    }
    contenders: list[tuple[str, str, str | None]] = [
        ("dlp_on", "", None),
        ("dlp_off", "dlp: {enabled: false}\n", None),
    ]
    if baseline_tree:
        contenders.append(("dlp_on_baseline", "", str(Path(baseline_tree).resolve())))
    try:
        for name, dlp, tree in contenders:
            policy = workdir / f"{name}.yaml"
            policy.write_text(
                "version: 1\nproviders:\n  openai:\n    hosts: [api.openai.com]\n"
                f"    ports: [{provider.port}]\n    addresses: [127.0.0.0/8]\n" + dlp
            )
            port = free_port()
            sidecars[name] = SidecarProcess(
                [
                    *loopback_args(
                        policy, workdir / "ca", dns.port, upstream_ca=ca_file, listen=False
                    ),
                    "--reverse",
                    f"openai@127.0.0.1:{port}",
                ],
                env={"PYTHONPATH": tree} if tree else None,  # the sidecar of that tree
            ).start()
        clients = {
            name: httpx.Client(base_url=sidecar.reverse_url("openai"), timeout=30)
            for name, sidecar in sidecars.items()
        }
        out: dict[str, Any] = {}
        for label, (content, coding) in bodies.items():
            times: dict[str, list[float]] = {name: [] for name in sidecars}
            headers = {"content-type": "application/json", **coding}
            for i in range(requests + 10):
                for name, client in clients.items():  # interleaved: load noise hits all
                    started = time.perf_counter()
                    answer = client.post("/v1/chat/completions", content=content, headers=headers)
                    elapsed = time.perf_counter() - started
                    assert answer.status_code == 200, answer.text[:300]
                    if i >= 10:  # warm-up
                        times[name].append(elapsed)
            result: dict[str, Any] = {"body_bytes": len(content), "requests": requests}
            for name, samples in times.items():
                samples.sort()
                result[name] = {
                    "p50_ms": round(statistics.median(samples) * 1e3, 2),
                    "p90_ms": round(samples[int(len(samples) * 0.9)] * 1e3, 2),
                }
            p50 = {name: result[name]["p50_ms"] for name in sidecars}
            result["added_p50_ms"] = round(p50["dlp_on"] - p50["dlp_off"], 2)
            if "dlp_on_baseline" in p50:
                result["gain_over_baseline_p50_ms"] = round(
                    p50["dlp_on_baseline"] - p50["dlp_on"], 2
                )
            out[label] = result
        return out
    finally:
        for sidecar in sidecars.values():
            sidecar.stop()
        dns.stop()
        provider.stop()
        bg.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--no-e2e", action="store_true", help="core throughput only")
    parser.add_argument("--baseline-tree", help="also a sidecar with dlp on from this source tree")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"core": core(args.seconds)}
    if not args.no_e2e:
        out.update(end_to_end(args.requests, args.baseline_tree))
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
