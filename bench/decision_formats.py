"""What `--decision-format ocsf` costs per decision line, against our JSON line (baseline).

    python -m bench.decision_formats --lines 50000

Both render the same mix of decisions (allowed and refused HTTP requests, connection
refusals, DNS questions) and encode them with the decision log's own encoder, in this
process, one after the other. Prints one JSON line: microseconds per line for each and
the OCSF/JSON ratio, plus the bytes per line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from sidecar.decision import Decision, Reason, Verdict
from sidecar.ocsf import to_ocsf
from sidecar.records import _LINE_ENCODER

MIX = [
    Decision(Verdict.ALLOW, Reason.ALLOWED, "providers.openai", "api.openai.com", 443,
             provider="openai", method="POST", path="/v1/chat/completions",
             client="10.0.3.7:52144", mode="explicit", address="162.159.140.245",
             source="policies/default.yaml:28"),
    Decision(Verdict.BLOCK, Reason.HOST_NOT_ALLOWED, "default_deny", "evil.example", 443,
             method="POST", path="/upload", client="10.0.3.7:52145", mode="explicit",
             detail="no policy entry"),
    Decision(Verdict.BLOCK, Reason.METADATA_ADDRESS, "netguard", "169.254.169.254", 80,
             client="10.0.3.7:52146", mode="transparent", detail="cloud metadata"),
    Decision(Verdict.BLOCK, Reason.DNS_NAME_NOT_ALLOWED, "default_deny", "x.evil.example", 53,
             client="10.0.3.7:5353", mode="dns"),
]  # fmt: skip


def per_line(render: Callable[[Decision], dict[str, Any]], lines: int) -> tuple[float, int]:
    size = 0
    t0 = time.perf_counter()
    for i in range(lines):
        size += len(_LINE_ENCODER.encode(render(MIX[i % len(MIX)])))
    return (time.perf_counter() - t0) / lines * 1e6, size // lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    lines = parser.parse_args().lines
    per_line(to_ocsf, 1000)  # warm up both paths
    json_us, json_bytes = per_line(Decision.as_log_record, lines)
    ocsf_us, ocsf_bytes = per_line(to_ocsf, lines)
    print(
        json.dumps(
            {
                "lines": lines,
                "json_us_per_line": round(json_us, 2),
                "ocsf_us_per_line": round(ocsf_us, 2),
                "ocsf_over_json": round(ocsf_us / json_us, 2),
                "json_bytes_per_line": json_bytes,
                "ocsf_bytes_per_line": ocsf_bytes,
            }
        )
    )


if __name__ == "__main__":
    main()
