"""Informational (1xx) responses from the upstream, through the real sidecar.

Found: an upstream answering `103 Early Hints` then `200` made the final response go
missing (mitmproxy took the 103 as the response and dropped the 200 as unexpected
data); the gateway waited forever. The sidecar now drops 1xx responses (except 101)
from HTTP/1 upstreams, as mitmproxy already does for HTTP/2 and RFC 8297 allows, so no
1xx header block (which could carry a reflected key) reaches the gateway either.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess

import httpx
import pytest

from tests.conftest import PROVIDER_NAMES
from tests.support.keys import KEYS, SecretMount, key_policy
from tests.support.raw_upstream import RawUpstream

pytestmark = pytest.mark.integration

HINT = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def sse(events: list[bytes]) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )


def credential(head: bytes) -> bytes:
    found = re.search(rb"\r\nauthorization: Bearer ([^\r]+)\r\n", head, re.IGNORECASE)
    return found.group(1) if found else b""


def respond(head: bytes) -> bytes | list[bytes]:
    path = head.split(b" ", 2)[1]
    if path == b"/v1/early-hints":
        return HINT + ok(b'{"answer": "final"}')
    if path == b"/v1/early-hints-split":  # the 103 and the 200 in separate segments
        return [HINT, ok(b'{"answer": "final"}')]
    if path == b"/v1/many-informational":
        return (
            b"HTTP/1.1 102 Processing\r\n\r\n"
            + HINT
            + HINT
            + b"HTTP/1.1 100 Continue\r\n\r\n"
            + ok(b'{"answer": "final"}')
        )
    if path == b"/v1/endless-hints":  # a hostile upstream that never gets to the point
        return HINT * 40 + ok(b'{"answer": "final"}')
    if path == b"/v1/early-hints-stream":
        events = [b'data: {"n": %d}\n\n' % i for i in range(5)] + [b"data: [DONE]\n\n"]
        return [HINT, sse(events)]
    if path == b"/v1/early-hints-reflect":
        # A hostile upstream echoes the key it was given in the 1xx header block.
        key = credential(head)
        hint = (
            b"HTTP/1.1 103 Early Hints\r\nLink: <https://cdn.example/"
            + key
            + b">; rel=preload\r\nX-Echo: "
            + key
            + b"\r\n\r\n"
        )
        return hint + ok(b'{"answer": "final"}')
    return ok(b'{"answer": "plain"}')


@pytest.fixture(scope="module")
def hinting_upstream(bg, test_ca):
    upstream = RawUpstream(bg, test_ca, PROVIDER_NAMES, respond).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def hint_sidecar(start_sidecar, hinting_upstream, tmp_path_factory):
    secrets = SecretMount(tmp_path_factory.mktemp("hint-secrets") / "mount", dict(KEYS))
    return start_sidecar(
        key_policy(hinting_upstream.port),
        reverse=("openai",),
        extra_args=("--secrets-dir", str(secrets.root)),
    )


PATHS = ["/v1/early-hints", "/v1/early-hints-split", "/v1/many-informational"]


@pytest.mark.parametrize("path", PATHS)
def test_early_hints_do_not_swallow_final_response_reverse(hint_sidecar, path):
    with httpx.Client(timeout=20) as client:
        for _ in range(3):  # and the kept-alive connection stays usable
            reply = client.get(hint_sidecar.reverse_url("openai") + path)
            assert reply.status_code == 200
            assert reply.json() == {"answer": "final"}
            assert "link" not in reply.headers


@pytest.mark.parametrize("path", PATHS)
def test_early_hints_do_not_swallow_final_response_explicit(hint_sidecar, hinting_upstream, path):
    url = f"https://api.openai.com:{hinting_upstream.port}{path}"
    verify = ssl.create_default_context(cafile=hint_sidecar.ca_cert)
    with httpx.Client(proxy=hint_sidecar.proxy_url, verify=verify, timeout=20) as client:
        for _ in range(3):
            reply = client.get(url)
            assert reply.status_code == 200
            assert reply.json() == {"answer": "final"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("path", PATHS)
def test_early_hints_do_not_swallow_final_response_explicit_http2(
    hint_sidecar, hinting_upstream, path
):
    """HTTP/2 from the gateway (curl negotiates h2 inside the tunnel; httpx does not)."""
    url = f"https://api.openai.com:{hinting_upstream.port}{path}"
    result = subprocess.run(
        [
            "curl",
            "-s",
            "--http2",
            "--max-time",
            "20",
            "-x",
            hint_sidecar.proxy_url,
            "--cacert",
            hint_sidecar.ca_cert,
            "-w",
            "\n%{http_version} %{http_code}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    body, _, status = result.stdout.rpartition("\n")
    assert status == "2 200", (result.stdout, result.stderr)
    assert json.loads(body) == {"answer": "final"}


def test_early_hints_before_a_stream_keep_the_stream(hint_sidecar):
    with (
        httpx.Client(timeout=20) as client,
        client.stream(
            "GET", hint_sidecar.reverse_url("openai") + "/v1/early-hints-stream"
        ) as reply,
    ):
        assert reply.status_code == 200
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert [json.loads(line[6:])["n"] for line in lines[:-1]] == list(range(5))


def test_key_echoed_in_early_hints_never_reaches_gateway(hint_sidecar, hinting_upstream):
    """Raw bytes on the gateway's side: no 1xx at all, no key anywhere."""
    mark = len(hinting_upstream.requests)
    host, port = hint_sidecar.listener("reverse:openai").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"GET /v1/early-hints-reflect HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b'"final"' not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    # The key really was injected upstream (so the test can fail) ...
    assert credential(hinting_upstream.requests[mark]) == KEYS["openai"].encode()
    # ... and neither the 103 nor the key came back.
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b" 103 " not in data and b"cdn.example" not in data
    assert KEYS["openai"].encode() not in data


def test_endless_informational_responses_end_in_502_not_a_hang(hint_sidecar):
    """Dropping is bounded (16 per response): beyond that the response fails cleanly."""
    with httpx.Client(timeout=20) as client:
        reply = client.get(hint_sidecar.reverse_url("openai") + "/v1/endless-hints")
        assert reply.status_code == 502
        assert b"Early Hints" not in reply.content and "link" not in reply.headers
        # The gateway's connection is still usable afterwards.
        again = client.get(hint_sidecar.reverse_url("openai") + "/v1/early-hints")
        assert again.status_code == 200
