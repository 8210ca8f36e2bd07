"""The audit rollout loop on the real sidecar: audit-mode decision log -> `report` ->
suggested policy that `policy check` accepts, without the names that resolved to
private addresses (what a compromised gateway would try to get allowed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import provider_policy
from tests.integration.test_explicit_proxy import client, connect_status

pytestmark = pytest.mark.integration
CLI = Path(sys.executable).parent / "egress-sidecar"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_report_on_a_real_audit_log_suggests_a_policy_that_checks(
    start_sidecar, provider, tmp_path
):
    policy = tmp_path / "policy.yaml"
    policy.write_text(provider_policy(provider.port, mode="audit"))
    sidecar = start_sidecar(policy_path=policy)
    with client(sidecar) as c:
        assert c.get(f"https://api.openai.com:{provider.port}/admin/keys").status_code == 200
    assert connect_status(sidecar, "unlisted.example.com:443")[0] == 403
    sidecar.wait_for_decision(reason="path_not_allowed", path="/admin/keys")
    sidecar.wait_for_decision(host="unlisted.example.com", reason="private_address")
    log = tmp_path / "decisions.log"
    log.write_text("".join(sidecar.stdout_lines) + "not json from the container runtime\n")

    suggested = tmp_path / "suggested.yaml"
    report = cli("report", log, "--suggest", suggested, "--policy", policy)
    assert report.returncode == 0, report.stderr
    assert "1 not JSON (skipped)" in report.stdout
    assert f"  api.openai.com:{provider.port}  1  (would_block 1)" in report.stdout
    assert "  unlisted.example.com:443  1  (block 1)" in report.stdout
    text = suggested.read_text()
    # Its refusal is private_address (S3 after audit let host_not_allowed pass): never
    # a suggestion.
    assert "unlisted.example.com" not in text
    assert f"# providers.openai: api.openai.com:{provider.port} refused path_not_allowed 1" in text
    check = cli("policy", "check", "--quiet", policy, suggested)
    assert check.returncode == 0, check.stderr
