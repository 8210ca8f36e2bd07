"""Addons run in one Pipeline behave as if mitmproxy ran them one by one (issue 17:
one registered addon instead of nine, for the dispatch cost): same order, async hooks
awaited in turn, one member's error does not stop the others, sync hooks stay sync."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest
from mitmproxy import exceptions, hooks, options
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook
from mitmproxy.test import tflow

from sidecar.addons.pipeline import Pipeline


class Recording:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    def requestheaders(self, flow) -> None:
        self.seen.append(f"{self.name}:requestheaders")


class SlowAsync(Recording):
    async def requestheaders(self, flow) -> None:
        await asyncio.sleep(0.01)  # the next member must not run before this returns
        self.seen.append(f"{self.name}:requestheaders")


class Failing(Recording):
    def requestheaders(self, flow) -> None:
        raise RuntimeError("boom")


class Halting(Recording):
    def requestheaders(self, flow) -> None:
        raise exceptions.AddonHalt()


class Configured(Recording):
    def configure(self, updated) -> None:
        self.seen.append(f"{self.name}:configure")


def run_hook(*addons: object, hook: hooks.Hook | None = None) -> None:
    async def go() -> None:
        master = Master(options.Options())
        master.addons.add(*addons)
        if isinstance(hook, hooks.ConfigureHook):
            master.addons.trigger(hook)  # as mitmproxy does: invoke_addon_sync
        else:
            await master.addons.handle_lifecycle(hook or HttpRequestHeadersHook(tflow.tflow()))

    asyncio.run(go())


def test_members_run_in_the_order_given_async_ones_awaited_in_turn():
    seen: list[str] = []
    run_hook(Pipeline("p", Recording("a", seen), SlowAsync("b", seen), Recording("c", seen)))
    assert seen == ["a:requestheaders", "b:requestheaders", "c:requestheaders"]


def test_a_members_error_is_logged_and_the_next_member_still_runs(caplog):
    seen: list[str] = []
    with caplog.at_level(logging.ERROR):
        run_hook(Pipeline("p", Failing("a", seen), Recording("b", seen)))
    assert seen == ["b:requestheaders"]
    assert any("boom" in r.getMessage() and "Failing" in r.getMessage() for r in caplog.records)


def test_addon_halt_stops_the_chain_as_it_does_across_addons():
    seen: list[str] = []
    run_hook(
        Pipeline("p", Recording("a", seen), Halting("h", seen), Recording("b", seen)),
        Recording("after", seen),
    )
    assert seen == ["a:requestheaders"]


def test_hooks_no_member_has_are_not_offered_to_mitmproxy():
    pipeline = Pipeline("p", Recording("a", []))
    assert callable(getattr(pipeline, "requestheaders", None))
    assert getattr(pipeline, "request", None) is None
    assert not hasattr(pipeline, "addons")  # else mitmproxy would visit members again
    seen: list[str] = []
    run_hook(Pipeline("p", Recording("a", seen)), hook=HttpRequestHook(tflow.tflow()))
    assert seen == []


def test_sync_hooks_stay_sync_for_mitmproxys_sync_callers():
    # AddonManager.add triggers `configure` through invoke_addon_sync, which refuses a
    # coroutine function: a pipeline of sync members must answer with a sync one.
    seen: list[str] = []
    members = Configured("a", seen), Configured("b", seen), SlowAsync("s", seen)
    run_hook(Pipeline("p", *members), hook=hooks.ConfigureHook(set()))
    assert seen == ["a:configure", "b:configure"]


def test_two_pipelines_register_side_by_side():
    run_hook(Pipeline("first", Recording("a", [])), Pipeline("second", Recording("b", [])))


@pytest.mark.parametrize("module", ["mitmproxy.addons", "mitmproxy.proxy.layers.websocket"])
def test_every_hook_mitmproxy_defines_is_known_when_the_pipeline_module_is_imported(module):
    """A hook missing from `all_hooks` when a Pipeline is built would silently never
    reach our addons: the module imports every module that defines hooks."""
    code = (
        "from mitmproxy import hooks; import sidecar.addons.pipeline; "
        "before = set(hooks.all_hooks); import importlib; "
        f"importlib.import_module({module!r}); "
        "print(sorted(set(hooks.all_hooks) - before))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
