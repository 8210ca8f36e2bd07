"""records.Children looks labelled children up once (issue 17): the same series as
`labels()`, counted in the same registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from sidecar.decision import Decision, Reason, Verdict
from sidecar.records import Children, Metrics


def test_children_are_the_metrics_own_children():
    registry = CollectorRegistry()
    counter = Counter("things", "Things.", ["kind", "where"], registry=registry)
    children = Children(counter)
    assert children("a", "b") is counter.labels("a", "b")
    assert children("a", "b") is children("a", "b")
    children("a", "b").inc()
    counter.labels("a", "b").inc(2)
    children("a", "c").inc()
    assert registry.get_sample_value("things_total", {"kind": "a", "where": "b"}) == 3
    assert registry.get_sample_value("things_total", {"kind": "a", "where": "c"}) == 1


def test_recorded_decisions_are_counted_by_outcome_reason_and_provider():
    metrics = Metrics()
    metrics.set_providers(frozenset({"openai"}))
    allowed = Decision(Verdict.ALLOW, Reason.ALLOWED, "providers.openai", "api.openai.com", 443)
    for decision in (allowed, allowed, allowed.with_context(provider="openai")):
        metrics.record(decision)
    labels = {"decision": "allow", "reason": "allowed"}
    sample = metrics.registry.get_sample_value
    assert sample("egress_sidecar_decisions_total", {**labels, "provider": "none"}) == 2
    assert sample("egress_sidecar_decisions_total", {**labels, "provider": "openai"}) == 1
