"""The fake provider and fake DNS, in their own process (so they never share a GIL
with the load generator or the proxy under test).

Provider: aiohttp over TLS, OpenAI-shaped paths. Dedicated to benchmarking rather than
`tests.support.fakes.FakeProvider`, which keeps every request body it receives (1 MB
bodies times thousands of requests) and records send times in its own process only.
Here every SSE event carries the monotonic time it was written (`"t"`), which the
client compares with its arrival time (CLOCK_MONOTONIC is system-wide on Linux).

DNS: `tests.support.fakes.FakeDNS.answer` (the test fake's table logic), served on UDP.

Prints one JSON line `{"https": PORT, "dns": PORT}` on stdout once both listen; stops
on SIGTERM/SIGINT or when stdin closes (its parent went away).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
import ssl
import sys
import time
import zlib

from aiohttp import web

from tests.support.fakes import FakeDNS

SMALL = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-fake",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello from fake"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}
SMALL_BODY = json.dumps(SMALL).encode()


@functools.cache
def _gzip_zeros(mb: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(mb)) + compressor.flush()


class Provider:
    def __init__(self) -> None:
        self.active_streams = 0
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/messages", self.messages)  # issue 14: the other shapes
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/models/{model}", self.gemini)  # host: api.openai.com
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/bench/active", self.active)
        app.router.add_get("/v1/bench/header-bomb", self.header_bomb)
        app.router.add_get("/v1/bench/gzip", self.gzip_body)
        return app

    async def gzip_body(self, request: web.Request) -> web.Response:
        """A malicious upstream (bench.hostile): a small gzip body that decodes to `mb`
        MB, though the sidecar asked for identity."""
        mb = min(int(request.query.get("mb", "1")), 63)
        body = _gzip_zeros(mb)
        return web.Response(
            body=body,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(
            body=b'{"object":"list","data":[{"id":"gpt-fake"}]}', content_type="application/json"
        )

    async def active(self, request: web.Request) -> web.Response:
        return web.json_response({"active_streams": self.active_streams, "requests": self.requests})

    async def header_bomb(self, request: web.Request) -> web.StreamResponse:
        """A malicious upstream (bench.hostile): a response header of `mb` MB, written raw
        on the transport with flow control, then the connection is closed."""
        transport = request.transport
        mb = min(int(request.query.get("mb", "1")), 1024)
        if transport is None:
            raise web.HTTPBadRequest()
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Bomb: ")
        chunk = b"a" * (1 << 20)
        for _ in range(mb):
            if transport.is_closing():
                break
            transport.write(chunk)
            while transport.get_write_buffer_size() > (4 << 20) and not transport.is_closing():
                await asyncio.sleep(0.005)
        if not transport.is_closing():
            transport.write(b"\r\n\r\n")
        transport.close()
        raise asyncio.CancelledError  # aiohttp must not write a response of its own

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if len(body) > 65536:  # large prompt: acknowledge its size, do not parse
            return web.json_response({"received": len(body)})
        payload = json.loads(body or b"{}")
        if not payload.get("stream"):
            return web.Response(body=SMALL_BODY, content_type="application/json")
        return await self.shaped_stream(request, payload, "chat")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        return await self.shaped_stream(
            request, json.loads(await request.read() or b"{}"), "anthropic"
        )

    async def responses(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        return await self.shaped_stream(
            request, json.loads(await request.read() or b"{}"), "responses"
        )

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        shape = "gemini" if request.query.get("alt") == "sse" else "gemini_array"
        return await self.shaped_stream(request, json.loads(await request.read() or b"{}"), shape)

    async def shaped_stream(
        self, request: web.Request, payload: dict, shape: str
    ) -> web.StreamResponse:
        """`chunks` text events `interval` s apart, in one API's stream shape (issue 14),
        framed as that provider frames them, each with its send time `"t"`."""
        chunks = int(payload.get("chunks", 200))
        interval = float(payload.get("interval", 0.01))
        array = shape == "gemini_array"  # one JSON array, element by element
        kind = "application/json" if array else "text/event-stream"
        response = web.StreamResponse(headers={"content-type": kind, "cache-control": "no-cache"})
        await response.prepare(request)
        frame = _frame
        if array:
            shape, separator = "gemini", [b"["]

            def frame(shape: str, event: dict) -> bytes:
                head, separator[0] = separator[0], b"\r\n,\r\n"
                return head + json.dumps(event).encode()

        self.active_streams += 1
        try:
            for event in SHAPE_OPENING.get(shape, []):
                await response.write(frame(shape, {**event, "t": time.monotonic()}))
            start = time.monotonic()
            for i in range(chunks):
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                event = {**SHAPE_DELTA[shape](i), "i": i, "t": time.monotonic()}
                await response.write(frame(shape, event))
            for event in SHAPE_CLOSING.get(shape, []):
                await response.write(frame(shape, {**event, "t": time.monotonic()}))
            if shape == "chat":
                await response.write(b"data: [DONE]\n\n")
            if array:
                await response.write(b"]")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        finally:
            self.active_streams -= 1
        return response


# Each API's stream, reduced to what its SDK needs (docs/stream-inspection.md).
SHAPE_DELTA = {
    "chat": lambda i: {"choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]},
    "anthropic": lambda i: {"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": f"tok{i} "}},
    "responses": lambda i: {"type": "response.output_text.delta", "item_id": "msg_1",
                            "output_index": 0, "content_index": 0, "delta": f"tok{i} "},
    "gemini": lambda i: {"candidates": [
        {"index": 0, "content": {"role": "model", "parts": [{"text": f"tok{i} "}]}}]},
}  # fmt: skip
SHAPE_OPENING = {
    "anthropic": [
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                                              "model": "claude-fake", "content": [],
                                              "usage": {"input_tokens": 3, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ],
    "responses": [{"type": "response.created", "response": {"id": "r", "output": []}}],
}  # fmt: skip
SHAPE_CLOSING = {
    "anthropic": [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ],
    "responses": [{"type": "response.completed", "response": {
        "id": "r", "output": [], "usage": {"input_tokens": 3, "output_tokens": 9}}}],
    "gemini": [{"candidates": [],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 9}}],
}  # fmt: skip


def _frame(shape: str, event: dict) -> bytes:
    data = json.dumps(event).encode()
    if shape in ("anthropic", "responses"):  # named events
        return b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n"
    if shape == "gemini":
        return b"data: " + data + b"\r\n\r\n"
    return b"data: " + data + b"\n\n"


class _DNS(asyncio.DatagramProtocol):
    def __init__(self, fake: FakeDNS) -> None:
        self.fake = fake
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        try:
            self.transport.sendto(self.fake.answer(data), addr)
        except Exception as exc:
            print(f"fake dns: {exc}", file=sys.stderr)
        del self.fake.questions[:]  # the test fake records questions; keep memory flat


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert)
    context.set_alpn_protocols(["http/1.1"])
    runner = web.AppRunner(Provider().app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context, backlog=1024)
    await site.start()
    https_port = int(runner.addresses[0][1])

    fake_dns = FakeDNS(bg=None)  # type: ignore[arg-type]  # only its answer() is used
    fake_dns.records.update({name: ["127.0.0.1"] for name in args.name})
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DNS(fake_dns), local_addr=("127.0.0.1", 0)
    )
    dns_port = int(transport.get_extra_info("sockname")[1])
    print(json.dumps({"https": https_port, "dns": dns_port}), flush=True)
    try:
        await stop.wait()
    finally:
        transport.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True, help="PEM with key and certificate chain")
    parser.add_argument("--name", action="append", default=[], help="DNS name -> 127.0.0.1")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
