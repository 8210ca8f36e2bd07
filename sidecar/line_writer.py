"""Decision lines to stdout without ever blocking the proxy on the reader.

A write to a pipe blocks once the pipe is full (a reader that stopped reading: a log
shipper stuck, `| less` left open) and raises once the reader is gone (`| head -1`).
Written from the event loop, the first stalls every connection and the SIGTERM
handler (the loop never gets to run it); so lines go to a bounded queue that one
daemon thread drains with `os.write`. A line that does not fit the queue, or that
cannot be written because the reader is gone, is lost and counted (`on_lost`), never
waited for. Nothing here touches `sys.stdout`: its buffer, flushed at interpreter exit,
would block or raise there instead.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable

__all__ = ["LineWriter"]

MAX_PENDING_BYTES = 8 * 1024 * 1024  # about 20 000 decision lines


class LineWriter:
    def __init__(
        self,
        fd: int,
        on_lost: Callable[[int], None] = lambda n: None,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._fd = fd
        self._on_lost = on_lost
        self._max = max_pending_bytes
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._broken = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._drain, name="decision-lines", daemon=True)
        self._thread.start()

    @property
    def broken(self) -> bool:
        return self._broken

    def write(self, line: bytes) -> None:
        """Queue one line; never blocks on the reader."""
        with self._cond:
            if self._broken or self._pending_bytes + len(line) > self._max:
                lost = True
            else:
                lost = False
                self._pending.append(line)
                self._pending_bytes += len(line)
                self._cond.notify()
        if lost:
            self._on_lost(1)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the queue to drain (at shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending or self._broken, timeout)

    def _drain(self) -> None:
        # Everything queued goes out in one write: under load that is one wake-up and
        # one syscall for many lines, not a thread switch per line.
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                batch = list(self._pending)
            data = b"".join(batch)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:  # EPIPE: the reader is gone for good
                with self._cond:
                    lost = len(self._pending)
                    self._pending.clear()
                    self._pending_bytes = 0
                    self._broken = True
                    self._cond.notify_all()
                self._on_lost(lost)
                return
            with self._cond:
                for _ in batch:
                    self._pending.popleft()
                self._pending_bytes -= len(data)
                self._cond.notify_all()
