"""The real LiteLLM library as the gateway: configured with a dummy key, pointed at the
sidecar, it reaches the fake provider, which sees only the injected key."""

from __future__ import annotations

import os

import pytest

from tests.support.keys import KEYS

# No network here: LiteLLM must use its bundled model cost map, not fetch one.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # after the variable above

pytestmark = pytest.mark.integration


def test_litellm_version_is_not_a_compromised_release():
    from importlib.metadata import version

    assert version("litellm") not in ("1.82.7", "1.82.8")


def _calls(provider):
    return [r for r in provider.received if r.path == "/v1/chat/completions"]


def test_litellm_completion_through_reverse_listener(keyed, provider):
    mark = len(_calls(provider))
    reply = litellm.completion(
        model="openai/gpt-fake",
        api_base=keyed.reverse_url("openai") + "/v1",
        api_key="sk-dummy-litellm",
        messages=[{"role": "user", "content": "hi"}],
        num_retries=0,
    )
    assert reply.choices[0].message.content == "hello from fake"
    (got,) = _calls(provider)[mark:]
    assert got.headers["authorization"] == f"Bearer {KEYS['openai']}"
    assert "sk-dummy-litellm" not in str(got.headers)


def test_litellm_streaming_through_explicit_proxy(keyed, provider, monkeypatch):
    # LiteLLM's HTTP client honours the standard proxy and CA variables, as in a pod.
    monkeypatch.setenv("HTTPS_PROXY", keyed.proxy_url)
    monkeypatch.setenv("SSL_CERT_FILE", keyed.ca_cert)
    monkeypatch.setenv("NO_PROXY", "")
    mark = len(_calls(provider))
    stream = litellm.completion(
        model="openai/gpt-fake",
        api_base=f"https://api.openai.com:{provider.port}/v1",
        api_key="sk-dummy-litellm",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        num_retries=0,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "".join(f"tok{i} " for i in range(provider.stream_chunks))
    (got,) = _calls(provider)[mark:]
    assert got.headers["authorization"] == f"Bearer {KEYS['openai']}"
