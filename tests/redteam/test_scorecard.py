"""The redteam's judgement, canaries and catalogue (pure: no network)."""

from __future__ import annotations

import pytest

from sidecar.credentials.detect import scan_prefixed
from sidecar.redteam.canaries import MARK, Canaries
from sidecar.redteam.catalogue import GROUPS, Http, build_catalogue
from sidecar.redteam.scorecard import (
    EXIT_INCONCLUSIVE,
    EXIT_MISSED,
    Observation,
    ProbeOutcome,
    exit_code,
    judge,
    render_text,
)

CATALOGUE = {p.name: p for p in build_catalogue(Canaries.new("t3st"))}
LOOKALIKE = CATALOGUE["harvest_posted_over_https_to_lookalike_domain"]
HELD_KEY = CATALOGUE["gateway_holding_a_real_provider_key"]


@pytest.mark.parametrize(
    ("probe", "seen", "outcome"),
    [
        (LOOKALIKE, Observation(reason="host_not_allowed"), ProbeOutcome.BLOCKED),
        # The policy let the look-alike through; only DNS failing stopped it: a miss.
        (LOOKALIKE, Observation(reason="dns_failure"), ProbeOutcome.MISSED),
        (LOOKALIKE, Observation(reason="upstream_tls_failure"), ProbeOutcome.MISSED),
        # Something other than the sidecar answered: it got out.
        (LOOKALIKE, Observation(reached=True, detail="HTTP 200"), ProbeOutcome.MISSED),
        (LOOKALIKE, Observation(detail="TimeoutError"), ProbeOutcome.NO_ANSWER),
        (LOOKALIKE, Observation(not_run=True), ProbeOutcome.NOT_RUN),
        (HELD_KEY, Observation(reason="gateway_holds_credential"), ProbeOutcome.BLOCKED),
        # The provider was unreachable: the key check never ran, nothing is proven.
        (HELD_KEY, Observation(reason="dns_failure"), ProbeOutcome.INCONCLUSIVE),
        (HELD_KEY, Observation(reached=True), ProbeOutcome.MISSED),
    ],
)
def test_judgement(probe, seen, outcome) -> None:
    assert judge(probe, seen).outcome is outcome


def test_unexpected_refusal_is_blocked_and_says_so() -> None:
    result = judge(HELD_KEY, Observation(reason="path_not_allowed", detail="HTTP 403"))
    assert result.outcome is ProbeOutcome.BLOCKED
    assert "not as expected (gateway_holds_credential)" in result.detail


def test_exit_code_is_zero_only_when_nothing_got_out_and_nothing_is_unproven() -> None:
    blocked = judge(LOOKALIKE, Observation(reason="host_not_allowed"))
    missed = judge(LOOKALIKE, Observation(reached=True))
    unproven = judge(HELD_KEY, Observation(reason="dns_failure"))
    assert exit_code([blocked]) == 0
    assert exit_code([blocked, unproven]) == EXIT_INCONCLUSIVE
    assert exit_code([blocked, unproven, missed]) == EXIT_MISSED
    assert "MISSED" in render_text([missed], "header")


def test_canaries_look_like_real_keys_to_the_sidecars_own_detector() -> None:
    # A canary no detector flags proves nothing about the detector.
    canaries = Canaries.new("t3st")
    for value in (
        canaries.openai_key,
        canaries.anthropic_key,
        canaries.github_token,
        canaries.aws_access_key_id,
    ):
        assert scan_prefixed(value, "probe"), value


def test_canaries_are_fresh_per_run_and_marked() -> None:
    first, second = Canaries.new(), Canaries.new()
    assert set(first.values()).isdisjoint(second.values())
    assert f"{MARK}-{first.run_id}".encode() in first.harvest()


def test_catalogue_names_are_unique_and_grouped() -> None:
    probes = build_catalogue(Canaries.new("t3st"))
    assert len({p.name for p in probes}) == len(probes)
    assert {p.group for p in probes} == set(GROUPS)
    # The catalogue covers what the issue lists: each group has probes of its own.
    for group in GROUPS:
        assert sum(p.group == group for p in probes) >= 3, group


def test_probes_never_carry_anything_but_canaries() -> None:
    canaries = Canaries.new("t3st")
    for probe in build_catalogue(canaries):
        if isinstance(probe.action, Http):
            for name, value in probe.action.headers:
                if name in ("authorization", "x-api-key"):
                    assert any(c in value for c in canaries.values()), probe.name
