"""Tenants through the real sidecar: the gateway sends a per-tenant virtual key, the
sidecar maps it to the tenant and injects the real key; unknown, revoked and
not-granted keys are refused, and decisions carry the tenant."""

from __future__ import annotations

import ssl

import httpx
import pytest

from sidecar.credentials import generate_virtual_key, hash_virtual_key
from tests.support.keys import KEYS

pytestmark = pytest.mark.integration

SEARCH_KEY = generate_virtual_key()
OLD_SEARCH_KEY = generate_virtual_key()
LEGACY_KEY = generate_virtual_key()


@pytest.fixture(scope="module")
def tenants(start_sidecar, provider, secrets, tmp_path_factory):
    from tests.support.keys import key_policy

    path = tmp_path_factory.mktemp("vk") / "virtual-keys.yaml"
    path.write_text(
        "version: 1\n"
        "tenants:\n"
        "  team-search:\n"
        f"    keys:\n      - {hash_virtual_key(SEARCH_KEY)}\n"
        f'      - {{hash: "{hash_virtual_key(OLD_SEARCH_KEY)}", revoked: true}}\n'
        "    providers: [openai]\n"
        "  team-legacy:\n"
        "    revoked: true\n"
        f"    keys: [{hash_virtual_key(LEGACY_KEY)}]\n"
        "    providers: [openai]\n"
    )
    return start_sidecar(
        key_policy(provider.port),
        extra_args=("--secrets-dir", str(secrets.root), "--virtual-keys", str(path)),
    )


def call(sidecar, provider, host: str, key: str) -> httpx.Response:
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    with httpx.Client(proxy=sidecar.proxy_url, verify=context, timeout=10) as c:
        return c.get(
            f"https://{host}:{provider.port}/v1/models", headers={"authorization": f"Bearer {key}"}
        )


def test_virtual_key_maps_to_tenant_and_real_key(tenants, provider):
    mark = len(provider.received)
    assert call(tenants, provider, "api.openai.com", SEARCH_KEY).status_code == 200
    (got,) = provider.received[mark:]
    assert got.headers["authorization"] == f"Bearer {KEYS['openai']}"
    assert SEARCH_KEY not in str(got.headers)
    decision = tenants.wait_for_decision(tenant="team-search", decision="allow")
    assert decision["provider"] == "openai"


@pytest.mark.parametrize(
    ("case", "key", "host", "status", "reason"),
    [
        ("unknown_virtual_key", "vk-" + "x" * 43, "api.openai.com", 401, "unknown_virtual_key"),
        ("revoked_key_of_tenant", OLD_SEARCH_KEY, "api.openai.com", 401, "unknown_virtual_key"),
        ("revoked_tenant", LEGACY_KEY, "api.openai.com", 401, "unknown_virtual_key"),
        ("provider_not_granted", SEARCH_KEY, "api.anthropic.com", 403, "tenant_not_allowed"),
    ],
)
def test_refused_virtual_keys(tenants, provider, case, key, host, status, reason):
    mark = len(provider.received)
    response = call(tenants, provider, host, key)
    assert response.status_code == status, case
    assert response.json()["reason"] == reason
    assert provider.received[mark:] == []
    assert key not in "".join(tenants.stdout_lines + tenants.stderr_lines)
