"""WebSocket message redaction (issue 11): a key in provider messages never reaches the
gateway whole, in one message or split across any number of consecutive messages."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.credentials.messages import MIN_FRAGMENT, MessageRedactor, uninspectable_extensions
from sidecar.credentials.reflection import REDACTED, compile_patterns, needles_for
from tests.credentials import helpers as h

KEY = h.openai_project_key().encode()
OTHER = h.anthropic_key().encode()
PATTERNS = compile_patterns([KEY, OTHER])


def send(messages: list[bytes]) -> tuple[list[bytes], list[int]]:
    r = MessageRedactor(PATTERNS)
    out, counts = [], []
    for m in messages:
        out.append(r.redact(m))
        counts.append(r.count)
    return out, counts


WINDOW = 16  # the promise (docs/credentials.md): no 16 consecutive key bytes get out


def leaks(data: bytes, key: bytes = KEY) -> bool:
    """True if the gateway, joining the messages, could read WINDOW key bytes."""
    return any(key[i : i + WINDOW] in data for i in range(len(key) - WINDOW + 1))


def test_fragment_rule_keeps_the_promise():
    assert MIN_FRAGMENT <= WINDOW


def test_key_in_one_text_or_binary_message_is_redacted():
    out, counts = send([b'{"type":"error","message":"bad key ' + KEY + b'"}', b"\x00\x01" + OTHER])
    assert out[0] == b'{"type":"error","message":"bad key ' + REDACTED + b'"}'
    assert out[1] == b"\x00\x01" + REDACTED
    assert counts == [1, 1]


def test_key_split_across_two_messages_is_cut_from_both():
    out, counts = send([b"first part " + KEY[:60], KEY[60:] + b" rest"])
    assert out == [b"first part " + REDACTED, REDACTED + b" rest"]
    assert counts == [1, 1]


def test_key_split_with_a_short_first_part_is_cut_from_the_second():
    out, _ = send([b"x " + KEY[:10], KEY[10:] + b" y"])
    assert out == [b"x " + KEY[:10], REDACTED + b" y"]  # < 16 bytes passed
    assert not leaks(b"".join(out))


def test_base64_key_split_across_messages_is_redacted():
    b64 = base64.b64encode(b"user:" + KEY)
    out, _ = send([b64[:40], b64[40:100], b64[100:]])
    joined = b"".join(out)
    assert not any(n in joined for n in needles_for(KEY))


def test_innocent_messages_pass_unchanged():
    messages = [b'{"type":"response.text.delta","delta":"sk-proj-"}', b"hello", b"", b"\n" * 5]
    out, counts = send(messages)
    assert out == messages
    assert counts == [0, 0, 0, 0]


def test_a_key_redacted_earlier_does_not_cut_later_messages():
    out, counts = send([KEY, b"after the key", b"and more"])
    assert out == [REDACTED, b"after the key", b"and more"]
    assert counts == [1, 0, 0]


@settings(max_examples=300, deadline=None)
@given(
    before=st.binary(max_size=40),
    after=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=260), max_size=8),
    which=st.sampled_from([KEY, OTHER]),
)
def test_any_split_never_reveals_the_key(before: bytes, after: bytes, cuts: list[int], which):
    data = before + which + after
    points = sorted({c for c in cuts if 0 < c < len(data)})
    messages = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out, counts = send(messages)
    joined = b"".join(out)
    assert which not in joined
    assert not leaks(joined, which)
    assert sum(counts) >= 1
    assert len(out) == len(messages)  # one message out for every message in


def test_only_permessage_deflate_is_an_inspectable_extension():
    assert not uninspectable_extensions([])
    assert not uninspectable_extensions(["permessage-deflate; client_max_window_bits=15"])
    assert uninspectable_extensions(["x-smuggle"])
    assert uninspectable_extensions(["permessage-deflate", "x-webkit-deflate-frame"])
    assert uninspectable_extensions(["permessage-deflate, bbf-usp-protocol"])
