"""Rate windows, limit checks and the anomaly baseline (issue 15). Pure: the clock is
an argument, counts come from a store (sidecar/usage_store.py).

Windows: a *sliding window counter* per rate. Each rate keeps one counter per fixed
window (minute or day, by epoch index) and estimates the last window's worth as
`previous * (1 - elapsed) + current`, where `elapsed` is the fraction of the current
window gone. Two integers per rate: cheap to share through Redis (`INCRBY` on a key
that expires), no burst of twice the limit at a window edge as fixed windows allow.

Admission: a request passes when, for every limited rate, `estimate + 1 <= limit`.
Requests are counted when admitted; tokens when the response reports them (the
request that crosses a token limit completes; the next one is refused).

Anomaly: per tenant, an exponentially weighted baseline of requests and tokens per
minute, fed one completed minute at a time (idle minutes as zeros). A tenant is
suspended when, after `warmup_minutes` of history, its current rate exceeds both
`factor` times its baseline and the floor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from enum import StrEnum

from sidecar.policy.usage_limits import AnomalyRule, FailureMode, RateLimit

MINUTE = 60
DAY = 86_400


class Metric(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"


@dataclasses.dataclass(frozen=True, slots=True)
class Meter:
    """One rate of one scope (a tenant or a provider), with its limit if it has one."""

    scope: str  # "tenant:team-a", "provider:openai"
    metric: Metric
    seconds: int  # MINUTE or DAY
    limit: int | None  # None: counted (for the baseline) but not limited
    on_backend_failure: FailureMode = FailureMode.CLOSED

    @property
    def name(self) -> str:
        per = "minute" if self.seconds == MINUTE else "day"
        return f"{self.metric.value}_per_{per}"

    def key(self, now: float, back: int = 0) -> str:
        """The counter of the window `back` windows before the one holding `now`."""
        index = window_index(now, self.seconds) - back
        return f"{self.scope}|{self.metric.value}|{self.seconds}|{index}"


@dataclasses.dataclass(frozen=True, slots=True)
class Counts:
    """A meter's counters: the current window's and the one before."""

    current: int
    previous: int


def window_index(now: float, seconds: int) -> int:
    return int(now // seconds)


def elapsed_fraction(now: float, seconds: int) -> float:
    return (now % seconds) / seconds


def estimate(counts: Counts, now: float, seconds: int) -> float:
    """The sliding estimate of the last `seconds` worth of the counted quantity."""
    return counts.previous * (1.0 - elapsed_fraction(now, seconds)) + counts.current


def admits(counts: Counts, now: float, seconds: int, limit: int) -> bool:
    return estimate(counts, now, seconds) + 1 <= limit


def retry_after(counts: Counts, now: float, seconds: int, limit: int) -> float:
    """Seconds until the estimate leaves room for one more (if nothing else is counted).

    Within this window the previous window's share decays linearly; if the current
    window alone is over, wait for the next window, where this one's count decays."""
    room = limit - 1
    elapsed = elapsed_fraction(now, seconds)
    if counts.current <= room:
        if counts.previous <= 0:
            return 0.0
        at = 1.0 - (room - counts.current) / counts.previous  # fraction where it fits
        return max(0.0, (at - elapsed) * seconds)
    in_next = 1.0 - room / counts.current
    return (1.0 - elapsed) * seconds + in_next * seconds


def retry_after_header(seconds: float) -> int:
    """Whole seconds for `Retry-After`, at least 1 (0 would invite an instant retry)."""
    return max(1, math.ceil(seconds))


def meters_for(
    limit: RateLimit | None, *, scope: str | None = None, counted: bool = False
) -> list[Meter]:
    """The meters of an entry. `counted`: requests and tokens per minute are kept even
    without a limit (the anomaly baseline needs them)."""
    if limit is None and not counted:
        return []
    scope = limit.scope if limit is not None else scope
    assert scope is not None
    mode = limit.on_backend_failure if limit is not None else FailureMode.OPEN
    rpm = limit.requests_per_minute if limit else None
    tpm = limit.tokens_per_minute if limit else None
    tpd = limit.tokens_per_day if limit else None
    out: list[Meter] = []
    if rpm is not None or counted:
        out.append(Meter(scope, Metric.REQUESTS, MINUTE, rpm, mode))
    if tpm is not None or counted:
        out.append(Meter(scope, Metric.TOKENS, MINUTE, tpm, mode))
    if tpd is not None:
        out.append(Meter(scope, Metric.TOKENS, DAY, tpd, mode))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Overrun:
    """The first limit a request would exceed."""

    meter: Meter
    observed: float  # the estimate at the time
    retry_after: float  # seconds


def first_overrun(meters: Sequence[Meter], counts: Sequence[Counts], now: float) -> Overrun | None:
    """The limit that refuses this request (the longest wait if several do), or None."""
    worst: Overrun | None = None
    for meter, count in zip(meters, counts, strict=True):
        if meter.limit is None or admits(count, now, meter.seconds, meter.limit):
            continue
        wait = retry_after(count, now, meter.seconds, meter.limit)
        observed = estimate(count, now, meter.seconds)
        if worst is None or wait > worst.retry_after:
            worst = Overrun(meter, observed, wait)
    return worst


# --- anomaly ---------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Baseline:
    """A tenant's usual requests and tokens per minute (EWMA over completed minutes)."""

    requests: float = 0.0
    tokens: float = 0.0
    first_minute: int | None = None  # first minute this tenant was seen
    last_minute: int | None = None  # last completed minute folded in

    def minutes_of_history(self, minute: int) -> int:
        return 0 if self.first_minute is None else minute - self.first_minute

    def fold(
        self, minute: int, previous: Counts | None, tokens: Counts | None, half_life: float
    ) -> None:
        """At the first request of `minute`: fold every completed minute not folded yet.
        `previous`: the tenant's request/token counters (their `previous` is minute-1)."""
        if self.first_minute is None:
            self.first_minute = minute
            self.last_minute = minute - 1
            return
        assert self.last_minute is not None
        if minute - 1 <= self.last_minute:
            return
        alpha = 1.0 - 0.5 ** (1.0 / half_life)
        idle = minute - 1 - self.last_minute - 1  # minutes with nothing we were told of
        if idle > 0:
            decay = (1.0 - alpha) ** min(idle, 1_000_000)
            self.requests *= decay
            self.tokens *= decay
        last_requests = previous.previous if previous is not None else 0
        last_tokens = tokens.previous if tokens is not None else 0
        self.requests += alpha * (last_requests - self.requests)
        self.tokens += alpha * (last_tokens - self.tokens)
        self.last_minute = minute - 1


@dataclasses.dataclass(frozen=True, slots=True)
class Burst:
    """Why a tenant is suspended: safe to log and page (numbers and model names)."""

    metric: Metric
    observed: float  # per minute
    baseline: float  # per minute
    threshold: float
    top_models: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        models = ", ".join(f"{m} {t}" for m, t in self.top_models) or "none reported"
        return (
            f"{self.metric.value} per minute {self.observed:.0f} over {self.threshold:.0f} "
            f"(baseline {self.baseline:.1f}); top models by tokens: {models}"
        )

    def as_record(self) -> dict[str, object]:
        return {
            "metric": self.metric.value,
            "observed_per_minute": round(self.observed, 1),
            "baseline_per_minute": round(self.baseline, 2),
            "threshold_per_minute": round(self.threshold, 1),
            "top_models": [list(m) for m in self.top_models],
        }


def detect_burst(
    rule: AnomalyRule,
    baseline: Baseline,
    now: float,
    requests: Counts,
    tokens: Counts,
) -> Burst | None:
    """A burst beyond the rule, or None (also None during the warm-up)."""
    minute = window_index(now, MINUTE)
    if baseline.minutes_of_history(minute) < rule.warmup_minutes:
        return None
    checks = (
        (Metric.REQUESTS, requests, baseline.requests, rule.floor_requests_per_minute),
        (Metric.TOKENS, tokens, baseline.tokens, rule.floor_tokens_per_minute),
    )
    for metric, counts, usual, floor in checks:
        threshold = max(float(floor), rule.factor * usual)
        observed = estimate(counts, now, MINUTE)
        if observed > threshold:
            return Burst(metric, observed, usual, threshold)
    return None


class ModelTally:
    """Tokens by model in the current and previous minute, for a burst's evidence.
    Bounded: at most `size` model names a minute, the rest counted as "other"."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._minute = -1
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}

    def add(self, now: float, model: str | None, tokens: int) -> None:
        self._roll(window_index(now, MINUTE))
        name = safe_model_name(model)
        if name not in self._current and len(self._current) >= self.size:
            name = "other"
        self._current[name] = self._current.get(name, 0) + tokens

    def top(self, now: float, count: int = 3) -> tuple[tuple[str, int], ...]:
        self._roll(window_index(now, MINUTE))
        merged: dict[str, int] = dict(self._previous)
        for name, tokens in self._current.items():
            merged[name] = merged.get(name, 0) + tokens
        ranked = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
        return tuple(ranked[:count])

    def _roll(self, minute: int) -> None:
        if minute == self._minute:
            return
        self._previous = self._current if minute == self._minute + 1 else {}
        self._current = {}
        self._minute = minute


def safe_model_name(model: str | None) -> str:
    """A provider-reported model name fit for logs and pages: short, printable, plain."""
    if not model:
        return "unknown"
    kept = "".join(c for c in model[:64] if c.isalnum() or c in "-._:/@")
    return kept or "unknown"
