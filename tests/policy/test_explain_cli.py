"""`egress-sidecar policy explain URL`: the deciding entry, the credential name, the addresses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from policy_helpers import REPO

from tests.support.policy_lines import line_of

CLI = Path(sys.executable).parent / "egress-sidecar"
DEFAULT = REPO / "policies" / "default.yaml"
EXAMPLES = REPO / "policies" / "examples"


def explain(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "policy", "explain", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_allowed_provider_request_names_entry_line_and_secret_name() -> None:
    result = explain(
        "https://api.openai.com/v1/chat/completions", "--method", "post", "--policy", DEFAULT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "POST https://api.openai.com/v1/chat/completions"
    assert lines[1] == "decision:   allow (allowed)"
    assert lines[2] == f"rule:       providers.openai at {DEFAULT}:{line_of(DEFAULT, 'openai:')}"
    assert lines[3].startswith("entry:      api.openai.com; ports 443; paths /v1/*")
    assert lines[4].startswith("credential: adds secret 'openai' as authorization: Bearer {secret}")
    assert lines[5].startswith("addresses:  public addresses; non-public ones only within")


def test_unlisted_host_is_refused_by_default_deny_exit_1() -> None:
    result = explain("https://api.openai.com.evil.example/v1/chat/completions")
    assert result.returncode == 1
    assert "decision:   block (host_not_allowed): no policy entry" in result.stdout
    assert "rule:       default_deny (no policy entry decided)" in result.stdout
    assert "addresses:  none: no entry lists the name, so it is not resolved" in result.stdout


def test_wildcard_azure_gets_no_key_and_says_why() -> None:
    result = explain("https://attacker.openai.azure.com/openai/v1/models", "--policy", DEFAULT)
    assert result.returncode == 0
    assert "rule:       providers.azure-openai at" in result.stdout
    assert "credential: none (no credential for this destination)" in result.stdout


def test_sni_naming_another_host_is_host_mismatch() -> None:
    result = explain("https://api.openai.com/v1/models", "--sni", "evil.example")
    assert result.returncode == 1
    assert "decision:   block (host_mismatch): sni names another host" in result.stdout
    assert "refused in audit mode too" in result.stdout


def test_in_cluster_entry_lists_its_address_ranges() -> None:
    result = explain(
        "http://otel-collector.monitoring.svc.cluster.local:4318/v1/traces",
        "--method",
        "POST",
        "--address",
        "10.96.0.10",
        "--policy",
        DEFAULT,
        EXAMPLES / "telemetry.yaml",
    )
    assert result.returncode == 0, result.stdout
    assert "within addresses: (10.96.0.0/12)" in result.stdout
    assert "credential: none" in result.stdout


def test_metadata_literal_has_no_acceptable_address() -> None:
    result = explain("http://169.254.169.254/latest/meta-data/")
    assert result.returncode == 1
    assert "addresses:  none: cloud metadata addresses are never allowed" in result.stdout


def test_audit_mode_shows_would_block(tmp_path: Path) -> None:
    override = tmp_path / "zz.yaml"
    override.write_text("version: 1\noverrides: {mode: audit}\n")
    result = explain("https://unlisted.example/", "--policy", DEFAULT, override)
    assert result.returncode == 1
    assert "decision:   would_block (host_not_allowed)" in result.stdout
    assert "mode=audit: logged as would_block and let through" in result.stdout


def test_bad_url_is_bad_input() -> None:
    result = explain("ftp://api.openai.com/")
    assert result.returncode == 2
    assert "only http:// and https:// URLs" in result.stderr
