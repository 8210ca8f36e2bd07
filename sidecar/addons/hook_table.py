"""mitmproxy's addon manager with its hook lookups done once, not on every event.

For every event, mitmproxy's `AddonManager` walks every registered addon and its
children, looks the hook up by name on each (`getattr`), and runs each addon inside a
context manager and a coroutine of its own, whether the addon has the hook or not; a
flow event is then dispatched a second time as `update`, and `Hook.args()` rebuilds the
argument list from the dataclass fields for every call. At four flow events per request
and about ten addons, that is some eighty addon visits per request (issue 17).

`HookTableAddonManager` keeps, per hook name, the callables the walk would find, grouped
by top-level addon, and rebuilds the table whenever an addon is added, registered or
removed. Behaviour is mitmproxy's own: the same order; an error in one addon's hook is
logged as mitmproxy logs it (same logger and message) and the next addon still runs;
`AddonHalt` stops the event; `OptionsError` propagates; async hooks are awaited; the
`update` event follows a flow event (only when some addon listens to it). Synchronous
dispatch (`trigger`, used for `configure` and `done`) is mitmproxy's, unchanged.

The table assumes an addon's hooks and children do not change after it is registered:
true of mitmproxy's built-ins and of ours (mitmproxy's script loader, which swaps
scripts at run time, is not loaded by the sidecar).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks
from mitmproxy.master import Master

__all__ = ["HookTableAddonManager", "install"]

# mitmproxy's own logger for addon errors: errorcheck and the logs see the same lines.
_addon_logger = logging.getLogger(addonmanager.__name__)

_Groups = tuple[tuple[Callable[..., Any], ...], ...]


class HookTableAddonManager(addonmanager.AddonManager):
    def __init__(self, master: Master) -> None:
        super().__init__(master)
        self._table: dict[str, _Groups] = {}
        self._fields: dict[type, tuple[str, ...]] = {}

    # --- the table is rebuilt whenever the set of addons changes ------------------------

    def register(self, addon: Any) -> Any:
        self._table.clear()
        try:
            return super().register(addon)
        finally:
            self._table.clear()

    def add(self, *addons: Any) -> None:
        try:
            super().add(*addons)
        finally:
            self._table.clear()

    def remove(self, addon: Any) -> None:
        try:
            super().remove(addon)
        finally:
            self._table.clear()

    def clear(self) -> None:
        try:
            super().clear()
        finally:
            self._table.clear()

    def groups(self, name: str) -> _Groups:
        """The callables of hook `name`, one tuple per top-level addon that has any, in
        chain order (what mitmproxy's walk finds, minus addons without the hook)."""
        found = self._table.get(name)
        if found is None:
            found = self._table[name] = tuple(
                calls for calls in (_hooks_of(addon, name) for addon in self.chain) if calls
            )
        return found

    # --- asynchronous dispatch: every hook the proxy core triggers ----------------------

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = self._args(event)
        await self._dispatch(event.name, args)
        if isinstance(args[0], flow.Flow) and self.groups("update"):
            await self._dispatch("update", ([args[0]],))

    async def trigger_event(self, event: hooks.Hook) -> None:
        await self._dispatch(event.name, self._args(event))

    async def _dispatch(self, name: str, args: Sequence[Any]) -> None:
        for calls in self.groups(name):
            try:
                for call in calls:
                    result = call(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception:  # noqa: BLE001 - mitmproxy's safecall: log, next addon
                _log_addon_error()

    def _args(self, event: hooks.Hook) -> tuple[Any, ...]:
        """`event.args()`, with the field names looked up once per hook class."""
        names = self._fields.get(type(event))
        if names is None:
            names = self._fields[type(event)] = tuple(
                f.name
                for f in dataclasses.fields(event)  # type: ignore[arg-type]
            )
        return tuple(getattr(event, n) for n in names)


def _hooks_of(addon: Any, name: str) -> tuple[Callable[..., Any], ...]:
    """What mitmproxy's `_iter_hooks` yields for one top-level addon, in order."""
    calls: list[Callable[..., Any]] = []
    for each in addonmanager.traverse([addon]):
        func = getattr(each, name, None)
        if not func or isinstance(func, types.ModuleType):
            continue  # a module import named like a hook ("log") is not a hook
        if not callable(func):
            # mitmproxy raises this when the event reaches the addon: logged as that
            # addon's error, and the next addon still runs. Raised while the table is
            # built, it would stop the event for every addon (ours included).
            calls.append(_not_callable(f"Addon handler {name} ({each}) not callable"))
            break  # the error ends this addon's walk, as in mitmproxy
        calls.append(func)
    return tuple(calls)


def _not_callable(message: str) -> Callable[..., Any]:
    def call(*args: Any) -> None:
        raise exceptions.AddonManagerError(message)

    return call


def _log_addon_error() -> None:
    etype, value, tb = sys.exc_info()
    tb = addonmanager.cut_traceback(tb, "_dispatch")
    _addon_logger.error(f"Addon error: {value}", exc_info=(etype, value, tb))  # type: ignore[arg-type]


def install(master: Master) -> HookTableAddonManager:
    """Give `master` a hook-table manager; call before any addon is added."""
    assert not master.addons.chain, "install the hook table before adding addons"
    master.options.changed.disconnect(master.addons._configure_all)
    manager = HookTableAddonManager(master)
    master.addons = manager
    return manager
