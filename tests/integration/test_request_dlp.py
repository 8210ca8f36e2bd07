"""Request DLP (issue 13) through the real sidecar: secrets in what the gateway sends.

The gateway is subverted (the 2026 LiteLLM 1.82.8 stealer): it pastes what it
harvested into a prompt to an allowed provider. The official SDKs send the requests;
the fake provider records what reached it, so each test checks both what the gateway
was told and that the secret never left. Canary values: tests/support/harvest.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import ssl
import time
from collections.abc import Callable, Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import provider_policy
from tests.support import harvest
from tests.support.fakes import FakeProvider
from tests.support.keys import KEYS, key_policy
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration

BENIGN_PROMPT = (
    "Here is my code, why does the test fail?\n"
    "```python\n"
    "import os, uuid, hashlib\n"
    "api_key = os.environ['OPENAI_API_KEY']  # never hard-code it\n"
    "request_id = uuid.UUID('123e4567-e89b-12d3-a456-426614174000')\n"
    "digest = hashlib.sha256(b'x').hexdigest()  # "
    "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\n"
    "commit = 'a94a8fe5ccb19ba61c4c0873d391e987982fbbd3'\n"
    "```\n"
    "The AWS docs use AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY.\n"
    "-----BEGIN PRIVATE KEY-----\n...your key here...\n-----END PRIVATE KEY-----\n"
)
TINY_PNG = (
    "data:image/png;base64,"
    + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8).decode()
)


def _tls(sidecar: SidecarProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=sidecar.ca_cert)


def _openai(sidecar: SidecarProcess, provider: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-dummy",
        base_url=f"https://api.openai.com:{provider.port}/v1",
        http_client=httpx.Client(proxy=sidecar.proxy_url, verify=_tls(sidecar), timeout=20),
        max_retries=0,
    )


def _anthropic(sidecar: SidecarProcess, provider: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="dummy",
        base_url=f"https://api.anthropic.com:{provider.port}",
        http_client=anthropic.DefaultHttpxClient(proxy=sidecar.proxy_url, verify=_tls(sidecar)),
        max_retries=0,
    )


def _chat(client: openai.OpenAI, content: str) -> None:
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}])


def _seen(provider: FakeProvider, mark: int) -> bytes:
    return b"".join(r.body for r in provider.received[mark:])


def _leaked(body: bytes, values: tuple[str, ...] = harvest.CANARIES) -> list[str]:
    """Canary values (or their JSON-escaped form) present in what the provider saw."""
    text = body.decode("utf-8", "replace")
    return [v[:16] for v in values if v in text or json.dumps(v)[1:-1] in text]


def _post(
    sidecar: SidecarProcess, provider: FakeProvider, path: str, body: bytes, **headers: str
) -> httpx.Response:
    """A raw POST through the sidecar (httpx), for bodies the SDKs would not send;
    `content_encoding="gzip"` is the header `content-encoding: gzip`."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    headers = {"content-type": "application/json", **named}
    with httpx.Client(proxy=sidecar.proxy_url, verify=_tls(sidecar), timeout=20) as client:
        return client.post(
            f"https://api.openai.com:{provider.port}{path}", content=body, headers=headers
        )


def _refused_for_a_secret(answer: httpx.Response, provider: FakeProvider, mark: int) -> None:
    assert answer.status_code == 403
    assert answer.json()["reason"] == "secret_in_request"
    assert len(provider.received) == mark  # nothing reached the provider


def _lines_for(sidecar: SidecarProcess, path: str, before: int) -> list[dict]:
    """The decision lines for `path` written since `before`, once at least one is
    there (lines arrive through the sidecar's stdout), with a moment for any extra."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(d.get("path") == path for d in sidecar.decisions[before:]):
            break
        time.sleep(0.02)
    time.sleep(0.3)
    return [d for d in sidecar.decisions[before:] if d.get("path") == path]


def _line(sidecar: SidecarProcess, path: str, before: int) -> dict:
    lines = _lines_for(sidecar, path, before)
    assert len(lines) == 1, lines  # one decision line per request
    return lines[0]


@pytest.fixture(scope="module")
def dlp(start_sidecar, provider) -> SidecarProcess:
    """The default: dlp on for every provider, high-confidence findings blocked."""
    return start_sidecar(provider_policy(provider.port))


@pytest.fixture(scope="module")
def redacting(start_sidecar, provider) -> SidecarProcess:
    return start_sidecar(provider_policy(provider.port, extra="dlp:\n  high: redact\n"))


@pytest.fixture(scope="module")
def alerting(start_sidecar, provider) -> SidecarProcess:
    return start_sidecar(provider_policy(provider.port, extra="dlp:\n  high: alert\n"))


@pytest.fixture(scope="module")
def auditing(start_sidecar, provider) -> SidecarProcess:
    return start_sidecar(provider_policy(provider.port, mode="audit"))


@pytest.fixture(scope="module")
def keyed_dlp(start_sidecar, provider, secrets) -> Iterator[SidecarProcess]:
    yield start_sidecar(key_policy(provider.port), extra_args=("--secrets-dir", str(secrets.root)))


# --- block (the default) --------------------------------------------------------------


def test_aws_credentials_file_pasted_into_prompt_is_blocked(dlp, provider):
    before = dlp.settled_count()
    mark = len(provider.received)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        _chat(_openai(dlp, provider), "Fix my config:\n" + harvest.AWS_CREDENTIALS)
    assert raised.value.code == "secret_in_request"
    assert len(provider.received) == mark  # nothing reached the provider
    line = _line(dlp, "/v1/chat/completions", before)
    assert (line["decision"], line["reason"]) == ("block", "secret_in_request")
    assert "aws_secret_access_key at $.messages[0].content" in line["detail"]
    assert harvest.AWS_SECRET_ACCESS_KEY not in json.dumps(dlp.decisions)


@pytest.mark.parametrize(
    ("name", "content", "kind"), harvest.SECTIONS, ids=[s[0] for s in harvest.SECTIONS]
)
def test_litellm_1_82_8_harvested_file_pasted_into_prompt_is_blocked(
    dlp, provider, name, content, kind
):
    before = dlp.settled_count()
    mark = len(provider.received)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        _chat(_openai(dlp, provider), f"{name}:\n{content}")
    assert raised.value.code == "secret_in_request"
    assert len(provider.received) == mark
    assert (
        f"{kind} at $.messages[0].content" in _line(dlp, "/v1/chat/completions", before)["detail"]
    )


def test_litellm_1_82_8_whole_harvest_through_the_anthropic_sdk_is_blocked(dlp, provider):
    before = dlp.settled_count()
    mark = len(provider.received)
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        _anthropic(dlp, provider).messages.create(
            model="claude-test",
            max_tokens=50,
            system="You are a helpful assistant.",
            messages=[{"role": "user", "content": [{"type": "text", "text": harvest.HARVEST}]}],
        )
    assert "secret_in_request" in str(raised.value)
    assert len(provider.received) == mark
    line = _line(dlp, "/v1/messages", before)
    assert (line["provider"], line["reason"]) == ("anthropic", "secret_in_request")
    assert "$.messages[0].content[0].text" in line["detail"]
    assert not _leaked(json.dumps(dlp.decisions).encode())


def test_litellm_harvest_base64_encoded_in_a_tool_result_is_blocked(dlp, provider):
    before = dlp.settled_count()
    mark = len(provider.received)
    encoded = base64.b64encode(harvest.HARVEST.encode()).decode()
    with pytest.raises(openai.PermissionDeniedError):
        openai_client = _openai(dlp, provider)
        openai_client.chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "user", "content": "run it"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "sh", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": encoded},
            ],
        )
    assert len(provider.received) == mark
    assert (
        "at $.messages[2].content (base64)" in _line(dlp, "/v1/chat/completions", before)["detail"]
    )


def test_aws_key_hidden_behind_json_unicode_escapes_is_blocked(dlp, provider):
    mark = len(provider.received)
    escaped = "".join(f"\\u{ord(c):04x}" for c in harvest.AWS_SECRET_ACCESS_KEY)
    raw = (
        '{"model":"gpt-4o","messages":[{"role":"user","content":"aws_secret_access_key = '
        + escaped
        + '"}]}'
    ).encode()
    _refused_for_a_secret(_post(dlp, provider, "/v1/chat/completions", raw), provider, mark)


def test_gzip_compressed_request_body_is_decoded_and_blocked(dlp, provider):
    mark = len(provider.received)
    body = json.dumps({"model": "m", "input": harvest.AWS_CREDENTIALS}).encode()
    answer = _post(dlp, provider, "/v1/responses", gzip.compress(body), content_encoding="gzip")
    _refused_for_a_secret(answer, provider, mark)


def test_request_body_in_an_undecodable_encoding_is_refused(dlp, provider):
    before = dlp.settled_count()
    mark = len(provider.received)
    with httpx.Client(proxy=dlp.proxy_url, verify=_tls(dlp), timeout=20) as client:
        answer = client.post(
            f"https://api.openai.com:{provider.port}/v1/responses",
            content=b"\x00\x01 opaque bytes a decoder could read differently",
            headers={"content-type": "application/json", "content-encoding": "x-private"},
        )
    # The request inspection reads bodies first (issue 13) and refuses what it cannot
    # decode (400); a body it leaves alone is DLP's unscannable_body (403).
    assert answer.status_code in (400, 403)
    assert len(provider.received) == mark
    line = _line(dlp, "/v1/responses", before)
    assert line["decision"] == "block"
    assert (
        line["reason"] == "request_not_inspectable" or "unscannable_body at body" in line["detail"]
    )


def test_non_json_body_is_scanned_as_text(dlp, provider):
    mark = len(provider.received)
    with httpx.Client(proxy=dlp.proxy_url, verify=_tls(dlp), timeout=20) as client:
        answer = client.post(
            f"https://api.openai.com:{provider.port}/v1/files",
            files={"file": ("notes.txt", harvest.OPENSSH_PRIVATE_KEY.encode(), "text/plain")},
            data={"purpose": "assistants"},
        )
    assert answer.status_code == 403
    assert len(provider.received) == mark


def test_ordinary_prompts_with_ids_hashes_images_and_code_pass(dlp, provider):
    before = dlp.settled_count()
    mark = len(provider.received)
    client = _openai(dlp, provider)
    client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "You review code."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": BENIGN_PROMPT},
                    {"type": "image_url", "image_url": {"url": TINY_PNG}},
                ],
            },
        ],
    )
    assert len(provider.received) == mark + 1
    assert _line(dlp, "/v1/chat/completions", before)["decision"] == "allow"


# --- redact, alert, audit ---------------------------------------------------------------


def test_redact_mode_forwards_the_prompt_with_markers_and_never_the_secret(redacting, provider):
    before = redacting.settled_count()
    mark = len(provider.received)
    _chat(_openai(redacting, provider), "Summarize these files:\n" + harvest.HARVEST)
    got = provider.received[mark:]
    assert len(got) == 1
    assert _leaked(got[0].body) == []
    sent = json.loads(got[0].body)
    content = sent["messages"][0]["content"]
    assert content.startswith("Summarize these files:\n==> environ <==\nPATH=/usr/local/bin")
    assert "[REDACTED:aws_secret_access_key]" in content
    assert "[REDACTED:ssh_private_key]" in content
    assert int(got[0].headers["content-length"]) == len(got[0].body)
    line = _line(redacting, "/v1/chat/completions", before)
    assert (line["decision"], line["reason"]) == ("block", "secret_in_request")
    assert line["detail"].startswith("forwarded with the secrets redacted:")


def test_redact_mode_with_the_anthropic_sdk(redacting, provider):
    mark = len(provider.received)
    _anthropic(redacting, provider).messages.create(
        model="claude-test",
        max_tokens=50,
        messages=[{"role": "user", "content": "my kubeconfig:\n" + harvest.KUBECONFIG}],
    )
    got = provider.received[mark:]
    assert len(got) == 1 and _leaked(got[0].body) == []
    assert "[REDACTED:kubeconfig]" in json.loads(got[0].body)["messages"][0]["content"]


def test_alert_mode_forwards_unchanged_logs_and_counts(alerting, provider):
    before = alerting.settled_count()
    mark = len(provider.received)
    _chat(_openai(alerting, provider), harvest.AWS_CREDENTIALS)
    got = provider.received[mark:]
    assert len(got) == 1
    assert harvest.AWS_SECRET_ACCESS_KEY in got[0].body.decode()  # alert only: unchanged
    line = _line(alerting, "/v1/chat/completions", before)
    assert (line["decision"], line["reason"]) == ("would_block", "secret_in_request")
    assert line["detail"].startswith("alert only, forwarded unchanged:")
    metrics = alerting.metrics()
    assert (
        'egress_sidecar_dlp_findings_total{action="alert",kind="aws_secret_access_key",'
        'provider="openai"}' in metrics
    )
    assert 'reason="secret_in_request"' in metrics


def test_audit_mode_redacts_what_enforce_would_block(auditing, provider):
    before = auditing.settled_count()
    mark = len(provider.received)
    _chat(_openai(auditing, provider), harvest.AWS_CREDENTIALS)
    got = provider.received[mark:]
    assert len(got) == 1 and _leaked(got[0].body) == []
    line = _line(auditing, "/v1/chat/completions", before)
    assert (line["decision"], line["reason"]) == ("would_block", "secret_in_request")
    assert line["detail"].startswith("audit mode: forwarded with the secrets redacted:")


# --- the sidecar's own keys -------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: k,
        lambda k: base64.b64encode(k.encode()).decode(),
        lambda k: k.encode().hex(),
        lambda k: "".join(f"%{b:02X}" for b in k.encode()),
    ],
    ids=["raw", "base64", "hex", "percent"],
)
def test_sidecar_own_key_in_a_prompt_is_refused_in_any_encoding(
    keyed_dlp, provider, encode: Callable[[str], str]
):
    before = keyed_dlp.settled_count()
    mark = len(provider.received)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        _chat(_openai(keyed_dlp, provider), "remember this: " + encode(KEYS["anthropic"]))
    assert raised.value.code == "gateway_holds_credential"
    assert len(provider.received) == mark
    line = _line(keyed_dlp, "/v1/chat/completions", before)
    assert line["reason"] == "gateway_holds_credential"
    assert "sidecar_key at $.messages[0].content" in line["detail"]
    assert KEYS["anthropic"] not in json.dumps(keyed_dlp.decisions)


# --- the harvest moved out of the body ------------------------------------------------


def test_harvest_in_a_custom_header_is_blocked(dlp, provider):
    before = dlp.settled_count()
    mark = len(provider.received)
    with httpx.Client(proxy=dlp.proxy_url, verify=_tls(dlp), timeout=20) as client:
        answer = client.get(
            f"https://api.openai.com:{provider.port}/v1/models",
            headers={"x-debug": f"aws_secret_access_key={harvest.AWS_SECRET_ACCESS_KEY}"},
        )
    assert answer.status_code == 403 and answer.json()["reason"] == "secret_in_request"
    assert len(provider.received) == mark
    assert "aws_secret_access_key at header x-debug" in _line(dlp, "/v1/models", before)["detail"]


def test_harvest_in_the_query_string_is_blocked(dlp, provider):
    before = dlp.settled_count()
    mark = len(provider.received)
    encoded = base64.urlsafe_b64encode(harvest.AWS_CREDENTIALS.encode()).decode()
    with httpx.Client(proxy=dlp.proxy_url, verify=_tls(dlp), timeout=20) as client:
        answer = client.get(
            f"https://api.openai.com:{provider.port}/v1/models", params={"after": encoded}
        )
    assert answer.status_code == 403
    assert len(provider.received) == mark
    assert "at url (base64)" in _line(dlp, "/v1/models", before)["detail"]


def test_secret_in_the_query_string_is_refused_even_in_redact_mode(redacting, provider):
    mark = len(provider.received)
    with httpx.Client(proxy=redacting.proxy_url, verify=_tls(redacting), timeout=20) as client:
        answer = client.get(
            f"https://api.openai.com:{provider.port}/v1/models",
            params={"q": harvest.GITHUB_TOKEN},
        )
    assert answer.status_code == 403
    assert len(provider.received) == mark


def test_redact_mode_rewrites_a_header_value(redacting, provider):
    mark = len(provider.received)
    with httpx.Client(proxy=redacting.proxy_url, verify=_tls(redacting), timeout=20) as client:
        client.get(
            f"https://api.openai.com:{provider.port}/v1/models",
            headers={"x-note": "token glpat-Canary12345678901234"},
        )
    (got,) = provider.received[mark:]
    assert got.headers["x-note"] == "token [REDACTED:gitlab_token]"


def test_a_gateway_oauth_token_is_the_credential_layers_refusal_not_dlp(dlp, provider):
    """A gateway that sends a Google OAuth token of its own holds a cloud credential
    (issue 16): the credential layer refuses it (S7, gateway_holds_credential), before
    and instead of a DLP finding."""
    before = dlp.settled_count()
    mark = len(provider.received)
    with httpx.Client(proxy=dlp.proxy_url, verify=_tls(dlp), timeout=20) as client:
        answer = client.post(
            f"https://generativelanguage.googleapis.com:{provider.port}/v1/models/g:generateContent",
            headers={"authorization": "Bearer ya29.a0AfB_" + "x1Y2z3" * 10},
            json={"contents": [{"parts": [{"text": "hello"}]}]},
        )
    assert answer.status_code == 403
    assert len(provider.received) == mark
    assert _line(dlp, "/v1/models/g:generateContent", before)["reason"] == (
        "gateway_holds_credential"
    )


def test_chunked_upload_without_content_length_is_scanned_too(dlp, provider):
    mark = len(provider.received)
    body = json.dumps({"model": "m", "input": harvest.AWS_CREDENTIALS}).encode()

    def chunks():
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    with httpx.Client(proxy=dlp.proxy_url, verify=_tls(dlp), timeout=20) as client:
        answer = client.post(
            f"https://api.openai.com:{provider.port}/v1/responses", content=chunks()
        )
    assert answer.status_code == 403
    assert len(provider.received) == mark


def test_gzip_transfer_coding_cannot_smuggle_a_compressed_body_past_the_scan(dlp, provider):
    """`Transfer-Encoding: gzip, chunked` (HTTP/1.1): the provider would decode the
    gzip layer the scan never saw. Refused, or scanned decoded; never forwarded as is."""
    from tests.integration.test_explicit_proxy import raw_tls_request

    mark = len(provider.received)
    packed = gzip.compress(json.dumps({"input": harvest.AWS_CREDENTIALS}).encode())
    chunked = f"{len(packed):x}\r\n".encode() + packed + b"\r\n0\r\n\r\n"
    authority = f"api.openai.com:{provider.port}"
    answer = raw_tls_request(
        dlp,
        authority,
        "api.openai.com",
        f"POST /v1/responses HTTP/1.1\r\nHost: {authority}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".encode()
        + chunked,
    )
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert _leaked(_seen(provider, mark)) == []


def test_redact_mode_sends_a_compressed_body_decoded_and_redacted(redacting, provider):
    mark = len(provider.received)
    body = json.dumps({"model": "m", "input": harvest.AWS_CREDENTIALS}).encode()
    with httpx.Client(proxy=redacting.proxy_url, verify=_tls(redacting), timeout=20) as client:
        answer = client.post(
            f"https://api.openai.com:{provider.port}/v1/responses",
            content=gzip.compress(body),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert answer.status_code == 200, answer.text
    (got,) = provider.received[mark:]
    assert "content-encoding" not in got.headers
    assert int(got.headers["content-length"]) == len(got.body)
    assert "[REDACTED:aws_secret_access_key]" in json.loads(got.body)["input"]
    assert _leaked(got.body) == []


# --- one parse per body ---------------------------------------------------------------


def _counter(sidecar: SidecarProcess, name: str) -> float:
    for line in sidecar.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the sidecar's metrics")


def _parse_counters(sidecar: SidecarProcess) -> tuple[float, float]:
    """(bytes request inspection parsed, bodies DLP parsed itself)."""
    return (
        _counter(sidecar, "egress_sidecar_request_inspected_bytes_total"),
        _counter(sidecar, "egress_sidecar_dlp_body_parses_total"),
    )


@pytest.mark.parametrize("coding", ["identity", "gzip"])
def test_dlp_scans_the_document_request_inspection_parsed_and_does_not_parse_again(
    dlp, provider, coding
):
    mark = len(provider.received)
    body = json.dumps({"model": "m", "input": harvest.AWS_CREDENTIALS}).encode()
    inspected, parses = _parse_counters(dlp)
    sent = gzip.compress(body) if coding == "gzip" else body
    answer = _post(dlp, provider, "/v1/responses", sent, content_encoding=coding)
    _refused_for_a_secret(answer, provider, mark)  # DLP scanned the document: found
    # Request inspection parsed the decoded body; DLP parsed nothing.
    assert _parse_counters(dlp) == (inspected + len(body), parses)


def test_dlp_parses_a_body_request_inspection_left_alone(dlp, provider):
    """An upload type is not read by request inspection: DLP parses it itself, once,
    and finds the harvest in the JSON it carries."""
    mark = len(provider.received)
    body = json.dumps({"purpose": "batch", "notes": harvest.AWS_CREDENTIALS}).encode()
    inspected, parses = _parse_counters(dlp)
    answer = _post(dlp, provider, "/v1/files", body, content_type="application/octet-stream")
    _refused_for_a_secret(answer, provider, mark)
    assert _parse_counters(dlp) == (inspected, parses + 1)
