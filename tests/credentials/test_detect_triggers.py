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


# Pieces of every key format, ordinary text and boundary characters: texts built from
# them hold keys, near-keys, keys run together and keys inside other runs.
_PIECES = [
    "sk-proj-", "sk-ant-api03-", "sk-ant-oat01-", "sk-or-v1-", "sk-", "AIza", "gsk_",
    "xai-", "fw_", "tgp_v1_", "pplx-", "hf_", "ghp_", "ya29.", "AKIA", "ASIA", "ABSK",
    "eyJ", ".", "-", "_", "/", " ", "abcdefghij0123456789", "ABCDEFGHIJKLMNOP",
    "0123456789abcdef0123456789abcdef", "api.openai.com", "/v1/chat/completions",
    "\udcff",  # a lone surrogate (a path decoded with surrogateescape)
]  # fmt: skip


def test_a_key_in_a_logged_text_is_redacted_exactly_as_by_every_pattern_in_turn():
    """redact_known_keys runs a pattern only where one of its literals occurs (issue 17):
    the result must be what running every pattern over the text in turn gives, so no
    key-shaped text reaches a decision line that the unfiltered passes would catch."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sidecar.credentials.detect import _REDACTABLE, REDACTED, redact_known_keys

    def every_pattern_in_turn(text: str) -> str:
        for pattern, _ in _REDACTABLE:
            text = pattern.sub(REDACTED, text)
        return text

    @settings(max_examples=3000, deadline=None)
    @given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join))
    def check(text: str) -> None:
        assert redact_known_keys(text) == every_pattern_in_turn(text)

    check()
    key = "sk-proj-" + "A" * 30
    assert redact_known_keys(f"/v1/x/{key}/y") == "/v1/x/[REDACTED]/y"
