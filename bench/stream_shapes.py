"""Stream shapes through the sidecar (issue 14): with response inspection on, an honest
stream of each API shape must not be slowed.

For each shape (OpenAI chat, OpenAI Responses, Anthropic Messages, Gemini), `count`
streams of `chunks` text events 10 ms apart, direct and through `egress-sidecar run`
(key injection on, so the reflection redactor and the decoded-text guard both run),
in the same run. Figures: time to the first text event (median; target: within 5 ms of
direct) and the worst delay of any event between the fake writing it and the client
reading it (median over streams of the per-stream worst; target: under 10 ms more than
direct). Then the same with the official SDKs (openai, anthropic) timing their first
text delta, as the gateway would see it.

    .venv/bin/python -m bench.stream_shapes [--chunks 100] [--count 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench.contenders as C
from bench.client import Conn
from bench.procs import Procs

SHAPES = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "anthropic": "/v1/messages",
    "gemini": "/v1/models/gemini-fake:streamGenerateContent?alt=sse",
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


def sdk_first_delta(
    contender: C.Contender, world: C.World, shape: str, count: int
) -> tuple[float | None, list[float]]:
    """Time from the SDK call to its first text delta: on a new client (cold: a new
    connection, through the sidecar also a new upstream connection), then warm."""
    import anthropic
    import httpx
    import openai

    proxy = None
    verify: ssl.SSLContext
    if contender.target.proxy is not None:
        host, port = contender.target.proxy
        proxy = f"http://{host}:{port}"
        verify = ssl.create_default_context(cafile=contender.target.cafile)
    else:
        verify = ssl.create_default_context(cafile=world.ca_file)
    base = f"https://api.openai.com:{world.https_port}"
    out: list[float] = []
    cold: float | None = None
    if shape == "anthropic":
        client: Any = anthropic.Anthropic(
            api_key="dummy", base_url=base, max_retries=0,
            http_client=anthropic.DefaultHttpxClient(proxy=proxy, verify=verify),
        )  # fmt: skip
        if proxy is None:  # direct: the fake's name resolves only through the fake DNS
            client = anthropic.Anthropic(
                api_key="dummy", base_url=f"https://127.0.0.1:{world.https_port}", max_retries=0,
                http_client=anthropic.DefaultHttpxClient(verify=verify),
            )  # fmt: skip
    else:
        url = base if proxy else f"https://127.0.0.1:{world.https_port}"
        client = openai.OpenAI(
            api_key="dummy", base_url=url + "/v1", max_retries=0,
            http_client=httpx.Client(proxy=proxy, verify=verify),
        )  # fmt: skip
    for attempt in range(count + 1):
        started = time.monotonic()
        first = None
        if shape == "anthropic":
            with client.messages.stream(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                extra_body={"chunks": 20, "interval": 0.01},
            ) as stream:  # fmt: skip
                for _ in stream.text_stream:
                    first = first or time.monotonic() - started
        else:
            for chunk in client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True,
                extra_body={"chunks": 20, "interval": 0.01},
            ):  # fmt: skip
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.monotonic() - started
        if attempt and first is not None:
            out.append(first)
        elif first is not None:
            cold = first
    return cold, out


def ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 2) if values else None


async def run(chunks: int, count: int, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="egress-bench-shapes-") as tmp:
        procs = Procs(Path(tmp))
        try:
            world = C.start_world(procs, Path(tmp))
            sidecar = C.start_sidecar(procs, world)
            direct = C.direct(world)
            result: dict[str, Any] = {}
            for shape, path in SHAPES.items():
                row: dict[str, Any] = {}
                for contender in (direct, sidecar, direct, sidecar):  # interleaved rounds
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
                row = {}
                for c in (direct, sidecar):
                    cold, warm = sdk_first_delta(c, world, shape, count)
                    row[c.name] = {
                        "first_delta_ms": ms(warm),
                        "cold_first_delta_ms": ms([cold] if cold else []),
                    }
                result[f"sdk_{shape}"] = row
            return result
        finally:
            procs.stop_all()


def report(result: dict[str, Any]) -> str:
    lines = ["| shape | direct first | sidecar first | diff (target <= 5) | direct worst | "
             "sidecar worst | diff (target <= 10) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for shape in SHAPES:
        d, s = result[shape]["direct"], result[shape]["sidecar"]
        lines.append(
            f"| {shape} | {d['first_event_ms']} | {s['first_event_ms']} | "
            f"{_diff(s['first_event_ms'], d['first_event_ms'])} | {d['worst_event_delay_ms']} | "
            f"{s['worst_event_delay_ms']} | "
            f"{_diff(s['worst_event_delay_ms'], d['worst_event_delay_ms'])} |"
        )
    for shape in ("chat", "anthropic"):
        d, s = result[f"sdk_{shape}"]["direct"], result[f"sdk_{shape}"]["sidecar"]
        for kind in ("first_delta_ms", "cold_first_delta_ms"):
            lines.append(
                f"| SDK {shape} {kind[:-3].replace('_', ' ')} | {d[kind]} | {s[kind]} | "
                f"{_diff(s[kind], d[kind])} | | | |"
            )
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
