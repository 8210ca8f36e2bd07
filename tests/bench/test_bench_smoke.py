"""The benchmark harness cannot rot: its quick mode runs and writes every key (no thresholds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.contenders import CONTENDERS, squid_binary

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = [
    "small_c1",
    "small_c32",
    "reverse_wrk_c32",
    "stream_sse",
    "large_body_1mb",
    "refused_flood",
    "memory",
    "decision_core",
    "dns_listener",
    "scanners",
    "hostile",
]
HOSTILE_ATTACKS = [
    "header_bomb",
    "refused_bodies",
    "idle_connections",
    "dns_flood",
    "auth_tokens",
    "upstream_header_bomb",
    "h2_body_flood",
    "gzip_responses",
]


@pytest.mark.timeout(260)
def test_quick_bench_produces_every_contender_and_scenario(tmp_path: Path) -> None:
    missing = [
        name
        for name, found in (("squid", squid_binary()), ("wrk", shutil.which("wrk")))
        if not found
    ]
    if missing:
        message = f"benchmark tools missing: {', '.join(missing)} (apt-get install -y squid wrk)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must install them")
        pytest.skip(message)
    output = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["meta"]["mode"] == "quick"
    for scenario in SCENARIOS:
        assert scenario in result["scenarios"], scenario
        for contender in CONTENDERS:
            assert contender in result["scenarios"][scenario], (scenario, contender)
    for contender in ("sidecar", "mitmdump", "squid"):
        for attack in HOSTILE_ATTACKS:
            assert attack in result["scenarios"]["hostile"][contender], (contender, attack)
    assert "Hostile: header_bomb" in proc.stdout
    assert {t["target"] for t in result["targets"]}
    assert "Targets (issue 7)" in proc.stdout
