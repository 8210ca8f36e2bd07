"""S7 in audit mode: a would_block request never carries the provider key (issue 11).

Audit mode lets policy refusals through as `would_block`. Before this was fixed, the
credential layer then added the real key anyway: `http://api.openai.com:<port>/...`
(an unlisted port, or plain HTTP on a listed one) delivered `Bearer sk-proj-...` in
cleartext to whoever listened there. The rule now: a key is added only to an
*allowed* request, to its provider's vetted host, over verified TLS, on a listed port.
The gateway's own credentials are still stripped and real keys it holds still refused.

Each test sends the request through the real sidecar in audit mode to a listener that
records every byte it receives (a stand-in for an attacker on that port) or to the
fake provider, and checks the key is not among them. Controls show the same listener
and provider do see the key when it is sent (so "no key" means something).
"""

from __future__ import annotations

import asyncio
import ssl
import textwrap
from collections.abc import Iterator

import httpx
import pytest
import trustme

from tests.support.fakes import BackgroundLoop, FakeProvider
from tests.support.keys import KEYS, LEAKED_GATEWAY_KEY, SecretMount
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration

KEY = KEYS["openai"]
DUMMY = "sk-dummy-gateway-key"


class Recorder:
    """A TCP (optionally TLS) listener on 127.0.0.1 that keeps every byte it receives."""

    def __init__(self, bg: BackgroundLoop, tls: ssl.SSLContext | None = None) -> None:
        self._bg = bg
        self._tls = tls
        self.received: list[bytes] = []
        self.port = free_port()
        self._server: asyncio.Server | None = None

    def start(self) -> Recorder:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = await asyncio.wait_for(reader.read(65536), 5)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)  # before answering: the client may look at once
                data = b""
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                await writer.drain()
            except (OSError, TimeoutError, ssl.SSLError):
                pass
            finally:
                if data:
                    self.received.append(data)
                writer.close()

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(handle, "127.0.0.1", self.port, ssl=self._tls)

        self._server = self._bg.run(serve())
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._bg.loop.call_soon_threadsafe(self._server.close)

    def saw(self, marker: str) -> bytes:
        """The one request carrying `marker` (asserts it arrived: the test can fail)."""
        found = [r for r in self.received if marker.encode() in r]
        assert len(found) == 1, f"request {marker} did not reach the listener: {self.received}"
        return found[0]


def _audit_policy(provider_port: int, plain_listed: int) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        mode: audit
        providers:
          openai:
            hosts: [api.openai.com]
            ports: [{provider_port}]
            paths: [/v1/*]
            methods: [GET, POST]
            addresses: [127.0.0.0/8]
            credential: {{header: authorization, format: "Bearer {{secret}}", secret: openai}}
          anthropic:
            # A provider listing a port where only plain HTTP answers: tls_required.
            hosts: [api.anthropic.com]
            ports: [{plain_listed}]
            addresses: [127.0.0.0/8]
            credential: {{header: x-api-key, format: "{{secret}}", secret: anthropic}}
        """
    )


@pytest.fixture(scope="module")
def listeners(bg: BackgroundLoop, test_ca: trustme.CA) -> Iterator[dict[str, Recorder]]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("api.openai.com").configure_cert(tls)
    made = {
        "plain_listed": Recorder(bg).start(),  # listed port, plain HTTP: tls_required
        "plain_unlisted": Recorder(bg).start(),  # unlisted port: port_not_allowed
        "tls_unlisted": Recorder(bg, tls).start(),  # unlisted port over TLS
    }
    yield made
    for recorder in made.values():
        recorder.stop()


@pytest.fixture(scope="module")
def audit_keyed(start_sidecar, provider, listeners, tmp_path_factory) -> SidecarProcess:
    mount = SecretMount(tmp_path_factory.mktemp("audit-secrets") / "mount", dict(KEYS))
    return start_sidecar(
        _audit_policy(provider.port, listeners["plain_listed"].port),
        reverse=("openai",),
        extra_args=("--secrets-dir", str(mount.root)),
    )


def _client(sidecar: SidecarProcess, **kwargs) -> httpx.Client:
    return httpx.Client(
        proxy=sidecar.proxy_url,
        verify=ssl.create_default_context(cafile=sidecar.ca_cert),
        timeout=15,
        **kwargs,
    )


def _headers(marker: str, key: str = DUMMY) -> dict[str, str]:
    return {"x-test-marker": marker, "authorization": f"Bearer {key}"}


def _assert_no_key(raw: bytes | str) -> None:
    text = raw if isinstance(raw, str) else raw.decode("latin-1")
    for name, key in KEYS.items():
        assert key not in text, f"the {name} key went out on a would_block request"
    assert DUMMY not in text, "the gateway's credential was not stripped"
    assert "authorization" not in text.lower() and "x-api-key" not in text.lower(), text


def _from_provider(provider: FakeProvider, marker: str) -> dict[str, str]:
    found = [r for r in provider.received if r.headers.get("x-test-marker") == marker]
    assert len(found) == 1, f"request {marker} did not reach the provider"
    return found[0].headers


# --- controls: the key does go where it may, and the listener would see it -------------


def test_control_allowed_request_gets_the_key(audit_keyed, provider):
    with _client(audit_keyed) as c:
        got = c.get(f"https://api.openai.com:{provider.port}/v1/models", headers=_headers("ok"))
    assert got.status_code == 200
    assert _from_provider(provider, "ok")["authorization"] == f"Bearer {KEY}"
    assert audit_keyed.wait_for_decision(path="/v1/models", decision="allow")


def test_control_listener_records_a_key_sent_to_it(listeners):
    recorder = listeners["plain_unlisted"]
    httpx.get(
        f"http://127.0.0.1:{recorder.port}/v1/models",
        headers=_headers("control", KEY),
        timeout=10,
    )
    assert KEY.encode() in recorder.saw("control")


# --- every would_block reason: no key on the wire --------------------------------------


def test_audit_plain_http_on_unlisted_port_gets_no_key(audit_keyed, listeners):
    """The reported attack: port_not_allowed, cleartext, an attacker listening there."""
    port = listeners["plain_unlisted"].port
    with _client(audit_keyed) as c:
        got = c.get(f"http://api.openai.com:{port}/v1/models", headers=_headers("p-unl"))
    assert got.status_code == 200  # audit: it passed
    _assert_no_key(listeners["plain_unlisted"].saw("p-unl"))
    decision = audit_keyed.wait_for_decision(port=port, reason="port_not_allowed")
    assert decision["decision"] == "would_block"
    assert "key not added" in decision["detail"]


def test_audit_plain_http_on_listed_port_gets_no_key(audit_keyed, listeners):
    """tls_required: plain HTTP towards a provider on a port it lists."""
    port = listeners["plain_listed"].port
    headers = {**_headers("p-lst"), "x-api-key": DUMMY}
    with _client(audit_keyed) as c:
        got = c.get(f"http://api.anthropic.com:{port}/v1/messages", headers=headers)
    assert got.status_code == 200
    _assert_no_key(listeners["plain_listed"].saw("p-lst"))
    decision = audit_keyed.wait_for_decision(port=port, reason="tls_required")
    assert decision["decision"] == "would_block"


def test_audit_tls_on_unlisted_port_gets_no_key(audit_keyed, listeners):
    """port_not_allowed over verified TLS (CONNECT to an unlisted port): still no key."""
    port = listeners["tls_unlisted"].port
    with _client(audit_keyed) as c:
        got = c.get(f"https://api.openai.com:{port}/v1/models", headers=_headers("t-unl"))
    assert got.status_code == 200
    _assert_no_key(listeners["tls_unlisted"].saw("t-unl"))
    assert audit_keyed.wait_for_decision(port=port, reason="port_not_allowed", path="/v1/models")


@pytest.mark.parametrize(
    ("reason", "method", "path"),
    [
        ("path_not_allowed", "GET", "/admin/keys"),
        ("method_not_allowed", "DELETE", "/v1/models"),
        ("invalid_path", "GET", "/v1//models"),
    ],
)
def test_audit_request_rule_would_block_gets_no_key(audit_keyed, provider, reason, method, path):
    """Right host, port and TLS, but a path or method the entry does not list."""
    marker = f"rule-{reason}"
    with _client(audit_keyed) as c:
        got = c.request(
            method, f"https://api.openai.com:{provider.port}{path}", headers=_headers(marker)
        )
    assert got.status_code != 403, got.text  # audit: it passed
    _assert_no_key(str(_from_provider(provider, marker)))
    assert audit_keyed.wait_for_decision(reason=reason, decision="would_block")


def test_audit_redirect_to_unlisted_port_gets_no_key(audit_keyed, provider, listeners):
    """The provider redirects to a cleartext port: the second hop is would_block, keyless."""
    port = listeners["plain_unlisted"].port
    target = f"http://api.openai.com:{port}/v1/after-redirect"
    with _client(audit_keyed, follow_redirects=True) as c:
        got = c.get(
            f"https://api.openai.com:{provider.port}/v1/redirect",
            params={"to": target},
            headers=_headers("redir"),
        )
    assert got.status_code == 200
    assert _from_provider(provider, "redir")["authorization"] == f"Bearer {KEY}"  # hop 1: allowed
    _assert_no_key(listeners["plain_unlisted"].saw("redir"))  # hop 2: would_block


def test_audit_reverse_listener_would_block_gets_no_key(audit_keyed, provider):
    """Reverse mode: the listener fixes the host, but a path the entry does not list is
    would_block in audit mode, and goes without the key."""
    with httpx.Client(timeout=15) as c:
        got = c.get(audit_keyed.reverse_url("openai") + "/admin/rev", headers=_headers("rev"))
    assert got.status_code == 200
    _assert_no_key(str(_from_provider(provider, "rev")))
    decision = audit_keyed.wait_for_decision(path="/admin/rev", mode="reverse")
    assert decision["decision"] == "would_block" and decision["reason"] == "path_not_allowed"


def test_audit_would_block_still_refuses_a_gateway_held_key(audit_keyed, listeners):
    """Refusing real keys the gateway holds (S7) is not relaxed on would_block requests."""
    port = listeners["plain_unlisted"].port
    with _client(audit_keyed) as c:
        got = c.get(
            f"http://api.openai.com:{port}/v1/models",
            headers=_headers("leak", LEAKED_GATEWAY_KEY),
        )
    assert got.status_code == 403
    assert got.headers["x-egress-sidecar-reason"] == "gateway_holds_credential"
    assert not [r for r in listeners["plain_unlisted"].received if b"leak" in r]
    assert audit_keyed.wait_for_decision(reason="gateway_holds_credential", decision="block")


def test_no_key_in_audit_sidecar_output(audit_keyed):
    output = "".join(audit_keyed.stdout_lines + audit_keyed.stderr_lines)
    assert KEY not in output
