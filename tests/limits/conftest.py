"""A sidecar with default limits and a webhook alert sink, plus a hostile upstream."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.alerts.alerts_helpers import FakeReceiver, write_config
from tests.conftest import provider_policy
from tests.support.fakes import BackgroundLoop, FakeDNS, FakeProvider
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess

BOMB_HOST = "bomb.example.net"
# A listed host whose DNS never answers: a request to it waits in the enforcer (the
# resolver's 3 s) while its body keeps arriving.
STALL_HOST = "stall.example.net"

pytestmark = pytest.mark.integration


class HeaderBombUpstream:
    """An upstream that answers every request with an endless header line: plain HTTP,
    or HTTPS when given a TLS context (a provider is only ever reached over TLS)."""

    def __init__(self, total: int = 200 * 1024 * 1024, tls: ssl.SSLContext | None = None) -> None:
        self.total = total
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent: list[int] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._bomb, args=(conn,), daemon=True).start()

    def _bomb(self, conn: socket.socket) -> None:
        sent = 0
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Bomb: ")
                filler = b"a" * 65536
                while sent < self.total:
                    conn.sendall(filler)
                    sent += len(filler)
            except OSError:
                pass
        self.sent.append(sent)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def bomb_upstream(dns_server: FakeDNS) -> Iterator[HeaderBombUpstream]:
    upstream = HeaderBombUpstream()
    dns_server.records[BOMB_HOST] = ["127.0.0.1"]
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def tls_bomb_upstream(dns_server: FakeDNS, test_ca: trustme.CA) -> Iterator[HeaderBombUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(BOMB_HOST).configure_cert(context)
    upstream = HeaderBombUpstream(tls=context)
    dns_server.records[BOMB_HOST] = ["127.0.0.1"]
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def stall_dns(dns_server: FakeDNS) -> Iterator[str]:
    dns_server.failures[STALL_HOST] = "timeout"
    yield STALL_HOST
    dns_server.failures.pop(STALL_HOST, None)


@pytest.fixture(scope="module")
def receiver(bg: BackgroundLoop) -> Iterator[FakeReceiver]:
    rx = bg.run(FakeReceiver(default=200).start(free_port()))
    yield rx
    bg.run(rx.stop())


def limits_policy(
    provider: FakeProvider, bomb: HeaderBombUpstream, tls_bomb: HeaderBombUpstream
) -> str:
    """The test provider policy; openai takes bodies up to 1 MiB, and the hostile
    upstream is an `allow:` entry (plain HTTP on one port, HTTPS on another)."""
    return provider_policy(provider.port).replace(
        "    addresses: [127.0.0.0/8]\n  anthropic:",
        "    addresses: [127.0.0.0/8]\n    max_request_body: 1m\n  anthropic:",
    ) + (
        f"allow:\n  - {{host: {BOMB_HOST}, ports: [{bomb.port}, {tls_bomb.port}], "
        "addresses: [127.0.0.0/8]}\n"
        f"  - {{host: {STALL_HOST}, ports: [80], addresses: [127.0.0.0/8]}}\n"
    )


@pytest.fixture(scope="module")
def start_limited(
    start_sidecar: Callable[..., SidecarProcess],
    provider: FakeProvider,
    bomb_upstream: HeaderBombUpstream,
    tls_bomb_upstream: HeaderBombUpstream,
    receiver: FakeReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., SidecarProcess]:
    def start(*extra: str) -> SidecarProcess:
        tmp: Path = tmp_path_factory.mktemp("limits")
        config = write_config(
            tmp,
            f"sinks:\n  - name: hook\n    type: webhook\n    url: {receiver.url}/hook\n"
            f"    hmac_key_file: {tmp / 'hmac'}\n",
            secrets={"hmac": "k" * 32},
        )
        policy = limits_policy(provider, bomb_upstream, tls_bomb_upstream)
        assert "max_request_body" in policy
        return start_sidecar(
            policy,
            extra_args=("--alerts-config", config, "--alert-spool", str(tmp / "spool"), *extra),
        )

    return start


@pytest.fixture(scope="module")
def limited(start_limited: Callable[..., SidecarProcess]) -> SidecarProcess:
    """Default limits: what the memory ceiling is documented for."""
    return start_limited()


@pytest.fixture(scope="module")
def quick(start_limited) -> SidecarProcess:
    """Short timers, so the timeouts show within a test's patience."""
    return start_limited(
        "--header-timeout",
        "2",
        "--first-request-timeout",
        "2",
        "--idle-timeout",
        "3",
        "--max-h2-streams",
        "10",
    )
