"""Bounded decoding of a response body's content and transfer codings (S7).

The reflection guard can only find a key in bytes it can read. We ask providers for
`accept-encoding: identity`; a response that is compressed anyway is decoded here,
every layer (`Content-Encoding: gzip, gzip`, `br, gzip`, a `Transfer-Encoding: gzip,
chunked` on HTTP/1.1), before it is scanned, and the gateway then gets exactly the
decoded bytes that were scanned (never the compressed ones: a decoder that disagrees
with ours would otherwise be a way around the scan).

What cannot be decoded is not inspectable, and the adapter refuses the response:

- an unknown coding (`x-unknown`, `compress`), or more than `MAX_LAYERS` layers;
- a corrupt or truncated layer, or trailing bytes after the last gzip member;
- a decompression bomb: any layer that would decode to more than `limit` bytes is
  stopped at `limit + 1` bytes of output and refused, never expanded further.

`limit` is the same as the proxy's body size limit (`DECODED_BODY_LIMIT`, 64 MiB): a
compressed response may decode to no more than an uncompressed response may carry.

That bound is per response; concurrent responses add up (four 64 KB gzip bodies took
the sidecar to 852 MB). So output is also charged, `STEP` bytes at a time as it is
produced, to an optional process-wide `budget` (`--max-decoded-bytes`): past it the
response is not inspectable either, and decoding stops there.
Pure: no mitmproxy import, no network.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import brotli
import zstandard

from sidecar.credentials.fields import MultiMap, values_of

__all__ = [
    "DECODED_BODY_LIMIT",
    "MAX_LAYERS",
    "NotInspectable",
    "decode_layers",
    "header_codings",
    "needs_decoding",
    "parse_codings",
]

DECODED_BODY_LIMIT = 64 * 1024 * 1024  # == body_size_limit in sidecar/runner.py
MAX_LAYERS = 4
_ZSTD_MAX_WINDOW = 8 * 1024 * 1024  # RFC 8878 section 3.1.1.1.2: 8 MiB for HTTP
_IDENTITY = frozenset({"", "identity"})
_CHUNKED = "chunked"


STEP = 1024 * 1024  # output charged to the budget this much at a time


class NotInspectable(ValueError):
    """The body cannot be decoded within bounds. The message is safe to log: it names
    codings and sizes, never content."""


class DecodeBudget(Protocol):
    """Decoded bytes held at once by every response being decoded (thread-safe: the
    decoding runs in worker threads). `sidecar.limits.Budget` is one."""

    limit: int

    def take(self, amount: int) -> bool: ...

    def give(self, amount: int) -> None: ...


class _Meter:
    """Charges one decode's output to the budget as it grows; `release` gives back all
    but what the caller keeps."""

    def __init__(self, budget: DecodeBudget | None) -> None:
        self.budget = budget
        self.charged = 0

    def charge(self, coding: str, amount: int) -> None:
        if self.budget is None or amount <= 0:
            return
        if not self.budget.take(amount):
            raise NotInspectable(
                f"{coding} layer: decoded bytes over the process-wide budget of "
                f"{self.budget.limit} bytes (--max-decoded-bytes)"
            )
        self.charged += amount

    def release(self, keep: int = 0) -> None:
        if self.budget is not None and self.charged > keep:
            self.budget.give(self.charged - keep)
            self.charged = keep


def parse_codings(values: Iterable[str]) -> list[str]:
    """`["gzip, br", "gzip"]` (one or several header lines) -> `["gzip", "br", "gzip"]`,
    in the order they were applied."""
    return [c.strip().lower() for v in values for c in v.split(",") if c.strip()]


def header_codings(headers: MultiMap) -> tuple[list[str], list[str]]:
    """A message's content and transfer codings (`parse_codings` of each header), read
    in one pass over its headers."""
    content, transfer = values_of(headers, ("content-encoding", "transfer-encoding"))
    return parse_codings(content), parse_codings(transfer)


def needs_decoding(content: list[str], transfer: list[str]) -> bool:
    """True if the body as received is not the plain bytes the gateway will read."""
    return any(c not in _IDENTITY for c in content) or any(
        c not in _IDENTITY and c != _CHUNKED for c in transfer
    )


def decode_layers(
    body: bytes,
    content: list[str],
    transfer: list[str] = (),  # type: ignore[assignment]
    limit: int = DECODED_BODY_LIMIT,
    budget: DecodeBudget | None = None,
) -> bytes:
    """Undo the transfer codings, then the content codings, last applied first.

    With a `budget`, every layer's output is charged to it while it is produced; an
    inner layer's is given back once the next one is decoded. The result stays charged:
    the caller gives `len(result)` back once it no longer holds it (when a layer was
    decoded at all, i.e. the result is not `body` itself)."""
    layers = [c for c in content if c not in _IDENTITY] + [
        c for c in transfer if c not in _IDENTITY and c != _CHUNKED
    ]
    if len(layers) > MAX_LAYERS:
        raise NotInspectable(f"{len(layers)} encoding layers (at most {MAX_LAYERS})")
    previous = _Meter(None)
    for coding in reversed(layers):
        decoder = _DECODERS.get(coding)
        if decoder is None:
            previous.release()
            raise NotInspectable(_unsupported(coding))
        if not body:
            continue  # HEAD, 204, 304: nothing to decode or scan
        meter = _Meter(budget)
        try:
            decoded = decoder(body, limit, meter)
        except NotInspectable:
            meter.release()
            raise
        except Exception as exc:  # noqa: BLE001 - zlib.error, brotli.error, ZstdError, ...
            meter.release()
            raise NotInspectable(f"{coding} layer does not decode ({type(exc).__name__})") from None
        finally:
            previous.release()  # the layer it was decoded from is no longer held
        previous, body = meter, decoded
    return body


def _bomb(coding: str, limit: int) -> NotInspectable:
    return NotInspectable(f"{coding} layer decodes to more than {limit} bytes")


def _zlib_member(
    d: Any, data: bytes, out: bytearray, limit: int, meter: _Meter, coding: str
) -> None:
    """Feed `data` to `d`, appending at most `STEP` bytes of output at a time (each
    charged) until it stops producing or passes `limit`."""
    while True:
        chunk = d.decompress(data, min(STEP, limit + 1 - len(out)))
        if len(out) + len(chunk) > limit:
            raise _bomb(coding, limit)
        meter.charge(coding, len(chunk))
        out += chunk
        data = d.unconsumed_tail
        if not data and (d.eof or not chunk):
            return


def _gzip(body: bytes, limit: int, meter: _Meter) -> bytes:
    out = bytearray()
    data = body
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        _zlib_member(d, data, out, limit, meter, "gzip")
        if not d.eof:
            raise NotInspectable("gzip layer is truncated")
        data = d.unused_data
        if not data.strip(b"\0"):  # another member follows, or only padding
            return bytes(out)


def _zlib_bounded(body: bytes, limit: int, wbits: int, meter: _Meter) -> bytes:
    d = zlib.decompressobj(wbits)
    out = bytearray()
    _zlib_member(d, body, out, limit, meter, "deflate")
    if not d.eof:
        raise NotInspectable("deflate layer is truncated")
    if d.unused_data:
        raise NotInspectable("deflate layer has trailing bytes")
    return bytes(out)


def _deflate(body: bytes, limit: int, meter: _Meter) -> bytes:
    # "deflate" means zlib-wrapped (RFC 9110); some servers send raw deflate.
    try:
        return _zlib_bounded(body, limit, zlib.MAX_WBITS, meter)
    except zlib.error:
        meter.release()
        return _zlib_bounded(body, limit, -zlib.MAX_WBITS, meter)


def _brotli(body: bytes, limit: int, meter: _Meter) -> bytes:
    d = brotli.Decompressor()
    out = bytearray()
    data = body
    while True:
        chunk = d.process(data, output_buffer_limit=min(STEP, limit + 1 - len(out)))
        data = b""
        if len(out) + len(chunk) > limit:
            raise _bomb("br", limit)
        meter.charge("br", len(chunk))
        out += chunk
        if d.is_finished() or not chunk:
            break
    if not d.can_accept_more_data():
        raise _bomb("br", limit)
    if not d.is_finished():
        raise NotInspectable("br layer is truncated")
    return bytes(out)


def _zstd(body: bytes, limit: int, meter: _Meter) -> bytes:
    dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
    reader = dctx.stream_reader(io.BytesIO(body), read_across_frames=True)
    out = bytearray()
    while True:  # bounded: stops at limit + 1 bytes of output
        chunk = reader.read(min(STEP, limit + 1 - len(out)))
        if not chunk:
            break
        if len(out) + len(chunk) > limit:
            raise _bomb("zstd", limit)
        meter.charge("zstd", len(chunk))
        out += chunk
    # The reader accepts a truncated last frame silently; now that the output is known
    # to be small, walk the frames once more to check that each one ends.
    data = body
    while data:
        frame = dctx.decompressobj()
        frame.decompress(data)
        if not frame.eof:
            raise NotInspectable("zstd layer is truncated")
        data = frame.unused_data
    return bytes(out)


_DECODERS: dict[str, Callable[[bytes, int, _Meter], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


# Registered codings we do not decode: named in the refusal. Anything else is attacker
# chosen text (it could be a key) and is never echoed.
_KNOWN_UNSUPPORTED = frozenset(
    {"compress", "x-compress", "exi", "pack200-gzip", "aes128gcm", "dcb", "dcz"}
)


def _unsupported(coding: str) -> str:
    if coding in _KNOWN_UNSUPPORTED:
        return f"encoding {coding!r} is not supported (only gzip, deflate, br, zstd)"
    return "unknown encoding (only gzip, deflate, br, zstd are decoded)"
