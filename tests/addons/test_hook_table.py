"""The hook table dispatches as mitmproxy's own addon manager does (issue 17: the hook
lookups once, not on every event): same order, async hooks awaited in turn, an addon's
error logged by mitmproxy's logger without stopping the next addon, AddonHalt stops the
event, `update` after a flow event, sync hooks through mitmproxy's sync path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from mitmproxy import addonmanager, exceptions, hooks, options
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook
from mitmproxy.test import tflow

from sidecar.addons.hook_table import HookTableAddonManager, install


class Recording:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    def requestheaders(self, flow: Any) -> None:
        self.seen.append(f"{self.name}:requestheaders")


class SlowAsync(Recording):
    async def requestheaders(self, flow: Any) -> None:
        await asyncio.sleep(0.01)  # the next addon must not run before this returns
        self.seen.append(f"{self.name}:requestheaders")


class Failing(Recording):
    def requestheaders(self, flow: Any) -> None:
        raise RuntimeError("boom")


class Halting(Recording):
    def requestheaders(self, flow: Any) -> None:
        raise exceptions.AddonHalt()


class RefusingOption(Recording):
    def requestheaders(self, flow: Any) -> None:
        raise exceptions.OptionsError("bad option")


class Updated(Recording):
    def update(self, flows: list[Any]) -> None:
        self.seen.append(f"{self.name}:update:{len(flows)}")


class Parent(Recording):
    """An addon with children, as mitmproxy's walk visits them: parent, then children."""

    def __init__(self, name: str, seen: list[str], *children: object) -> None:
        super().__init__(name, seen)
        self.addons = list(children)


def dispatch(*addons: object, hook: hooks.Hook | None = None, table: bool = True) -> Master:
    master: Master

    async def go() -> None:
        nonlocal master
        master = Master(options.Options())
        if table:
            install(master)
        master.addons.add(*addons)
        await master.addons.handle_lifecycle(hook or HttpRequestHeadersHook(tflow.tflow()))

    asyncio.run(go())
    return master


@pytest.mark.parametrize("table", [False, True], ids=["mitmproxy", "hook table"])
def test_addons_run_in_chain_order_children_after_their_parent_async_awaited_in_turn(table):
    seen: list[str] = []
    dispatch(
        Recording("a", seen),
        SlowAsync("b", seen),
        Parent("p", seen, Recording("child", seen)),
        Recording("c", seen),
        table=table,
    )
    assert seen == [
        "a:requestheaders",
        "b:requestheaders",
        "p:requestheaders",
        "child:requestheaders",
        "c:requestheaders",
    ]


@pytest.mark.parametrize("table", [False, True], ids=["mitmproxy", "hook table"])
def test_an_addons_error_is_logged_as_mitmproxy_logs_it_and_the_next_addon_runs(table, caplog):
    seen: list[str] = []
    with caplog.at_level(logging.ERROR):
        dispatch(Failing("a", seen), Recording("b", seen), table=table)
    assert seen == ["b:requestheaders"]
    errors = [r for r in caplog.records if r.name == addonmanager.__name__]
    assert [r.getMessage() for r in errors] == ["Addon error: boom"]
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is RuntimeError


class NotCallable(Recording):
    """A hook name bound to something that is not callable (an attribute set by
    mistake): mitmproxy logs it for that addon, and every later addon still runs."""

    requestheaders = "not a hook"  # type: ignore[assignment]


@pytest.mark.parametrize("table", [False, True], ids=["mitmproxy", "hook table"])
def test_a_non_callable_hook_is_logged_and_the_next_addon_still_runs(table, caplog):
    seen: list[str] = []
    with caplog.at_level(logging.ERROR):
        dispatch(Recording("a", seen), NotCallable("x", seen), Recording("b", seen), table=table)
    assert seen == ["a:requestheaders", "b:requestheaders"]
    errors = [r.getMessage() for r in caplog.records if r.name == addonmanager.__name__]
    assert len(errors) == 1 and "requestheaders" in errors[0] and "not callable" in errors[0]


@pytest.mark.parametrize("table", [False, True], ids=["mitmproxy", "hook table"])
def test_addon_halt_stops_the_event_for_every_later_addon(table):
    seen: list[str] = []
    dispatch(Recording("a", seen), Halting("h", seen), Recording("b", seen), table=table)
    assert seen == ["a:requestheaders"]


@pytest.mark.parametrize("table", [False, True], ids=["mitmproxy", "hook table"])
def test_an_options_error_propagates(table):
    with pytest.raises(exceptions.OptionsError):
        dispatch(RefusingOption("o", []), table=table)


@pytest.mark.parametrize("table", [False, True], ids=["mitmproxy", "hook table"])
def test_a_flow_event_is_followed_by_update(table):
    seen: list[str] = []
    dispatch(Updated("u", seen), Recording("r", seen), table=table)
    assert seen == ["u:requestheaders", "r:requestheaders", "u:update:1"]


def test_an_addon_without_the_hook_is_not_in_its_table():
    master = dispatch(Recording("a", []), Updated("u", []), hook=HttpRequestHook(tflow.tflow()))
    manager = master.addons
    assert isinstance(manager, HookTableAddonManager)
    assert manager.groups("request") == ()
    assert [len(calls) for calls in manager.groups("requestheaders")] == [1, 1]


def test_the_table_is_rebuilt_when_an_addon_is_added_or_removed():
    seen: list[str] = []
    first, second = Recording("a", seen), Recording("b", seen)

    async def go() -> None:
        master = Master(options.Options())
        manager = install(master)
        master.addons.add(first)
        await manager.handle_lifecycle(HttpRequestHeadersHook(tflow.tflow()))
        master.addons.add(second)
        await manager.handle_lifecycle(HttpRequestHeadersHook(tflow.tflow()))
        master.addons.remove(first)
        await manager.handle_lifecycle(HttpRequestHeadersHook(tflow.tflow()))

    asyncio.run(go())
    assert seen == ["a:requestheaders", "a:requestheaders", "b:requestheaders", "b:requestheaders"]


def test_every_hook_of_mitmproxys_default_addons_is_in_the_table_as_its_walk_finds_it():
    """For every hook mitmproxy defines, over the chain mitmdump runs (addons with
    children, modules named like hooks included), the table holds exactly the callables
    mitmproxy's own `_iter_hooks` walk yields, in order."""
    from mitmproxy.addons import default_addons

    async def build() -> HookTableAddonManager:
        master = Master(options.Options())
        manager = install(master)
        master.addons.add(*default_addons())
        return manager

    manager = asyncio.run(build())
    assert len(manager.chain) >= 20
    for name, hook in hooks.all_hooks.items():
        probe = object.__new__(hook)  # the walk reads only `.name`
        walked = [f for addon in manager.chain for _, f in manager._iter_hooks(addon, probe)]
        table = [call for calls in manager.groups(name) for call in calls]
        assert table == walked, name


@pytest.mark.parametrize("table", [False, True], ids=["mitmproxy", "hook table"])
def test_an_options_change_reaches_configure_once_through_mitmproxys_sync_path(table):
    seen: list[str] = []

    class Configured(Recording):
        def configure(self, updated: set[str]) -> None:
            self.seen.append(f"{self.name}:configure:{','.join(sorted(updated))}")

    async def go() -> None:
        master = Master(options.Options())
        if table:
            install(master)  # the replaced manager must no longer listen to options
        master.addons.add(Configured("a", seen))
        master.options.update(listen_port=8081)

    asyncio.run(go())
    assert seen == ["a:configure:listen_port"]
