"""The local backend (SQLite in the state directory): token accounting, limits shared by
every process of the pod (worker processes never multiply a limit), suspensions that
survive a restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar.metering import DAY, MINUTE, Meter, Metric
from sidecar.usage_store import BackendUnavailable, LocalStore, Suspension

NOW = 1_800_000_000.0 - (1_800_000_000.0 % DAY) + 10.0
RPM = Meter("tenant:a", Metric.REQUESTS, MINUTE, 3)
TPM = Meter("tenant:a", Metric.TOKENS, MINUTE, 100)
TPD = Meter("provider:openai", Metric.TOKENS, DAY, 1000)


def run(coro):
    return asyncio.run(coro)


def test_requests_over_the_limit_are_refused_with_retry_after(tmp_path: Path):
    store = LocalStore(tmp_path)
    results = [run(store.admit("a", [RPM], NOW + i)) for i in range(4)]
    assert [r.admitted for r in results] == [True, True, True, False]
    assert results[2].counts[0].current == 3
    refused = results[3]
    assert refused.overrun is not None and refused.overrun.meter == RPM
    assert 0 < refused.overrun.retry_after <= 2 * MINUTE
    # Refused requests are not counted: the next minute starts from what was admitted.
    later = run(store.admit("a", [RPM], NOW + MINUTE + 40))
    assert later.admitted and (later.counts[0].current, later.counts[0].previous) == (1, 3)


def test_tokens_counted_from_responses_close_the_token_limits(tmp_path: Path):
    """Token accounting: the response's tokens go to every token meter of the request;
    the request that crosses the limit was already answered, the next is refused."""
    store = LocalStore(tmp_path)
    meters = [RPM, TPM, TPD]
    assert run(store.admit("a", meters, NOW)).admitted
    store.add_tokens([TPM, TPD], 120, NOW + 1)
    refused = run(store.admit("a", meters, NOW + 2))
    assert refused.overrun is not None and refused.overrun.meter == TPM
    assert refused.counts[1].current == 120 and refused.counts[2].current == 120
    # A day's budget outlives the minute.
    store.add_tokens([TPD], 900, NOW + 3)
    next_minute = run(store.admit("a", [TPD], NOW + MINUTE + 1))
    assert next_minute.overrun is not None and next_minute.overrun.meter == TPD
    assert next_minute.overrun.retry_after > MINUTE


def test_buffered_tokens_reach_other_processes_at_the_next_flush(tmp_path: Path):
    """Tokens are written with the next admission or by flush(): another process (a
    worker) sees them then, and not before."""
    one, two = LocalStore(tmp_path), LocalStore(tmp_path)
    one.add_tokens([TPM], 150, NOW)
    assert run(two.admit("a", [TPM], NOW + 1)).admitted  # not written yet
    run(one.flush(NOW + 1))
    refused = run(two.admit("a", [TPM], NOW + 2))
    assert refused.overrun is not None and refused.counts[0].current == 150
    run(one.flush(NOW + 2))  # nothing left to write: no double count
    assert run(two.admit("a", [TPM], NOW + 3)).counts[0].current == 150


def test_suspension_survives_a_restart_until_resumed(tmp_path: Path):
    first = LocalStore(tmp_path)
    evidence = {"metric": "requests", "observed_per_minute": 900.0}
    assert run(first.suspend(Suspension("a", NOW, "automatic", "burst", evidence)))
    assert not run(first.suspend(Suspension("a", NOW + 1, "admin")))  # already
    run(first.close())
    restarted = LocalStore(tmp_path)
    admission = run(restarted.admit("a", [RPM], NOW + 5))
    assert admission.suspension is not None
    assert admission.suspension.evidence == evidence and admission.suspension.by == "automatic"
    assert run(restarted.admit("b", [], NOW)).suspension is None
    assert [s.tenant for s in run(restarted.suspensions())] == ["a"]
    assert run(restarted.resume("a", NOW + 6))
    assert not run(restarted.resume("a", NOW + 6))
    assert run(restarted.admit("a", [RPM], NOW + 6)).admitted


def test_resume_starts_the_tenants_minute_over(tmp_path: Path):
    """The burst that suspended a tenant must not suspend it again the moment it is
    resumed: its per-minute counters restart (a day's budget does not)."""
    store = LocalStore(tmp_path)
    tpd = Meter("tenant:a", Metric.TOKENS, DAY, 10**6)
    for i in range(3):
        run(store.admit("a", [RPM, tpd], NOW + i))
    store.add_tokens([TPM, tpd], 500, NOW + 3)
    run(store.flush(NOW + 3))  # the addon flushes every 0.1 s
    run(store.suspend(Suspension("a", NOW, "automatic")))
    run(store.resume("a", NOW + 4))
    admission = run(store.admit("a", [RPM, TPM, tpd], NOW + 5))
    assert admission.admitted
    assert [c.current for c in admission.counts] == [1, 0, 500]


def test_state_file_is_private(tmp_path: Path):
    store = LocalStore(tmp_path / "state")
    run(store.admit("a", [RPM], NOW))
    assert (store.path.stat().st_mode & 0o077) == 0


def test_unusable_state_directory_is_backend_unavailable(tmp_path: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(BackendUnavailable, match="local state file"):
        run(LocalStore(blocker).admit("a", [RPM], NOW))


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from sidecar.metering import MINUTE, Meter, Metric
    from sidecar.usage_store import LocalStore
    store = LocalStore(sys.argv[1], busy_timeout_ms=5000)
    meter = Meter("tenant:a", Metric.REQUESTS, MINUTE, 60)
    now = float(sys.argv[2])
    async def main():
        return sum([(await store.admit("a", [meter], now)).admitted for _ in range(50)])
    print(asyncio.run(main()))
    """
)


def test_worker_processes_share_one_limit(tmp_path: Path):
    """Three processes (as `run --workers 3`) each try 50 requests against a limit of
    60 a minute: 60 pass in all, not 3 x 60."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), repr(NOW)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    admitted = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(admitted) == 60, admitted
