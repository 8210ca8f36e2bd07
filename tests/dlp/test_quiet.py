"""Detector.quiet decides for many strings at once that none holds a secret (issue 17:
most requests hold none, and scanning each string costs as much as the one pass). It
must never say "quiet" where scanning a string would find something."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.dlp.detectors import Detector, own_key_patterns
from tests.dlp.test_detectors import FALSE_POSITIVES, NAMED, OWN, TRUE_POSITIVES

DETECTOR = Detector(own_key_patterns([OWN]))

# Secrets of every kind the detectors know, ordinary text that merely resembles them,
# and separators and characters that open or close the detectors' gates.
_SECRETS = [text for _, text, _ in TRUE_POSITIVES] + [OWN]
_PIECES = [
    *_SECRETS,
    *(text for _, text in FALSE_POSITIVES),
    "secret", "session", "key=", "token", "\n", "%", "%73k", "\u200b", "\ud800", "é",
    "eyJ", "A" * 70, "hello world", "gpt-4o", "user", "content", " ", "=",
]  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=4).map("".join), max_size=6))
def test_quiet_strings_hold_nothing_a_scan_would_find(texts: list[str]) -> None:
    if DETECTOR.quiet(texts):
        assert all(DETECTOR.scan(text) == [] for text in texts)


def test_any_one_secret_among_ordinary_strings_is_not_quiet() -> None:
    ordinary = ["gpt-4o", "user", "You are a helpful assistant.", "application/json"]
    for secret in _SECRETS:
        assert not DETECTOR.quiet([*ordinary, f"my key is {secret} thanks"]), secret
    assert DETECTOR.quiet(ordinary)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([key for key, _, _ in NAMED]),
    st.lists(st.sampled_from(_PIECES + [value for _, value, _ in NAMED]), max_size=3).map("".join),
    st.booleans(),
)
def test_a_quiet_value_under_a_secret_name_is_judged_as_scan_judges_it(
    key: str, value: str, gcp: bool
) -> None:
    if DETECTOR.quiet([value]):
        assert DETECTOR.scan_named(value, key, gcp_object=gcp) == DETECTOR.scan(
            value, key, gcp_object=gcp
        )
