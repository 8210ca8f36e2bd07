"""LineWriter: a reader that stops reading or goes away never blocks a writer."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from sidecar.line_writer import LineWriter


def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_stalled_reader_never_blocks_the_writer_and_overflow_is_counted():
    read_end, write_end = os.pipe()
    lost: list[int] = []
    writer = LineWriter(write_end, lost.append, max_pending_bytes=10_000)
    line = b"x" * 999 + b"\n"
    started = time.monotonic()
    for _ in range(200):  # 200 kB: more than the pipe (64 kB) and the queue hold
        writer.write(line)
    assert time.monotonic() - started < 5  # returned: nothing waited for the reader
    assert _wait(lambda: sum(lost) > 0)
    # The reader comes back: every line not counted as lost arrives, whole and once.
    received = bytearray()
    stop = threading.Event()
    reader = threading.Thread(target=_read_until, args=(read_end, received, stop), daemon=True)
    reader.start()
    assert writer.flush(10)
    assert _wait(lambda: len(received) == (200 - sum(lost)) * len(line))
    stop.set()
    reader.join(10)
    assert received == line * (200 - sum(lost))
    os.close(read_end)  # the reader goes: the next write fails, and it is counted
    before = sum(lost)
    writer.write(line)
    assert _wait(lambda: writer.broken)
    assert sum(lost) == before + 1
    writer.write(line)  # from now on lost at once
    assert sum(lost) == before + 2
    writer.close()
    os.close(write_end)


def _read_until(fd: int, into: bytearray, stop: threading.Event) -> None:
    """Read `fd` until `stop` is set (polled, so the thread never blocks in a read)."""
    while not stop.is_set():
        if select.select([fd], [], [], 0.05)[0]:
            into += os.read(fd, 65536)


@pytest.mark.parametrize("kind", ["pipe", "regular file"])
def test_lines_reach_a_reader_in_order(kind, tmp_path):
    if kind == "pipe":
        read_end, write_end = os.pipe()
    else:
        path = tmp_path / "decisions.log"
        write_end = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = LineWriter(write_end)
    for n in range(100):
        writer.write(b"%d\n" % n)
    assert writer.flush(10)
    writer.close()
    os.close(write_end)
    if kind == "pipe":
        with os.fdopen(read_end, "rb") as reader:
            written = reader.read()
    else:
        written = path.read_bytes()
    assert written.split() == [b"%d" % n for n in range(100)]


def test_the_shared_stdout_description_stays_blocking_for_everyone_else():
    """Lines go through a second, non-blocking description of the pipe: O_NONBLOCK set
    on stdout itself would reach every process sharing it (the runtime's, a shell's)."""
    import fcntl

    read_end, write_end = os.pipe()
    writer = LineWriter(write_end)
    writer.write(b"one\n")
    assert writer.flush(10)
    assert not fcntl.fcntl(write_end, fcntl.F_GETFL) & os.O_NONBLOCK
    assert os.read(read_end, 100) == b"one\n"
    writer.close()
    os.close(write_end)
    os.close(read_end)
