"""PolicyWatcher: a failure to apply is a rejected reload, and the watcher lives on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from sidecar.policy.loader import load_policy
from sidecar.policy.model import Policy
from sidecar.reload import PolicyWatcher

GOOD = "version: 1\nproviders:\n  openai:\n    hosts: [api.openai.com]\n"
UNSERVABLE = "version: 1\nproviders:\n  anthropic:\n    hosts: [api.anthropic.com]\n"


class Running:
    """What the runner does: refuse a policy without the provider a listener needs."""

    def __init__(self) -> None:
        self.applied: list[Policy] = []
        self.rejected: list[Exception] = []

    def apply(self, policy: Policy) -> None:
        if policy.provider("openai") is None:
            raise ValueError("--reverse openai: no such provider in the policy")
        self.applied.append(policy)

    def reject(self, exc: Exception) -> None:
        self.rejected.append(exc)


def watcher_on(path: Path, running: Running, interval: float = 0.01) -> PolicyWatcher:
    def load(paths: Sequence[str]) -> Policy:
        return load_policy(list(paths))

    watcher = PolicyWatcher([str(path)], load, running.apply, running.reject, interval)
    watcher.prime()
    return watcher


def test_policy_that_fails_to_apply_is_rejected_not_raised(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    running = Running()
    watcher = watcher_on(path, running)

    path.write_text(UNSERVABLE)
    assert watcher.check_once() is False  # no exception escapes
    assert [str(e) for e in running.rejected] == [
        "--reverse openai: no such provider in the policy"
    ]
    assert running.applied == []

    path.write_text(GOOD + "    ports: [443]\n")
    assert watcher.check_once() is True
    assert len(running.applied) == 1


def test_watcher_task_survives_a_reject_that_raises(tmp_path):
    """Even our own reject callback failing must not end the watch (no later reload)."""
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    running = Running()
    calls: list[Exception] = []

    def broken_reject(exc: Exception) -> None:
        calls.append(exc)
        raise RuntimeError("reject failed")

    running.reject = broken_reject  # type: ignore[method-assign]
    watcher = watcher_on(path, running)

    async def scenario() -> None:
        task = asyncio.create_task(watcher.run())
        path.write_text(UNSERVABLE)
        for _ in range(500):
            if calls:
                break
            await asyncio.sleep(0.01)
        path.write_text(GOOD + "    ports: [443]\n")
        for _ in range(500):
            if running.applied:
                break
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()

    asyncio.run(scenario())
    assert len(calls) == 1
    assert len(running.applied) == 1
