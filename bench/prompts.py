"""Realistic provider request bodies for the request benchmarks (bench.dlp,
bench.inspection), and the MB/s meter both run them through.

Seeded: the same `random.Random(seed)` gives the same bytes, run after run.
"""

from __future__ import annotations

import base64
import json
import random
import string
import time
from collections.abc import Callable
from typing import Any

WORDS = (
    "the model should return a summary of the following function and explain why the "
    "tests fail when the input list is empty or contains duplicate entries please "
    "include a corrected version with type hints and docstrings customer invoice order "
    "shipment delay refund policy account service request quarterly revenue growth "
    "error stack trace"
).split()


def text(rng: random.Random, chars: int) -> str:
    """Prose of about `chars` characters."""
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def code(rng: random.Random, chars: int) -> str:
    """A Python function of about `chars` characters (identifiers and numbers that a
    secret detector must look at and let pass)."""
    lines: list[str] = []
    total = 0
    while total < chars:
        name = "".join(rng.choice(string.ascii_lowercase) for _ in range(8))
        line = f"    {name} = compute({name}_input, limit={rng.randrange(1000)})  # step\n"
        lines.append(line)
        total += len(line)
    return "def handler(event):\n" + "".join(lines)


def image_part(rng: random.Random, size: int) -> dict[str, Any]:
    """A Chat Completions `image_url` part carrying a base64 `data:` image of `size`
    encoded bytes."""
    data = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def chat_request(rng: random.Random, size: int, *, image_size: int = 0, extra: str = "") -> bytes:
    """An OpenAI Chat Completions conversation of about `size` bytes of JSON: a system
    prompt, then alternating turns of prose and code; optionally a last turn with a
    base64 image of `image_size` bytes, and a last turn of `extra` text."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": text(rng, 800)}]
    body = {"model": "gpt-4o", "messages": messages, "temperature": 0.2}
    while len(json.dumps(body)) < size:
        role = "user" if len(messages) % 2 else "assistant"
        content = text(rng, 600) + "\n```python\n" + code(rng, 1400) + "```\n"
        messages.append({"role": role, "content": content})
    if image_size:
        question = {"type": "text", "text": "what is in this image?"}
        messages.append({"role": "user", "content": [question, image_part(rng, image_size)]})
    if extra:
        messages.append({"role": "user", "content": extra})
    return json.dumps(body).encode()


def responses_request(rng: random.Random, size: int) -> bytes:
    """An OpenAI Responses request: 20 function tools, then input items (messages,
    function calls and their outputs) up to about `size` bytes."""
    tools = [
        {
            "type": "function",
            "name": f"tool_{i}",
            "description": text(rng, 120),
            "parameters": {
                "type": "object",
                "properties": {f"arg{j}": {"type": "string"} for j in range(6)},
                "required": ["arg0"],
            },
        }
        for i in range(20)
    ]
    items: list[dict[str, Any]] = []
    body = {"model": "gpt-5", "tools": tools, "input": items}
    while len(json.dumps(body)) < size:
        items.append({"role": "user", "content": [{"type": "input_text", "text": text(rng, 600)}]})
        items.append({"type": "function_call", "call_id": f"c{len(items)}", "name": "tool_1",
                      "arguments": json.dumps({"arg0": text(rng, 40)})})  # fmt: skip
        items.append({"type": "function_call_output", "call_id": f"c{len(items) - 1}",
                      "output": text(rng, 300)})  # fmt: skip
    return json.dumps(body).encode()


def messages_request(rng: random.Random, size: int) -> bytes:
    """An Anthropic Messages request of about `size` bytes: many text turns."""
    messages: list[dict[str, Any]] = []
    body = {"model": "claude-opus-4-7", "max_tokens": 1024, "messages": messages,
            "system": text(rng, 2000)}  # fmt: skip
    while len(json.dumps(body)) < size:
        messages.append({"role": "user", "content": [{"type": "text", "text": text(rng, 900)}]})
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": text(rng, 500)}]}
        )
    return json.dumps(body).encode()


def image_request(rng: random.Random, size: int) -> bytes:
    """A Chat Completions request that is almost all one base64 image of `size` bytes."""
    question = {"type": "text", "text": "what is in this image?"}
    body = {"model": "gpt-4o", "messages": [
        {"role": "user", "content": [question, image_part(rng, size)]}]}  # fmt: skip
    return json.dumps(body).encode()


def mb_per_s(work: Callable[[], int], seconds: float, digits: int = 2) -> float:
    """MB/s of `work` (which returns the bytes it went through), run for `seconds`."""
    done, start = 0, time.perf_counter()
    while True:
        done += work()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return round(done / elapsed / 1e6, digits)
