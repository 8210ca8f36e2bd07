"""Reverse mode: the gateway talks plain HTTP to a local listener per provider; the
sidecar forwards to that provider over verified TLS, to the vetted address."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

pytestmark = pytest.mark.integration


def test_openai_sdk_through_reverse_listener(sidecar, provider):
    client = openai.OpenAI(
        api_key="sk-dummy", base_url=sidecar.reverse_url("openai") + "/v1", max_retries=0
    )
    mark = len(provider.received)
    for _ in range(3):  # keep-alive: later requests reuse the pinned connection
        reply = client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "hello from fake"
    seen = provider.received[mark:]
    assert [r.path for r in seen] == ["/v1/chat/completions"] * 3
    assert len({r.peer for r in seen}) == 1  # one pinned upstream connection, reused
    # The provider sees its own name, never 127.0.0.1 or the pinned address.
    assert {r.headers["host"] for r in seen} == {f"api.openai.com:{provider.port}"}
    decision = sidecar.wait_for_decision(mode="reverse", path="/v1/chat/completions")
    assert decision["host"] == "api.openai.com"
    assert decision["decision"] == "allow"


def test_reverse_stream_arrives_chunk_by_chunk(sidecar, provider):
    client = openai.OpenAI(
        api_key="sk-dummy", base_url=sidecar.reverse_url("openai") + "/v1", max_retries=0
    )
    first = None
    count = 0
    for chunk in client.chat.completions.create(
        model="gpt-fake",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        user="stream-openai-reverse",
    ):
        first = first or time.monotonic()
        count += bool(chunk.choices and chunk.choices[0].delta.content)
    assert count == provider.stream_chunks
    assert first is not None and first < provider.chunk_sent_at["stream-openai-reverse"][-1]


def test_anthropic_sdk_through_reverse_listener(sidecar, provider):
    client = anthropic.Anthropic(
        api_key="dummy", base_url=sidecar.reverse_url("anthropic"), max_retries=0
    )
    message = client.messages.create(
        model="claude-fake", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "hello from fake"


def test_reverse_path_not_allowed(sidecar, provider):
    mark = len(provider.received)
    response = httpx.post(sidecar.reverse_url("anthropic") + "/v1/complete", json={}, timeout=5)
    assert response.status_code == 403
    assert response.json()["reason"] == "path_not_allowed"
    assert len(provider.received) == mark


def test_reverse_listener_ignores_gateway_host_header(sidecar, provider):
    """The listener fixes the destination: a Host header cannot redirect it (or fail it)."""
    mark = len(provider.received)
    response = httpx.get(
        sidecar.reverse_url("openai") + "/v1/models",
        headers={"Host": "evil.example.com"},
        timeout=5,
    )
    assert response.status_code == 200
    assert provider.received[mark].headers["host"] == f"api.openai.com:{provider.port}"
