"""bench.dlp cannot rot: its core part runs and reports every body (no thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_dlp_bench_core_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.dlp", "--seconds", "0.02", "--no-e2e"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    core = json.loads(proc.stdout)["core"]
    for name in (
        "chat_100KB",
        "chat_1MB",
        "chat_100KB_plus_512KB_image",
        "chat_100KB_with_harvest",
    ):
        assert core[name]["scan_mb_s"] > 0 and core[name]["parse_only_mb_s"] > 0
        assert core[name]["scan_given_document_mb_s"] > 0
    assert core["adversarial_worst"]["mb_s"] > 0
