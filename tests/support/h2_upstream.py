"""A hostile HTTP/2 provider (TLS, ALPN h2) that echoes the key in response trailers,
and a small HTTP/2 client that goes through the sidecar's explicit proxy and reads
them. Outside the product: the `h2` library (installed with mitmproxy) on loopback.

Every request gets: `:status 200`, a JSON body in three DATA frames, then trailers
`x-echo-key: <key>` and `<key, lower-cased>: 1` (HTTP/2 names are lower case).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events
import trustme

from tests.support.fakes import BackgroundLoop
from tests.support.tunnel import open_tunnel

_CREDENTIAL_HEADERS = (b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key")


class FakeH2Provider:
    def __init__(self, bg: BackgroundLoop, ca: trustme.CA, names: list[str]) -> None:
        self._bg = bg
        self._cert = ca.issue_cert(*names)
        self.received: list[dict[str, str]] = []  # request headers, per stream
        self.port = 0
        self._server: asyncio.Server | None = None

    def start(self) -> FakeH2Provider:
        self.port = self._bg.run(self._start())
        return self

    async def _start(self) -> int:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        context.set_alpn_protocols(["h2"])
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {_s(k): _s(v) for k, v in event.headers}
                        self.received.append(headers)
                        await self._respond(conn, writer, event.stream_id, headers)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _respond(
        self,
        conn: h2.connection.H2Connection,
        writer: asyncio.StreamWriter,
        stream_id: int,
        headers: dict[str, str],
    ) -> None:
        key = next(
            (
                headers[h.decode()].removeprefix("Bearer ")
                for h in _CREDENTIAL_HEADERS
                if h.decode() in headers
            ),
            "",
        )
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json")])
        for part in (b'{"object": "list", ', b'"data": [], ', b'"done": true}'):
            conn.send_data(stream_id, part)
            writer.write(conn.data_to_send())
            await writer.drain()
            await asyncio.sleep(0.02)
        trailers = [("x-echo-key", key), ("x-control", "1")]
        if key:
            trailers.append((key.lower(), "1"))
        conn.send_headers(stream_id, trailers, end_stream=True)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def h2_get(
    host: str,
    port: int,
    path: str,
    ca_file: str,
    *,
    proxy: str | None,
    authorization: str = "Bearer dummy",
    timeout: float = 15.0,
) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """GET over HTTP/2, through an explicit proxy (CONNECT, then TLS with ALPN h2) or,
    with `proxy=None`, straight to 127.0.0.1:port. Returns (headers, body, trailers)."""
    if proxy is None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    else:
        raw = open_tunnel(proxy, f"{host}:{port}", timeout)
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    sock = context.wrap_socket(raw, server_hostname=host)
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", f"{host}:{port}"),
            (":path", path),
            ("authorization", authorization),
        ],
        end_stream=True,
    )
    sock.sendall(conn.data_to_send())
    headers: dict[str, str] = {}
    trailers: dict[str, str] = {}
    body = b""
    ended = False
    while not ended:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                headers = {_s(k): _s(v) for k, v in event.headers}
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = {_s(k): _s(v) for k, v in event.headers}
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended = True
        sock.sendall(conn.data_to_send())
    sock.close()
    return headers, body, trailers
