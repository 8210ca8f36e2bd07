"""Server-sent events, split incrementally the way the SDKs split them (pure).

The official SDKs cut a stream at a blank line (`\\n\\n`, `\\r\\r`, `\\r\\n\\r\\n`) and
read it line by line (`\\n`, `\\r`, `\\r\\n` end a line); an event is dispatched at an
empty line; `data:` lines are joined with `\\n`; lines starting with `:` are comments.
google-genai also hands over the last event when the stream ends without a blank line,
so `finish()` dispatches it too: whatever any client could act on is inspected.

google-genai reads more than SSE: a line that does not start with `data: ` is added to
a chunk, counting `{` and `}` (inside strings too), and the chunk is parsed as JSON
once they balance. `SseSplitter(bare_json=True)` (Gemini) dispatches those chunks as
events as well, so a hostile upstream cannot hide a call in unframed JSON lines.

Clients do not agree on where a line ends. SSE (and the openai and anthropic SDKs)
end one at CR and LF only; httpx's `iter_lines`, which google-genai and LiteLLM (its
Anthropic and Gemini streams) read, ends one where `str.splitlines` does: also at VT,
FF, FS, GS, RS, NEL, U+2028 and U+2029. `data: {text}<U+2028>data: {call}` is one
event of unparseable data to an SSE reader and a tool call to LiteLLM. So before a
stream is split, `LineEndEscaper` writes each of those as its JSON escape (`\u2028`):
inside a JSON string (the only place valid JSON holds them raw) that is the same text,
and every client then splits the bytes we forward where we split them.

Each event carries its byte offsets in the stream, so the caller can forward exactly
the bytes of the events it accepted and cut before one it refuses. Memory is bounded:
an event (or a line) larger than `max_event` raises `EventTooLarge`.
"""

from __future__ import annotations

import dataclasses
import re

MAX_EVENT_BYTES = 4 * 1024 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")


class EventTooLarge(Exception):
    """One event (or one line) is over the bound: the stream cannot be inspected."""


# UTF-8 of what `str.splitlines` ends a line at beyond CR and LF (httpx's iter_lines)
_OTHER_LINE_END = re.compile(rb"[\x0b\x0c\x1c\x1d\x1e]|\xc2\x85|\xe2\x80[\xa8\xa9]")
# a chunk ending in these may end in the first bytes of NEL or U+2028/U+2029
_PARTIAL_LINE_END = (b"\xe2\x80", b"\xe2", b"\xc2")


def _escaped(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode())


class LineEndEscaper:
    """Writes every line end that only some clients split at as its JSON escape (see
    the module doc), across chunk boundaries: a chunk's last bytes that may begin one
    wait for the next chunk (at most 2 bytes)."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk if self._tail else chunk
        self._tail = b""
        for partial in _PARTIAL_LINE_END:
            if data.endswith(partial):
                data, self._tail = data[: -len(partial)], partial
                break
        return _OTHER_LINE_END.sub(_escaped, data) if _OTHER_LINE_END.search(data) else data

    def finish(self) -> bytes:
        """What waited at the end of the stream: never a whole line end."""
        rest, self._tail = self._tail, b""
        return rest


@dataclasses.dataclass(frozen=True, slots=True)
class SseEvent:
    name: str | None
    data: str
    start: int  # stream offset of the event's first line
    end: int  # stream offset just after the empty line that ended it (or the stream end)


class SseSplitter:
    __slots__ = (
        "_balance", "_bare", "_bare_json", "_base", "_buf", "_data", "_data_bytes", "_max",
        "_name", "_start",
    )  # fmt: skip

    def __init__(self, max_event: int = MAX_EVENT_BYTES, *, bare_json: bool = False) -> None:
        self._max = max_event
        self._bare_json = bare_json
        self._bare: list[str] = []  # google-genai's unframed chunk so far
        self._balance = 0
        self._buf = b""  # bytes of a line not yet complete
        self._base = 0  # stream offset of _buf[0]
        self._name: str | None = None
        self._data: list[str] = []
        self._data_bytes = 0
        self._start: int | None = None  # offset of the current event's first line

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buf = self._buf + chunk
        events: list[SseEvent] = []
        pos = 0
        for match in _LINE_END.finditer(buf):
            if match.group() == b"\r" and match.end() == len(buf):
                break  # a lone \r at the end may be the start of \r\n: wait
            self._line(buf[pos : match.start()], self._base + pos, self._base + match.end(), events)
            pos = match.end()
        self._buf = buf[pos:]
        self._base += pos
        if len(self._buf) + self._data_bytes + sum(map(len, self._bare)) > self._max:
            raise EventTooLarge(f"a stream event is over {self._max} bytes")
        return events

    def finish(self) -> list[SseEvent]:
        """The end of the stream: a last line and event without their blank line count."""
        events: list[SseEvent] = []
        end = self._base + len(self._buf)
        if self._buf:
            self._line(self._buf, self._base, end, events)
            self._buf = b""
            self._base = end
        if self._data or self._name is not None:
            self._dispatch(end, events)
        if self._bare:
            events.append(SseEvent(None, "".join(self._bare), end, end))
            self._bare = []
        return events

    def _line(self, line: bytes, start: int, end: int, events: list[SseEvent]) -> None:
        if not line:
            if self._data or self._name is not None:
                self._dispatch(end, events)
            self._start = None
            return
        if self._start is None:
            self._start = start
        if self._bare_json and not line.startswith(b"data: "):
            self._bare_line(line, start, end, events)
        if line.startswith(b":"):
            return
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value.decode("utf-8", "replace"))
            self._data_bytes += len(value) + 1
        elif field == b"event":
            self._name = value.decode("utf-8", "replace")

    def _bare_line(self, line: bytes, start: int, end: int, events: list[SseEvent]) -> None:
        text = line.decode("utf-8", "replace")
        self._bare.append(text)
        self._balance += text.count("{") - text.count("}")
        if self._balance == 0:
            events.append(SseEvent(None, "".join(self._bare), start, end))
            self._bare = []

    def _dispatch(self, end: int, events: list[SseEvent]) -> None:
        start = self._start if self._start is not None else end
        events.append(SseEvent(self._name, "\n".join(self._data), start, end))
        self._name, self._data, self._data_bytes, self._start = None, [], 0, None
