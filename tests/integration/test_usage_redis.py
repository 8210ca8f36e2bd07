"""Three sidecars (three gateway replicas) sharing one real redis-server (issue 15):
one tenant's limit holds across the three; a suspension made through one is enforced
by the other two at once; Redis paused, killed and restarted mid-test: each limit's
failure mode holds, nothing crashes, the failure is logged, counted and paged, and
everything recovers without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from tests.alerts.alerts_helpers import FakeReceiver, write_config
from tests.support.redis_server import RedisServer
from tests.support.usage import chat, keys_cli, sdk, usage_policy, virtual_keys, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def replicas(start_sidecar, provider, secrets, tmp_path, redis, section, count=3, extra=()):
    tenants_file, keys = virtual_keys(tmp_path)
    policy = usage_policy(provider.port, section)
    sidecars = [
        start_sidecar(
            policy,
            extra_args=(
                "--secrets-dir",
                str(secrets.root),
                "--virtual-keys",
                str(tenants_file),
                "--state-dir",
                str(tmp_path / f"state-{i}"),
                "--usage-redis",
                redis.url,
                *extra,
            ),
        )
        for i in range(count)
    ]
    return sidecars, keys


def outcome(sidecar, provider, key) -> str:
    try:
        chat(sdk(sidecar, provider, key))
    except openai.APIStatusError as exc:
        return str(exc.code or exc.status_code)
    return "ok"


def test_one_tenants_limit_holds_across_three_sidecars(
    start_sidecar, provider, secrets, tmp_path, redis
):
    sidecars, keys = replicas(start_sidecar, provider, secrets, tmp_path, redis,
                              "  tenants:\n    team-a: {requests_per_minute: 9}\n")  # fmt: skip
    results = [outcome(sidecars[i % 3], provider, keys["team-a"]) for i in range(15)]
    assert results.count("ok") == 9, results  # not 3 x 9
    assert set(results[9:]) == {"rate_limited"}, results
    for sidecar in sidecars:  # each replica refused some: the limit is shared
        # (the line reaches stdout from the line writer's thread, maybe after the 429)
        sidecar.wait_for_decision(reason="rate_limited")
    assert outcome(sidecars[0], provider, keys["team-b"]) == "ok"  # no limit of its own


def test_suspension_on_one_sidecar_is_enforced_by_the_other_two_at_once(
    start_sidecar, provider, secrets, tmp_path, redis
):
    """Every admission reads the suspension in the same Redis round trip as the
    counters, so the first request after `keys suspend` returns is refused everywhere
    (well within the 1 s the issue asks for)."""
    sidecars, keys = replicas(start_sidecar, provider, secrets, tmp_path, redis,
                              "  tenants:\n    team-a: {requests_per_minute: 1000}\n")  # fmt: skip
    assert [outcome(s, provider, keys["team-a"]) for s in sidecars] == ["ok"] * 3
    done = keys_cli(sidecars[0], tmp_path / "state-0", "suspend", "team-a")
    assert done.returncode == 0, done.stderr
    suspended_at = time.monotonic()
    seen = [outcome(s, provider, keys["team-a"]) for s in sidecars[1:]]
    elapsed = time.monotonic() - suspended_at
    assert seen == ["key_suspended", "key_suspended"], (seen, elapsed)
    listed = keys_cli(sidecars[2], tmp_path / "state-2", "list")
    assert "team-a" in listed.stdout and "backend: redis" in listed.stdout
    resumed = keys_cli(sidecars[1], tmp_path / "state-1", "resume", "team-a")
    assert resumed.returncode == 0
    assert [outcome(s, provider, keys["team-a"]) for s in sidecars] == ["ok"] * 3


def test_redis_paused_killed_and_restarted_failure_modes_hold_and_recover(
    start_sidecar, provider, secrets, tmp_path, redis, bg
):
    rx = bg.run(FakeReceiver(default=202).start(0))
    try:
        config = write_config(
            tmp_path,
            f"sinks:\n  - name: hook\n    type: webhook\n    url: {rx.url}/hook\n"
            f"    hmac_key_file: {tmp_path / 'hmac'}\n",
            secrets={"hmac": "h" * 32},
        )
        section = (
            "  tenants:\n"
            "    team-a: {requests_per_minute: 1000, on_backend_failure: closed}\n"
            "    team-b: {requests_per_minute: 1000, on_backend_failure: open}\n"
            "    team-c: {requests_per_minute: 1000, on_backend_failure: open}\n"
        )
        sidecars, keys = replicas(start_sidecar, provider, secrets, tmp_path, redis, section,
                                  count=2, extra=("--alerts-config", config))  # fmt: skip
        one, two = sidecars
        assert keys_cli(one, tmp_path / "state-0", "suspend", "team-c").returncode == 0
        time.sleep(1.0)  # the health loop caches suspensions every 0.5 s
        assert outcome(two, provider, keys["team-c"]) == "key_suspended"

        # A hung Redis: every call has a deadline; requests are answered, not stuck.
        redis.pause()
        started = time.monotonic()
        assert outcome(one, provider, keys["team-a"]) == "usage_backend_unavailable"
        assert time.monotonic() - started < 10  # generous: the deadline is 0.5 s
        redis.unpause()
        wait_until(lambda: outcome(one, provider, keys["team-a"]) == "ok", 20, "recovery")

        # A dead Redis.
        redis.kill()
        wait_until(
            lambda: outcome(one, provider, keys["team-a"]) == "usage_backend_unavailable",
            10,
            "fail closed",
        )
        assert outcome(two, provider, keys["team-a"]) == "usage_backend_unavailable"
        assert outcome(one, provider, keys["team-b"]) == "ok"  # fails open ...
        opened = one.wait_for_decision(tenant="team-b", reason="usage_backend_unavailable")
        assert opened["decision"] == "would_block"  # ... logged as such
        assert outcome(two, provider, keys["team-c"]) == "key_suspended"  # still suspended
        refused = one.wait_for_decision(tenant="team-a", reason="usage_backend_unavailable")
        assert refused["decision"] == "block"
        for sidecar in sidecars:
            sidecar.wait_for_event("usage_backend_down")
            assert sidecar.proc is not None and sidecar.proc.poll() is None
        metrics = one.metrics()
        assert 'egress_sidecar_usage_backend_up{backend="redis"} 0.0' in metrics
        assert 'egress_sidecar_usage_backend_failures_total{outcome="refused"}' in metrics
        wait_until(
            lambda: [r for r in rx.requests if b"usage_backend_unavailable" in r.body],
            20,
            "a page about the backend",
        )

        # Back, on the same port: no restart of the sidecars needed.
        redis.start()
        for sidecar in sidecars:
            sidecar.wait_for_event("usage_backend_recovered", timeout=20)
            wait_until(lambda s=sidecar: outcome(s, provider, keys["team-a"]) == "ok", 20, "ok")
        assert outcome(one, provider, keys["team-c"]) == "key_suspended"  # kept by Redis (AOF)
        assert 'egress_sidecar_usage_backend_up{backend="redis"} 1.0' in one.metrics()
    finally:
        bg.run(rx.stop())
