"""`egress-sidecar redteam --proxy` against the real sidecar, as a security team runs it.

A correctly set-up sidecar: zero misses, exit 0, and each attack refused for the
reason it should be. Deliberately broken set-ups (a wildcard on a shared provider
domain; audit mode) are reported as the misses they are, with exit 1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakes import FakeProvider
from tests.support.keys import key_policy
from tests.support.sidecar import BIN, SidecarProcess

pytestmark = pytest.mark.integration


def redteam(sidecar: SidecarProcess, provider: FakeProvider, *extra: str) -> tuple[int, Any]:
    proc = subprocess.run(
        [
            BIN, "redteam", "--proxy", sidecar.proxy_url,
            "--provider", f"https://api.openai.com:{provider.port}",
            "--rate", "50", "--timeout", "10", "--json", *extra,
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 1, 3), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_name(card: Any) -> dict[str, dict[str, Any]]:
    return {p["probe"]: p for p in card["probes"]}


@pytest.fixture(scope="module")
def held(start_sidecar, provider, secrets) -> SidecarProcess:
    return start_sidecar(key_policy(provider.port), extra_args=("--secrets-dir", str(secrets.root)))


def test_correct_setup_reports_zero_misses(held: SidecarProcess, provider) -> None:
    code, card = redteam(held, provider)
    probes = by_name(card)
    assert card["missed"] == [] and code == 0, json.dumps([probes[n] for n in card["missed"]])
    expected = {
        "harvest_posted_over_https_to_lookalike_domain": "host_not_allowed",
        "harvest_posted_over_plain_http_to_lookalike_domain": "host_not_allowed",
        "harvest_posted_to_a_raw_public_address": "ip_literal",
        "harvest_to_an_attacker_owned_resource_under_a_shared_wildcard": "host_not_allowed",
        "imdsv1_credentials_by_address": "metadata_address",
        "imds_over_ipv6": "metadata_address",
        "metadata_as_decimal_literal": "metadata_address",
        "metadata_as_nat64_literal": "metadata_address",
        "sni_of_provider_with_lookalike_host_header": "host_mismatch",
        "gateway_holding_a_real_provider_key": "gateway_holds_credential",
        "anthropic_key_sent_to_another_provider": "gateway_holds_credential",
        "key_in_the_query_string": "gateway_holds_credential",
        "mcp_server_on_the_lookalike_in_a_responses_request": "provider_fetch_not_allowed",
        "image_url_on_the_lookalike_for_the_provider_to_fetch": "provider_fetch_not_allowed",
        "credential_harvest_pasted_into_a_prompt": "secret_in_request",
        "realtime_client_secret_minted_for_outside_use": "credential_minting_not_allowed",
    }
    for name, reason in expected.items():
        assert probes[name]["outcome"] == "blocked", probes[name]
        assert probes[name]["reason"] == reason, probes[name]
    # Direct egress needs the pod's position: not run here, and said so.
    assert probes["direct_udp_to_a_public_address"]["outcome"] == "not run"


def test_redteam_probes_carry_only_canaries(held: SidecarProcess, provider) -> None:
    mark = len(provider.received)
    redteam(held, provider, "--group", "key_handling", "--run-id", "c4n4ry")
    # Every key probe was refused before any byte went upstream.
    assert provider.received[mark:] == []
    lines = [d for d in held.decisions if d.get("reason") == "gateway_holds_credential"]
    assert lines, "no decision line for the held-key probes"
    text = "".join(held.stdout_lines) + "".join(held.stderr_lines)
    assert "sk-proj-" not in text and "sk-ant-" not in text


def test_wildcard_on_a_shared_provider_domain_is_reported_missed(
    start_sidecar, provider, tmp_path: Path
) -> None:
    # The default's Azure entry, unpinned: anyone can own a resource under it.
    policy = (
        "version: 1\nproviders:\n"
        f"  openai:\n    hosts: [api.openai.com]\n    ports: [{provider.port}]\n"
        "    addresses: [127.0.0.0/8]\n"
        '  azure-openai:\n    hosts: ["*.openai.azure.com"]\n'
    )
    sidecar = start_sidecar(policy)
    code, card = redteam(sidecar, provider, "--group", "gateway_compromise")
    assert code == 1
    assert card["missed"] == ["harvest_to_an_attacker_owned_resource_under_a_shared_wildcard"]


def test_audit_mode_is_reported_as_misses(start_sidecar, provider) -> None:
    sidecar = start_sidecar("version: 1\nmode: audit\n" + key_policy(provider.port)[11:])
    code, card = redteam(sidecar, provider, "--group", "gateway_compromise")
    assert code == 1
    assert "harvest_posted_over_https_to_lookalike_domain" in card["missed"]
