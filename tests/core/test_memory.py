"""sidecar/memory.py: the glibc setting that lets freed body buffers leave the RSS (its
effect is measured by tests/limits/test_budgets.py: peak RSS under a decode bomb), and
the startup heap kept out of garbage collection (measured in docs/performance.md)."""

from __future__ import annotations

import gc
import platform
import weakref

import pytest

from sidecar.memory import freeze_startup_objects, pin_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_pinned_mmap_threshold():
    assert pin_mmap_threshold() is True


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_startup_garbage_is_collected_before_the_heap_is_frozen_and_later_garbage_still_is():
    gc.disable()  # no collection of our own between building a cycle and the call
    try:
        early = _Node()
        early.other = early  # a cycle: only the cyclic collector frees it
        early_ref = weakref.ref(early)
        del early
        freeze_startup_objects()
        assert early_ref() is None  # garbage at startup is not frozen forever
        assert gc.get_freeze_count() > 0
        late = _Node()
        late.other = late
        late_ref = weakref.ref(late)
        del late
        gc.collect()
        assert late_ref() is None  # what requests allocate is collected as before
    finally:
        gc.unfreeze()
        gc.enable()
