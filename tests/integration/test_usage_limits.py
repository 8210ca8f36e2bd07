"""Usage limits and key suspension through the real sidecar with the openai SDK
(issue 15): a tenant over its requests per minute gets a 429 in OpenAI's format with
`Retry-After`, which the SDK's own retry honours; a burst suspends the tenant's key,
pages with the evidence, survives a restart and is lifted by `keys resume`; the admin
API wants the token."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.alerts.alerts_helpers import FakeReceiver, write_config
from tests.support.usage import chat, keys_cli, sdk, usage_policy, virtual_keys, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def tenants(tmp_path: Path):
    return virtual_keys(tmp_path)


def start(start_sidecar, provider, secrets, tmp_path, tenants_file, section, *extra):
    policy = usage_policy(provider.port, section)
    args = ("--secrets-dir", str(secrets.root), "--virtual-keys", str(tenants_file))
    args += ("--state-dir", str(tmp_path / "state"), *extra)
    return start_sidecar(policy, extra_args=args)


def test_tenant_over_requests_per_minute_gets_openai_429_with_retry_after(
    start_sidecar, provider, secrets, tmp_path, tenants
):
    path, keys = tenants
    sidecar = start(start_sidecar, provider, secrets, tmp_path, path,
                    "  tenants:\n    team-a: {requests_per_minute: 3}\n")  # fmt: skip
    client = sdk(sidecar, provider, keys["team-a"])
    for _ in range(3):
        chat(client)
    mark = len(provider.received)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert provider.received[mark:] == []  # refused before the provider
    response = info.value.response
    assert response.status_code == 429
    assert info.value.code == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 120
    assert response.headers["x-should-retry"] == "true"
    line = sidecar.wait_for_decision(reason="rate_limited")
    assert line["decision"] == "block" and line["tenant"] == "team-a"
    assert line["retry_after"] == int(response.headers["retry-after"])
    assert "tenant:team-a over requests_per_minute 3" in line["detail"]
    # Another tenant has its own budget.
    chat(sdk(sidecar, provider, keys["team-b"]))
    assert keys["team-a"] not in "".join(sidecar.stdout_lines + sidecar.stderr_lines)


def test_openai_sdk_retry_waits_for_retry_after_then_succeeds(
    start_sidecar, provider, secrets, tmp_path, tenants
):
    """The SDK's own retry (max_retries=2) sleeps what Retry-After says and the retry
    passes once the window has room. Aligned late in a minute so that Retry-After is
    short (the SDK honours at most 60 s)."""
    path, keys = tenants
    sidecar = start(start_sidecar, provider, secrets, tmp_path, path,
                    "  tenants:\n    team-a: {requests_per_minute: 30}\n")  # fmt: skip
    wait_until(lambda: 45 <= time.time() % 60 < 52, 70, "the last quarter of a minute")
    client = sdk(sidecar, provider, keys["team-a"], retries=2)
    for _ in range(30):
        chat(client)
    started = time.monotonic()
    chat(client)  # refused once, retried by the SDK after Retry-After, then passes
    waited = time.monotonic() - started
    refused = sidecar.wait_for_decision(reason="rate_limited")
    assert waited >= refused["retry_after"] - 0.5, (waited, refused)

    def allowed() -> int:
        return sum(d["reason"] == "allowed" for d in sidecar.decisions)

    # The retried call's line is written at its response's end by the line writer's
    # thread: it can reach stdout just after the SDK has the answer.
    wait_until(lambda: allowed() >= 31, 10, "the retried call's decision line")
    assert allowed() == 31


def test_burst_suspends_tenant_pages_persists_across_restart_until_keys_resume(
    start_sidecar, provider, secrets, tmp_path, tenants, bg
):
    path, keys = tenants
    rx = bg.run(FakeReceiver(default=202).start(0))
    try:
        config = write_config(
            tmp_path,
            f"sinks:\n  - name: hook\n    type: webhook\n    url: {rx.url}/hook\n"
            f"    hmac_key_file: {tmp_path / 'hmac'}\n",
            secrets={"hmac": "h" * 32},
        )
        section = (
            "  anomaly: {factor: 10, warmup_minutes: 0, floor_requests_per_minute: 5,\n"
            "            floor_tokens_per_minute: 1000000}\n"
        )
        extra = ("--alerts-config", config)
        sidecar = start(start_sidecar, provider, secrets, tmp_path, path, section, *extra)
        client = sdk(sidecar, provider, keys["team-a"])
        passed = 0
        with pytest.raises(openai.PermissionDeniedError) as info:
            for _ in range(20):  # a stolen key, drained
                chat(client)
                passed += 1
        assert passed == 5  # the floor: 5 a minute; the 6th is the burst
        assert info.value.code == "key_suspended"
        line = sidecar.wait_for_decision(reason="key_suspended")
        assert line["decision"] == "block" and line["tenant"] == "team-a"
        assert "suspended automatically: requests per minute 6 over 5" in line["detail"]
        event = sidecar.wait_for_event("key_suspended")
        assert event["evidence"]["metric"] == "requests"
        assert event["evidence"]["threshold_per_minute"] == 5.0
        # Paged, with the evidence.
        wait_until(lambda: [r for r in rx.requests if b"key_suspended" in r.body], 20, "a page")
        page = b"".join(r.body for r in rx.requests if b"key_suspended" in r.body)
        assert b"requests per minute 6 over 5" in page
        assert keys["team-a"].encode() not in page
        # Other tenants go on.
        chat(sdk(sidecar, provider, keys["team-b"]))

        listed = keys_cli(sidecar, tmp_path / "state", "list")
        assert listed.returncode == 0, listed.stderr
        assert "team-a" in listed.stdout and "automatic" in listed.stdout

        sidecar.stop()
        restarted = start(start_sidecar, provider, secrets, tmp_path, path, section, *extra)
        with pytest.raises(openai.PermissionDeniedError) as again:
            chat(sdk(restarted, provider, keys["team-a"]))
        assert again.value.code == "key_suspended"

        resumed = keys_cli(restarted, tmp_path / "state", "resume", "team-a")
        assert resumed.returncode == 0, resumed.stderr
        assert "team-a: resumed" in resumed.stdout
        restarted.wait_for_event("key_resumed")
        chat(sdk(restarted, provider, keys["team-a"]))  # served again
        assert "no tenant is suspended" in keys_cli(restarted, tmp_path / "state", "list").stdout
    finally:
        bg.run(rx.stop())


def test_keys_suspend_by_admin_refuses_at_once_and_audit_mode_still_refuses(
    start_sidecar, provider, secrets, tmp_path, tenants
):
    path, keys = tenants
    policy = usage_policy(provider.port, "  tenants:\n    team-c: {requests_per_minute: 1000}\n")
    policy = policy.replace("version: 1\n", "version: 1\nmode: audit\n", 1)
    policy_path = tmp_path / "audit.yaml"
    policy_path.write_text(policy)
    sidecar = start_sidecar(
        policy_path=policy_path,
        extra_args=("--secrets-dir", str(secrets.root), "--virtual-keys", str(path),
                    "--state-dir", str(tmp_path / "state")),
    )  # fmt: skip
    chat(sdk(sidecar, provider, keys["team-c"]))
    done = keys_cli(sidecar, tmp_path / "state", "suspend", "team-c")
    assert done.returncode == 0 and "team-c: suspended" in done.stdout
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(sdk(sidecar, provider, keys["team-c"]))
    assert info.value.code == "key_suspended"  # a suspension holds in audit mode too
    assert "already suspended" in keys_cli(sidecar, tmp_path / "state", "suspend", "team-c").stdout


def test_admin_keys_api_refuses_requests_without_the_token(
    start_sidecar, provider, secrets, tmp_path, tenants
):
    """What a gateway that reaches the admin port (explicit or reverse mode, no init
    rules) can do without the token file: nothing."""
    path, _ = tenants
    sidecar = start(start_sidecar, provider, secrets, tmp_path, path,
                    "  tenants:\n    team-a: {requests_per_minute: 3}\n")  # fmt: skip
    base = f"http://{sidecar.listening['admin']}"
    token = (tmp_path / "state" / "admin-token").read_text().strip()
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": token},
                    {"authorization": f"Basic {token}"}):  # fmt: skip
        assert httpx.post(f"{base}/keys/team-b/suspend", headers=headers).status_code == 401
        assert httpx.get(f"{base}/keys", headers=headers).status_code == 401
    ok = httpx.get(f"{base}/keys", headers={"authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json() == {"backend": "local", "suspended": []}
    bad_name = httpx.post(
        f"{base}/keys/..%2f/suspend", headers={"authorization": f"Bearer {token}"}
    )
    assert bad_name.status_code in (400, 404)
    mode = stat.S_IMODE(os.stat(tmp_path / "state" / "admin-token").st_mode)
    assert mode == 0o600
    assert token not in "".join(sidecar.stdout_lines + sidecar.stderr_lines)


def test_world_readable_admin_token_file_stops_the_start(start_sidecar, provider, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t" * 40 + "\n")
    token_file.chmod(0o644)
    with pytest.raises(RuntimeError) as info:
        start_sidecar(extra_args=("--admin-token-file", str(token_file),
                                  "--state-dir", str(tmp_path / "state")))  # fmt: skip
    assert f"--admin-token-file {token_file}: readable or writable by other users" in str(
        info.value
    )
    assert "chmod 600" in str(info.value)


# --- token limits: need the response usage readers (issue 14) ------------------------


def test_tenant_over_tokens_per_minute_gets_429_after_the_response_that_crossed_it(
    start_sidecar, provider, secrets, tmp_path, tenants
):
    path, keys = tenants
    sidecar = start(start_sidecar, provider, secrets, tmp_path, path,
                    "  tenants:\n    team-a: {tokens_per_minute: 10}\n")  # fmt: skip
    client = sdk(sidecar, provider, keys["team-a"])
    chat(client)  # 6 tokens (the fake's usage)
    chat(client)  # 12: crossed by this response
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert info.value.code == "rate_limited"
    line = sidecar.wait_for_decision(reason="rate_limited")
    assert "tokens_per_minute 10" in line["detail"]


def test_token_burst_suspends_with_top_models_in_the_evidence(
    start_sidecar, provider, secrets, tmp_path, tenants
):
    path, keys = tenants
    section = (
        "  anomaly: {warmup_minutes: 0, floor_requests_per_minute: 1000,\n"
        "            floor_tokens_per_minute: 20}\n"
    )
    sidecar = start(start_sidecar, provider, secrets, tmp_path, path, section)
    client = sdk(sidecar, provider, keys["team-a"])
    with pytest.raises(openai.PermissionDeniedError):
        for _ in range(10):
            chat(client)
    event = sidecar.wait_for_event("key_suspended")
    assert event["evidence"]["metric"] == "tokens"
    assert event["evidence"]["top_models"][0][0] == "gpt-4o-mini"
    assert json.dumps(event).count(keys["team-a"]) == 0
