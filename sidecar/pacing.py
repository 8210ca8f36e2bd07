"""Refusal pacing: a gateway flooding refused requests is answered more slowly, not
more expensively.

A refused request costs the sidecar a full HTTP parse, a decision, a log line, a metric
and an alert; a flood of them on keep-alive connections takes event-loop time from the
allowed traffic. Above `rate` refusals per second (after a burst of `burst`), each
further refusal is still decided, logged, counted and alerted at once (S9), and only
its *answer* waits, for a delay computed here (GCRA: the n-th refusal beyond the budget
waits until its slot). A waiting answer holds its connection, so a flooding client with
C connections gets at most about C / delay refusals per second, for the price of a
timer each. The delay is capped (`max_delay`), so no client waits longer than that.
Allowed requests are never delayed.

Pure: no mitmproxy, no network, a clock passed in for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_RATE = 20.0  # refusals per second answered without delay
MAX_DELAY = 1.0  # seconds: the longest a refusal's answer waits


class TokenBucket:
    """Token bucket: `rate` tokens a second, at most `capacity` held (full at the start).

    The DNS listener's rate limits and the alert pipeline's new-alert cap use it.
    """

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RefusalPacer:
    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: float | None = None,
        max_delay: float = MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
        on_paced: Callable[[], None] | None = None,
    ) -> None:
        """`rate` <= 0 turns pacing off. `burst` defaults to two seconds' worth."""
        self.rate = rate
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.tolerance = (burst if burst is not None else 2 * rate) * self.interval
        self.max_delay = max_delay
        self._clock = clock
        self._tat = 0.0  # theoretical arrival time of the next refusal (GCRA)
        self.paced = 0  # refusals whose answer was delayed
        self._on_paced = on_paced

    def delay(self) -> float:
        """Seconds to hold this refusal's answer (0.0 within the budget)."""
        if self.interval == 0.0:
            return 0.0
        now = self._clock()
        tat = max(self._tat, now)
        wait = tat - now - self.tolerance
        # Never schedule past what the cap lets anyone wait, so a long flood does not
        # push the schedule (and the next legitimate refusal's wait) ever further out.
        self._tat = min(tat + self.interval, now + self.tolerance + self.max_delay)
        if wait <= 1e-6:  # within the budget (float rounding of the schedule aside)
            return 0.0
        self.paced += 1
        if self._on_paced is not None:
            self._on_paced()
        return min(wait, self.max_delay)
