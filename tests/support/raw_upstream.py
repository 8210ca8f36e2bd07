"""A hostile HTTP/1.1 upstream (TLS) that answers with bytes a test composes itself:
framings aiohttp will not produce (`Transfer-Encoding: gzip, chunked`). Outside the
product, on loopback. `respond(credential)` gets the key the request carried."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import trustme

from tests.support.fakes import BackgroundLoop

_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


class RawUpstream:
    def __init__(
        self, bg: BackgroundLoop, ca: trustme.CA, names: list[str],
        respond: Callable[[str], bytes],
    ) -> None:
        self._bg = bg
        self._cert = ca.issue_cert(*names)
        self.respond = respond
        self.received: list[dict[str, str]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def start(self) -> RawUpstream:
        self.port = self._bg.run(self._start())
        return self

    async def _start(self) -> int:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines if line)}
            self.received.append(headers)
            key = next((headers[h].removeprefix("Bearer ") for h in _CREDENTIAL_HEADERS
                        if h in headers), "")
            writer.write(self.respond(key))
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


def chunked(body: bytes, size: int = 32) -> bytes:
    """HTTP/1.1 chunked framing of `body`, in `size`-byte chunks."""
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"
