"""Key-format detection: every family found, dummies never taken for keys."""

from __future__ import annotations

import pytest

from sidecar.credentials.detect import (
    DUMMY_VALUES,
    FAMILIES,
    looks_random,
    scan_generic,
    scan_prefixed,
)
from tests.credentials import helpers as h

PREFIXED = [
    ("openai_project_key", h.openai_project_key),
    ("openai_service_account_key", h.openai_svcacct_key),
    ("anthropic_api_key", h.anthropic_key),
    ("anthropic_admin_key", h.anthropic_admin_key),
    ("google_api_key", h.google_key),
    ("groq_api_key", h.groq_key),
    ("xai_api_key", h.xai_key),
    ("openrouter_api_key", h.openrouter_key),
    ("fireworks_api_key", h.fireworks_key),
    ("aws_access_key_id", h.aws_key_id),
    ("google_oauth_token", h.google_oauth_token),
    ("aws_bedrock_api_key", h.bedrock_api_key),
]


def test_every_bedrock_api_key_is_found_not_only_the_random_looking_ones():
    """The entropy test let about 1 in 80 random Bedrock keys through (as the gateway's
    bearer, they passed as ordinary text): the prefix finds all of them."""
    for _ in range(2000):
        key = h.bedrock_api_key()
        assert "aws_bedrock_api_key" in {
            f.family for f in scan_prefixed(f"Bearer {key}", "header authorization")
        }


@pytest.mark.parametrize(("family", "make"), PREFIXED, ids=[p[0] for p in PREFIXED])
def test_prefixed_family_found_anywhere(family: str, make):
    key = make()
    for text in (key, f"Bearer {key}", f"x={key};", f'{{"k": "{key}"}}'):
        findings = scan_prefixed(text, "header x")
        assert family in {f.family for f in findings}
        assert all(key not in f.describe() for f in findings)


def test_every_family_has_a_test_or_is_listed():
    tested = {p[0] for p in PREFIXED}
    extra = {
        "openai_admin_key",
        "anthropic_oauth_token",
        "together_api_key",
        "perplexity_api_key",
        "huggingface_token",
        "github_token",
    }
    assert {f.name for f in FAMILIES} == tested | extra


NOT_KEYS = [
    *sorted(DUMMY_VALUES),
    "sk-" + "x" * 48,
    "sk-proj-dummy",
    "sk-ant-api03-short",
    "AIzaTooShort",
    "sk-dummy-key-for-litellm-gateway-local",
    "DummyKeyForTheLocalGatewaySidecar1",
    "thisisadummykeyforthelocalgatewaysidecar1",
    "my_super_secret_dummy_api_key_v2_for_tests",
    "Test1234Test1234Test1234Test1234",
    "vk-" + h.rand(43, h.URLSAFE),
    "Bearer sk-1234",
    "application/json",
    "python-httpx/0.27.0",
    "OpenAI/Python 1.54.0",
]


@pytest.mark.parametrize("value", NOT_KEYS)
def test_dummies_are_not_keys(value: str):
    assert scan_prefixed(value, "header authorization") == []
    assert scan_generic(f"Bearer {value}", "header authorization", header="authorization") == []


def test_generic_rule_catches_random_keys_and_misses_few():
    shapes = {
        "hex32": lambda: h.hexs(32),
        "base62_32": lambda: h.rand(32),
        "base62_48": lambda: h.rand(48),
        "urlsafe_43": lambda: h.rand(43, h.URLSAFE),
    }
    for name, make in shapes.items():
        missed = sum(not looks_random(make()) for _ in range(1000))
        print(f"generic rule misses {missed / 10:.1f}% of random {name} keys")
        assert missed < 40, name  # ~1-2% by design: false refusals cost more
