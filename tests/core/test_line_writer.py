"""LineWriter: a reader that stops reading or goes away never blocks a writer."""

from __future__ import annotations

import os
import time

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
    assert writer.flush(10)
    assert sum(lost) < 200  # what the pipe took was written, not counted
    os.close(read_end)  # the reader goes: the next write fails, and it is counted
    before = sum(lost)
    writer.write(line)
    assert _wait(lambda: writer.broken)
    assert sum(lost) == before + 1
    writer.write(line)  # from now on lost at once
    assert sum(lost) == before + 2
    os.close(write_end)


def test_lines_reach_a_reader_in_order():
    read_end, write_end = os.pipe()
    writer = LineWriter(write_end)
    for n in range(100):
        writer.write(b"%d\n" % n)
    assert writer.flush(10)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.read().split() == [b"%d" % n for n in range(100)]
