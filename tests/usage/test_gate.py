"""The usage gate as the enforcer and mitmproxy call it, over a real local store:
token accounting from `TokenUsage` (what the response readers of issue 14 hand over),
each limit's failure mode, audit mode, admin suspension. The clock is injected."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.addons.usage import UsageGate
from sidecar.decision import Decision, Reason, Verdict
from sidecar.engine import PolicyEngine
from sidecar.metering import DAY
from sidecar.policy.loader import load_policy_bytes
from sidecar.usage import USAGE_KEY, TokenUsage
from sidecar.usage_store import LocalStore

T0 = 1_800_000_000.0 - (1_800_000_000.0 % DAY) + 5.0
HEAD = "version: 1\nproviders:\n  openai: {hosts: [api.openai.com]}\n"


class Flow:  # what the gate touches of a mitmproxy flow
    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def gate(tmp_path: Path, section: str, mode: str = "enforce") -> tuple[UsageGate, Clock, list]:
    text = HEAD.replace("version: 1\n", f"version: 1\nmode: {mode}\n") + section
    engine = PolicyEngine(load_policy_bytes([("p.yaml", text.encode())]), set())
    events: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    usage_gate = UsageGate(
        lambda: engine,
        LocalStore(tmp_path),
        CollectorRegistry(),
        lambda event, **fields: events.append((event, fields)),
        clock,
    )
    return usage_gate, clock, events


def allowed(tenant: str = "team-a") -> Decision:
    return Decision(
        verdict=Verdict.ALLOW, reason=Reason.ALLOWED, rule="providers.openai",
        host="api.openai.com", port=443, provider="openai", tenant=tenant,
    )  # fmt: skip


def request(g: UsageGate, tokens: int | None = None, tenant: str = "team-a") -> Decision:
    flow = Flow()
    decision = asyncio.run(g.gate(flow, allowed(tenant)))  # type: ignore[arg-type]
    if tokens is not None and not decision.blocked:
        flow.metadata[USAGE_KEY] = TokenUsage(tokens - 1, 1, "gpt-4o")
        asyncio.run(g.response(flow))  # type: ignore[arg-type]
    return decision


def test_tokens_of_responses_count_against_tenant_and_provider(tmp_path: Path):
    g, clock, _ = gate(
        tmp_path,
        "usage_limits:\n  tenants:\n    team-a: {tokens_per_minute: 100}\n"
        "  providers:\n    openai: {tokens_per_day: 250}\n",
    )
    assert not request(g, 60).blocked
    assert not request(g, 60).blocked  # 120: over the tenant's 100, answered anyway
    refused = request(g)
    assert refused.reason is Reason.RATE_LIMITED and refused.retry_after is not None
    assert "tenant:team-a over tokens_per_minute 100 (now 120)" in refused.detail
    clock.now += 120  # two minutes on: the tenant's minute is clear ...
    assert not request(g, 60, tenant="team-b").blocked
    assert not request(g, 80).blocked  # 180, then 260 for the provider today
    day = request(g, tenant="team-b")
    assert day.reason is Reason.RATE_LIMITED
    assert "provider:openai over tokens_per_day 250" in day.detail
    assert day.retry_after is not None and day.retry_after > 3600


def test_backend_down_fails_closed_or_open_per_limit(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    g, _, events = gate(
        blocker,  # the state directory is a file: every store call fails
        "usage_limits:\n  tenants:\n"
        "    team-a: {requests_per_minute: 10}\n"
        "    team-b: {requests_per_minute: 10, on_backend_failure: open}\n",
    )
    closed = request(g)
    assert closed.verdict is Verdict.BLOCK
    assert closed.reason is Reason.USAGE_BACKEND_UNAVAILABLE and closed.retry_after == 2
    assert "tenant:team-a requests_per_minute fails closed" in closed.detail
    opened = request(g, tenant="team-b")
    assert opened.verdict is Verdict.WOULD_BLOCK  # let through, logged and alerted
    assert opened.reason is Reason.USAGE_BACKEND_UNAVAILABLE
    assert not request(g, tenant="team-c").blocked  # no limit: nothing to fail
    assert [e for e, _ in events] == ["usage_backend_down"]  # once, not per request


def test_audit_mode_logs_a_rate_limit_but_refuses_a_suspended_key(tmp_path: Path):
    g, _, events = gate(
        tmp_path, "usage_limits:\n  tenants:\n    team-a: {requests_per_minute: 1}\n", "audit"
    )
    assert not request(g).blocked
    over = request(g)
    assert over.verdict is Verdict.WOULD_BLOCK and over.reason is Reason.RATE_LIMITED
    assert asyncio.run(g.suspend_by_admin("team-a", "by an admin"))
    suspended = request(g)
    assert suspended.verdict is Verdict.BLOCK and suspended.reason is Reason.KEY_SUSPENDED
    assert "suspended (admin)" in suspended.detail
    assert ("key_suspended", {"tenant": "team-a", "by": "admin"}) in events
    assert asyncio.run(g.resume("team-a"))
    assert request(g).reason is not Reason.KEY_SUSPENDED


def test_burst_suspends_with_evidence_and_top_models(tmp_path: Path):
    g, clock, events = gate(
        tmp_path,
        "usage_limits:\n  anomaly: {factor: 4, warmup_minutes: 2, half_life_minutes: 1,\n"
        "    floor_requests_per_minute: 3, floor_tokens_per_minute: 1000000}\n",
    )
    # Three minutes of 2 requests a minute; half-life 1 minute: the baseline after
    # folding them is 1, 1.5, 1.75; the threshold max(3, 4 x 1.75) = 7.
    for _ in range(3):
        for _ in range(2):
            assert not request(g, 10).blocked
        clock.now += 60
    decisions = [request(g, 10) for _ in range(12)]
    passed = [d for d in decisions if not d.blocked]
    suspended = decisions[len(passed)]
    assert suspended.reason is Reason.KEY_SUSPENDED
    # 5 s into the minute the last one still counts 2 x 55/60: 1.83 + 6 > 7.
    assert len(passed) == 5
    assert "suspended automatically: requests per minute 8 over 7 (baseline 1.8)" in (
        suspended.detail
    )
    assert "top models by tokens: gpt-4o" in suspended.detail
    (_, fields), *_ = [e for e in events if e[0] == "key_suspended"]
    assert fields["by"] == "automatic" and fields["evidence"]["baseline_per_minute"] > 1
    assert all(d.reason is Reason.KEY_SUSPENDED for d in decisions[len(passed) :])


def test_suspended_tenant_stays_refused_while_the_state_file_is_locked(tmp_path: Path):
    """Another process holds the state file's write lock past the busy timeout: the
    limits fail as configured (open here), a known suspension still holds."""
    import sqlite3

    g, _, _ = gate(
        tmp_path,
        "usage_limits:\n  on_backend_failure: open\n"
        "  tenants:\n    '*': {requests_per_minute: 100}\n",
    )
    assert asyncio.run(g.suspend_by_admin("team-a", "by an admin"))
    assert not request(g, tenant="team-b").blocked
    holder = sqlite3.connect(tmp_path / "usage.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert request(g).reason is Reason.KEY_SUSPENDED
        other = request(g, tenant="team-b")
        assert other.verdict is Verdict.WOULD_BLOCK
        assert other.reason is Reason.USAGE_BACKEND_UNAVAILABLE
    finally:
        holder.execute("ROLLBACK")
        holder.close()
