"""scan_prefixed skips a family's regex where its literal start is absent (issue 10)."""

from __future__ import annotations


def test_every_prefixed_family_has_the_trigger_its_regex_starts_with():
    """scan_prefixed runs a family's regex only where its trigger literal occurs: each
    regex must begin (after its boundary look-behind) with one of its triggers."""
    import re

    from sidecar.credentials.detect import _B, _TRIGGERS, FAMILIES

    assert set(_TRIGGERS) == {f.name for f in FAMILIES}
    for family in FAMILIES:
        source = family.pattern.pattern.removeprefix(_B).removeprefix(r"(?<![A-Z0-9])")
        triggers = _TRIGGERS[family.name]
        # Every string the regex's leading part can spell is one of the triggers.
        lead = re.match(r"(?:\(\?:)?([A-Za-z0-9_|-]+(?:\[[a-z]+\]_)?|[a-z-]+\\d\\d-)", source)
        assert lead is not None, family.name
        head = lead.group(1)
        if "|" in head:
            assert set(head.split("|")) == set(triggers), family.name
        elif "[" in head:
            stem, chars = head.split("[")
            assert {stem + c + "_" for c in chars.split("]")[0]} == set(triggers), family.name
        else:
            assert any(head.startswith(t) or source.startswith(t) for t in triggers), family.name
