"""Decision.with_context copies without dataclasses.replace (issue 17): same result."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.decision import Decision, Reason, Verdict


def test_with_context_gives_what_dataclasses_replace_gives_and_leaves_the_original():
    base = Decision(Verdict.ALLOW, Reason.ALLOWED, "providers.openai", "api.openai.com", 443)
    changes = {"detail": "provider key injected", "tenant": "team-a", "verdict": Verdict.BLOCK}
    copy = base.with_context(**changes)
    assert copy == dataclasses.replace(base, **changes)
    assert copy.at == base.at  # the decision's time is kept, not taken anew
    assert base.detail == "" and base.verdict is Verdict.ALLOW
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.detail = "changed"  # type: ignore[misc]


def test_with_context_refuses_a_field_decision_does_not_have():
    base = Decision(Verdict.ALLOW, Reason.ALLOWED, "providers.openai", "api.openai.com", 443)
    with pytest.raises(TypeError, match="detial"):
        base.with_context(detial="typo")
