"""Windows, limits, Retry-After, the baseline, warm-up and floor: the pure core of
issue 15, with the clock injected (no sleeps)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.metering import (
    DAY,
    MINUTE,
    Baseline,
    Counts,
    Meter,
    Metric,
    ModelTally,
    admits,
    detect_burst,
    estimate,
    first_overrun,
    meters_for,
    retry_after,
    retry_after_header,
    safe_model_name,
)
from sidecar.policy.model import SourceRef
from sidecar.policy.usage_limits import AnomalyRule, FailureMode, RateLimit

T0 = 1_800_000_000.0 - (1_800_000_000.0 % DAY)  # a day (and minute) boundary


@pytest.mark.parametrize(
    ("current", "previous", "into", "expected"),
    [
        (0, 0, 0.0, 0.0),
        (10, 0, 30.0, 10.0),
        (0, 60, 0.0, 60.0),  # at the window's start the previous counts whole
        (0, 60, 30.0, 30.0),  # half-way: half of it
        (5, 60, 45.0, 20.0),
        (0, 60, 59.999, 0.001),
    ],
)
def test_sliding_estimate(current, previous, into, expected):
    assert estimate(Counts(current, previous), T0 + into, MINUTE) == pytest.approx(
        expected, abs=1e-2
    )


@pytest.mark.parametrize(
    ("current", "previous", "into", "limit", "admitted"),
    [
        (9, 0, 10.0, 10, True),  # the 10th request of a limit of 10
        (10, 0, 10.0, 10, False),
        (0, 20, 30.0, 10, False),  # 10 carried over from the previous minute
        (0, 20, 31.0, 10, False),  # ... decaying: 9.67 + 1 does not fit yet
        (0, 20, 33.5, 10, True),  # 8.83 + 1 does
    ],
)
def test_admits_while_there_is_room_for_one(current, previous, into, limit, admitted):
    assert admits(Counts(current, previous), T0 + into, MINUTE, limit) is admitted


def test_retry_after_within_the_window_while_the_previous_decays():
    counts = Counts(current=0, previous=20)
    wait = retry_after(counts, T0 + 15.0, MINUTE, limit=10)
    # 20 * (1 - x) + 1 <= 10  ->  x = 0.55 of the minute: 33 s, 15 s gone
    assert wait == pytest.approx(18.0)
    assert admits(counts, T0 + 15.0 + wait + 1e-6, MINUTE, 10)
    assert not admits(counts, T0 + 15.0 + wait - 0.5, MINUTE, 10)


def test_retry_after_in_the_next_window_when_this_one_is_full():
    counts = Counts(current=10, previous=0)
    wait = retry_after(counts, T0 + 40.0, MINUTE, limit=10)
    # rest of this minute (20 s), then 10 * (1 - y) + 1 <= 10 -> y = 0.1 (6 s)
    assert wait == pytest.approx(26.0)
    nxt = T0 + 40.0 + wait + 1e-6
    assert admits(Counts(0, 10), nxt, MINUTE, 10)


@given(
    current=st.integers(0, 10_000),
    previous=st.integers(0, 10_000),
    into=st.floats(0, 59.99),
    limit=st.integers(1, 5_000),
)
def test_waiting_retry_after_always_admits(current, previous, into, limit):
    """Property: after Retry-After (with no new traffic) the request is admitted."""
    now = T0 + into
    counts = Counts(current, previous)
    wait = retry_after(counts, now, MINUTE, limit)
    later = now + wait + 1e-6
    if later - T0 >= MINUTE:  # the windows rolled: this window is now the previous one
        shifted = Counts(0, current) if later - T0 < 2 * MINUTE else Counts(0, 0)
        assert admits(shifted, later, MINUTE, limit)
    else:
        assert admits(counts, later, MINUTE, limit)
    if admits(counts, now, MINUTE, limit):
        assert wait == 0.0


def test_retry_after_header_is_whole_seconds_and_never_zero():
    assert retry_after_header(0.0) == 1
    assert retry_after_header(0.2) == 1
    assert retry_after_header(18.0) == 18
    assert retry_after_header(18.01) == 19


def _limit(**rates):
    return RateLimit(
        scope="tenant:a",
        requests_per_minute=rates.get("rpm"),
        tokens_per_minute=rates.get("tpm"),
        tokens_per_day=rates.get("tpd"),
        on_backend_failure=FailureMode.CLOSED,
        source=SourceRef("p.yaml", 3),
    )


def test_meters_of_an_entry_and_of_a_counted_tenant():
    names = [m.name for m in meters_for(_limit(rpm=5, tpd=100))]
    assert names == ["requests_per_minute", "tokens_per_day"]
    counted = meters_for(None, scope="tenant:b", counted=True)
    assert [(m.name, m.limit) for m in counted] == [
        ("requests_per_minute", None),
        ("tokens_per_minute", None),
    ]
    assert meters_for(None) == []


def test_first_overrun_picks_the_longest_wait():
    meters = meters_for(_limit(rpm=10, tpm=1000, tpd=5000))
    counts = [Counts(3, 0), Counts(1000, 0), Counts(6000, 0)]
    over = first_overrun(meters, counts, T0 + 30.0)
    assert over is not None
    assert over.meter.name == "tokens_per_day"
    assert over.retry_after > MINUTE
    assert first_overrun(meters, [Counts(3, 0), Counts(10, 0), Counts(10, 0)], T0) is None


def test_meter_keys_name_the_window():
    meter = Meter("tenant:a", Metric.TOKENS, DAY, 5)
    assert meter.key(T0 + 5) != meter.key(T0 + DAY + 5)
    assert meter.key(T0 + DAY + 5, back=1) == meter.key(T0 + 5)


# --- anomaly ----------------------------------------------------------------------------

RULE = AnomalyRule(
    factor=10, warmup_minutes=30, floor_requests_per_minute=60, floor_tokens_per_minute=10_000,
    half_life_minutes=10,
)  # fmt: skip


def _warm(baseline: Baseline, minutes: int, rpm: int, tpm: int) -> float:
    """Feed `minutes` minutes of steady traffic; returns the time after them."""
    for m in range(minutes + 1):
        baseline.fold(int(T0 // MINUTE) + m, Counts(0, rpm), Counts(0, tpm), RULE.half_life_minutes)
    return T0 + minutes * MINUTE


def test_baseline_follows_steady_traffic():
    baseline = Baseline()
    _warm(baseline, 120, rpm=20, tpm=4000)
    assert baseline.requests == pytest.approx(20, rel=0.01)
    assert baseline.tokens == pytest.approx(4000, rel=0.01)


def test_idle_minutes_decay_the_baseline():
    baseline = Baseline()
    now = _warm(baseline, 120, rpm=20, tpm=4000)
    minute = int(now // MINUTE)
    # Minutes 120..129 had nothing: ten minutes, one half-life.
    baseline.fold(minute + 10, Counts(0, 0), Counts(0, 0), RULE.half_life_minutes)
    assert baseline.requests == pytest.approx(10, rel=0.05)  # one half-life of nothing


def test_burst_after_warm_up_beyond_factor_and_floor_is_detected():
    baseline = Baseline()
    now = _warm(baseline, 60, rpm=20, tpm=4000) + 30
    # 300 requests in the last minute: over 10 x 20 = 200 and over the floor of 60.
    burst = detect_burst(RULE, baseline, now, Counts(300, 0), Counts(1000, 0))
    assert burst is not None and burst.metric is Metric.REQUESTS
    assert burst.threshold == pytest.approx(200, rel=0.02)
    assert "requests per minute 300" in burst.describe()
    tokens = detect_burst(RULE, baseline, now, Counts(25, 0), Counts(100_000, 0))
    assert tokens is not None and tokens.metric is Metric.TOKENS


def test_no_suspension_during_warm_up():
    baseline = Baseline()
    now = _warm(baseline, 29, rpm=1, tpm=10) + 30  # 29 minutes of history < 30
    assert detect_burst(RULE, baseline, now, Counts(10_000, 0), Counts(10**7, 0)) is None
    baseline.fold(int(now // MINUTE) + 1, Counts(0, 1), Counts(0, 10), RULE.half_life_minutes)
    later = now + MINUTE
    assert detect_burst(RULE, baseline, later, Counts(10_000, 0), Counts(10**7, 0)) is not None


def test_quiet_tenant_is_protected_by_the_floor():
    """A tenant that sent 1 request a minute starts real work: 50 a minute is 50 times
    its baseline but under the floor of 60, so it is not suspended."""
    baseline = Baseline()
    now = _warm(baseline, 60, rpm=1, tpm=100) + 30
    assert detect_burst(RULE, baseline, now, Counts(50, 0), Counts(9_000, 0)) is None
    assert detect_burst(RULE, baseline, now, Counts(61, 0), Counts(9_000, 0)) is not None


def test_new_tenant_first_request_starts_the_warm_up():
    baseline = Baseline()
    now = T0 + 5
    baseline.fold(int(now // MINUTE), Counts(1, 0), Counts(0, 0), 10)
    assert baseline.minutes_of_history(int(now // MINUTE)) == 0
    assert detect_burst(RULE, baseline, now, Counts(10_000, 0), Counts(0, 0)) is None


def test_model_tally_is_bounded_and_ranks_by_tokens():
    tally = ModelTally(size=3)
    for i in range(10):
        tally.add(T0 + 1, f"model-{i}", 10 + i)
    tally.add(T0 + 2, "model-0", 1000)
    top = tally.top(T0 + 3)
    assert top[0] == ("model-0", 1010)
    assert ("other", sum(10 + i for i in range(3, 10))) in top
    assert tally.top(T0 + 3 * MINUTE) == ()  # two minutes later: forgotten


def test_model_names_from_a_provider_are_made_safe():
    assert safe_model_name("gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"
    assert (
        safe_model_name('x"\n<script>' + "a" * 100) == "xscript" + "a" * 53
    )  # cut to 64, then filtered
    assert safe_model_name(None) == "unknown"
