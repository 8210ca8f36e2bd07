"""Decision lines to stdout without ever blocking the proxy on the reader.

A write to a pipe blocks once the pipe is full (a reader that stopped reading: a log
shipper stuck, `| less` left open) and raises once the reader is gone (`| head -1`).
Written from the event loop, the first stalls every connection and the SIGTERM
handler (the loop never gets to run it); so lines go to a bounded queue that one
daemon thread drains with `os.write`. A line that does not fit the queue, or that
cannot be written because the reader is gone, is lost and counted (`on_lost`), never
waited for. Nothing here touches `sys.stdout`: its buffer, flushed at interpreter exit,
would block or raise there instead.

The thread is the fallback, not the path: a wake-up per line (a futex, two thread
switches and a GIL hand-over) cost the proxy about 5 % of its CPU under load (issue
17). When stdout is a pipe, the line is first written from the caller's thread
through a second open description of the same pipe set non-blocking (the pod's
stdout description itself keeps its flags): it goes out at once, or the pipe is full
and what is left of the line goes to the queue, in order, behind which every later
line waits until the thread has drained it. A regular file never waits for a reader
and is written directly too.
"""

from __future__ import annotations

import collections
import os
import stat
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
        self._direct = _direct_descriptor(fd)
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
                if not self._pending and self._direct is not None:
                    # Nothing queued (nor being written by the thread): write it now.
                    line = line[self._write_now(line) :]
                    if not line:
                        return
                self._pending.append(line)
                self._pending_bytes += len(line)
                self._cond.notify()
        if lost:
            self._on_lost(1)

    def close(self) -> None:
        """Close the second description of the pipe (the pipe reaches EOF only once every
        writer end is closed). Later lines go through the thread."""
        with self._cond:
            direct, self._direct = self._direct, None
        if direct is not None and direct != self._fd:
            os.close(direct)

    def _write_now(self, line: bytes) -> int:
        """Bytes of `line` written without waiting (0 when the pipe is full; an error is
        left to the thread's blocking write, which tells a gone reader)."""
        assert self._direct is not None
        try:
            return os.write(self._direct, line)
        except OSError:
            return 0

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


def _direct_descriptor(fd: int) -> int | None:
    """A descriptor to write `fd`'s lines through without ever blocking, or None.

    A pipe or FIFO: reopened through /proc/self/fd, which gives a second open file
    description of the same pipe, set O_NONBLOCK (setting it on `fd` would change the
    pod's stdout for every process sharing it). A regular file: `fd` itself. Anything
    else (a terminal, a socket): None, every line goes through the thread."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return fd
        if stat.S_ISFIFO(mode):
            return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        pass  # no /proc, or a FIFO without a reader: the thread alone
    return None
