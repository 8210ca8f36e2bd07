"""A key reflected in an AWS event stream cuts the stream cleanly (Bedrock streaming).

Before, the text redactor rewrote bytes inside binary frames: lengths and CRCs no longer
matched, and botocore's parser failed with a checksum error (or read frames from the
wrong offset). Now the frames before the key pass intact and an exception frame that
botocore's own parser reads (an `error` message) ends the stream.
"""

from __future__ import annotations

import random

import pytest
from botocore.eventstream import EventStreamBuffer

from sidecar.credentials.eventstream import EventStreamCutter, cut_body, is_event_stream
from sidecar.credentials.reflection import StreamRedactor, compile_patterns
from tests.support.cloud_fakes import event_message, new_aws_credentials

SECRET = new_aws_credentials().secret_access_key
PATTERNS = compile_patterns([SECRET.encode()])


def frames(*texts: str) -> bytes:
    return b"".join(event_message("contentBlockDelta", {"delta": {"text": t}}) for t in texts)


def parse(data: bytes) -> list:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)  # raises on a bad length or CRC


def through(data: bytes, cuts: list[int]) -> tuple[bytes, EventStreamCutter]:
    cutter = EventStreamCutter(StreamRedactor(PATTERNS))
    out, prev = [], 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if cut > prev:
            out.append(cutter.feed(data[prev:cut]))
            prev = cut
    out.append(cutter.feed(b""))
    return b"".join(out), cutter


@pytest.mark.parametrize("seed", range(20))
def test_key_in_an_event_stream_frame_cuts_with_a_frame_the_sdk_parses(seed):
    body = frames("one", "two") + frames(f"the key is {SECRET}") + frames("three")
    rng = random.Random(seed)
    out, cutter = through(body, [rng.randrange(len(body)) for _ in range(rng.randrange(8))])
    assert cutter.found and SECRET.encode() not in out
    messages = parse(out)  # well-formed: no checksum error, no desync
    last = messages[-1]
    assert last.headers[":message-type"] == "error"
    assert last.headers[":error-code"] == "credential_reflected"
    texts = [m.payload for m in messages[:-1]]
    assert all(b"three" not in t for t in texts)  # nothing after the key
    assert len(messages) <= 3


@pytest.mark.parametrize("seed", range(10))
def test_clean_event_stream_passes_byte_for_byte(seed):
    body = frames(*(f"token {n}" for n in range(30)))
    rng = random.Random(seed)
    out, cutter = through(body, [rng.randrange(len(body)) for _ in range(10)])
    assert out == body and not cutter.found
    assert len(parse(out)) == 30


def test_buffered_body_is_cut_the_same_way():
    body = frames("one") + frames(SECRET) + frames("two")
    out = cut_body(StreamRedactor(PATTERNS), body)
    assert [m.headers[":message-type"] for m in parse(out)] == ["event", "error"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("application/vnd.amazon.eventstream", True),
     ("Application/vnd.amazon.eventstream; charset=x", True),
     ("application/json", False), ("", False)],
)  # fmt: skip
def test_event_stream_content_type(value, expected):
    assert is_event_stream(value) is expected
