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


@pytest.mark.timeout(400)
def test_workers_bench_measures_every_contender_and_ratio(tmp_path: Path) -> None:
    """issue 17: `python -m bench.workers` runs (one short round) and writes its figures."""
    if squid_binary() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("squid missing; CI must install it")
        pytest.skip("squid missing (apt-get install -y squid)")
    output = tmp_path / "workers.json"
    args = ["--rounds", "1", "--seconds", "0.3", "--output", str(output)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.workers", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    for scenario in ("small_c1", "small_c32"):
        names = set(result["scenarios"][scenario])
        assert names == {"trimmed", "squid", "sidecar-w1", "sidecar-w2"}
        for name in names:
            summary = result["scenarios"][scenario][name]
            assert summary.get("requests", 0) > 0, (scenario, name, summary)
            assert summary.get("cpu_ms_per_request", 0) > 0, (scenario, name, summary)
    assert result["figures"]["w2_over_w1_c32"] is not None
    assert "Ratios (issue 17)" in proc.stdout


def test_dispatch_bench_runs_and_prints_its_figures():
    """issue 17: `python -m bench.dispatch` runs (few events) and prints each chain."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.dispatch", "--events", "200"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])["us_per_event"]
    assert set(figures) == {"mitmproxy only", "sidecar, mitmproxy's manager", "sidecar, hook table"}
    assert all(value > 0 for value in figures.values())
