"""The DNS listener's admission core (issue 10): rates, fairness, bounded state and
bounded reporting. Pure: a fake clock, no network."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.dns_limits import DnsAdmission, DnsLimits


def test_one_noisy_source_does_not_spend_the_shared_budget():
    adm = DnsAdmission(DnsLimits(max_qps=100, max_qps_per_source=20), now=0.0)
    noisy = [adm.admit("10.0.0.2", 0.5) for _ in range(10_000)]
    assert sum(a.allowed for a in noisy) == 20
    quiet = [adm.admit(f"10.0.1.{i}", 0.5) for i in range(4) for _ in range(20)]
    assert all(a.allowed for a in quiet)  # 4 x 20 = the other 80 of the 100


def test_total_limit_refuses_when_every_source_is_within_its_own():
    adm = DnsAdmission(DnsLimits(max_qps=50, max_qps_per_source=10), now=0.0)
    results = [adm.admit(f"10.0.0.{i}", 0.0) for i in range(10) for _ in range(10)]
    assert sum(a.allowed for a in results) == 50
    assert {a.limit for a in results if not a.allowed} == {"total"}


def test_rate_refills_over_time():
    adm = DnsAdmission(DnsLimits(max_qps=100, max_qps_per_source=10), now=0.0)
    assert sum(adm.admit("a", 0.0).allowed for _ in range(50)) == 10
    assert sum(adm.admit("a", 1.0).allowed for _ in range(50)) == 10


def test_flood_is_reported_once_then_as_counts_per_interval():
    adm = DnsAdmission(DnsLimits(max_qps=100, max_qps_per_source=1, report_interval=10), 0.0)
    adm.admit("a", 0.0)
    refused = [adm.admit("a", 0.001 * i) for i in range(1, 5001)]
    assert sum(a.first for a in refused) == 1 and refused[0].first
    assert adm.summaries(5.0) == []  # within the interval: nothing yet
    (report,) = adm.summaries(10.5)
    not_allowed = sum(not a.allowed for a in refused)
    assert not_allowed >= 4990  # 1 question per second refills
    assert (report.source, report.count) == ("a", not_allowed - 1)
    assert adm.summaries(30.0) == []


def test_state_is_bounded_and_evicted_counts_are_not_lost():
    adm = DnsAdmission(DnsLimits(max_qps=1e6, max_qps_per_source=1, max_sources=100), 0.0)
    firsts = refused = 0
    for i in range(10_000):
        for _ in range(3):  # one answered, two refused
            a = adm.admit(f"src{i}", 0.0)
            refused += not a.allowed
            firsts += a.first
        assert adm.tracked_sources <= 100
    reports = adm.summaries(100.0)
    assert refused == 20_000
    assert firsts == 100  # first lines capped at max_sources per interval
    assert firsts + sum(r.count for r in reports) == refused  # every refusal reported
    assert len(reports) <= 100 + 100  # evicted (capped, then merged) + tracked


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 0.2)), min_size=1, max_size=3000))
def test_decision_lines_are_bounded_whatever_the_traffic(events):
    adm = DnsAdmission(
        DnsLimits(max_qps=30, max_qps_per_source=5, max_sources=8, report_interval=10), 0.0
    )
    now, lines, refused = 0.0, 0, 0
    for source, step in events:
        now += step
        a = adm.admit(f"s{source}", now)
        refused += not a.allowed
        lines += a.first
        lines += len(adm.summaries(now))
    lines += len(adm.summaries(now + 10))
    assert lines <= refused  # never more lines than refusals
    # 21 sources churning through 8 entries: at most 3 x 8 lines per interval in all
    assert lines <= 3 * 8 * (now / 10 + 2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.floats(0, 0.2)), min_size=1, max_size=3000))
def test_each_remembered_source_gets_at_most_two_lines_per_interval(events):
    adm = DnsAdmission(
        DnsLimits(max_qps=30, max_qps_per_source=5, max_sources=8, report_interval=10), 0.0
    )
    now, lines = 0.0, 0
    for source, step in events:
        now += step
        lines += adm.admit(f"s{source}", now).first
        lines += len(adm.summaries(now))
    lines += len(adm.summaries(now + 10))
    assert lines <= 2 * 8 * (now / 10 + 2)


def test_per_source_rate_above_total_is_rejected():
    with pytest.raises(ValueError, match="must not exceed"):
        DnsLimits(max_qps=10, max_qps_per_source=20)
