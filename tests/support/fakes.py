"""What is outside the product, faked on loopback: an LLM provider and a DNS server.

The fake provider speaks the OpenAI and Anthropic wire formats (JSON and SSE
streaming), serves TLS with a certificate from a test CA, and records every request
it received (method, path, headers) and when it sent each stream chunk. The fake DNS
server answers from a table the test controls and records every question, so a test
can prove a refused name never reached "upstream".
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import json
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, Self

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trustme
from aiohttp import web


class BackgroundLoop:
    """An asyncio loop in a daemon thread, for servers the synchronous tests talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class LoopbackServer:
    """An aiohttp server on 127.0.0.1 in a `BackgroundLoop`, on a free port: TLS with a
    certificate from the test CA for `names`, or plain HTTP without a CA. Subclasses
    add their routes in `routes`."""

    client_max_size = 1024**2  # aiohttp's default request body limit

    def __init__(
        self, bg: BackgroundLoop, ca: trustme.CA | None = None, names: list[str] | None = None
    ) -> None:
        self._bg = bg
        self._cert = ca.issue_cert(*(names or [])) if ca is not None else None
        self.port = 0
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self.port = self._bg.run(self._start())
        return self

    async def _start(self) -> int:
        app = web.Application(client_max_size=self.client_max_size)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self._cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._cert.configure_cert(context)
        return await self._listen(self._runner, context)

    async def _listen(self, runner: web.AppRunner, context: ssl.SSLContext | None) -> int:
        """Listen (on 127.0.0.1, a free port); the port."""
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        return int(runner.addresses[0][1])

    def stop(self) -> None:
        if self._runner is not None:
            self._bg.run(self._runner.cleanup())


@dataclasses.dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float
    peer: tuple[str, int] | None = None  # the upstream TCP connection it came on

    @classmethod
    def of(cls, request: web.Request, body: bytes, **extra: Any) -> Self:
        """What arrived, now: the request as the fake saw it (headers lower-cased)."""
        return cls(
            request.method,
            request.path,
            request.query_string,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            time.monotonic(),
            request.transport.get_extra_info("peername") if request.transport else None,
            **extra,
        )


class FakeProvider(LoopbackServer):
    """TLS server on 127.0.0.1 answering like OpenAI and Anthropic do."""

    def __init__(self, bg: BackgroundLoop, ca: trustme.CA, names: list[str]) -> None:
        super().__init__(bg, ca, names)
        self.received: list[Received] = []
        self.chunk_sent_at: dict[str, list[float]] = {}
        self.stream_chunks = 20
        self.stream_interval = 0.05
        self.reflect: dict[str, str] = {}  # extra response headers to echo (tests of S7)
        self.ws_received: list[str | bytes] = []  # client WebSocket messages (quiet realtime)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/reflect", self._reflect)
        app.router.add_get("/v1/reflect-stream", self._reflect_stream)
        app.router.add_get("/v1/redirect", self._redirect)
        # Hostile upstreams for the reflection guard (issue 11).
        app.router.add_get("/v1/reflect-header-name", self._reflect_header_name)
        app.router.add_get("/v1/reflect-encoded", self._reflect_encoded)
        app.router.add_get("/v1/reflect-forms", self._reflect_forms)
        app.router.add_get("/v1/realtime", self._realtime)
        app.router.add_get("/v1/realtime-ext", self._realtime_ext)
        app.router.add_route("*", "/{tail:.*}", self._anything)

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        self.received.append(Received.of(request, body))
        return body

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def _anything(self, request: web.Request) -> web.Response:
        await self._record(request)
        response = web.json_response({"path": request.path, "method": request.method})
        if "close" in request.query:
            response.force_close()  # the provider ends keep-alive: a new upstream connection
        return response

    @staticmethod
    def _credential(request: web.Request) -> str:
        """Whatever key the request carried, as a malicious or buggy provider echoes it."""
        for name in ("authorization", "x-api-key", "api-key", "x-goog-api-key"):
            value = request.headers.get(name)
            if value:
                return value.removeprefix("Bearer ")
        return ""

    async def _reflect(self, request: web.Request) -> web.Response:
        await self._record(request)
        key = self._credential(request)
        return web.json_response(
            {"error": {"message": f"Incorrect API key provided: {key}"}},
            headers={"x-echo-key": key},
        )

    async def _reflect_stream(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        key = self._credential(request)
        half = len(key) // 2
        events = [
            f"data: {json.dumps({'n': 0})}\n\n",
            f'data: {{"leak": "{key[:half]}',  # the key split across two chunks
            f'{key[half:]}"}}\n\n',
            "data: [DONE]\n\n",
        ]
        return await self._sse(request, f"reflect-{len(self.received)}", events)

    async def _reflect_header_name(self, request: web.Request) -> web.Response:
        await self._record(request)
        key = self._credential(request)
        return web.json_response({"ok": True}, headers={key: "1", "x-control": "1"})

    async def _reflect_forms(self, request: web.Request) -> web.Response:
        """The key escaped as URLs, JSON and HTML escape it, and as hex, in the body and
        in a header (each form is one key of the JSON body)."""
        await self._record(request)
        key = self._credential(request)
        forms = {
            "percent": "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in key),
            "percent_every_byte": "".join(f"%{ord(c):02x}" for c in key),
            "json_escapes": "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in key),
            "html": "".join(f"&#{ord(c)};" for c in key),
            "hex": key.encode().hex(),
        }
        body = json.dumps(forms).replace("\\\\u", "\\u")  # real JSON \u escapes
        return web.Response(
            body=body.encode(),
            headers={"content-type": "application/json", "x-echo-percent": forms["percent"]},
        )

    async def _reflect_encoded(self, request: web.Request) -> web.Response:
        """The key in a body compressed in the layers `?ce=gzip,br` names (applied in
        that order, as Content-Encoding lists them). `?bomb=N`: N MiB of zeros before
        the key. `?raw=1`: the body is not compressed, whatever the header says."""
        await self._record(request)
        key = self._credential(request)
        layers = [c for c in request.query.get("ce", "").split(",") if c]
        body = b'{"error": "Incorrect API key provided: ' + key.encode() + b'"}'
        if request.query.get("bomb"):
            body = b"\0" * (int(request.query["bomb"]) << 20) + body
        if not request.query.get("raw"):
            body = await asyncio.get_running_loop().run_in_executor(None, encode, body, layers)
        return web.Response(
            body=body,
            headers={"content-type": "application/json", "content-encoding": ", ".join(layers)},
        )

    async def _realtime(self, request: web.Request) -> web.WebSocketResponse:
        """OpenAI-Realtime-shaped WebSocket that echoes the key in its messages: whole
        in a text and a binary message, split across two and across three messages."""
        await self._record(request)
        key = self._credential(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if "quiet" in request.query:  # issue 13: record what the client sends, ack each
            await ws.send_str(json.dumps({"type": "session.created", "session": {}}))
            async for message in ws:
                self.ws_received.append(message.data)
                await ws.send_str(json.dumps({"type": "ack", "n": len(self.ws_received)}))
            return ws
        third = len(key) // 3
        await ws.send_str(json.dumps({"type": "session.created", "echo": key}))
        await ws.send_bytes(b"\x00binary:" + key.encode())
        await ws.send_str("split2:" + key[:third])
        await ws.send_str(key[third:] + ":end")
        await ws.send_str("split3:" + key[:third])
        await ws.send_str(key[third : 2 * third])
        await ws.send_str(key[2 * third :] + ":end")
        await ws.send_str(json.dumps({"type": "response.done"}))
        async for _ in ws:  # until the client closes
            pass
        return ws

    async def _realtime_ext(self, request: web.Request) -> web.WebSocketResponse:
        """Accepts a WebSocket extension nobody offered (`x-smuggle`): payloads in a
        form only the gateway would undo."""
        await self._record(request)
        ws = web.WebSocketResponse(compress=False)
        ws.headers["sec-websocket-extensions"] = "x-smuggle"
        await ws.prepare(request)
        await ws.send_bytes(base64.b64encode(self._credential(request).encode()[::-1]))
        await ws.close()
        return ws

    async def _redirect(self, request: web.Request) -> web.Response:
        await self._record(request)
        raise web.HTTPFound(request.query["to"])

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        payload = json.loads(await self._record(request) or b"{}")
        stream_id = payload.get("user") or f"chat-{len(self.received)}"
        if not payload.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": payload.get("model", "gpt-fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hello from fake"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                },
                headers=self.reflect,
            )

        def chunk(i: int) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": payload.get("model", "gpt-fake"),
                "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
            }

        events = [f"data: {json.dumps(chunk(i))}\n\n" for i in range(self.stream_chunks)]
        events.append("data: [DONE]\n\n")
        return await self._sse(request, stream_id, events)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        payload = json.loads(await self._record(request) or b"{}")
        stream_id = (payload.get("metadata") or {}).get("user_id") or f"msg-{len(self.received)}"
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": payload.get("model", "claude-fake"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 0},
        }
        if not payload.get("stream"):
            message["content"] = [{"type": "text", "text": "hello from fake"}]
            message["stop_reason"] = "end_turn"
            return web.json_response(message, headers=self.reflect)

        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n"

        events = [event("message_start", {"type": "message_start", "message": message})]
        events.append(
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for i in range(self.stream_chunks):
            events.append(
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": f"tok{i} "},
                    },
                )
            )
        events.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": self.stream_chunks},
                },
            )
        )
        events.append(event("message_stop", {"type": "message_stop"}))
        return await self._sse(request, stream_id, events)

    async def _sse(
        self, request: web.Request, stream_id: str, events: list[str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                **self.reflect,
            }
        )
        await response.prepare(request)
        sent = self.chunk_sent_at.setdefault(stream_id, [])
        for i, text in enumerate(events):
            if i:
                await asyncio.sleep(self.stream_interval)
            await response.write(text.encode())
            sent.append(time.monotonic())
        await response.write_eof()
        return response


def encode(body: bytes, layers: list[str]) -> bytes:
    """Apply content codings in order (the first listed is applied first)."""
    import brotli
    import zstandard

    coders = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "br": brotli.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }
    for coding in layers:
        body = coders[coding](body) if coding in coders else body
    return body


class FakeDNS:
    """UDP DNS server on 127.0.0.1: answers A/AAAA from `records`, REFUSED otherwise."""

    def __init__(self, bg: BackgroundLoop) -> None:
        self._bg = bg
        self.records: dict[str, list[str]] = {}
        # A broken resolver for some names: "servfail" answers SERVFAIL, "timeout" never
        # answers.
        self.failures: dict[str, str] = {}
        # Names answered only after this many seconds (a slow resolver).
        self.delays: dict[str, float] = {}
        self.questions: list[tuple[str, str]] = []
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    def start(self) -> FakeDNS:
        self.port = self._bg.run(self._start())
        return self

    async def _start(self) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DNSProtocol(self.answer, self.delay_of), local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        return int(transport.get_extra_info("sockname")[1])

    def stop(self) -> None:
        if self._transport is not None:
            self._bg.loop.call_soon_threadsafe(self._transport.close)

    def asked(self, name: str) -> bool:
        return any(q == name.rstrip(".").lower() for q, _ in self.questions)

    def delay_of(self, wire: bytes) -> float:
        if not self.delays:
            return 0.0
        name = dns.message.from_wire(wire).question[0].name.to_text().rstrip(".").lower()
        return self.delays.get(name, 0.0)

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.questions.append((name, rdtype))
        failure = self.failures.get(name)
        if failure == "timeout":
            return None
        if failure == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        addresses = self.records.get(name)
        if addresses is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        wanted = [a for a in addresses if (":" in a) == (rdtype == "AAAA")]
        if wanted and rdtype in ("A", "AAAA"):
            response.answer.append(dns.rrset.from_text(question.name, 5, "IN", rdtype, *wanted))
        return response.to_wire()


class _DNSProtocol(asyncio.DatagramProtocol):
    def __init__(
        self,
        answer: Callable[[bytes], bytes | None],
        delay: Callable[[bytes], float] = lambda wire: 0.0,
    ) -> None:
        self._answer = answer
        self._delay = delay
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        reply = self._answer(data)
        if reply is None:
            return
        delay = self._delay(data)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._transport.sendto, reply, addr)
        else:
            self._transport.sendto(reply, addr)
