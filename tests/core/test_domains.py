"""Registrable domains from the Public Suffix List (sidecar/domains.py)."""

from __future__ import annotations

import pytest

from sidecar.domains import registrable_domain


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("api.openai.com", "openai.com"),
        ("models.litellm.cloud", "litellm.cloud"),
        ("a.b.evil.co.uk", "evil.co.uk"),
        ("x.y.example.com.au", "example.com.au"),
        ("openai.com", "openai.com"),
        ("com", "com"),  # a public suffix is its own domain
        ("localhost", "localhost"),
        ("x.compute.amazonaws.com", "x.compute.amazonaws.com"),  # wildcard rule
        ("", ""),
    ],
)
def test_registrable_domain(name: str, expected: str) -> None:
    assert registrable_domain(name) == expected


def test_random_labels_under_one_attacker_domain_collapse_into_one() -> None:
    names = {registrable_domain(f"{i:x}c0ffee.exfil.attacker.example.com") for i in range(50)}
    assert names == {"example.com"}


def test_tenants_of_a_shared_hosting_suffix_are_different_domains() -> None:
    # Private suffixes: whoever owns attacker.herokuapp.com does not own victim's app.
    assert registrable_domain("a.attacker.herokuapp.com") == "attacker.herokuapp.com"
    assert registrable_domain("victim.herokuapp.com") == "victim.herokuapp.com"
