"""The `usage_limits:` policy section: what it means, and every mistake refused with
file, line and key."""

from __future__ import annotations

import pytest

from sidecar.policy.errors import PolicyError
from sidecar.policy.loader import load_policy_bytes
from sidecar.policy.usage_limits import FailureMode

HEAD = "version: 1\nproviders:\n  openai: {hosts: [api.openai.com]}\n"


def load(text: str, *more: str):
    files = [("p.yaml", (HEAD + text).encode())]
    files += [(f"q{i}.yaml", t.encode()) for i, t in enumerate(more)]
    return load_policy_bytes(files)


def problems(text: str, *more: str) -> list[tuple[str, int, str]]:
    with pytest.raises(PolicyError) as info:
        load(text, *more)
    return [(p.file, p.line, p.key) for p in info.value.problems]


def test_a_full_section_is_read():
    policy = load(
        "usage_limits:\n"
        "  on_backend_failure: open\n"
        "  tenants:\n"
        "    team-a: {requests_per_minute: 600, tokens_per_day: 5_000_000,\n"
        "             on_backend_failure: closed}\n"
        '    "*": {tokens_per_minute: 1000}\n'
        "  providers:\n"
        "    openai: {requests_per_minute: 3000}\n"
        "  anomaly: {factor: 8, warmup_minutes: 120, floor_requests_per_minute: 30}\n"
    )
    usage = policy.usage
    assert usage is not None
    own = usage.tenant("team-a")
    assert own is not None and own.scope == "tenant:team-a"
    assert (own.requests_per_minute, own.tokens_per_minute, own.tokens_per_day) == (
        600, None, 5_000_000,
    )  # fmt: skip
    assert own.on_backend_failure is FailureMode.CLOSED
    other = usage.tenant("team-b")  # the "*" entry, counted for team-b alone
    assert other is not None and other.scope == "tenant:team-b"
    assert other.tokens_per_minute == 1000 and other.on_backend_failure is FailureMode.OPEN
    assert usage.providers["openai"].requests_per_minute == 3000
    assert usage.anomaly is not None
    assert (usage.anomaly.factor, usage.anomaly.warmup_minutes) == (8.0, 120)
    assert usage.anomaly.floor_tokens_per_minute == 100_000  # default


def test_no_section_no_limits():
    assert load("").usage is None


def test_tenant_without_own_entry_or_default_is_unlimited():
    usage = load("usage_limits:\n  tenants:\n    team-a: {requests_per_minute: 1}\n").usage
    assert usage is not None and usage.tenant("team-b") is None


# (id, section text, [(line, key)])  -- the section starts at line 4
CASES = [
    (
        "unknown_key_hint",
        "usage_limits:\n  tenants:\n    a: {rpm: 5}\n",
        [(6, "usage_limits.tenants.a.rpm"), (6, "usage_limits.tenants.a")],
    ),
    (
        "zero_limit",
        "usage_limits:\n  tenants:\n    a: {requests_per_minute: 0}\n",
        [(6, "usage_limits.tenants.a.requests_per_minute")],
    ),
    (
        "negative",
        "usage_limits:\n  providers:\n    openai: {tokens_per_day: -5}\n",
        [(6, "usage_limits.providers.openai.tokens_per_day")],
    ),
    (
        "string_limit",
        'usage_limits:\n  tenants:\n    a: {requests_per_minute: "5"}\n',
        [(6, "usage_limits.tenants.a.requests_per_minute")],
    ),
    ("empty_entry", "usage_limits:\n  tenants:\n    a: {}\n", [(6, "usage_limits.tenants.a")]),
    (
        "bad_tenant_name",
        "usage_limits:\n  tenants:\n    Team A: {requests_per_minute: 1}\n",
        [(6, "usage_limits.tenants.Team A")],
    ),
    (
        "unknown_provider",
        "usage_limits:\n  providers:\n    anthropic: {requests_per_minute: 1}\n",
        [(6, "usage_limits.providers.anthropic")],
    ),
    (
        "failure_mode_typo",
        "usage_limits:\n  on_backend_failure: shut\n",
        [(5, "usage_limits.on_backend_failure")],
    ),
    (
        "failure_mode_bool",
        "usage_limits:\n  tenants:\n    a: {requests_per_minute: 1, on_backend_failure: on}\n",
        [(6, "usage_limits.tenants.a.on_backend_failure")],
    ),
    ("factor_one", "usage_limits:\n  anomaly: {factor: 1}\n", [(5, "usage_limits.anomaly.factor")]),
    (
        "factor_text",
        "usage_limits:\n  anomaly: {factor: ten}\n",
        [(5, "usage_limits.anomaly.factor")],
    ),
    (
        "half_life_zero",
        "usage_limits:\n  anomaly: {half_life_minutes: 0}\n",
        [(5, "usage_limits.anomaly.half_life_minutes")],
    ),
    ("not_a_mapping", "usage_limits: [1]\n", [(4, "usage_limits")]),
]


@pytest.mark.parametrize(("case", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_mistakes_name_file_line_and_key(case, text, expected):
    assert problems(text) == [("p.yaml", line, key) for line, key in expected], case


def test_mistake_messages_say_how_to_fix():
    with pytest.raises(PolicyError) as info:
        load("usage_limits:\n  tenants:\n    a: {rpm: 5}\n")
    assert "write requests_per_minute" in str(info.value)
    with pytest.raises(PolicyError) as info:
        load("usage_limits:\n  providers:\n    anthropic: {requests_per_minute: 1}\n")
    assert "no provider 'anthropic' in the policy (providers: openai)" in str(info.value)


def test_two_files_with_a_section_conflict():
    second = "version: 1\nusage_limits:\n  tenants:\n    a: {requests_per_minute: 1}\n"
    found = problems("usage_limits:\n  tenants:\n    a: {requests_per_minute: 1}\n", second)
    assert found == [("q0.yaml", 2, "usage_limits")]
