"""What signing a Bedrock request costs the sidecar, next to adding a bearer key (issue 16).

    .venv/bin/python -m bench.cloud_signing [--seconds 0.5]

Per request, on the event loop's thread: `prepare_request` for a header-credential
provider (OpenAI: strip, detect, add `Authorization: Bearer`) is the baseline, measured
in the same run; then `prepare_request` for the Bedrock entry (strip the gateway's
dummy SigV4, detect) plus botocore's SigV4 signature over bodies of 1 KiB, 64 KiB and
1 MiB (the body hash grows with the body; above 256 KiB the sidecar hashes in a worker
thread). Prints one JSON line: microseconds per request and the ratio to the baseline.
No network: the credentials come from a secrets directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.credentials import HeaderList, SecretStore, prepare_request
from sidecar.credentials.cloud_signing import DUMMY_AWS_ACCESS_KEY_ID, parse_aws_keys, sign_aws
from sidecar.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[1]
HOST = "bedrock-runtime.us-east-1.amazonaws.com"
PATH = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"


def per_request_us(work: Callable[[], None], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    while True:
        work()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return round(elapsed / count * 1e6, 1)


def gateway_headers(authorization: str) -> list[tuple[str, str]]:
    return [
        ("host", HOST),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("user-agent", "Boto3/1.44.5 md/Botocore#1.44.5 ua/2.1 os/linux lang/python#3.12"),
        ("x-amz-date", "20261201T000000Z"),
        ("authorization", authorization),
        ("content-length", "1024"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args(argv)
    policy = load_policy([REPO / "policies" / "default.yaml"])
    openai, bedrock = policy.provider("openai"), policy.provider("bedrock")
    assert openai is not None and bedrock is not None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "openai").write_text("sk-proj-" + "A1b2C3d4" * 6)
        document = {"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": "x" * 40}
        (Path(tmp) / "bedrock").write_text(json.dumps(document, indent=2))
        store = SecretStore(tmp)
        doc = store.get_document("bedrock")
        assert doc is not None
        keys = parse_aws_keys(doc)
        dummy = (
            f"AWS4-HMAC-SHA256 Credential={DUMMY_AWS_ACCESS_KEY_ID}/20261201/us-east-1/"
            "bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="
            + "0f"
            * 32
        )

        def bearer() -> None:
            headers = HeaderList(gateway_headers("Bearer sk-dummy"))
            prepare_request(openai, headers, HeaderList([]), store)

        def signed(body: bytes) -> Callable[[], None]:
            def work() -> None:
                headers = HeaderList(gateway_headers(dummy))
                prepare_request(bedrock, headers, HeaderList([]), store)
                sign_aws(method="POST", host=HOST, path=PATH, headers=headers, body=body,
                         keys=keys, region="us-east-1", service="bedrock")  # fmt: skip

            return work

        baseline = per_request_us(bearer, args.seconds)
        result: dict[str, object] = {"bearer_key_us": baseline}
        for label, size in (("1k", 1024), ("64k", 64 * 1024), ("1m", 1024 * 1024)):
            cost = per_request_us(signed(b"x" * size), args.seconds)
            result[f"sigv4_{label}_us"] = cost
            result[f"sigv4_{label}_ratio"] = round(cost / baseline, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
