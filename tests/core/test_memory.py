"""sidecar/memory.py: the glibc setting that lets freed body buffers leave the RSS.
Its effect is measured by tests/limits/test_budgets.py (peak RSS under a decode bomb)."""

from __future__ import annotations

import platform

import pytest

from sidecar.memory import pin_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_pinned_mmap_threshold():
    assert pin_mmap_threshold() is True
