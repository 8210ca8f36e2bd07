"""The README's local trial (examples/litellm-local/) runs green: fake provider, the
sidecar, LiteLLM's proxy server and a client, one command. Run here so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_local_litellm_trial_runs_green_and_cleans_up(tmp_path):
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("egress-sidecar-trial-*"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples/litellm-local/trial.py")],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=tmp_path,
        env={**__import__("os").environ, "TRIAL_TIMEOUT": "420"},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "OK: the trial held" in out
    # the client saw each refusal's reason through LiteLLM; one line per refused call
    assert "refused-path: 403" in out and "path_not_allowed" in out
    assert "refused-port: 403" in out and "port_not_allowed" in out
    assert "block path_not_allowed" in out
    # the injected key is shown masked, never whole
    assert "key sk-proj-...ial0" in out
    assert "LocalTrial0LocalTrial0" not in out
    assert set(Path(tempfile.gettempdir()).glob("egress-sidecar-trial-*")) <= before
