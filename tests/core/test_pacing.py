"""Refusal pacing (issue 10): the delay schedule, with a fake clock (no sleeping)."""

from __future__ import annotations

import subprocess
import sys

from sidecar.pacing import RefusalPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_module_imports_no_mitmproxy() -> None:
    code = "import sys, sidecar.pacing; assert 'mitmproxy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_refusals_within_rate_and_burst_are_answered_at_once() -> None:
    clock = Clock()
    pacer = RefusalPacer(rate=10, burst=20, clock=clock)
    assert [pacer.delay() for _ in range(20)] == [0.0] * 20
    for _ in range(50):  # then exactly the rate: still no wait
        clock.now += 0.1
        assert pacer.delay() == 0.0
    assert pacer.paced == 0


def test_refusal_flood_beyond_the_burst_waits_for_its_slot_up_to_the_cap() -> None:
    clock = Clock()
    paced: list[int] = []
    pacer = RefusalPacer(rate=10, burst=5, max_delay=1.0, clock=clock,
                         on_paced=lambda: paced.append(1))  # fmt: skip
    delays = [pacer.delay() for _ in range(40)]  # all at the same instant
    assert delays[:6] == [0.0] * 6  # the burst (GCRA: burst + 1 at one instant)
    assert all(abs(d - 0.1 * i) < 1e-9 for i, d in enumerate(delays[6:16], start=1))
    assert all(abs(d - 1.0) < 1e-9 for d in delays[16:])  # capped: nobody waits longer
    assert pacer.paced == 34 and len(paced) == 34


def test_a_long_flood_does_not_push_the_schedule_out_forever() -> None:
    """After a flood stops, the budget comes back within burst + cap, not flood length."""
    clock = Clock()
    pacer = RefusalPacer(rate=10, burst=5, max_delay=1.0, clock=clock)
    for _ in range(100_000):
        pacer.delay()
    clock.now += 1.0 + 0.5 + 0.1  # cap + burst window + one interval
    assert pacer.delay() == 0.0


def test_rate_zero_turns_pacing_off() -> None:
    pacer = RefusalPacer(rate=0)
    assert all(pacer.delay() == 0.0 for _ in range(10_000))
    assert pacer.paced == 0
