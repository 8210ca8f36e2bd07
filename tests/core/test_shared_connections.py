"""Open connections counted once for the pod across workers (issue 17): a worker that
accepted more than 1/N of a source's connections no longer refuses while another has
room, and the pod as a whole still holds no more than configured."""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from sidecar.shared_connections import SharedConnectionCounter, SharedConnectionTable


def pod(workers: int, total: int, per_source: int) -> list[SharedConnectionCounter]:
    table = SharedConnectionTable.create(workers)
    return [SharedConnectionCounter(table, w, total, per_source) for w in range(workers)]


def test_one_worker_holding_every_connection_of_a_source_is_not_refused_early():
    # The kernel handed all four of the gateway's connections to worker 0: with the
    # limit split per worker (2 each), the third was refused while worker 1 had room.
    first, _ = pod(2, total=100, per_source=4)
    assert [first.open("10.0.0.7") for _ in range(4)] == [None] * 4


def test_the_pod_holds_no_more_than_the_per_source_limit_over_all_workers():
    first, second = pod(2, total=100, per_source=4)
    for _ in range(3):
        assert first.open("10.0.0.7") is None
    assert second.open("10.0.0.7") is None
    assert "4 open connections from this source, limit 4" in (second.open("10.0.0.7") or "")
    assert "from this source" in (first.open("10.0.0.7") or "")
    assert second.open("10.0.0.8") is None  # another source has its own count


def test_the_total_limit_is_the_pods():
    first, second = pod(2, total=3, per_source=10)
    assert first.open("a") is None and first.open("b") is None and second.open("c") is None
    assert "3 open connections, limit 3" in (second.open("d") or "")
    second.close("c")
    assert first.open("d") is None


def test_a_dead_workers_connections_are_forgotten_when_its_row_is_cleared():
    first, second = pod(2, total=100, per_source=2)
    assert second.open("gw") is None and second.open("gw") is None
    assert first.open("gw") is not None
    first.table.clear(1)  # the supervisor, after worker 1 exited
    assert first.open("gw") is None
    assert first.open_from("gw") == 1


def test_closing_what_this_worker_never_opened_changes_nothing():
    first, second = pod(2, total=10, per_source=10)
    assert first.open("a") is None
    second.close("a")  # worker 1 never counted it: never negative, never another's
    assert first.open_from("a") == 1 and first.total == 1


def test_workers_in_other_processes_see_the_same_counts():
    """The table is a memory file: a child process that maps the fd counts into the
    same rows (as a worker started by the supervisor does)."""
    table = SharedConnectionTable.create(2)
    code = (
        "import sys; from sidecar.shared_connections import *; "
        "t = SharedConnectionTable(int(sys.argv[1]), 2); "
        "c = SharedConnectionCounter(t, 1, 100, 3); "
        "assert c.open('gw') is None and c.open('gw') is None"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(table.fd)],
        pass_fds=[table.fd],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    here = SharedConnectionCounter(table, 0, 100, 3)
    assert here.open_from("gw") == 2
    assert here.open("gw") is None
    assert "from this source" in (here.open("gw") or "")


@given(st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.sampled_from("abcd")), max_size=200))
def test_the_pod_never_exceeds_its_limits_whichever_worker_opens(ops):
    workers = pod(3, total=6, per_source=3)
    held: dict[tuple[int, str], int] = {}
    for worker, opening, source in ops:
        counter = workers[worker]
        if opening:
            if counter.open(source) is None:
                held[worker, source] = held.get((worker, source), 0) + 1
        elif held.get((worker, source)):
            counter.close(source)
            held[worker, source] -= 1
        assert workers[0].total == sum(held.values()) <= 6
        for s in "abcd":
            assert workers[0].open_from(s) == sum(n for (_, x), n in held.items() if x == s) <= 3
