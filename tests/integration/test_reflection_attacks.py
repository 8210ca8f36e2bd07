"""S7 against a hostile upstream (issue 11): the key the sidecar injected never comes
back to the gateway, whatever the upstream wraps it in.

Every attack has a control that talks to the same hostile upstream directly, with the
real key, and shows the key really is in what it sends (header name, stacked
encodings, WebSocket messages, HTTP/2 trailers); the test through the real sidecar then
shows the gateway does not get it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Iterator

import aiohttp
import httpx
import pytest

from tests.conftest import PROVIDER_NAMES
from tests.support.fakes import BackgroundLoop, FakeProvider
from tests.support.h2_upstream import FakeH2Provider, h2_get
from tests.support.keys import KEYS, key_policy
from tests.support.raw_upstream import RawUpstream, chunked, keyed
from tests.support.sidecar import SidecarProcess
from tests.support.tunnel import connect_tunnel, read_to_end

pytestmark = pytest.mark.integration

KEY = KEYS["openai"]
OPENAI = "api.openai.com"


def gateway(sidecar: SidecarProcess) -> httpx.Client:
    return httpx.Client(
        proxy=sidecar.proxy_url,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
        timeout=60,
        headers={"authorization": "Bearer dummy"},
    )


def direct_context(ca_file: str) -> ssl.SSLContext:
    """Straight to the fake on 127.0.0.1 (its certificate names the provider hosts)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    return context


def direct(provider: FakeProvider, ca_file: str, path: str) -> httpx.Response:
    """The control: the hostile upstream, asked with the real key, no sidecar between."""
    with httpx.Client(verify=direct_context(ca_file), timeout=60) as c:
        return c.get(
            f"https://127.0.0.1:{provider.port}{path}",
            headers={"authorization": f"Bearer {KEY}"},
        )


def direct_raw(provider: FakeProvider, ca_file: str, path: str) -> bytes:
    """The control, body bytes exactly as the upstream sent them (nothing decoded)."""
    with httpx.Client(verify=direct_context(ca_file), timeout=60) as c:
        with c.stream(
            "GET",
            f"https://127.0.0.1:{provider.port}{path}",
            headers={"authorization": f"Bearer {KEY}"},
        ) as response:
            return b"".join(response.iter_raw())


def reflected_since(sidecar: SidecarProcess, mark: int, reason: str) -> list[dict]:
    return [d for d in sidecar.decisions[mark:] if d["reason"] == reason]


def wait_decision(sidecar: SidecarProcess, mark: int, reason: str) -> dict:
    """The latest `reason` decision logged after `mark` (the line may be read a little
    after the response arrived: wait for it, bounded)."""
    deadline = time.monotonic() + 15
    while not (found := reflected_since(sidecar, mark, reason)):
        assert time.monotonic() < deadline, f"no {reason} decision after this request"
        time.sleep(0.05)
    assert KEY not in json.dumps(found)
    return found[-1]


# --- a key as a response header *name* ---------------------------------------------


def test_key_as_response_header_name_is_redacted(keyed, provider, test_ca_file):
    control = direct(provider, test_ca_file, "/v1/reflect-header-name")
    assert KEY in control.headers  # the upstream really names a header after the key

    mark = len(keyed.decisions)
    with gateway(keyed) as c:
        response = c.get(f"https://{OPENAI}:{provider.port}/v1/reflect-header-name")
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert response.headers["x-control"] == "1"  # the other headers survive
    raw_headers = b"\n".join(k + b": " + v for k, v in response.headers.raw)
    assert KEY.encode().lower() not in raw_headers.lower()
    decision = wait_decision(keyed, mark, "credential_reflected")
    assert decision["decision"] == "block"
    assert "a header name" in decision["detail"]


# --- stacked and unknown content encodings -------------------------------------------


@pytest.mark.parametrize(
    # (zstd is in the unit tests: httpx, the control client here, fails on zstd bodies)
    "layers",
    ["gzip,gzip", "br,gzip", "gzip,br", "deflate,gzip,gzip", "gzip"],
)
def test_double_gzip_response_cannot_smuggle_the_key(keyed, provider, test_ca_file, layers):
    path = f"/v1/reflect-encoded?ce={layers}"
    control = direct(provider, test_ca_file, path)
    assert control.headers["content-encoding"] == layers.replace(",", ", ")
    assert KEY in control.text  # a real client decodes every layer and reads the key

    mark = len(keyed.decisions)
    with gateway(keyed) as c:
        response = c.get(f"https://{OPENAI}:{provider.port}{path}")
    assert response.status_code == 200
    # What the sidecar scanned is what it sent: decoded, no encoding left to undo.
    assert "content-encoding" not in response.headers
    assert KEY not in response.text
    assert "Incorrect API key provided: [REDACTED]" in response.text
    assert wait_decision(keyed, mark, "credential_reflected")["decision"] == "block"


def assert_refused_not_inspectable(response: httpx.Response) -> None:
    assert response.status_code == 502
    assert response.headers["x-egress-sidecar-reason"] == "response_not_inspectable"
    assert KEY not in response.text
    assert response.json()["reason"] == "response_not_inspectable"


@pytest.mark.parametrize(
    ("attack", "query"),
    [
        ("unknown_encoding", "ce=x-unknown"),
        ("unknown_layer_under_gzip", "ce=x-unknown,gzip"),
        ("compress_encoding", "ce=compress"),
        ("not_really_gzip", "ce=gzip&raw=1"),
        ("five_layers", "ce=gzip,gzip,gzip,gzip,gzip"),
    ],
)
def test_undecodable_response_is_refused(keyed, provider, test_ca_file, attack, query):
    control = direct_raw(provider, test_ca_file, f"/v1/reflect-encoded?{query}")
    assert KEY in _decode_all(control), attack  # what a lenient client would read

    mark = len(keyed.decisions)
    with gateway(keyed) as c:
        response = c.get(f"https://{OPENAI}:{provider.port}/v1/reflect-encoded?{query}")
    assert_refused_not_inspectable(response)
    decision = wait_decision(keyed, mark, "response_not_inspectable")
    assert decision["decision"] == "block"
    assert decision["provider"] == "openai"


def _decode_all(body: bytes) -> str:
    """The body as a lenient client would read it after undoing every gzip layer."""
    import gzip

    for _ in range(5):
        try:
            body = gzip.decompress(body)
        except OSError:
            break
    return body.decode(errors="replace")


@pytest.mark.parametrize("layers", ["gzip", "gzip,gzip"])
def test_decompression_bomb_response_is_refused(keyed, provider, test_ca_file, layers):
    """80 MiB of zeros, then the key: the sidecar stops decoding at 64 MiB and refuses
    (never expands the rest, never passes the compressed bytes it could not scan)."""
    path = f"/v1/reflect-encoded?ce={layers}&bomb=80"
    with httpx.Client(verify=direct_context(test_ca_file), timeout=60) as c:
        with c.stream(
            "GET",
            f"https://127.0.0.1:{provider.port}{path}",
            headers={"authorization": f"Bearer {KEY}"},
        ) as control:
            compressed = control.headers["content-length"]
            tail = b"".join(control.iter_bytes())[-200:]
    assert int(compressed) < 1 << 20  # a small download ...
    assert KEY.encode() in tail  # ... that decodes to 80 MiB and then the key

    rss_before = _rss_kib(keyed)
    mark = len(keyed.decisions)
    with gateway(keyed) as c:
        response = c.get(f"https://{OPENAI}:{provider.port}{path}")
    assert_refused_not_inspectable(response)
    decision = wait_decision(keyed, mark, "response_not_inspectable")
    # The 80 MiB stop at the process-wide budget (32 MiB), under the 64 MiB cap.
    assert "decodes to more than" in decision["detail"] or "budget" in decision["detail"]
    # Bounded: the decoder stops at the cap (64 MiB), it does not hold all 80 MiB twice.
    assert _rss_kib(keyed) - rss_before < 200 * 1024


def _rss_kib(sidecar: SidecarProcess) -> int:
    assert sidecar.proc is not None
    with open(f"/proc/{sidecar.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_undecodable_response_is_refused_in_audit_mode_too(
    start_sidecar, provider, secrets, test_ca_file
):
    audit = start_sidecar(
        key_policy(provider.port).replace("version: 1\n", "version: 1\nmode: audit\n"),
        extra_args=("--secrets-dir", str(secrets.root)),
    )
    with gateway(audit) as c:
        response = c.get(f"https://{OPENAI}:{provider.port}/v1/reflect-encoded?ce=x-unknown")
    assert_refused_not_inspectable(response)
    assert audit.wait_for_decision(reason="response_not_inspectable")["decision"] == "block"
    _assert_no_key_in_outputs(audit)


def _gzip_transfer_coded(key: str) -> bytes:
    import gzip

    body = gzip.compress(b'{"error": "Incorrect API key provided: ' + key.encode() + b'"}')
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n" + chunked(body)
    )


@pytest.fixture(scope="module")
def raw_upstream(bg: BackgroundLoop, test_ca) -> Iterator[RawUpstream]:
    fake = RawUpstream(
        bg, test_ca, PROVIDER_NAMES, keyed(_gzip_transfer_coded), keep_alive=False
    ).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def raw_keyed(start_sidecar, raw_upstream, secrets) -> SidecarProcess:
    return start_sidecar(
        key_policy(raw_upstream.port), extra_args=("--secrets-dir", str(secrets.root))
    )


def test_gzip_transfer_coding_cannot_smuggle_the_key(raw_keyed, raw_upstream, test_ca_file):
    """HTTP/1.1 `Transfer-Encoding: gzip, chunked`: mitmproxy removes the chunking, not
    the gzip; the redactor must see the decoded bytes."""
    import gzip

    te_upstream, sidecar = raw_upstream, raw_keyed
    # Control (a raw socket: httpx refuses transfer codings other than chunked; curl
    # --tr-encoding and others decode them).
    raw = _raw_get_through_upstream(te_upstream.port, test_ca_file)
    head, _, framed = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: gzip, chunked" in head and KEY.encode() not in framed
    body, rest = b"", framed
    while (size := int(rest.split(b"\r\n", 1)[0], 16)) > 0:
        start = rest.index(b"\r\n") + 2
        body, rest = body + rest[start : start + size], rest[start + size + 2 :]
    assert KEY.encode() in gzip.decompress(body)  # the key is there, one decode away

    mark = len(sidecar.decisions)
    with gateway(sidecar) as c:
        response = c.get(f"https://{OPENAI}:{te_upstream.port}/v1/x")
    assert te_upstream.received[-1]["authorization"] == f"Bearer {KEY}"  # injected
    assert response.status_code == 200
    assert "gzip" not in response.headers.get("transfer-encoding", "")
    assert response.content == b'{"error": "Incorrect API key provided: [REDACTED]"}'
    assert wait_decision(sidecar, mark, "credential_reflected")["decision"] == "block"
    _assert_no_key_in_outputs(sidecar)


def _key_as_reason_phrase(key: str) -> bytes:
    return (
        f"HTTP/1.1 401 {key}\r\ncontent-type: application/json\r\n"
        "content-length: 2\r\nconnection: close\r\n\r\n{}"
    ).encode()


def test_key_as_status_reason_phrase_is_redacted(raw_keyed, raw_upstream, test_ca_file):
    raw_upstream.respond = keyed(_key_as_reason_phrase)
    try:
        with httpx.Client(verify=direct_context(test_ca_file), timeout=60) as c:
            control = c.get(
                f"https://127.0.0.1:{raw_upstream.port}/v1/x",
                headers={"authorization": f"Bearer {KEY}"},
            )
        assert control.reason_phrase == KEY  # the upstream really sends it there

        mark = len(raw_keyed.decisions)
        with gateway(raw_keyed) as c:
            response = c.get(f"https://{OPENAI}:{raw_upstream.port}/v1/x")
    finally:
        raw_upstream.respond = keyed(_gzip_transfer_coded)
    assert response.status_code == 401
    assert KEY not in response.reason_phrase
    assert response.reason_phrase == "[REDACTED]"
    decision = wait_decision(raw_keyed, mark, "credential_reflected")
    assert "status reason phrase" in decision["detail"]
    _assert_no_key_in_outputs(raw_keyed)


def _key_as_header_name_behind_a_kelvin_twin(key: str) -> bytes:
    """The key as a header name, after a twin with the Kelvin sign (U+212A) for its "k":
    `str.lower()` folds the two names together, mitmproxy's `Headers` does not."""
    twin = key.replace("k", "\u212a")
    return (twin.encode() + b": 1\r\n" + key.encode() + b": 2\r\n").join(
        (b"HTTP/1.1 200 OK\r\n", b"content-length: 2\r\nconnection: close\r\n\r\n{}")
    )


def _raw_get_through(sidecar: SidecarProcess, port: int) -> bytes:
    """A gateway in league with the upstream reads the response's raw bytes (an HTTP
    client would refuse the non-token header name before anyone saw the key)."""
    tls = connect_tunnel(sidecar, f"{OPENAI}:{port}", OPENAI)
    tls.sendall(
        f"GET /v1/x HTTP/1.1\r\nHost: {OPENAI}:{port}\r\nauthorization: Bearer dummy\r\n"
        "connection: close\r\n\r\n".encode()
    )
    return read_to_end(tls)


def test_key_as_response_header_name_behind_a_unicode_case_twin_never_reaches_the_gateway(
    raw_keyed, raw_upstream, test_ca_file
):
    """Through the process, mitmproxy's pinned header validation (token names only)
    refuses the response before any hook: the gateway gets a 502 and no key. The
    reflection guard itself is checked on such names in
    tests/credentials/test_unicode_case_twins.py (defence in depth)."""
    raw_upstream.respond = keyed(_key_as_header_name_behind_a_kelvin_twin)
    try:
        control = _raw_get_through_upstream(raw_upstream.port, test_ca_file)
        assert b"\r\n" + KEY.encode() + b": 2\r\n" in control  # the upstream sends it

        raw = _raw_get_through(raw_keyed, raw_upstream.port)
    finally:
        raw_upstream.respond = keyed(_gzip_transfer_coded)
    assert raw_upstream.received[-1]["authorization"] == f"Bearer {KEY}"  # injected
    assert raw.startswith(b"HTTP/1.1 502"), raw[:200]
    assert KEY.encode().lower() not in raw.lower()
    _assert_no_key_in_outputs(raw_keyed)


def _raw_get_through_upstream(port: int, ca_file: str) -> bytes:
    """The control: the upstream asked directly, with the real key (a raw socket: HTTP
    clients refuse what these upstreams send, or decode it)."""
    import socket

    sock = direct_context(ca_file).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname=OPENAI
    )
    sock.sendall(
        f"GET /v1/x HTTP/1.1\r\nHost: {OPENAI}\r\nauthorization: Bearer {KEY}\r\n\r\n".encode()
    )
    return read_to_end(sock)


# --- WebSocket messages after the handshake ------------------------------------------


async def _realtime(url: str, context: ssl.SSLContext, proxy: str | None, auth: str) -> list:
    messages: list[str | bytes] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            url,
            proxy=proxy,
            ssl=context,
            headers={"authorization": auth},
            timeout=aiohttp.ClientWSTimeout(ws_close=10),
        ) as ws:
            while True:
                message = await asyncio.wait_for(ws.receive(), 20)
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                messages.append(message.data)
                if message.type is aiohttp.WSMsgType.TEXT and "response.done" in message.data:
                    break
    return messages


def _joined(messages: list) -> bytes:
    return b"".join(m if isinstance(m, bytes) else m.encode() for m in messages)


def test_websocket_frame_echoing_the_key_is_redacted(keyed, provider, bg, test_ca_file):
    control = bg.run(
        _realtime(
            f"wss://127.0.0.1:{provider.port}/v1/realtime",
            direct_context(test_ca_file),
            None,
            f"Bearer {KEY}",
        ),
        timeout=60,
    )
    assert len(control) == 8
    assert KEY in control[0] and KEY.encode() in control[1]
    assert KEY not in control[2] and KEY in control[2] + control[3]  # split across two
    assert KEY in control[4] + control[5] + control[6]  # and across three

    mark = len(keyed.decisions)
    got = bg.run(
        _realtime(
            f"wss://{OPENAI}:{provider.port}/v1/realtime",
            ssl.create_default_context(cafile=keyed.ca_cert),
            keyed.proxy_url,
            "Bearer dummy",
        ),
        timeout=60,
    )
    assert provider.received[-1].headers["authorization"] == f"Bearer {KEY}"  # injected
    assert len(got) == 8  # every message still arrives, in order
    assert json.loads(got[0])["type"] == "session.created"
    assert isinstance(got[1], bytes) and got[1].startswith(b"\x00binary:")
    assert json.loads(got[7]) == {"type": "response.done"}
    everything = _joined(got)
    assert KEY.encode() not in everything
    for i in range(len(KEY) - 16):  # no 16-byte piece of the key, joined or not
        assert KEY[i : i + 16].encode() not in everything
    assert got[3].endswith(":end") and got[6].endswith(":end")
    assert b"[REDACTED]" in _joined(got[:2])
    deadline = time.monotonic() + 15
    while (
        len(
            found := [
                d
                for d in reflected_since(keyed, mark, "credential_reflected")
                if "WebSocket message" in d["detail"]
            ]
        )
        < 4
    ):
        assert time.monotonic() < deadline, found  # text, binary, split in 2, split in 3
        time.sleep(0.05)
    assert KEY not in json.dumps(found)


def test_websocket_with_an_uninspectable_extension_is_refused(keyed, provider, bg, test_ca_file):
    async def handshake(url: str, context: ssl.SSLContext, proxy: str | None, auth: str):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(
                url, proxy=proxy, ssl=context, compress=0, headers={"authorization": auth}
            ) as ws:
                return ws._response.headers.get("sec-websocket-extensions")

    control = bg.run(
        handshake(
            f"wss://127.0.0.1:{provider.port}/v1/realtime-ext",
            direct_context(test_ca_file),
            None,
            f"Bearer {KEY}",
        ),
        60,
    )
    assert control == "x-smuggle"  # the upstream accepts an extension nobody offered

    mark = len(keyed.decisions)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        bg.run(
            handshake(
                f"wss://{OPENAI}:{provider.port}/v1/realtime-ext",
                ssl.create_default_context(cafile=keyed.ca_cert),
                keyed.proxy_url,
                "Bearer dummy",
            ),
            60,
        )
    assert refused.value.status == 502
    decision = wait_decision(keyed, mark, "response_not_inspectable")
    assert "WebSocket extension" in decision["detail"]


# --- HTTP/2 response trailers -------------------------------------------------------


@pytest.fixture(scope="module")
def h2_provider(bg: BackgroundLoop, test_ca) -> Iterator[FakeH2Provider]:
    fake = FakeH2Provider(bg, test_ca, PROVIDER_NAMES).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def h2_keyed(start_sidecar, h2_provider, secrets) -> SidecarProcess:
    return start_sidecar(
        key_policy(h2_provider.port), extra_args=("--secrets-dir", str(secrets.root))
    )


def test_h2_trailer_echoing_the_key_is_redacted(h2_keyed, h2_provider, test_ca_file):
    _, body, control = h2_get(
        OPENAI,
        h2_provider.port,
        "/v1/models",
        test_ca_file,
        proxy=None,
        authorization=f"Bearer {KEY}",
    )
    assert control["x-echo-key"] == KEY and KEY.lower() in control  # the upstream echoes

    mark = len(h2_keyed.decisions)
    headers, body, trailers = h2_get(
        OPENAI, h2_provider.port, "/v1/models", h2_keyed.ca_cert, proxy=h2_keyed.proxy_url
    )
    assert h2_provider.received[-1]["authorization"] == f"Bearer {KEY}"  # injected
    assert headers[":status"] == "200"
    assert json.loads(body) == {"object": "list", "data": [], "done": True}
    assert trailers["x-control"] == "1"  # trailers are still delivered
    assert trailers["x-echo-key"] == "[REDACTED]"
    assert not any(KEY.lower() in name.lower() for name in trailers)
    assert KEY not in json.dumps(trailers)
    decision = wait_decision(h2_keyed, mark, "credential_reflected")
    assert "trailer x-echo-key" in decision["detail"]
    assert "a trailer name" in decision["detail"]
    _assert_no_key_in_outputs(h2_keyed)


# --- after everything above ---------------------------------------------------------


def _assert_no_key_in_outputs(sidecar: SidecarProcess) -> None:
    outputs = {
        "stdout": "".join(sidecar.stdout_lines),
        "stderr": "".join(sidecar.stderr_lines),
        "metrics": sidecar.metrics(),
    }
    for name, value in KEYS.items():
        forms = {value, value.lower(), base64.b64encode(value.encode()).decode()}
        for where, text in outputs.items():
            for form in forms:
                assert form not in text, f"{name} key found in {where}"


def test_no_key_in_any_output_after_the_hostile_upstream(keyed):
    assert any(d["reason"] == "credential_reflected" for d in keyed.decisions)
    _assert_no_key_in_outputs(keyed)


# --- the key escaped: percent-encoding, JSON escapes, HTML entities, hex -----------------


def test_key_reflected_percent_encoded_json_escaped_or_as_entities_is_redacted(
    keyed, provider, test_ca_file
):
    from urllib.parse import unquote

    control = direct(provider, test_ca_file, "/v1/reflect-forms")
    assert unquote(control.json()["percent"]) == KEY  # the upstream really sends them
    assert control.json()["json_escapes"] == KEY  # (JSON decodes its escapes)
    assert unquote(control.headers["x-echo-percent"]) == KEY

    mark = len(keyed.decisions)
    with gateway(keyed) as c:
        response = c.get(f"https://{OPENAI}:{provider.port}/v1/reflect-forms")
    assert response.status_code == 200
    forms = response.json()
    assert set(forms) == {"percent", "percent_every_byte", "json_escapes", "html", "hex"}
    for name, value in forms.items():
        assert "[REDACTED]" in value, name
        assert KEY not in unquote(value) and KEY not in value, name
    assert KEY not in bytes.fromhex(forms["hex"].split("[")[0] or "").decode(errors="replace")
    assert KEY not in unquote(response.headers["x-echo-percent"])
    decision = wait_decision(keyed, mark, "credential_reflected")
    assert decision["decision"] == "block"
