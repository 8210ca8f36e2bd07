"""Open client connections counted once for the pod, whichever worker accepted them.

With `--workers N`, the kernel hands each new connection to whichever worker accepts
first; the split is uneven, and a gateway is usually one source. Dividing the
per-source limit by N made a worker with more than its share refuse while another had
room. So the workers count in one shared table instead: a memory file (`memfd`) the
supervisor creates and every worker maps, one row per worker of `[total, slot...]`
32-bit counters, a source's slot chosen by a stable hash of its address.

- Each worker writes only its own row (no lock); admission sums a column over the
  rows. Two workers admitting at the same instant can each see the other's count
  before its increment: the pod can go over a limit by at most N - 1 connections.
- Sources that share a slot share a count: that only refuses early, never admits
  more, and with 4096 slots and the handful of sources a pod has it is rare.
- A dead worker's connections died with it: the supervisor zeroes its row before the
  replacement starts, so its counts do not hold the pod's limits forever.

Pure: no mitmproxy, no network. `ConnectionCounter` (sidecar/limits.py) is the
one-process form of the same interface, with the same refusal wording.
"""

from __future__ import annotations

import mmap
import os
import zlib

from sidecar.limits import connection_refusal

__all__ = ["SharedConnectionCounter", "SharedConnectionTable"]

SLOTS = 4096
_COUNTER = 4  # bytes: "i"
_ROW = 1 + SLOTS  # a worker's total, then its per-source slots


def _size(workers: int) -> int:
    return workers * _ROW * _COUNTER


class SharedConnectionTable:
    """The mapped table: `workers` rows of 1 + SLOTS counters."""

    def __init__(self, fd: int, workers: int) -> None:
        self.fd = fd
        self.workers = workers
        self._map = mmap.mmap(fd, _size(workers))
        self.counts = memoryview(self._map).cast("i")

    @classmethod
    def create(cls, workers: int) -> SharedConnectionTable:
        """A new zeroed table in a memory file (its fd is passed to the workers)."""
        fd = os.memfd_create("egress-sidecar-connections", 0)  # no MFD_CLOEXEC: inherited
        os.ftruncate(fd, _size(workers))
        return cls(fd, workers)

    def row(self, worker: int) -> int:
        return worker * _ROW

    def clear(self, worker: int) -> None:
        """Forget a dead worker's connections (the supervisor, before restarting it)."""
        start = self.row(worker)
        self.counts[start : start + _ROW] = memoryview(bytes(_ROW * _COUNTER)).cast("i")

    def column(self, offset: int) -> int:
        return sum(self.counts[w * _ROW + offset] for w in range(self.workers))


def _slot(source: str) -> int:
    return 1 + zlib.crc32(source.encode("utf-8", "surrogateescape")) % SLOTS


class SharedConnectionCounter:
    """One worker's view: `ConnectionCounter`'s interface over the shared table."""

    def __init__(self, table: SharedConnectionTable, worker: int, total: int, per_source: int):
        self.table = table
        self.total_limit = total
        self.per_source_limit = per_source
        self._base = table.row(worker)

    @property
    def total(self) -> int:
        return self.table.column(0)

    def open(self, source: str) -> str | None:
        """None if admitted (and counted); otherwise why not, safe to log."""
        slot = _slot(source)
        why = connection_refusal(
            self.table.column(0), self.total_limit, self.table.column(slot), self.per_source_limit
        )
        if why is not None:
            return why
        counts = self.table.counts
        counts[self._base] += 1
        counts[self._base + slot] += 1
        return None

    def close(self, source: str) -> None:
        counts, slot = self.table.counts, _slot(source)
        if counts[self._base + slot] <= 0:
            return
        counts[self._base] -= 1
        counts[self._base + slot] -= 1

    def open_from(self, source: str) -> int:
        return self.table.column(_slot(source))
