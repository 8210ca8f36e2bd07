"""Bounded decoding of response bodies (issue 11): every layer is undone before the
reflection guard scans; what cannot be decoded within bounds is refused, not passed."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest
import zstandard

from sidecar.credentials.decoding import (
    MAX_LAYERS,
    NotInspectable,
    decode_layers,
    needs_decoding,
    parse_codings,
)
from sidecar.limits import Budget
from tests.credentials import helpers as h

KEY = h.openai_project_key().encode()
BODY = b'{"error": {"message": "Incorrect API key provided: ' + KEY + b'"}}'

CODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


def encode(body: bytes, layers: list[str]) -> bytes:
    for coding in layers:
        body = CODERS[coding](body)
    return body


@pytest.mark.parametrize(
    "layers",
    [
        ["gzip"],
        ["gzip", "gzip"],
        ["br", "gzip"],
        ["gzip", "br"],
        ["zstd", "gzip"],
        ["deflate", "x-gzip", "zstd", "br"],
        ["identity", "gzip", "identity"],
    ],
    ids=lambda v: ",".join(v),
)
def test_stacked_encodings_are_all_decoded(layers: list[str]):
    data = encode(BODY, [c for c in layers if c != "identity"])
    assert KEY not in data or layers == ["identity"]
    assert decode_layers(data, layers) == BODY


def test_transfer_coding_is_decoded_after_content_codings():
    # Transfer-Encoding: gzip, chunked on top of Content-Encoding: br
    data = gzip.compress(brotli.compress(BODY))
    assert decode_layers(data, ["br"], ["gzip", "chunked"]) == BODY


def test_raw_deflate_and_multi_member_gzip_decode_like_clients_do():
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_layers(raw.compress(BODY) + raw.flush(), ["deflate"]) == BODY
    assert decode_layers(gzip.compress(BODY[:30]) + gzip.compress(BODY[30:]), ["gzip"]) == BODY
    two_frames = CODERS["zstd"](BODY[:30]) + CODERS["zstd"](BODY[30:])
    assert decode_layers(two_frames, ["zstd"]) == BODY


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_decompression_bomb_is_refused_at_the_cap_not_expanded(coding: str):
    limit = 1 << 20
    bomb = CODERS[coding](b"\0" * (32 << 20) + KEY)  # 32 MiB of zeros, then the key
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(NotInspectable, match="decodes to more than 1048576 bytes"):
            decode_layers(bomb, [coding], limit=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * limit  # stopped at the cap, nowhere near 32 MiB


def test_stacked_bomb_is_refused_in_the_layer_that_explodes():
    bomb = gzip.compress(gzip.compress(b"\0" * (16 << 20)))
    assert len(bomb) < 64 << 10
    with pytest.raises(NotInspectable, match="decodes to more than"):
        decode_layers(bomb, ["gzip", "gzip"], limit=1 << 20)


def test_body_exactly_at_the_cap_passes():
    assert decode_layers(gzip.compress(b"a" * 1000), ["gzip"], limit=1000) == b"a" * 1000
    with pytest.raises(NotInspectable):
        decode_layers(gzip.compress(b"a" * 1001), ["gzip"], limit=1000)


@pytest.mark.parametrize(
    ("attack", "data", "layers"),
    [
        ("unknown_encoding", BODY, ["x-unknown"]),
        ("unknown_layer_under_gzip", gzip.compress(BODY), ["x-unknown", "gzip"]),
        ("compress_is_not_decoded", BODY, ["compress"]),
        ("too_many_layers", encode(BODY, ["gzip"] * (MAX_LAYERS + 1)), ["gzip"] * 5),
        ("not_gzip_at_all", BODY, ["gzip"]),
        ("truncated_gzip", gzip.compress(BODY)[:-6], ["gzip"]),
        ("gzip_then_garbage", gzip.compress(BODY) + b"junk" + KEY, ["gzip"]),
        ("deflate_then_garbage", zlib.compress(BODY) + KEY, ["deflate"]),
        ("truncated_br", brotli.compress(BODY)[:-4], ["br"]),
        ("truncated_zstd", CODERS["zstd"](BODY)[:-4], ["zstd"]),
        ("corrupt_br", b"\xff" * 40 + KEY, ["br"]),
    ],
)
def test_undecodable_body_is_not_inspectable(attack: str, data: bytes, layers: list[str]):
    with pytest.raises(NotInspectable) as caught:
        decode_layers(data, layers)
    assert KEY.decode() not in str(caught.value), attack


def test_refusal_text_never_echoes_an_attacker_chosen_coding():
    with pytest.raises(NotInspectable) as caught:
        decode_layers(BODY, [KEY.decode().lower()])
    assert str(caught.value) == "unknown encoding (only gzip, deflate, br, zstd are decoded)"
    assert KEY.decode().lower()[:12] not in str(caught.value)


def test_empty_body_needs_no_decoding():
    assert decode_layers(b"", ["gzip", "br"]) == b""  # HEAD, 204, 304
    with pytest.raises(NotInspectable):
        decode_layers(b"", ["x-unknown"])  # but an unknown coding is still refused


def test_codings_are_parsed_from_every_header_line():
    assert parse_codings(["gzip, BR", " gzip ", ""]) == ["gzip", "br", "gzip"]
    assert parse_codings([]) == []


@pytest.mark.parametrize(
    ("content", "transfer", "expected"),
    [
        ([], [], False),
        (["identity"], ["chunked"], False),
        (["gzip"], [], True),
        ([], ["gzip", "chunked"], True),
        (["x-unknown"], [], True),
    ],
)
def test_needs_decoding(content, transfer, expected):
    assert needs_decoding(content, transfer) is expected


# --- the process-wide decode budget (issue 10) --------------------------------------------

LARGE = bytes(range(256)) * (20 * 1024)  # 5 MiB, several STEPs of output


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_multi_step_output_decodes_whole_and_the_budget_is_given_back(coding: str):
    budget = Budget(8 << 20)
    assert decode_layers(CODERS[coding](LARGE), [coding], budget=budget) == LARGE
    assert budget.used == len(LARGE)  # the result stays charged until the caller is done
    budget.give(len(LARGE))
    data = encode(LARGE, ["gzip", coding])
    assert decode_layers(data, ["gzip", coding], budget=budget) == LARGE
    assert budget.used == len(LARGE)  # the inner layer was given back


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_decoding_past_the_process_wide_budget_is_not_inspectable(coding: str):
    """Responses decoding at once share one budget: what is already held by others
    leaves this one less, and past it the response is refused, not expanded."""
    budget = Budget(8 << 20)
    assert budget.take(6 << 20)  # other responses being decoded
    with pytest.raises(NotInspectable, match="over the process-wide budget"):
        decode_layers(CODERS[coding](LARGE), [coding], budget=budget)
    assert budget.used == 6 << 20  # this decode's partial output was given back
