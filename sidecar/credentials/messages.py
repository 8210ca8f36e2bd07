"""Reflection guard for message streams: WebSocket messages from the provider (S7).

A WebSocket connection to a provider (OpenAI Realtime, the Responses API over
WebSocket) carries a key in its handshake; every message the provider sends back after
that is scanned here. mitmproxy reassembles fragmented messages and calls its hook once
per whole message, so a key split across the *frames* of one message is seen whole.

A key split across *consecutive messages* is the harder case: the message holding the
first part has to be forwarded before the next one exists, and holding messages back
would break real-time protocols. So each message is scanned together with the last
`longest needle - 1` bytes of the messages before it (unredacted, as received), and:

- every needle that ends inside this message is redacted from the part that is in it;
- a suffix of the message that is the start of a needle and at least `MIN_FRAGMENT`
  bytes long (counting what came before it) is redacted at once: it may be completed
  by the next message, and 16 bytes of a random key are not innocent text.

So of a key split over any number of messages, at most the first `MIN_FRAGMENT - 1`
bytes reach the gateway (for `sk-proj-...` keys the public prefix and 8 random
characters), about what the base64 forms leave next to a marker. Pure: no mitmproxy.
"""

from __future__ import annotations

from sidecar.credentials.reflection import REDACTED, RedactionPatterns

__all__ = ["MIN_FRAGMENT", "MessageRedactor", "uninspectable_extensions"]

MIN_FRAGMENT = 16
# The only WebSocket extension mitmproxy decodes before its message hook. Any other one
# the provider accepts would transform payloads only the gateway then undoes.
INSPECTABLE_EXTENSIONS = frozenset({"permessage-deflate"})


def uninspectable_extensions(values: list[str]) -> bool:
    """True if a 101 response's `Sec-WebSocket-Extensions` lines accept any extension
    other than permessage-deflate (its parameters do not matter)."""
    names = (item.split(";", 1)[0].strip().lower() for v in values for item in v.split(","))
    return any(name and name not in INSPECTABLE_EXTENSIONS for name in names)


class MessageRedactor:
    """Redacts one direction of one WebSocket connection, message by message."""

    __slots__ = ("_p", "_tail", "count", "names")

    def __init__(self, patterns: RedactionPatterns) -> None:
        self._p = patterns
        self._tail = b""  # the end of the messages before, as received
        self.count = 0  # redactions in the message last passed to redact()
        self.names: set[str] = set()

    def redact(self, content: bytes) -> bytes:
        """The message as it may be forwarded; `count` says how many places were cut."""
        p = self._p
        self.count = 0
        if p.needle_re is None or not content:
            return content
        buf = self._tail + content
        start = len(self._tail)
        self._tail = buf[-(p.max_len - 1) :] if p.max_len > 1 else b""
        spans: list[tuple[int, int]] = []
        if p.may_contain(buf):
            for m in p.needle_re.finditer(buf):
                if m.end() > start:
                    spans.append((max(m.start(), start), m.end()))
                    self.names.add(p.owners.get(m.group(), "secret"))
        pending = p.pending(buf)
        if pending >= MIN_FRAGMENT:
            spans.append((max(len(buf) - pending, start), len(buf)))
        if not spans:
            return content
        merged: list[list[int]] = []
        for s, e in sorted(spans):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.count = len(merged)
        parts: list[bytes] = []
        pos = start
        for s, e in merged:
            parts += (buf[pos:s], REDACTED)
            pos = e
        parts.append(buf[pos:])
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"MessageRedactor(held={len(self._tail)})"
