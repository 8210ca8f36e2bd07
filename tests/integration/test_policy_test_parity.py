"""`policy test` / `policy explain` decide as the real sidecar does.

The same requests go through the real process (fake internet on loopback) and through
`simulate` with the fake DNS server's answers as the case's `addresses:`; verdict,
reason and rule must agree. A case file that passes in CI then means the same thing
in the pod.
"""

from __future__ import annotations

import ipaddress
import time

import httpx
import pytest

from sidecar.engine import PolicyEngine
from sidecar.policy.loader import load_policy
from sidecar.policy.simulate import SimRequest, simulate
from tests.conftest import provider_policy
from tests.integration.test_explicit_proxy import client

pytestmark = pytest.mark.integration

# (method, host, path, extra headers)
REQUESTS = [
    ("GET", "api.openai.com", "/v1/models", {}),
    ("GET", "api.openai.com", "/admin/keys", {}),
    ("DELETE", "api.openai.com", "/v1/models/x", {}),
    ("POST", "api.anthropic.com", "/v1/complete", {}),
    ("GET", "rebind.openai.com", "/v1/models", {}),
    ("GET", "meta.openai.com", "/v1/models", {}),
    ("GET", "mixed.openai.com", "/v1/models", {}),
    ("GET", "unlisted.example.com", "/", {}),
    (
        "POST",
        "api.openai.com",
        "/v1/chat/completions",
        {
            "authorization": "Bearer sk-proj-"
            + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz3Ab4Cd5Ef6Gh7"
        },
    ),
]


@pytest.fixture(scope="module", params=["enforce", "audit"])
def running(request, start_sidecar, provider, tmp_path_factory):
    """One sidecar per mode, and the policy file it runs."""
    policy_path = tmp_path_factory.mktemp("parity") / "policy.yaml"
    policy_path.write_text(provider_policy(provider.port, mode=request.param))
    return start_sidecar(policy_path=policy_path), policy_path


def real_decision(sidecar, host: str, mark: int) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [d for d in sidecar.decisions[mark:] if d.get("host") == host]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no decision for {host}: {sidecar.decisions[-3:]}")


@pytest.mark.parametrize(("method", "host", "path", "headers"), REQUESTS)
def test_simulation_agrees_with_the_real_sidecar(
    running, provider, dns_server, method, host, path, headers
):
    sidecar, policy_path = running
    url = f"https://{host}:{provider.port}{path}"
    mark = len(sidecar.decisions)
    with client(sidecar) as c:
        try:
            c.request(method, url, headers=headers)
        except httpx.HTTPError:
            pass  # a refused CONNECT: the decision line is what counts
    real = real_decision(sidecar, host, mark)

    answers = tuple(ipaddress.ip_address(a) for a in dns_server.records.get(host, []))
    request = SimRequest(url, method, headers=tuple(headers.items()), addresses=answers or None)
    simulated = simulate(PolicyEngine(load_policy([policy_path])), request).decision
    assert (simulated.verdict.value, simulated.reason.value, simulated.rule) == (
        real["decision"],
        real["reason"],
        real["rule"],
    ), real
