"""Issue 10, process-wide budgets: attacks that multiply what each connection may make
the sidecar hold (many HTTP/2 streams with a body each; bodies queued behind a slow
upstream decision) stay under the documented memory ceiling, and what is over a budget
is refused with `sidecar_busy`, a decision line and an alert. Through the real process.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from tests.alerts.alerts_helpers import FakeReceiver
from tests.limits.conftest import STALL_HOST
from tests.limits.helpers import (
    RSS_CEILING_MB,
    PeakRss,
    flood,
    proxy_address,
    wait_for_alert,
)
from tests.support.fakes import FakeProvider
from tests.support.keys import KEYS, key_policy
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.integration

MB = 1024 * 1024


class H2Flood:
    """`connections` HTTP/2 connections through CONNECT + TLS, each opening `streams`
    POST streams and sending each as much body as the sidecar's flow control allows
    (up to `body` bytes), never ending them. The connections stay open until `close`."""

    def __init__(self, sidecar: SidecarProcess, authority: str, connections: int, streams: int):
        self.sidecar = sidecar
        self.authority = authority
        self.connections = connections
        self.streams = streams
        self.sent = 0
        self.refused_streams = 0
        self.held: list[ssl.SSLSocket] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def run(self, body: int = 65535) -> H2Flood:
        threads = [
            threading.Thread(target=self._one, args=(body,), daemon=True)
            for _ in range(self.connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        return self

    def _one(self, body: int) -> None:
        context = ssl.create_default_context(cafile=self.sidecar.ca_cert)
        context.set_alpn_protocols(["h2"])
        try:
            raw = socket.create_connection(proxy_address(self.sidecar), timeout=20)
            raw.sendall(
                f"CONNECT {self.authority} HTTP/1.1\r\nHost: {self.authority}\r\n\r\n".encode()
            )
            assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            tls = context.wrap_socket(raw, server_hostname="api.openai.com")
            assert tls.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            tls.settimeout(2)
            conn.receive_data(tls.recv(65536))  # the sidecar's SETTINGS (its window)
            tls.sendall(conn.data_to_send())
            sent = refused = 0
            for i in range(self.streams):
                stream_id = 1 + 2 * i
                conn.send_headers(
                    stream_id,
                    [
                        (":method", "POST"),
                        (":scheme", "https"),
                        (":authority", self.authority),
                        (":path", "/v1/chat/completions"),
                        ("content-type", "application/json"),
                    ],
                )
                window = min(body, conn.local_flow_control_window(stream_id))
                while window > 0:
                    size = min(window, conn.max_outbound_frame_size)
                    conn.send_data(stream_id, b"A" * size)
                    sent += size
                    window -= size
                tls.sendall(conn.data_to_send())
                tls.setblocking(False)
                try:
                    for event in conn.receive_data(tls.recv(65536)):
                        refused += isinstance(event, h2.events.StreamReset)
                except (BlockingIOError, ssl.SSLWantReadError):
                    pass
                finally:
                    tls.settimeout(20)
            with self._lock:
                self.sent += sent
                self.refused_streams += refused
                self.held.append(tls)
        except Exception as exc:  # counted; the test asserts on the sidecar
            with self._lock:
                self.errors.append(repr(exc)[:200])

    def close(self) -> None:
        for tls in self.held:
            tls.close()


def test_h2_body_flood_over_many_streams_stays_under_the_ceiling(
    limited: SidecarProcess, receiver: FakeReceiver, provider: FakeProvider
):
    """The red team's flood (redteam/pod/test_exhaust.py::test_h2_body_memory), scaled to
    a busy test machine: 40 connections x 100 streams, each stream sent a full flow-
    control window of body and never ended. Before the budgets: 710 MB RSS here (721-
    1,658 MB at 150 connections). Now the streams past `--max-h2-streams-total` are
    refused (REFUSED_STREAM), each connection can make us hold one 64 KiB window, and
    allowed requests keep working."""
    authority = f"api.openai.com:{provider.port}"
    mark = len(limited.decisions)
    with PeakRss(limited) as rss:
        attack = H2Flood(limited, authority, connections=40, streams=100).run()
        try:
            with httpx.Client(
                proxy=limited.proxy_url,
                verify=ssl.create_default_context(cafile=limited.ca_cert),
                timeout=60,
            ) as client:
                response = client.get(f"https://{authority}/v1/models")
        finally:
            attack.close()
    print(
        f"peak RSS {rss.peak:.0f} MB; {attack.sent // MB} MB sent, "
        f"{attack.refused_streams} streams refused, errors {attack.errors[:2]}"
    )
    assert response.status_code == 200, response.text
    assert rss.peak < RSS_CEILING_MB, f"peak RSS {rss.peak:.0f} MB"
    busy = [d for d in limited.decisions[mark:] if d.get("reason") == "sidecar_busy"]
    assert busy, "no sidecar_busy decision"
    assert "--max-h2-streams-total" in busy[0]["detail"]
    # One line per connection (plus one per 10 s with the count), not one per stream.
    assert len(busy) <= 2 * 40, len(busy)
    wait_for_alert(receiver, "sidecar_busy")


def h2_post(sidecar: SidecarProcess, authority: str, path: str, body: bytes) -> int:
    """One HTTP/2 POST through CONNECT + TLS that sends its body as the sidecar's flow
    control allows (waiting for WINDOW_UPDATE); the response status."""
    context = ssl.create_default_context(cafile=sidecar.ca_cert)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(proxy_address(sidecar), timeout=20) as raw:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        with context.wrap_socket(raw, server_hostname=authority.split(":")[0]) as tls:
            assert tls.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(
                1,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", authority),
                    (":path", path),
                    ("content-length", str(len(body))),
                ],
            )
            tls.sendall(conn.data_to_send())
            offset, status, deadline = 0, 0, time.monotonic() + 60
            while time.monotonic() < deadline:
                window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                if offset < len(body) and window > 0:
                    piece = body[offset : offset + window]
                    offset += len(piece)
                    conn.send_data(1, piece, end_stream=offset == len(body))
                    tls.sendall(conn.data_to_send())
                    continue
                data = tls.recv(65536)  # waiting for credit, or the response
                assert data, "the sidecar closed the connection"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, 1)
                    if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                        return status
                tls.sendall(conn.data_to_send())
    raise AssertionError(f"no complete response; {offset} of {len(body)} bytes sent")


def test_h2_upload_larger_than_the_window_completes(
    limited: SidecarProcess, provider: FakeProvider
):
    """Flow control returns credit as the body is handed on: an upload many windows
    long (900 KB through a 64 KiB window) still arrives whole."""
    body = b'{"pad":"' + b"x" * 900_000 + b'"}'
    status = h2_post(limited, f"api.openai.com:{provider.port}", "/v1/upload", body)
    assert status == 200
    received = [r for r in provider.received if r.path == "/v1/upload"]
    assert received and received[-1].body == body


@pytest.fixture(scope="module")
def tight(start_limited) -> SidecarProcess:
    """A small body budget, so that the test fills it within the resolver's 3 s."""
    return start_limited("--max-buffered-request-bytes", "8m")


def test_body_queued_behind_a_slow_dns_answer_is_dropped_over_the_budget(
    tight: SidecarProcess, receiver: FakeReceiver, stall_dns: str
):
    """While the enforcer waits for DNS (here: an answer that never comes, the
    resolver's 3 s), mitmproxy queues whatever body bytes arrive, without a bound of its
    own: loopback delivers hundreds of MB per second. Past `--max-buffered-request-bytes`
    the bytes are dropped as they come and `sidecar_busy` is recorded at once; the
    request is answered when the wait ends (here: the DNS refusal, a 502)."""
    head = (
        f"POST http://{STALL_HOST}/upload HTTP/1.1\r\nHost: {STALL_HOST}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"10000\r\n" + b"c" * 65536 + b"\r\n"
    answers: list[bytes] = []

    def push() -> None:
        with socket.create_connection(proxy_address(tight), timeout=10) as sock:
            answers.append(flood(sock, head, chunk, 300 * MB))

    mark = len(tight.decisions)
    with PeakRss(tight) as rss:
        threads = [threading.Thread(target=push, daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    print(f"peak RSS {rss.peak:.0f} MB; answers {[a[:12] for a in answers]}")
    lines = tight.decisions[mark:]
    busy = [d for d in lines if d.get("reason") == "sidecar_busy"]
    assert busy, [d.get("reason") for d in lines]
    assert "--max-buffered-request-bytes" in busy[0]["detail"]
    assert busy[0]["host"] == STALL_HOST and busy[0]["method"] == "POST"
    # Recorded while the request was still waiting, before its DNS refusal.
    assert lines.index(busy[0]) < next(
        i for i, d in enumerate(lines) if d.get("reason") == "dns_failure"
    )
    wait_for_alert(receiver, "sidecar_busy")
    assert rss.peak < RSS_CEILING_MB, f"peak RSS {rss.peak:.0f} MB"


@pytest.fixture(scope="module")
def keyed_limited(start_sidecar, provider: FakeProvider, secrets) -> SidecarProcess:
    """Keys injected (so responses are decoded and scanned), default limits."""
    return start_sidecar(key_policy(provider.port), extra_args=("--secrets-dir", str(secrets.root)))


def test_concurrent_compressed_responses_cannot_add_up_past_the_decode_budget(
    keyed_limited: SidecarProcess, provider: FakeProvider
):
    """A hostile upstream answers keyed requests with small gzip bodies that decode to
    20 MiB each (under the 64 MiB per-response cap). Decoded together they used to add
    up (4 concurrent: 852 MB in the red team's run). Now they share
    `--max-decoded-bytes` (32 MiB): what does not fit is `response_not_inspectable`,
    the rest is scanned and redacted as before, and memory stays bounded."""
    sidecar = keyed_limited
    path = "/v1/reflect-encoded?ce=gzip&bomb=20"
    results: list[httpx.Response | str] = []

    def one() -> None:
        try:
            with httpx.Client(
                proxy=sidecar.proxy_url,
                verify=ssl.create_default_context(cafile=sidecar.ca_cert),
                timeout=120,
                headers={"authorization": "Bearer dummy"},
            ) as client:
                results.append(client.get(f"https://api.openai.com:{provider.port}{path}"))
        except httpx.HTTPError as exc:
            results.append(repr(exc))

    mark = len(sidecar.decisions)
    with PeakRss(sidecar) as rss:
        threads = [threading.Thread(target=one, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    statuses = [r.status_code if isinstance(r, httpx.Response) else r for r in results]
    print(f"peak RSS {rss.peak:.0f} MB; statuses {statuses}")
    assert len(results) == 8
    for response in results:
        assert isinstance(response, httpx.Response), response
        assert KEYS["openai"] not in response.text  # redacted or refused, never passed
        assert response.status_code in (200, 502), response.status_code
    refused = [d for d in sidecar.decisions[mark:] if d.get("reason") == "response_not_inspectable"]
    assert refused and "--max-decoded-bytes" in refused[0]["detail"], refused[:1]
    assert rss.peak < RSS_CEILING_MB, f"peak RSS {rss.peak:.0f} MB"


def test_upload_while_the_body_budget_is_spent_is_refused_with_503(
    tight: SidecarProcess, provider: FakeProvider, stall_dns: str
):
    """Another request holds the whole budget (its body queued behind a DNS wait); an
    allowed upload to the provider meanwhile is refused with 503 `sidecar_busy` at its
    first byte over the budget (the upstream request is abandoned), never buffered."""
    head = (
        f"POST http://{STALL_HOST}/upload HTTP/1.1\r\nHost: {STALL_HOST}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"10000\r\n" + b"c" * 65536 + b"\r\n"
    holder = socket.create_connection(proxy_address(tight), timeout=10)
    try:
        holder.sendall(head)
        for _ in range(160):  # 10 MiB: past the 8 MiB budget, which stays full ~3 s
            holder.sendall(chunk)
        mark = len(tight.decisions)
        authority = f"api.openai.com:{provider.port}"
        body = b'{"pad":"' + b"u" * 900_000 + b'"}'
        with httpx.Client(
            proxy=tight.proxy_url,
            verify=ssl.create_default_context(cafile=tight.ca_cert),
            timeout=30,
        ) as client:
            try:
                response = client.post(f"https://{authority}/v1/upload", content=body)
                status = response.status_code
                reason = response.headers.get("x-egress-sidecar-reason")
            except httpx.HTTPError as exc:  # the answer may race the rest of the upload
                status, reason = 0, repr(exc)
    finally:
        holder.close()

    def busy_lines() -> list[dict]:
        return [
            d
            for d in tight.decisions[mark:]
            if d.get("reason") == "sidecar_busy" and d.get("path") == "/v1/upload"
        ]

    # The line may reach stdout just after the answer reached the client: wait (bounded).
    deadline = time.monotonic() + 15
    while not busy_lines() and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = busy_lines()
    assert busy, (status, reason, tight.decisions[mark:])
    # Recorded when the bytes were dropped: while the upload still waited for its policy
    # decision (rule `limits`) or once it was streaming (its provider entry).
    assert busy[0]["host"] == "api.openai.com"
    assert busy[0]["rule"] in ("limits", "providers.openai")
    assert status in (503, 0), (status, reason)
    if status:
        assert reason == "sidecar_busy"


def test_bytes_through_a_connect_tunnel_are_not_charged_to_the_outer_request(
    tight: SidecarProcess, provider: FakeProvider
):
    """Inside a CONNECT tunnel mitmproxy hands the CONNECT stream the tunnel's raw bytes;
    only the requests inside it hold body bytes. Eleven 900 KB uploads on one kept-alive
    tunnel (10 MB, past the 8 MiB budget) all go through."""
    body = b'{"pad":"' + b"t" * 900_000 + b'"}'
    with httpx.Client(
        proxy=tight.proxy_url,
        verify=ssl.create_default_context(cafile=tight.ca_cert),
        timeout=30,
    ) as client:
        for _ in range(11):
            response = client.post(
                f"https://api.openai.com:{provider.port}/v1/upload", content=body
            )
            assert response.status_code == 200, response.text
