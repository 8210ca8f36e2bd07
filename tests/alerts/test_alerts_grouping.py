"""Grouping and caps, with a fake clock: many refusals make few notifications."""

from __future__ import annotations

import random
import string

from alerts_helpers import refusal

from sidecar.alerts.grouping import (
    FLOOD_REASON,
    RESOLVE,
    TRIGGER,
    UPDATE,
    Grouper,
    GroupingSettings,
)
from sidecar.alerts.model import OVERFLOW_DESTINATION
from sidecar.decision import Reason, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: float) -> tuple[Grouper, Clock]:
    clock = Clock()
    settings = GroupingSettings(resend_interval=60, resolve_after=300, **kw)  # type: ignore[arg-type]
    return Grouper(settings, pod={"namespace": "llm", "name": "gw"}, clock=clock), clock


def test_thousand_repeats_make_one_trigger_then_update_then_resolve() -> None:
    g, clock = make()
    for i in range(1000):
        g.submit(refusal(host=f"h{i}.litellm.cloud", path=f"/p/{i}"))
    notes = g.due()
    assert [n.kind for n in notes] == [TRIGGER]
    assert notes[0].alert["count"] == 1000
    assert notes[0].alert["destination"] == "litellm.cloud"
    assert len(notes[0].alert["sample_hosts"]) == 5
    assert g.due() == []  # nothing new, no page again
    g.submit(refusal())
    clock.now += 30
    assert g.due() == []  # within the resend window
    clock.now += 31
    notes = g.due()
    assert [(n.kind, n.changed) for n in notes] == [(UPDATE, True)]
    assert notes[0].alert["count"] == 1001
    clock.now += 61
    assert [(n.kind, n.changed) for n in g.due()] == [(UPDATE, False)]  # keep-alive
    clock.now = 1000 + 301  # 300 s after the last refusal
    notes = g.due()
    assert [n.kind for n in notes] == [RESOLVE]
    assert notes[0].alert["status"] == "resolved"
    assert g.due() == []
    g.submit(refusal())  # a new episode pages again
    assert [n.kind for n in g.due()] == [TRIGGER]


def test_allow_is_ignored() -> None:
    g, _ = make()
    g.submit(refusal(verdict=Verdict.ALLOW, reason=Reason.ALLOWED))
    assert g.due() == [] and g.submitted == 0


def test_spraying_registrable_domains_is_bounded_per_reason() -> None:
    g, _ = make(max_destinations_per_reason=20, max_new_per_minute=10_000, burst=10_000)
    rng = random.Random(7)
    for _ in range(10_000):
        name = "".join(rng.choices(string.ascii_lowercase, k=12))
        g.submit(refusal(host=f"{name}.com"))
    notes = g.due()
    assert len(notes) == 21
    overflow = [n for n in notes if n.alert["destination"] == OVERFLOW_DESTINATION]
    assert len(overflow) == 1 and overflow[0].alert["count"] == 10_000 - 20


def test_flood_of_distinct_fingerprints_is_rate_capped_and_says_so() -> None:
    g, clock = make(max_new_per_minute=30, burst=10)
    reasons = list(Reason)
    rng = random.Random(3)
    for i in range(10_000):
        g.submit(
            refusal(reason=rng.choice(reasons[1:]), host=f"x{i}.example", tenant=f"tenant-{i}")
        )
    notes = g.due()
    floods = [n for n in notes if n.alert["reason"] == FLOOD_REASON]
    normal = [n for n in notes if n.alert["reason"] != FLOOD_REASON]
    assert len(normal) == 10  # the burst
    assert 1 <= len(floods) <= 3  # one per severity at most
    suppressed = sum(n.alert["suppressed"] for n in floods)
    assert suppressed == g.suppressed == 10_000 - 10
    assert any("suppressed" in n.alert["summary"] for n in floods)
    # the bucket refills: 30 a minute
    clock.now += 60
    for i in range(100):
        g.submit(refusal(host=f"y{i}.example", tenant=f"other-{i}"))
    new = [n for n in g.due() if n.kind == TRIGGER]
    assert 9 <= len(new) <= 11


def test_table_full_goes_to_flood() -> None:
    g, _ = make(max_active=5, max_new_per_minute=10_000, burst=10_000)
    for i in range(50):
        g.submit(refusal(tenant=f"t{i}"))
    notes = g.due()
    assert len(notes) == 6
    assert sum(n.alert["suppressed"] for n in notes) == 45


def test_state_round_trip_restores_active_alerts() -> None:
    g, _ = make()
    g.submit(refusal(tenant="a"))
    g.submit(refusal(Reason.METADATA_ADDRESS, host="169.254.169.254", rule="netguard"))
    first = {n.fingerprint for n in g.due()}
    state = g.export_state()
    g2, clock2 = make()
    assert g2.import_state(state) == 2
    assert g2.due() == []  # already triggered before the restart: no second page
    clock2.now += 301
    resolved = g2.due()
    assert {n.fingerprint for n in resolved} == first
    assert all(n.kind == RESOLVE for n in resolved)


def test_bad_timestamp_does_not_break_the_flusher() -> None:
    g, _ = make()
    g.submit(refusal(at="yesterday"))  # type: ignore[arg-type]
    notes = g.due()
    assert [n.kind for n in notes] == [TRIGGER]
