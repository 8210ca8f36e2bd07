"""Reloads that cannot be applied are rejected reloads (S8), never a dead policy watcher.

The attack: an operator (or whoever can write the ConfigMap) ships a policy the running
listeners cannot serve. Before, applying it raised out of the watcher, which died
silently: no rejection logged or counted, and no later policy was ever applied, so the
sidecar ran on a stale policy forever while the file said otherwise.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import provider_policy
from tests.integration.test_explicit_proxy import connect_status

pytestmark = pytest.mark.integration

UNLISTED_ALLOWED = (
    "allow:\n  - host: unlisted.example.com\n    ports: [443]\n    addresses: [127.0.0.0/8]\n"
)


def without_openai(port: int) -> str:
    """The test provider policy with the openai provider (the reverse listener's) removed."""
    text = provider_policy(port)
    head, _, rest = text.partition("  openai:\n")
    _, _, tail = rest.partition("  anthropic:\n")
    # Also allow the unlisted host: if this policy were half-applied, it would show.
    return head + "  anthropic:\n" + tail + UNLISTED_ALLOWED


def reverse_models_status(sidecar) -> int:
    return httpx.get(sidecar.reverse_url("openai") + "/v1/models", timeout=10).status_code


def test_reload_dropping_reverse_provider_is_rejected_and_watcher_survives(
    start_sidecar, provider, tmp_path
):
    policy = tmp_path / "policy.yaml"
    policy.write_text(provider_policy(provider.port))
    sidecar = start_sidecar(policy_path=policy, reverse=("openai",))
    started = sidecar.wait_for_event("policy_loaded")
    assert reverse_models_status(sidecar) == 200
    assert connect_status(sidecar, "unlisted.example.com:443")[0] == 403

    # A policy without the provider the --reverse listener serves: rejected, not applied.
    events = len(sidecar.events)
    policy.write_text(without_openai(provider.port))
    rejected = sidecar.wait_for_event("policy_reload_rejected", after=events)
    assert "--reverse openai" in rejected["error"]
    assert rejected["kept"] == started["digest"]
    assert not [e for e in sidecar.events[events:] if e["event"] == "policy_loaded"]
    metrics = sidecar.metrics()
    assert 'egress_sidecar_policy_reload_total{result="failure"} 1.0' in metrics
    assert "egress_sidecar_policy_last_reload_success 0.0" in metrics
    # Nothing of the rejected policy took effect: the old one still answers both ways.
    assert connect_status(sidecar, "unlisted.example.com:443")[0] == 403
    assert reverse_models_status(sidecar) == 200

    # The watcher is alive: a later good file is applied.
    events = len(sidecar.events)
    policy.write_text(provider_policy(provider.port, extra=UNLISTED_ALLOWED))
    loaded = sidecar.wait_for_event("policy_loaded", after=events)
    assert loaded["digest"] != started["digest"]
    assert connect_status(sidecar, "unlisted.example.com:443")[0] == 200
    assert reverse_models_status(sidecar) == 200
    metrics = sidecar.metrics()
    assert 'egress_sidecar_policy_reload_total{result="success"} 1.0' in metrics
    assert "egress_sidecar_policy_last_reload_success 1.0" in metrics
    assert not [e for e in sidecar.events if e["event"] == "error"]


def test_reload_moving_reverse_target_is_rejected(start_sidecar, provider, tmp_path):
    """The reverse listener is bound to api.openai.com at start; a policy that would point
    it elsewhere cannot be applied to the running listener, so it is rejected, not
    half-applied (engine swapped, listener still aimed at a host the policy dropped)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(provider_policy(provider.port))
    sidecar = start_sidecar(policy_path=policy, reverse=("openai",))
    started = sidecar.wait_for_event("policy_loaded")
    events = len(sidecar.events)
    policy.write_text(
        provider_policy(provider.port).replace(
            "hosts: [api.openai.com, rebind.openai.com,", "hosts: [rebind.openai.com,"
        )
    )
    rejected = sidecar.wait_for_event("policy_reload_rejected", after=events)
    assert "api.openai.com" in rejected["error"] and "restart" in rejected["error"]
    assert rejected["kept"] == started["digest"]
    assert reverse_models_status(sidecar) == 200
