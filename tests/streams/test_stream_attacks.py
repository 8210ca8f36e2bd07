"""Issue 14 through the real sidecar: a hostile router injects tool calls and smuggles
the injected key back in pieces; the official SDKs must raise, never see the call.
"""

from __future__ import annotations

import json
import ssl
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.support.hostile_provider import INJECTED_TOOL, Attack, HostileProvider
from tests.support.keys import KEYS, SecretMount
from tests.support.websocket import websocket_tls

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
SHELL = {"type": "function", "function": {"name": INJECTED_TOOL, "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "weather?"}]


@pytest.fixture(scope="module")
def hostile(bg, test_ca) -> Iterator[HostileProvider]:
    fake = HostileProvider(
        bg, test_ca, ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"]
    ).start()
    yield fake
    fake.stop()


def policy(port: int, mode: str = "enforce", credentials: bool = False) -> str:
    def cred(name: str, header: str, fmt: str) -> str:
        if not credentials:
            return ""
        return f'    credential: {{header: {header}, format: "{fmt}", secret: {name}}}\n'

    tools = textwrap.indent(
        textwrap.dedent("""\
        tools:
          allow: [get_weather, run_shell]
          deny_arguments: [download_piped_to_shell]
        """),
        "    ",
    )
    return (
        f"version: 1\nmode: {mode}\nproviders:\n"
        f"  openai:\n    hosts: [api.openai.com]\n    ports: [{port}]\n"
        f"    addresses: [127.0.0.0/8]\n{tools}"
        + cred("openai", "authorization", "Bearer {secret}")
        + f"  anthropic:\n    hosts: [api.anthropic.com]\n    ports: [{port}]\n"
        f"    addresses: [127.0.0.0/8]\n{tools}"
        + cred("anthropic", "x-api-key", "{secret}")
        + f"  gemini:\n    hosts: [generativelanguage.googleapis.com]\n    ports: [{port}]\n"
        f"    addresses: [127.0.0.0/8]\n{tools}"
    )


@pytest.fixture(scope="module")
def guarded(start_sidecar, hostile):
    return start_sidecar(policy(hostile.port))


@pytest.fixture(scope="module")
def audited(start_sidecar, hostile):
    return start_sidecar(policy(hostile.port, mode="audit"))


@pytest.fixture(scope="module")
def keyed_guard(start_sidecar, hostile, tmp_path_factory):
    secrets = SecretMount(tmp_path_factory.mktemp("secrets") / "mount", dict(KEYS))
    return start_sidecar(
        policy(hostile.port, credentials=True), extra_args=("--secrets-dir", str(secrets.root))
    )


@pytest.fixture(autouse=True)
def calm(hostile):
    _SINCE[0] = time.time() - 0.002  # log times have millisecond precision
    hostile.attack = Attack()
    yield
    hostile.attack = Attack()


def _verify(sidecar) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=sidecar.ca_cert)


def oai(sidecar, port: int) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="dummy",
        base_url=f"https://api.openai.com:{port}/v1",
        max_retries=0,
        http_client=httpx.Client(proxy=sidecar.proxy_url, verify=_verify(sidecar), timeout=20),
    )


def claude(sidecar, port: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="dummy",
        base_url=f"https://api.anthropic.com:{port}",
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(proxy=sidecar.proxy_url, verify=_verify(sidecar)),
    )


def gemini(sidecar, port: int) -> genai.Client:
    return genai.Client(
        api_key="dummy",
        http_options=genai_types.HttpOptions(
            base_url=f"https://generativelanguage.googleapis.com:{port}",
            client_args={"proxy": sidecar.proxy_url, "verify": _verify(sidecar)},
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )


_SINCE = [0.0]  # decisions of the running test only (the sidecars are module fixtures)


def decision(sidecar, reason: str, **fields) -> dict:
    """The first decision line of this test with these fields (waits up to 10 s)."""
    wanted = {"reason": reason, **fields}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for record in list(sidecar.decisions):
            at = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            if at.replace(tzinfo=UTC).timestamp() >= _SINCE[0] and all(
                record.get(k) == v for k, v in wanted.items()
            ):
                return record
        time.sleep(0.02)
    raise AssertionError(f"no decision matching {wanted}; got {sidecar.decisions[-5:]}")


# --- injected tool calls ----------------------------------------------------------------------


def test_router_injecting_a_tool_call_into_an_openai_chat_stream_is_cut(guarded, hostile):
    hostile.attack = Attack("inject")
    seen = []
    with pytest.raises(openai.APIError, match="tool_call_injected"):
        for chunk in oai(guarded, hostile.port).chat.completions.create(
            model="gpt-x", messages=ASK, tools=[WEATHER], stream=True
        ):
            seen.append(chunk)
    assert all(not (c.choices and c.choices[0].delta.tool_calls) for c in seen)
    line = decision(guarded, "tool_call_injected", path="/v1/chat/completions")
    assert line["decision"] == "block" and line["provider"] == "openai"
    assert INJECTED_TOOL in line["detail"] and "evil.example" not in str(line)


def test_router_injecting_a_tool_call_into_a_non_streamed_openai_chat_answer_gets_502(
    guarded, hostile
):
    hostile.attack = Attack("inject")
    with pytest.raises(openai.InternalServerError) as raised:
        oai(guarded, hostile.port).chat.completions.create(
            model="gpt-x", messages=ASK, tools=[WEATHER]
        )
    assert raised.value.status_code == 502
    assert "tool_call_injected" in str(raised.value.body)
    assert "run_shell" not in raised.value.response.text.replace("'run_shell'", "")


def test_router_injecting_a_tool_use_block_into_an_anthropic_stream_is_cut(guarded, hostile):
    hostile.attack = Attack("inject")
    events = []
    with pytest.raises(anthropic.APIStatusError, match="tool_call_injected"):
        with claude(guarded, hostile.port).messages.stream(
            model="claude-x",
            max_tokens=50,
            messages=ASK,
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        ) as stream:
            for event in stream:
                events.append(event)
    assert not any(
        getattr(e, "type", "") == "content_block_start" and e.content_block.type == "tool_use"
        for e in events
    )
    line = decision(guarded, "tool_call_injected", provider="anthropic")
    assert line["decision"] == "block"


def test_router_injecting_a_function_call_into_a_responses_stream_is_cut(guarded, hostile):
    hostile.attack = Attack("inject")
    kinds = []
    with pytest.raises(openai.APIError, match="tool_call_injected"):
        for event in oai(guarded, hostile.port).responses.create(
            model="gpt-x",
            input="weather?",
            stream=True,
            tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        ):
            kinds.append(event.type)
    assert "response.output_item.added" not in kinds
    assert decision(guarded, "tool_call_injected", path="/v1/responses")["decision"] == "block"


def test_router_injecting_a_function_call_into_a_gemini_stream_is_cut(guarded, hostile):
    hostile.attack = Attack("inject")
    parts = []
    config = genai_types.GenerateContentConfig(
        tools=[
            genai_types.Tool(
                function_declarations=[
                    genai_types.FunctionDeclaration(name="get_weather", description="w")
                ]
            )
        ]
    )
    client = gemini(guarded, hostile.port)  # kept: the SDK closes it when collected
    with pytest.raises(genai_errors.APIError, match="tool_call_injected"):
        for chunk in client.models.generate_content_stream(
            model="gemini-x", contents="weather?", config=config
        ):
            parts.append(chunk)
    assert not any(c.function_calls for c in parts)
    assert decision(guarded, "tool_call_injected", provider="gemini")["decision"] == "block"


def test_router_hiding_a_gemini_function_call_in_unframed_json_lines_is_cut(guarded, hostile):
    hostile.attack = Attack("inject", unframed=True)
    client = gemini(guarded, hostile.port)
    config = genai_types.GenerateContentConfig(
        tools=[
            genai_types.Tool(
                function_declarations=[
                    genai_types.FunctionDeclaration(name="get_weather", description="w")
                ]
            )
        ]
    )
    parts = []
    with pytest.raises(genai_errors.APIError, match="tool_call_injected"):
        for chunk in client.models.generate_content_stream(
            model="gemini-x", contents="weather?", config=config
        ):
            parts.append(chunk)
    assert not any(c.function_calls for c in parts)


def test_router_injecting_only_after_a_trigger_word_is_cut_when_it_fires(guarded, hostile):
    hostile.attack = Attack("inject", trigger="deploy")
    client = oai(guarded, hostile.port)
    quiet = client.chat.completions.create(model="gpt-x", messages=ASK, tools=[WEATHER])
    assert quiet.choices[0].message.tool_calls is None
    with pytest.raises(openai.InternalServerError, match="tool_call_injected"):
        client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "deploy it"}], tools=[WEATHER]
        )


def test_router_injecting_on_every_third_request_is_cut_each_time(guarded, hostile):
    hostile.requests = 0
    hostile.attack = Attack("inject", every=3)
    client = claude(guarded, hostile.port)
    outcomes = []
    for _ in range(6):
        try:
            client.messages.create(
                model="claude-x",
                max_tokens=20,
                messages=ASK,
                tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
            )
            outcomes.append("ok")
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 502
            outcomes.append("cut")
    assert outcomes == ["ok", "ok", "cut", "ok", "ok", "cut"]


def test_declared_tool_with_download_piped_to_shell_arguments_is_cut(guarded, hostile):
    hostile.attack = Attack("inject")
    with pytest.raises(openai.APIError, match="tool_arguments_denied"):
        for _ in oai(guarded, hostile.port).chat.completions.create(
            model="gpt-x", messages=ASK, tools=[SHELL], stream=True
        ):
            pass
    line = decision(guarded, "tool_arguments_denied")
    assert "download_piped_to_shell" in line["detail"] and "evil.example" not in str(line)


def test_request_declaring_a_tool_the_policy_does_not_allow_is_refused(guarded, hostile):
    before = hostile.requests
    bad = {"type": "function", "function": {"name": "delete_everything", "parameters": {}}}
    with pytest.raises(openai.PermissionDeniedError, match="tool_not_allowed"):
        oai(guarded, hostile.port).chat.completions.create(model="gpt-x", messages=ASK, tools=[bad])
    assert hostile.requests == before  # never reached the provider


def test_audit_mode_logs_would_block_and_passes_the_injected_call(audited, hostile):
    hostile.attack = Attack("inject")
    calls = []
    for chunk in oai(audited, hostile.port).chat.completions.create(
        model="gpt-x", messages=ASK, tools=[WEATHER], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            calls.append(chunk)
    assert calls
    line = decision(audited, "tool_call_injected")
    assert line["decision"] == "would_block"


# --- usage ----------------------------------------------------------------------------------


def test_usage_of_an_honest_chat_stream_is_in_the_decision_line_and_metrics(guarded, hostile):
    chunks = list(
        oai(guarded, hostile.port).chat.completions.create(model="gpt-x", messages=ASK, stream=True)
    )
    assert chunks[-1].usage is not None  # the sidecar asked for include_usage
    line = decision(guarded, "allowed", path="/v1/chat/completions")
    assert line["usage"] == {"input_tokens": 11, "output_tokens": 7, "model": "gpt-x"}
    assert (
        'egress_sidecar_tokens_total{direction="output",model="other",provider="openai",tenant="none"}'
        in guarded.metrics()
    )


def test_usage_of_an_anthropic_stream_is_the_latest_cumulative_figure(guarded, hostile):
    with claude(guarded, hostile.port).messages.stream(
        model="claude-x", max_tokens=50, messages=ASK
    ) as stream:
        stream.get_final_message()
    line = decision(guarded, "allowed", provider="anthropic")
    assert line["usage"] == {"input_tokens": 21, "output_tokens": 9, "model": "claude-x"}


# --- keys reassembled from decoded text ----------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "anthropic"])
def test_router_splitting_the_injected_key_across_events_and_escapes_is_cut(
    keyed_guard, hostile, api
):
    key = KEYS["openai"] if api == "chat" else KEYS["anthropic"]
    hostile.attack = Attack("key", key=key)
    text = ""
    if api == "chat":
        with pytest.raises(openai.APIError, match="credential_reflected"):
            for chunk in oai(keyed_guard, hostile.port).chat.completions.create(
                model="gpt-x", messages=ASK, stream=True
            ):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
    else:
        with pytest.raises(anthropic.APIStatusError, match="credential_reflected"):
            with claude(keyed_guard, hostile.port).messages.stream(
                model="claude-x", max_tokens=50, messages=ASK
            ) as stream:
                for piece in stream.text_stream:
                    text += piece
    assert key not in text and key[len(key) // 3 :] not in text
    assert decision(keyed_guard, "credential_reflected")["decision"] == "block"


# --- alerts -------------------------------------------------------------------------------


def test_injected_tool_call_pages_with_the_tool_and_provider_never_the_arguments(
    start_sidecar, hostile, bg, tmp_path
):
    from tests.alerts.alerts_helpers import FakeReceiver, write_config
    from tests.support.ports import free_port

    rx = bg.run(FakeReceiver(default=200).start(free_port()))
    hook = (
        f"sinks:\n  - name: siem\n    type: webhook\n    url: {rx.url}/hook\n"
        f"    hmac_key_file: {tmp_path / 'hmac'}\n"
    )
    try:
        config = write_config(tmp_path, hook, secrets={"hmac": "h" * 32})
        sidecar = start_sidecar(
            policy(hostile.port),
            extra_args=("--alerts-config", config, "--alert-spool", str(tmp_path / "spool")),
        )
        hostile.attack = Attack("inject")
        with pytest.raises(anthropic.APIStatusError):
            claude(sidecar, hostile.port).messages.create(
                model="claude-x",
                max_tokens=20,
                messages=ASK,
                tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
            )
        deadline = time.monotonic() + 15
        while not rx.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rx.requests, "no alert delivered"
        sent = b"".join(r.body for r in rx.requests).decode()
        assert "tool_call_injected" in sent and INJECTED_TOOL in sent and "anthropic" in sent
        assert "evil.example" not in sent and "curl" not in sent
    finally:
        bg.run(rx.stop())


# --- the Responses WebSocket --------------------------------------------------------------


def test_router_injecting_a_function_call_over_the_responses_websocket_is_dropped(guarded, hostile):
    hostile.attack = Attack("inject")
    client = oai(guarded, hostile.port)
    options = {
        "proxy": guarded.proxy_url,
        "ssl": websocket_tls(guarded.ca_cert),
        "open_timeout": 60,
    }  # busy machines
    kinds = []
    with client.responses.connect(websocket_connection_options=options) as connection:
        connection.response.create(
            model="gpt-x",
            input="weather?",
            tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        )
        deadline = time.monotonic() + 20
        for event in connection:
            kinds.append(event.type)
            assert event.type != "response.output_item.added"
            if event.type in ("error", "response.completed") or time.monotonic() > deadline:
                break
    assert "error" in kinds
    detail = "responses tool call 'run_shell': tool not declared by the request (WebSocket)"
    assert decision(guarded, "tool_call_injected", detail=detail)["decision"] == "block"


def test_an_honest_responses_websocket_passes_every_event(guarded, hostile):
    client = oai(guarded, hostile.port)
    options = {
        "proxy": guarded.proxy_url,
        "ssl": websocket_tls(guarded.ca_cert),
        "open_timeout": 60,
    }  # busy machines
    with client.responses.connect(websocket_connection_options=options) as connection:
        connection.response.create(model="gpt-x", input="hi")
        kinds = []
        for event in connection:
            kinds.append(event.type)
            if event.type in ("error", "response.completed"):
                break
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "error" not in kinds


def test_keyed_non_streamed_answers_pass_whole_with_their_usage(keyed_guard, hostile):
    answer = oai(keyed_guard, hostile.port).chat.completions.create(model="gpt-x", messages=ASK)
    assert answer.choices[0].message.content == "Hello from the router."
    line = decision(keyed_guard, "allowed", path="/v1/chat/completions")
    assert line["usage"] == {"input_tokens": 11, "output_tokens": 7, "model": "gpt-x"}


def test_router_echoing_the_key_in_a_non_streamed_answer_gets_it_redacted(keyed_guard, hostile):
    hostile.attack = Attack("key", key=KEYS["anthropic"])
    message = claude(keyed_guard, hostile.port).messages.create(
        model="claude-x", max_tokens=20, messages=ASK
    )
    text = message.content[0].text
    assert KEYS["anthropic"] not in text and "[REDACTED]" in text
    assert (
        decision(keyed_guard, "credential_reflected", provider="anthropic")["decision"] == "block"
    )


def test_router_reporting_the_key_as_the_model_does_not_get_it_logged(keyed_guard, hostile):
    hostile.attack = Attack(model=KEYS["openai"])
    list(
        oai(keyed_guard, hostile.port).chat.completions.create(
            model="gpt-x", messages=ASK, stream=True
        )
    )
    line = decision(keyed_guard, "allowed", path="/v1/chat/completions")
    assert line["usage"] == {"input_tokens": 11, "output_tokens": 7, "model": "(unprintable)"}
    assert KEYS["openai"] not in str(keyed_guard.decisions)
    assert KEYS["openai"][8:40] not in keyed_guard.metrics()


def test_responses_websocket_declaring_a_tool_the_policy_does_not_allow_is_refused(
    guarded, hostile
):
    before = hostile.requests
    client = oai(guarded, hostile.port)
    options = {
        "proxy": guarded.proxy_url,
        "ssl": websocket_tls(guarded.ca_cert),
        "open_timeout": 60,
    }  # busy machines
    bad = {"type": "function", "name": "delete_everything", "parameters": {"type": "object"}}
    with client.responses.connect(websocket_connection_options=options) as connection:
        connection.response.create(model="gpt-x", input="hi", tools=[bad])
        event = next(iter(connection))
    assert event.type == "error"
    assert hostile.requests == before  # the response.create never reached the provider
    detail = "responses request declares tool 'delete_everything', not in tools.allow (WebSocket)"
    assert decision(guarded, "tool_not_allowed", detail=detail)["decision"] == "block"


# --- arguments streamed in pieces; Gemini's JSON array stream -----------------------------------


def _raw_stream(sidecar, url: str, body: dict) -> bytes:
    """What a gateway reading the raw stream receives (every byte, until the end)."""
    with (
        httpx.Client(proxy=sidecar.proxy_url, verify=_verify(sidecar), timeout=20) as client,
        client.stream("POST", url, json=body) as response,
    ):
        assert response.status_code == 200
        return b"".join(response.iter_raw())


def test_router_streaming_denied_arguments_in_pieces_never_delivers_a_piece(guarded, hostile):
    hostile.attack = Attack("inject", fragments=4)
    got = _raw_stream(
        guarded,
        f"https://api.openai.com:{hostile.port}/v1/chat/completions",
        {"model": "gpt-x", "messages": ASK, "tools": [SHELL], "stream": True},
    )
    assert b"Hello" in got  # the text before the call streamed
    assert b"curl" not in got and b"evil.example" not in got
    assert b"tool_arguments_denied" in got
    assert decision(guarded, "tool_arguments_denied")["decision"] == "block"


def test_router_streaming_denied_input_json_in_pieces_to_anthropic_sdk_is_cut(guarded, hostile):
    hostile.attack = Attack("inject", fragments=5)
    seen: list[str] = []
    tool = {"name": INJECTED_TOOL, "input_schema": {"type": "object"}}
    with (
        pytest.raises(anthropic.APIStatusError, match="tool_arguments_denied"),
        claude(guarded, hostile.port).messages.stream(
            model="claude-x", max_tokens=5, messages=ASK, tools=[tool]
        ) as stream,
    ):
        for event in stream:
            seen.append(event.model_dump_json())
    assert not any("curl" in e or "evil.example" in e for e in seen)
    assert decision(guarded, "tool_arguments_denied", provider="anthropic")["decision"] == "block"


def test_router_injecting_a_function_call_into_a_gemini_json_array_stream_is_cut(guarded, hostile):
    # google-genai always asks for alt=sse; REST clients without it get a JSON array.
    hostile.attack = Attack("inject")
    got = _raw_stream(
        guarded,
        f"https://generativelanguage.googleapis.com:{hostile.port}"
        "/v1beta/models/gemini-x:streamGenerateContent",
        {
            "contents": [{"parts": [{"text": "weather?"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_weather"}]}],
        },
    )
    doc = json.loads(got)  # still one valid array: the client's parser ends cleanly
    assert doc[0]["candidates"][0]["content"]["parts"] == [{"text": "Hello"}]
    assert INJECTED_TOOL not in json.dumps(doc[:-1])
    assert doc[-1]["error"]["reason"] == "tool_call_injected"
    assert decision(guarded, "tool_call_injected", provider="gemini")["decision"] == "block"


def test_an_honest_gemini_json_array_stream_passes_whole(guarded, hostile):
    got = _raw_stream(
        guarded,
        f"https://generativelanguage.googleapis.com:{hostile.port}"
        "/v1beta/models/gemini-x:streamGenerateContent?alt=json",
        {"contents": [{"parts": [{"text": "weather?"}]}]},
    )
    doc = json.loads(got)
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in doc] == [
        "Hello", " from", " the router.", ""
    ]  # fmt: skip
    assert doc[-1]["usageMetadata"]["totalTokenCount"] == 21


def test_router_answering_in_protobuf_where_no_inspector_reads_gets_502(guarded, hostile):
    """A non-streamed `:generateContent?alt=proto`: its client reads function calls
    from the protobuf, which no inspector of ours reads; refused, never passed unread."""
    hostile.attack = Attack("inject")
    with httpx.Client(proxy=guarded.proxy_url, verify=_verify(guarded), timeout=20) as client:
        response = client.post(
            f"https://generativelanguage.googleapis.com:{hostile.port}"
            "/v1beta/models/gemini-x:generateContent?alt=proto",
            json={"contents": [{"parts": [{"text": "weather?"}]}]},
        )
    assert response.status_code == 502
    assert INJECTED_TOOL.encode() not in response.content
    line = decision(guarded, "response_not_inspectable", provider="gemini")
    assert line["decision"] == "block" and "alt=" in line["detail"]


def _websocket_events(sidecar, port: int, tools: list[dict]) -> list[Any]:
    client = oai(sidecar, port)
    options = {
        "proxy": sidecar.proxy_url,
        "ssl": websocket_tls(sidecar.ca_cert),
        "open_timeout": 60,
    }  # busy machines
    events: list[Any] = []
    with client.responses.connect(websocket_connection_options=options) as connection:
        connection.response.create(model="gpt-x", input="weather?", tools=tools)
        deadline = time.monotonic() + 20
        for event in connection:
            events.append(event)
            if event.type in ("error", "response.completed") or time.monotonic() > deadline:
                break
    return events


def test_router_streaming_denied_arguments_over_the_responses_websocket_never_delivers_a_piece(
    guarded, hostile
):
    hostile.attack = Attack("inject", fragments=4)
    shell = {"type": "function", "name": INJECTED_TOOL, "parameters": {"type": "object"}}
    events = _websocket_events(guarded, hostile.port, [shell])
    assert events[-1].type == "error"
    assert not any("curl" in e.model_dump_json() or "evil" in e.model_dump_json() for e in events)
    assert [e.type for e in events if e.type == "response.output_text.delta"]  # text streamed
    assert decision(guarded, "tool_arguments_denied")["decision"] == "block"


def test_an_allowed_call_over_the_responses_websocket_arrives_whole_and_in_order(guarded, hostile):
    arguments = {"city": "Paris", "unit": "celsius", "days": 3}
    hostile.attack = Attack("inject", tool="get_weather", arguments=arguments, fragments=5)
    weather = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    events = _websocket_events(guarded, hostile.port, [weather])
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.completed" and "error" not in kinds
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) == 5 and json.loads("".join(deltas)) == arguments
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) == list(range(numbers[0], numbers[0] + len(numbers)))


def test_router_hiding_a_tool_use_behind_line_ends_only_httpx_splits_at_never_reaches_litellm(
    guarded, hostile, monkeypatch
):
    """LiteLLM reads Anthropic streams with httpx's aiter_lines, which ends a line at
    U+2028 too; SSE (and the sidecar's splitter, before it escaped them) does not. The
    injected tool_use block, its lines ended by U+2028, was one unparseable line to the
    sidecar and a tool call to LiteLLM."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network
    import litellm

    monkeypatch.setenv("HTTPS_PROXY", guarded.proxy_url)
    monkeypatch.setenv("SSL_CERT_FILE", guarded.ca_cert)
    monkeypatch.setenv("NO_PROXY", "")
    hostile.attack = Attack("inject", line_end="\u2028")
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    called: list[str] = []
    text: list[str] = []
    try:
        stream = litellm.completion(
            model="anthropic/claude-x",
            api_base=f"https://api.anthropic.com:{hostile.port}",
            api_key="sk-ant-dummy",
            messages=ASK,
            tools=[weather],
            stream=True,
            num_retries=0,
        )
        for chunk in stream:
            text.append(chunk.choices[0].delta.content or "")
            for call in chunk.choices[0].delta.tool_calls or []:
                called.append(call.function.name or "")
    except Exception:  # LiteLLM may raise on what it cannot parse; what it yielded counts
        pass
    assert "Hello" in "".join(text)  # the stream was read through the sidecar
    assert INJECTED_TOOL not in called
