"""Reflection guard: the injected key never comes back to the gateway, however split."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.credentials.inject import HeaderList
from sidecar.credentials.reflection import (
    HEADER_NAME_HIT,
    REDACTED,
    UNNAMED_HEADER_HIT,
    ReflectionGuard,
    StreamRedactor,
    compile_patterns,
    needles_for,
)
from sidecar.credentials.secret_store import SecretStore
from tests.credentials import helpers as h

KEY = h.openai_project_key().encode()
OTHER = h.anthropic_key().encode()
PATTERNS = compile_patterns([KEY, OTHER])


def stream(data: bytes, cuts: list[int], patterns=PATTERNS) -> tuple[bytes, StreamRedactor]:
    r = StreamRedactor(patterns)
    out = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if cut > prev:
            out.append(r.feed(data[prev:cut]))
            prev = cut
    out.append(r.feed(b""))  # mitmproxy's end-of-stream call
    return b"".join(out), r


def sse(text: bytes) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"' + text + b'"}}]}\n\n'


B64 = base64.b64encode(b"prefix:" + KEY + b":suffix")
B64_OFF1 = base64.b64encode(b"x" + KEY)
B64_OFF2 = base64.b64encode(b"xy" + KEY + b"z")
B64_URL = base64.urlsafe_b64encode(b"\xfb\xff" + KEY + b"\xff")

CASES = [
    # (attack, body, cut points)
    ("key_in_body", b'{"error": "bad key ' + KEY + b'"}', []),
    ("key_split_across_two_chunks", sse(b"echo " + KEY), [40]),
    ("key_split_across_three_chunks", sse(b"echo " + KEY), [45, 90, 120]),
    ("key_split_across_sse_events", sse(KEY[:50]) + sse(KEY[50:]), [30]),  # not joined: ok
    ("key_one_byte_at_a_time", b"a" + KEY + b"b", list(range(1, len(KEY) + 2))),
    ("key_at_very_end", b"tail " + KEY, [5]),
    ("key_at_very_start", KEY + b" head", [3]),
    ("two_keys_adjacent", KEY + OTHER + KEY, [10, len(KEY) + 5]),
    ("base64_reflected_key", b'{"b64": "' + B64 + b'"}', [20]),
    ("base64_offset_1", B64_OFF1, [7]),
    ("base64_offset_2", B64_OFF2, []),
    ("base64url_reflected_key", B64_URL, [33]),
]


@pytest.mark.parametrize(("body", "cuts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reflected_key_redacted(body: bytes, cuts: list[int]):
    out, r = stream(body, cuts)
    whole, _ = stream(body, [])
    assert out == whole  # chunking never changes the result
    for needle in needles_for(KEY) | needles_for(OTHER):
        assert needle not in out
    assert KEY not in out and OTHER not in out
    assert base64.b64encode(KEY) not in out
    if body not in (sse(KEY[:50]) + sse(KEY[50:]),):
        assert r.found and REDACTED in out
        assert r.names == {"secret"}


def test_key_split_across_sse_events_is_not_a_key():
    """Halves in separate events are not the key: nothing is redacted or held forever."""
    body = sse(KEY[:50]) + sse(KEY[50:])
    out, r = stream(body, [30])
    assert out == body and not r.found


def test_clean_stream_passes_unchanged_and_holds_back_little():
    r = StreamRedactor(PATTERNS)
    event = sse(b"hello world " * 20)
    out = r.feed(event)
    assert r.held_back <= PATTERNS.max_len - 1
    assert out == event[: len(event) - r.held_back]
    assert out + r.finish() == event
    assert not r.found


def test_possible_key_start_is_held_until_the_next_chunk():
    r = StreamRedactor(PATTERNS)
    assert r.feed(KEY[:2]) == b""  # "nothing yet": the adapter sends [] to mitmproxy
    assert r.finish() == KEY[:2]


@pytest.mark.parametrize(
    "chunk",
    [b'data: {"delta": "hello"}\n\n', b"plain words ", b"ab"],
    ids=["sse_event", "text_ending_in_space", "no_key_starts_like_this"],
)
def test_chunk_that_cannot_start_a_key_is_emitted_at_once(chunk):
    """S10: nothing waits for the next chunk unless it could be the start of a key."""
    assert not any(n.startswith(b"ab") for n in PATTERNS.needles)
    r = StreamRedactor(PATTERNS)
    assert r.feed(chunk) == chunk
    assert r.held_back == 0


def test_stream_callable_never_returns_empty_bytes():
    r = StreamRedactor(PATTERNS)
    fn = r.stream_callable()
    chunks = [b"x", b"data: " + KEY[:10], KEY[10:] + b"\n\n", b""]
    results = [fn(c) for c in chunks]
    for res in results:
        assert isinstance(res, list) and b"" not in res
    joined = b"".join(b"".join(res) for res in results)
    assert joined == b"xdata: " + REDACTED + b"\n\n"


def test_no_secrets_means_passthrough():
    r = StreamRedactor(compile_patterns([]))
    assert r.feed(b"abc") == b"abc" and r.finish() == b""


def test_feed_after_finish_refused():
    r = StreamRedactor(PATTERNS)
    r.finish()
    with pytest.raises(ValueError):
        r.feed(b"x")


def test_redactor_repr_shows_no_key():
    r = StreamRedactor(PATTERNS)
    r.feed(KEY[:30])
    assert KEY[:30] not in repr(r).encode() and KEY not in repr(PATTERNS).encode()


# -- with the store: headers, rotation ----------------------------------------------


def test_rotation_previous_key_still_redacted(tmp_path: Path):
    old, new = h.openai_project_key(), h.openai_project_key()
    h.k8s_write(tmp_path, {"openai": old})
    store = SecretStore(tmp_path)
    guard = ReflectionGuard(store)
    h.k8s_write(tmp_path, {"openai": new})
    assert store.refresh() == {"openai"}
    body = f"old={old} new={new}".encode()
    out, count = guard.redact_body(body)
    assert count == 2 and old.encode() not in out and new.encode() not in out
    r = guard.redactor()
    streamed = r.feed(body[:20]) + r.feed(body[20:]) + r.finish()
    assert streamed == out and r.names == {"openai"}


def test_response_headers_redacted(tmp_path: Path):
    key = h.anthropic_key()
    (tmp_path / "anthropic").write_text(key)
    guard = ReflectionGuard(SecretStore(tmp_path))
    headers = HeaderList(
        [
            ("x-echo", f"you sent {key}"),
            ("content-type", "text/event-stream"),
            ("x-b64", base64.b64encode(key.encode()).decode()),
        ]
    )
    assert sorted(guard.redact_headers(headers)) == ["x-b64", "x-echo"]
    assert headers.get("x-echo") == "you sent [REDACTED]"
    assert key not in repr(headers.fields)
    assert headers.get("content-type") == "text/event-stream"


def test_guard_recompiles_only_on_change(tmp_path: Path):
    (tmp_path / "openai").write_text(h.openai_project_key())
    store = SecretStore(tmp_path)
    guard = ReflectionGuard(store)
    p1 = guard.patterns()
    assert guard.patterns() is p1
    (tmp_path / "openai").write_text(h.openai_project_key() + "x")
    store.refresh()
    assert guard.patterns() is not p1


# -- properties -------------------------------------------------------------------

KEY_CHARS = st.sampled_from(h.URLSAFE)
FILLER = st.binary(max_size=300).map(
    lambda b: bytes(c for c in b if not chr(c).isalnum() and c not in b"-_+/=")
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.text(KEY_CHARS, min_size=20, max_size=120),
    parts=st.lists(FILLER, min_size=2, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_property_any_chunking_redacts_every_occurrence(key: str, parts: list[bytes], cuts):
    k = key.encode()
    text = k.join(parts)
    patterns = compile_patterns([k])
    out, r = stream(text, [c % (len(text) + 1) for c in cuts], patterns)
    assert k not in out
    assert out == REDACTED.join(parts)
    assert r.count == len(parts) - 1


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=1500),
    positions=st.lists(st.integers(min_value=0, max_value=1500), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_property_chunking_never_changes_the_output(data: bytes, positions, cuts):
    text = data
    for p in sorted(positions, reverse=True):
        p %= len(text) + 1
        text = text[:p] + KEY + text[p:]
    whole, _ = stream(text, [])
    out, _ = stream(text, [c % (len(text) + 1) for c in cuts])
    assert out == whole
    assert KEY not in out


def test_1mb_stream_without_keys_passes_unchanged_in_any_chunk_size():
    """The redactor's speed is measured in bench/ (never in a timed test); here only that
    1 MB of honest SSE in small and large chunks comes out byte for byte."""
    keys = [h.openai_project_key().encode() for _ in range(6)]
    patterns = compile_patterns(keys)
    event = sse(b"The quick brown fox jumps over the lazy dog, chunk after chunk.")
    data = (event * (1_000_000 // len(event) + 1))[:1_000_000]
    for chunk in (1024, 16384):
        r = StreamRedactor(patterns)
        out = [r.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
        out.append(r.finish())
        assert b"".join(out) == data
        assert r.count == 0


def test_key_as_header_name_is_dropped_and_not_named(tmp_path: Path):
    """Issue 11: a header *named* after the key (any case: HTTP/2 lower-cases names)."""
    key = h.openai_project_key()
    (tmp_path / "openai").write_text(key)
    guard = ReflectionGuard(SecretStore(tmp_path))
    headers = HeaderList(
        [
            (key, "1"),
            ("x-" + key.lower(), "2"),
            ("content-type", "application/json"),
            ("x-echo", key),
        ]
    )
    hits = guard.redact_headers(headers)
    assert sorted(hits) == sorted([HEADER_NAME_HIT, HEADER_NAME_HIT, "x-echo"])
    assert not any(key.lower() in name.lower() for name, _ in headers.fields)
    assert headers.get("content-type") == "application/json"
    assert headers.get("x-echo") == "[REDACTED]"
    assert key.lower() not in repr(hits).lower()


def test_innocent_header_names_are_kept(tmp_path: Path):
    (tmp_path / "openai").write_text(h.openai_project_key())
    guard = ReflectionGuard(SecretStore(tmp_path))
    headers = HeaderList([("sk-proj-request-id", "1"), ("x-ratelimit-remaining", "9")])
    assert guard.redact_headers(headers) == []
    assert len(headers.fields) == 2


def test_header_named_after_most_of_the_key_is_not_named_in_the_report(tmp_path: Path):
    """The name holds the key minus its last bytes (not a needle), the value the key:
    the value is redacted, and the report must not write the name into a decision."""
    key = h.azure_key()
    (tmp_path / "azure").write_text(key)
    guard = ReflectionGuard(SecretStore(tmp_path))
    headers = HeaderList([("x-" + key[:-4], key), ("x-echo", key)])
    hits = guard.redact_headers(headers)
    assert sorted(hits) == sorted([UNNAMED_HEADER_HIT, "x-echo"])
    assert key[:-4] not in repr(hits)
