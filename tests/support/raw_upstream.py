"""A scripted HTTP/1.1 upstream over TLS that writes exactly the bytes a test gives it.

aiohttp cannot send informational (1xx) responses or other wire shapes a real provider
or CDN may produce; this server reads each request head (and a Content-Length body) on
a kept-alive connection and answers with `respond(request_head)`: bytes, or a list of
byte strings written as separate TCP segments `gap` seconds apart. `keyed(fn)` adapts a
`fn(credential)` responder: it gets the key the request carried.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import trustme

from tests.support.fakes import BackgroundLoop

_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def request_headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.partition(":") for line in lines if line)
    return {k.strip().lower(): v.strip() for k, _, v in pairs}


def keyed(respond: Callable[[str], bytes]) -> Callable[[bytes], bytes]:
    def from_head(head: bytes) -> bytes:
        headers = request_headers(head)
        key = next(
            (headers[h].removeprefix("Bearer ") for h in _CREDENTIAL_HEADERS if h in headers), ""
        )
        return respond(key)

    return from_head


def chunked(body: bytes, size: int = 32) -> bytes:
    """HTTP/1.1 chunked framing of `body`, in `size`-byte chunks."""
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


class RawUpstream:
    def __init__(
        self,
        bg: BackgroundLoop,
        ca: trustme.CA,
        names: list[str],
        respond: Callable[[bytes], bytes | list[bytes]],
        *,
        keep_alive: bool = True,
    ) -> None:
        self._bg = bg
        self._cert = ca.issue_cert(*names)
        self.respond = respond
        self.gap = 0.05
        # False: close after each answer (ends a body framed by the connection's end).
        self.keep_alive = keep_alive
        self.requests: list[bytes] = []  # request heads, in arrival order
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def received(self) -> list[dict[str, str]]:
        """The request headers, in arrival order."""
        return [request_headers(head) for head in self.requests]

    def start(self) -> RawUpstream:
        self.port = self._bg.run(self._start())
        return self

    async def _start(self) -> int:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        context.set_alpn_protocols(["http/1.1"])
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._server is not None:
            server = self._server
            self._bg.run(_close(server))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":", 1)[1]))
                self.requests.append(head)
                reply = self.respond(head)
                for i, part in enumerate([reply] if isinstance(reply, bytes) else reply):
                    if i:
                        await asyncio.sleep(self.gap)
                    writer.write(part)
                    await writer.drain()
                if not self.keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


async def _close(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()
