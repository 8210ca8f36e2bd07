"""Audit mode (S11): policy refusals pass and are logged as would_block; address
vetting (S3), IP literals (S4) and host agreement (S5) stay enforced."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from tests.conftest import provider_policy
from tests.integration.test_explicit_proxy import connect_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def audit_sidecar(start_sidecar, provider):
    return start_sidecar(provider_policy(provider.port, mode="audit"))


def _client(sidecar):
    return httpx.Client(
        proxy=sidecar.proxy_url,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
        timeout=10,
    )


@pytest.mark.parametrize(
    ("case", "path", "method", "reason"),
    [
        ("path_not_allowed", "/admin/keys", "GET", "path_not_allowed"),
        ("method_not_allowed", "/v1/models", "DELETE", "method_not_allowed"),
    ],
)
def test_policy_refusals_pass_as_would_block(audit_sidecar, provider, case, path, method, reason):
    mark = len(provider.received)
    with _client(audit_sidecar) as c:
        response = c.request(method, f"https://api.openai.com:{provider.port}{path}")
    assert response.status_code == 200, case
    assert [r.path for r in provider.received[mark:]] == [path]
    decision = audit_sidecar.wait_for_decision(reason=reason, path=path)
    assert decision["decision"] == "would_block"


def test_unlisted_host_logged_would_block_then_address_still_vetted(audit_sidecar, dns_server):
    """The unlisted host passes policy (would_block) but resolves to loopback, which no
    entry allows for it: S3 still refuses. Our fake internet is loopback, so this is the
    honest version of "audit lets it through": the policy part does, S3 does not."""
    status, body = connect_status(audit_sidecar, "unlisted.example.com:443")
    decision = audit_sidecar.wait_for_decision(
        host="unlisted.example.com", decision="block", reason="private_address"
    )
    assert decision["detail"].endswith("audit: would_block host_not_allowed")
    assert status == 403
    assert json.loads(body)["reason"] == "private_address"
    assert dns_server.asked("unlisted.example.com")


def test_port_not_allowed_passes_in_audit(audit_sidecar, provider):
    """A second port the policy does not list still reaches the provider, logged."""
    status, _ = connect_status(audit_sidecar, "api.openai.com:1")
    assert status == 200  # CONNECT accepted; the decision says would_block
    assert audit_sidecar.wait_for_decision(
        host="api.openai.com", port=1, decision="would_block", reason="port_not_allowed"
    )


@pytest.mark.parametrize(
    ("attack", "authority", "reason"),
    [
        ("metadata_literal", "169.254.169.254:80", "metadata_address"),
        ("private_literal", "10.1.2.3:443", "private_address"),
        ("public_literal", "93.184.216.34:443", "ip_literal"),
        ("rebinding_private", "rebind.openai.com:{port}", "private_address"),
        ("rebinding_metadata", "meta.openai.com:{port}", "metadata_address"),
    ],
)
def test_address_rules_stay_enforced_in_audit(audit_sidecar, provider, attack, authority, reason):
    status, body = connect_status(audit_sidecar, authority.format(port=provider.port))
    assert status == 403, attack
    assert json.loads(body)["reason"] == reason
    assert audit_sidecar.wait_for_decision(reason=reason, decision="block")


def test_host_mismatch_stays_enforced_in_audit(audit_sidecar, provider):
    with _client(audit_sidecar) as c:
        response = c.get(
            f"https://api.openai.com:{provider.port}/v1/models",
            headers={"Host": "api.anthropic.com"},
        )
    assert response.status_code == 403
    assert response.json()["reason"] == "host_mismatch"
