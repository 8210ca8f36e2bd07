"""Audit mode is no window for the keys (S7, S11): attacks by a compromised gateway
against a sidecar in `mode: audit`, with the provider keys mounted."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest

from tests.support.keys import KEYS, assert_not_in_outputs, key_policy
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration

KEY = KEYS["openai"]


@pytest.fixture(scope="module")
def audit_keyed(start_sidecar, provider, secrets) -> SidecarProcess:
    policy = key_policy(provider.port).replace("version: 1\n", "version: 1\nmode: audit\n", 1)
    return start_sidecar(policy, extra_args=("--secrets-dir", str(secrets.root)))


def _gateway(sidecar: SidecarProcess) -> httpx.Client:
    return httpx.Client(
        proxy=sidecar.proxy_url,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
        timeout=30,
        headers={"authorization": "Bearer sk-dummy"},
    )


def _line(sidecar: SidecarProcess, mark: int, path: str) -> dict:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in sidecar.decisions[mark:]:
            if line.get("path") == path:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line for {path}")


def test_audit_mode_minting_request_never_carries_the_provider_key(audit_keyed, provider):
    """A realtime client secret minted with our key is a token on our account that
    works from anywhere: audit mode may let the would_block request through, never
    with the key."""
    mark, seen = len(audit_keyed.decisions), len(provider.received)
    with _gateway(audit_keyed) as client:
        client.post(
            f"https://api.openai.com:{provider.port}/v1/realtime/client_secrets",
            json={"session": {"type": "realtime", "model": "gpt-realtime"}},
        )
    line = _line(audit_keyed, mark, "/v1/realtime/client_secrets")
    assert line["reason"] == "credential_minting_not_allowed"
    assert line["decision"] == "block"  # refused in audit mode too
    sent = provider.received[seen:]
    assert all(KEY not in str(r.headers) for r in sent), "the key went out with the mint"
    assert_not_in_outputs(audit_keyed, {"openai": KEY})


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"session": {"type": "realtime"}, "session": {"type": "realtime"}}', {}),
        (b"\x1f\x8b not gzip", {"content-encoding": "gzip"}),
        (b"not json at all", {}),
        (b'{"session": {"type": "realtime"}}', {"content-encoding": "x-unknown"}),
    ],
    ids=["duplicate-keys", "bad-gzip", "not-json", "unknown-coding"],
)
def test_audit_mode_minting_with_an_unreadable_body_never_carries_the_key(
    audit_keyed, provider, body, headers
):
    """An ambiguous body to a minting endpoint must not become the way around the
    minting refusal (request_not_inspectable is a would_block in audit mode)."""
    mark, seen = len(audit_keyed.decisions), len(provider.received)
    with _gateway(audit_keyed) as client:
        client.post(
            f"https://api.openai.com:{provider.port}/v1/realtime/client_secrets",
            content=body,
            headers={"content-type": "application/json", **headers},
        )
    line = _line(audit_keyed, mark, "/v1/realtime/client_secrets")
    assert line["decision"] == "block", line
    sent = provider.received[seen:]
    assert all(KEY not in str(r.headers) for r in sent), "the key went out with the mint"
