"""Reflection guard for AWS event-stream responses (Bedrock's streaming APIs). Pure.

`application/vnd.amazon.eventstream` is binary framing: each message carries its total
length, its headers' length and two CRC32s. Replacing a key inside a frame with
`[REDACTED]` (what `StreamRedactor` does to text) changes the length and breaks the
CRCs: the SDK fails with a checksum error, or reads the next frame from the wrong
offset. So a key in such a stream is not redacted in place; the stream is **cut**:

- frames are handed on whole, and only once the scanner has cleared every byte of
  them (it holds back only a suffix that could still become a key, as for text);
- at the first byte that belongs to a key, nothing more of the upstream's stream is
  sent: a well-formed `error` message follows the last clean frame, with
  `:error-code: credential_reflected`, which boto3 raises as an `EventStreamError`
  ("An error occurred (credential_reflected) ...").

The scan runs over the raw bytes, so a key split across frames (or written in any
form `needles_for` knows) is found as in any other response.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Callable

from sidecar.credentials.reflection import REDACTED, StreamRedactor

__all__ = ["EVENT_STREAM", "EventStreamCutter", "cut_body", "event_message", "is_event_stream"]

EVENT_STREAM = "application/vnd.amazon.eventstream"
_PRELUDE = 12
_MIN_MESSAGE = 16  # prelude + message CRC
_MAX_MESSAGE = 16 * 1024 * 1024  # the format's own limit
CUT_MESSAGE = (
    "egress-sidecar: the response carried a credential the sidecar injected; "
    "the stream was cut (credential_reflected)"
)


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == EVENT_STREAM


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: string headers, payload, lengths and CRCs."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += bytes([len(raw_name)]) + raw_name + b"\x07"
        encoded += struct.pack(">H", len(raw_value)) + raw_value
    total = _PRELUDE + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


def cut_message() -> bytes:
    # An `error` message: boto3 raises its `:error-code` / `:error-message` for any
    # operation (an `exception` message needs an exception type the model lists).
    return event_message(
        {
            ":message-type": "error",
            ":error-code": "credential_reflected",
            ":error-message": CUT_MESSAGE,
        },
        b"",
    )


class EventStreamCutter:
    """Whole, scanned frames through; a key cuts the stream with an exception frame.

    Same surface as `StreamRedactor` for the adapter: `feed`, `found`, `names`,
    `count`, `stream_callable`."""

    def __init__(self, scanner: StreamRedactor) -> None:
        self._scanner = scanner
        self._pending = bytearray()  # upstream bytes not yet sent
        self._cleared = 0  # how many of them the scanner has cleared
        self.cut = False

    @property
    def found(self) -> bool:
        return self._scanner.found

    @property
    def names(self) -> set[str]:
        return self._scanner.names

    @property
    def count(self) -> int:
        return self._scanner.count

    def feed(self, chunk: bytes) -> bytes:
        if self.cut:
            return b""  # everything after the key is dropped
        end = not chunk
        self._pending += chunk
        cleared = self._scanner.feed(chunk)  # b"" on the final call flushes
        if self._scanner.found:
            self.cut = True
            # The scanner's output is the input up to its first marker: whole frames
            # before that go on, nothing from the key on.
            self._cleared += max(cleared.find(REDACTED), 0)
            sent = self._whole_messages(self._cleared)
            self._pending.clear()
            return sent + cut_message()
        self._cleared += len(cleared)  # nothing redacted: output == input
        if end:  # the upstream ended: what is left was scanned clean, pass it on
            rest = bytes(self._pending)
            self._pending.clear()
            return rest
        return self._whole_messages(self._cleared)

    def _whole_messages(self, limit: int) -> bytes:
        """Take the complete messages within the first `limit` pending bytes. A stream
        that is not valid framing is passed on as cleared bytes (the SDK reports it)."""
        offset = 0
        while offset + _PRELUDE <= limit:
            (total,) = struct.unpack_from(">I", self._pending, offset)
            if not _MIN_MESSAGE <= total <= _MAX_MESSAGE:
                offset = limit  # not event-stream framing: no frames to keep whole
                break
            if offset + total > limit:
                break
            offset += total
        out = bytes(self._pending[:offset])
        del self._pending[:offset]
        self._cleared -= offset
        return out

    def stream_callable(self) -> Callable[[bytes], list[bytes]]:
        def stream(chunk: bytes) -> list[bytes]:
            out = self.feed(chunk)
            return [out] if out else []

        return stream


def cut_body(scanner: StreamRedactor, body: bytes) -> bytes:
    """A whole (buffered) event-stream body through the cutter."""
    cutter = EventStreamCutter(scanner)
    return cutter.feed(body) + cutter.feed(b"")
