"""Stream shapes through the sidecar (issue 14): with response inspection on, an honest
stream of each API shape must not be slowed.

For each shape (OpenAI chat, OpenAI Responses, Anthropic Messages, Gemini SSE, Gemini's
JSON array without `alt=sse`), `count` streams of `chunks` text events 10 ms apart,
direct, through bare mitmproxy (bench/trimmed_master.py: no addon of ours) and through
`egress-sidecar run` (key injection on, so the reflection redactor and the decoded-text
guard both run), in the same run. Figures: time to the first text event (median;
target: within 5 ms of direct) and the worst delay of any event between the fake
writing it and the client reading it (median over streams of the per-stream worst;
target: under 10 ms more than direct). Then the official SDKs (openai, anthropic):
their first text delta from the call (cold client and warm) and from the response
headers, and the TCP connections a warm call opens.

    .venv/bin/python -m bench.stream_shapes [--chunks 100] [--count 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench.contenders as C
from bench.client import Conn
from bench.procs import Procs, cpu_ms

SHAPES = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "anthropic": "/v1/messages",
    "gemini": "/v1/models/gemini-fake:streamGenerateContent?alt=sse",
    "gemini_array": "/v1/models/gemini-fake:streamGenerateContent",  # a JSON array
}


async def shape_round(contender: C.Contender, path: str, chunks: int, count: int) -> dict[str, Any]:
    body = json.dumps(
        {"model": "m", "stream": True, "chunks": chunks, "interval": 0.01, "max_tokens": 5,
         "messages": [{"role": "user", "content": "x"}]}
    ).encode()  # fmt: skip
    ttfc: list[float] = []
    worst: list[float] = []
    for _ in range(count):
        conn = await Conn.open(contender.target, contender.target.ssl_context())
        try:
            await conn.request("GET", "/v1/models")  # warm: upstream connection open
            first, delays = await conn.stream(body, timeout=chunks * 0.01 + 20, path=path)
            if len(delays) == chunks:
                ttfc.append(first)
                worst.append(max(delays))
        finally:
            conn.close()
    return {"ttfc": ttfc, "worst": worst}


class _Connects(logging.Handler):
    """Counts the TCP connections httpcore (openai) and httpcore2 (anthropic) open."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("connect_tcp.started"):
            _Connects.count += 1


for _name in ("httpcore.connection", "httpcore2.connection"):
    logging.getLogger(_name).addHandler(_Connects())
    logging.getLogger(_name).setLevel(logging.DEBUG)


def sdk_first_delta(
    contender: C.Contender, world: C.World, shape: str, count: int
) -> dict[str, Any]:
    """Time from the SDK call to its first text delta: on a new client (cold: a new
    connection, through the sidecar also a new upstream connection), then warm; the
    same from the response headers (what the proxy adds to the stream itself, without
    the request path); and how many TCP connections the warm calls opened (the openai
    SDK closes a stream at `[DONE]`, before the chunked body's end, so its connection
    is never reused: every call pays the connection setup, through a proxy two TLS
    handshakes)."""
    import anthropic
    import httpx
    import openai

    headers_at: list[float] = []
    hooks = {"response": [lambda _r: headers_at.append(time.monotonic())]}
    proxy = None
    verify: ssl.SSLContext
    if contender.target.proxy is not None:
        host, port = contender.target.proxy
        proxy = f"http://{host}:{port}"
        verify = ssl.create_default_context(cafile=contender.target.cafile)
    else:
        verify = ssl.create_default_context(cafile=world.ca_file)
    # The sidecar needs the provider's name; direct and bare mitmproxy reach the fake's
    # address (its name resolves only through the fake DNS).
    named = contender.name.startswith("sidecar")
    base = f"https://{'api.openai.com' if named else '127.0.0.1'}:{world.https_port}"
    client: Any
    if shape == "anthropic":
        client = anthropic.Anthropic(
            api_key="dummy", base_url=base, max_retries=0,
            http_client=anthropic.DefaultHttpxClient(
                proxy=proxy, verify=verify, event_hooks=hooks),
        )  # fmt: skip
    else:
        client = openai.OpenAI(
            api_key="dummy", base_url=base + "/v1", max_retries=0,
            http_client=httpx.Client(proxy=proxy, verify=verify, event_hooks=hooks),
        )  # fmt: skip
    # The SDKs import their resources lazily (seconds on a busy machine): not a cold
    # connection's cost, so done before any call is timed.
    _ = client.messages if shape == "anthropic" else client.chat.completions
    warm: list[float] = []
    after_headers: list[float] = []
    cold: float | None = None
    cpu_before = 0.0
    for attempt in range(count + 1):
        if attempt == 1:
            _Connects.count = 0
            cpu_before = cpu_ms(contender.pid)
        headers_at.clear()
        started = time.monotonic()
        first = None
        if shape == "anthropic":
            with client.messages.stream(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                extra_body={"chunks": 20, "interval": 0.01},
            ) as stream:  # fmt: skip
                for _ in stream.text_stream:
                    first = first or time.monotonic()
        else:
            for chunk in client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True,
                extra_body={"chunks": 20, "interval": 0.01},
            ):  # fmt: skip
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.monotonic()
        if first is None:
            continue
        if attempt:
            warm.append(first - started)
            if headers_at:
                after_headers.append(first - headers_at[0])
        else:
            cold = first - started
    return {
        # CPU the proxy process spent per warm call: unlike latency, hardly moved by load
        "proxy_cpu_ms_per_call": round((cpu_ms(contender.pid) - cpu_before) / count, 2),
        "first_delta_ms": ms(warm),
        "cold_first_delta_ms": ms([cold] if cold is not None else []),
        "first_delta_after_headers_ms": ms(after_headers),
        "tcp_connects_per_call": round(_Connects.count / max(1, count), 2),
    }


def ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 2) if values else None


async def run(chunks: int, count: int, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="egress-bench-shapes-") as tmp:
        procs = Procs(Path(tmp))
        try:
            world = C.start_world(procs, Path(tmp))
            sidecar = C.start_sidecar(procs, world)
            trimmed = C.start_trimmed(procs, world)  # bare mitmproxy: no addon of ours
            C.wait_mitm(trimmed)
            direct = C.direct(world)
            contenders = (direct, trimmed, sidecar)
            result: dict[str, Any] = {}
            for shape, path in SHAPES.items():
                row: dict[str, Any] = {}
                for contender in (*contenders, *contenders):  # interleaved rounds
                    log(f"{shape}: {contender.name}")
                    got = await shape_round(contender, path, chunks, max(1, count // 2))
                    mine = row.setdefault(contender.name, {"ttfc": [], "worst": []})
                    mine["ttfc"] += got["ttfc"]
                    mine["worst"] += got["worst"]
                result[shape] = {
                    name: {"first_event_ms": ms(v["ttfc"]), "worst_event_delay_ms": ms(v["worst"]),
                           "streams": len(v["ttfc"])}
                    for name, v in row.items()
                }  # fmt: skip
            for shape in ("chat", "anthropic"):
                log(f"sdk {shape}")
                result[f"sdk_{shape}"] = {
                    c.name: sdk_first_delta(c, world, shape, count) for c in contenders
                }
            return result
        finally:
            procs.stop_all()


def report(result: dict[str, Any]) -> str:
    lines = ["| shape | direct first | bare mitmproxy first | sidecar first | "
             "sidecar - direct (target <= 5) | direct worst | bare mitmproxy worst | "
             "sidecar worst | sidecar - direct (target <= 10) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for shape in SHAPES:
        d, t, s = (result[shape][n] for n in ("direct", "trimmed", "sidecar"))
        first, worst = "first_event_ms", "worst_event_delay_ms"
        lines.append(
            f"| {shape} | {d[first]} | {t[first]} | {s[first]} | {_diff(s[first], d[first])} | "
            f"{d[worst]} | {t[worst]} | {s[worst]} | {_diff(s[worst], d[worst])} |"
        )
    lines += ["", "| SDK | figure | direct | bare mitmproxy | sidecar | sidecar - direct |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for shape in ("chat", "anthropic"):
        row = result[f"sdk_{shape}"]
        for kind in row["direct"]:
            d, t, s = (row[n][kind] for n in ("direct", "trimmed", "sidecar"))
            lines.append(f"| {shape} | {kind} | {d} | {t} | {s} | {_diff(s, d)} |")
    return "\n".join(lines)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--output", default=None)
    parser.add_argument("--sidecar-tree", default=None, help="run the sidecar from this tree")
    args = parser.parse_args()
    C.SIDECAR_TREE = args.sidecar_tree
    result = asyncio.run(run(args.chunks, args.count, lambda m: print(m, file=sys.stderr)))
    print(report(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
