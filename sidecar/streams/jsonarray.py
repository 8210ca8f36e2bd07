"""A streamed JSON array, split element by element as it arrives (pure).

Gemini's `:streamGenerateContent` without `alt=sse` answers one JSON array written
incrementally, `[{...}\\r\\n,\\r\\n{...}]`: a client parses each element as it completes.
`JsonArraySplitter` yields every element (an object) once its closing brace arrives,
with its byte offsets, so the inspector can judge it before releasing it, exactly as
it does with SSE events.

Strict: anything that is not `[`, objects separated by commas, `]` and whitespace
raises `NotJsonArray` (the inspector then cuts the stream as not inspectable: a
client's lenient parser must not read what ours skipped). Memory is bounded: an element
larger than `max_event` raises `EventTooLarge`. Element offsets: `start` is just after
the previous element (the separator belongs to the next element), `end` just after the
element's closing brace.
"""

from __future__ import annotations

import re

from sidecar.streams.sse import MAX_EVENT_BYTES, EventTooLarge, SseEvent

_WHITESPACE = b" \t\r\n"
_STRUCTURE = re.compile(rb'["{}\[\]]')  # what changes depth outside a string
_IN_STRING = re.compile(rb'["\\]')


class NotJsonArray(ValueError):
    """The stream is not a JSON array of objects."""


class JsonArraySplitter:
    __slots__ = ("_depth", "_element", "_escape", "_in_string", "_max", "_offset", "_start",
                 "_state")  # fmt: skip

    # states: "open" (before "["), "first" (after "["), "next" (after an element),
    # "item" (after ","), "element" (inside an object), "closed" (after "]")

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event
        self._state = "open"
        self._offset = 0  # stream offset of the next byte fed
        self._start = 0  # stream offset where the current element's event starts
        self._element = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        pos, size = 0, len(chunk)
        while pos < size:
            if self._state == "element":
                pos = self._scan_element(chunk, pos, events)
                continue
            byte = chunk[pos : pos + 1]
            pos += 1
            if byte in _WHITESPACE:
                continue
            self._structure(byte, self._offset + pos - 1)
        self._offset += size
        return events

    def finish(self) -> list[SseEvent]:
        if self._state != "closed":
            raise NotJsonArray("the stream ended inside the JSON array")
        return []

    def _structure(self, byte: bytes, at: int) -> None:
        state = self._state
        if state == "open" and byte == b"[":
            self._state = "first"
        elif state in ("first", "item") and byte == b"{":
            self._state, self._depth = "element", 1
            self._element = bytearray(b"{")
        elif state == "next" and byte == b",":
            self._state = "item"
        elif state in ("first", "next") and byte == b"]":
            self._state = "closed"
        else:
            raise NotJsonArray(f"unexpected {byte!r} at byte {at} of a JSON array stream")

    def _scan_element(self, chunk: bytes, pos: int, events: list[SseEvent]) -> int:
        """Consume bytes of the current element; returns the position after them."""
        begin = pos
        while True:
            if self._in_string:
                if self._escape:
                    if pos >= len(chunk):
                        break  # the escaped byte is in the next chunk
                    self._escape = False
                    pos += 1
                    continue
                match = _IN_STRING.search(chunk, pos)
                if match is None:
                    pos = len(chunk)
                    break
                pos = match.end()
                if match.group() == b"\\":
                    self._escape = True
                else:
                    self._in_string = False
                continue
            match = _STRUCTURE.search(chunk, pos)
            if match is None:
                pos = len(chunk)
                break
            pos = match.end()
            token = match.group()
            if token == b'"':
                self._in_string = True
            elif token in (b"{", b"["):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    break
        self._element += chunk[begin:pos]
        if len(self._element) > self._max:
            raise EventTooLarge(f"a JSON array element is over {self._max} bytes")
        if self._state == "element" and self._depth == 0:
            end = self._offset + pos
            text = self._element.decode("utf-8", "replace")
            events.append(SseEvent(None, text, self._start, end))
            self._element = bytearray()
            self._start = end
            self._state = "next"
        return pos
