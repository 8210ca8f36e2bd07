"""A small asyncio HTTP/1.1 client: direct TLS, or CONNECT through an explicit proxy.

Hand-written rather than httpx/aiohttp so that (a) the CONNECT authority, the TLS SNI
and the Host header can be set independently (bare mitmproxy is given the fake's IP
with the provider's SNI, the sidecar and Squid the provider's name), and (b) the client
spends as little CPU as possible on this 2-core machine. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
from collections.abc import Callable

from sidecar.streams.jsonarray import JsonArraySplitter  # pure: no mitmproxy, no network

IO_TIMEOUT = 15.0  # connecting, and large bodies
REQUEST_TIMEOUT = 3.0  # one small request (a hung request counts as an error)


class Refused(Exception):
    """The proxy answered the CONNECT with a non-2xx status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"CONNECT refused with {status}")
        self.status = status


@dataclasses.dataclass(frozen=True)
class Target:
    """How one contender is reached."""

    proxy: tuple[str, int] | None  # explicit proxy, or None for direct
    authority: str  # CONNECT authority (proxy) or TCP address "127.0.0.1:PORT" (direct)
    sni: str
    host_header: str
    cafile: str  # what the client trusts: the test CA, or the proxy's interception CA

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cafile)
        context.set_alpn_protocols(["http/1.1"])
        return context


class Conn:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.target = target
        self.closed = False

    @classmethod
    async def open(cls, target: Target, context: ssl.SSLContext) -> Conn:
        return await asyncio.wait_for(cls._open(target, context), IO_TIMEOUT)

    @classmethod
    async def _open(cls, target: Target, context: ssl.SSLContext) -> Conn:
        if target.proxy is None:
            host, port = target.authority.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(
                host, int(port), ssl=context, server_hostname=target.sni, limit=1 << 20
            )
            return cls(reader, writer, target)
        reader, writer = await asyncio.open_connection(*target.proxy, limit=1 << 20)
        try:
            writer.write(
                f"CONNECT {target.authority} HTTP/1.1\r\nHost: {target.authority}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if not 200 <= status < 300:
                raise Refused(status)
            await writer.start_tls(context, server_hostname=target.sni)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, target)

    def close(self) -> None:
        self.closed = True
        self.writer.close()

    def _send(self, method: str, path: str, body: bytes, content_type: str) -> None:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.target.host_header}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Accept: */*\r\n\r\n"
        ).encode()
        self.writer.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.writer.write(body)

    async def _head(self) -> tuple[int, dict[bytes, bytes]]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if headers.get(b"connection", b"").lower() == b"close":
            self.closed = True
        return status, headers

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._request(method, path, body, content_type), timeout)
        except BaseException:
            self.close()  # the response may still arrive: never reuse this connection
            raise

    async def _request(
        self, method: str, path: str, body: bytes, content_type: str
    ) -> tuple[int, bytes]:
        self._send(method, path, body, content_type)
        status, headers = await self._head()
        if b"content-length" in headers:
            data = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            async for part in self._chunks():
                parts.append(part)
            data = b"".join(parts)
        else:
            data = await self.reader.read()
            self.closed = True
        return status, data

    async def _chunks(self):  # type: ignore[no-untyped-def]
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]

    async def stream(
        self, body: bytes, timeout: float, path: str = "/v1/chat/completions"
    ) -> tuple[float, list[float]]:
        """POST a streaming request. Returns (time to the first text event, [arrival - send]
        per text event).

        Arrival times are taken when the bytes completing an event were read; send
        times are the fake's `"t"` field (system-wide monotonic clock). Text events are
        those with the fake's counter `"i"`, in any of the API shapes (issue 14): the
        opening events of a shape (Anthropic's message_start, ...) are not "first".
        """
        return await asyncio.wait_for(self._stream(body, path), timeout)

    async def _stream(self, body: bytes, path: str) -> tuple[float, list[float]]:
        started = time.monotonic()
        self._send("POST", path, body, "application/json")
        status, headers = await self._head()
        if status != 200:
            raise RuntimeError(f"stream answered {status}")
        first = -1.0
        delays: list[float] = []
        buffer = b""
        chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"

        async def pieces():  # type: ignore[no-untyped-def]
            if chunked:
                async for part in self._chunks():
                    yield part
            else:  # un-chunked (e.g. an HTTP/1.0-style proxy response): read to EOF
                while data := await self.reader.read(65536):
                    yield data

        array: JsonArraySplitter | None = None  # Gemini without alt=sse: one JSON array
        async for part in pieces():
            now = time.monotonic()
            if array is None and not buffer and part.lstrip().startswith(b"["):
                array = JsonArraySplitter()
            if array is not None:
                documents = [json.loads(e.data) for e in array.feed(part)]
            else:
                buffer += part.replace(b"\r\n", b"\n")
                documents = []
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    data = next(
                        (line[6:] for line in event.split(b"\n") if line.startswith(b"data: {")),
                        None,
                    )
                    if data is not None:
                        documents.append(json.loads(data))
            for doc in documents:
                if "i" not in doc:
                    continue
                if first < 0:
                    first = now - started
                delays.append(now - doc["t"])
        return first, delays


async def open_many(target: Target, count: int, parallel: int = 16) -> list[Conn]:
    context = target.ssl_context()
    gate = asyncio.Semaphore(parallel)

    async def one() -> Conn:
        async with gate:
            return await Conn.open(target, context)

    return list(await asyncio.gather(*(one() for _ in range(count))))


SMALL_REQUEST = json.dumps(
    {"model": "gpt-fake", "messages": [{"role": "user", "content": "Say hello in one word."}]}
).encode()


@dataclasses.dataclass
class LoadResult:
    completed: int
    errors: int
    elapsed: float
    latencies: list[float]  # seconds

    @property
    def rps(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0


async def closed_loop(
    target: Target,
    concurrency: int,
    *,
    duration: float | None = None,
    count: int | None = None,
    body: bytes = SMALL_REQUEST,
    per_connection: int = 0,
    warmup: int = 1,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """`concurrency` keep-alive connections, each sending requests back to back.

    Connections are opened (and warmed with `warmup` requests, so the proxy has its
    upstream connection) before the clock starts. Stops after `duration` seconds or
    `count` requests in all. `per_connection` > 0 reconnects after that many requests.
    `on_start` is called as the clock starts (after the handshakes and warm-up).
    """
    assert duration is not None or count is not None
    context = target.ssl_context()
    conns = await open_many(target, concurrency)
    for conn in conns:
        for _ in range(warmup):
            try:
                await conn.request("POST", "/v1/chat/completions", SMALL_REQUEST)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                conn.closed = True
    latencies: list[float] = []
    errors = 0
    remaining = [count if count is not None else -1]
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    deadline = start + duration if duration is not None else start + 3600

    async def worker(conn: Conn) -> None:
        nonlocal errors
        used = warmup  # warm-up requests count against `per_connection`
        while time.perf_counter() < deadline:
            if remaining[0] == 0:
                break
            if remaining[0] > 0:
                remaining[0] -= 1
            if conn.closed or (per_connection and used >= per_connection):
                conn.close()
                try:
                    conn = await Conn.open(target, context)
                except (OSError, TimeoutError, Refused, ValueError):
                    errors += 1
                    await asyncio.sleep(0.05)
                    continue
                used = 0
            t0 = time.perf_counter()
            try:
                status, _ = await conn.request("POST", "/v1/chat/completions", body)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                errors += 1
                conn.closed = True
                continue
            used += 1
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
        conn.close()

    await asyncio.wait_for(asyncio.gather(*(worker(c) for c in conns)), (duration or 3600) + 60)
    elapsed = time.perf_counter() - start
    return LoadResult(len(latencies), errors, elapsed, latencies)
