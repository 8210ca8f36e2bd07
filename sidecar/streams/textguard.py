"""Keys reassembled from decoded text (issue 14 item 3; pure).

The byte-level reflection guard (sidecar/credentials/reflection.py) redacts a key that
appears in the raw body. A hostile upstream can instead split the key across the JSON
string fields of several events (`delta.content`, `partial_json`, `arguments`, ...) or
write part of it as JSON escapes (`\\u0073k-...`): no raw chunk holds it, but the
text the gateway concatenates does. This guard sees that decoded text, per channel
(one per field the gateway concatenates), and reports a key form once it is whole.

Holding back: once a key is found the stream is cut before the event that completed
it, so the gateway holds at most the part sent before. The inspector holds events back
while some channel ends with at least `HOLD_FROM` characters that are the start of a
key form; shorter starts pass (a key's first 15 characters are mostly its public
prefix, `sk-ant-api03-`), so honest text is practically never delayed.
"""

from __future__ import annotations

from sidecar.credentials.reflection import RedactionPatterns

HOLD_FROM = 16
MAX_CHANNELS = 512


class KeyReassembled(Exception):
    """A whole key form appeared in the decoded text of one channel."""


class DecodedTextGuard:
    __slots__ = ("_p", "_pending", "_tails")

    def __init__(self, patterns: RedactionPatterns) -> None:
        self._p = patterns
        self._tails: dict[str, bytes] = {}
        self._pending: dict[str, int] = {}  # channel -> length of a key start at its end

    @property
    def active(self) -> bool:
        return self._p.needle_re is not None

    def add(self, channel: str, text: str) -> None:
        """Raises KeyReassembled when the channel's text now holds a key form."""
        p = self._p
        if p.needle_re is None or not text:
            return
        if channel not in self._tails and len(self._tails) >= MAX_CHANNELS:
            channel = "overflow"  # bounded: every further channel shares one tail
        buf = self._tails.get(channel, b"") + text.encode("utf-8", "surrogatepass")
        if p.may_contain(buf) and p.needle_re.search(buf):
            raise KeyReassembled(channel)
        keep = p.max_len - 1
        tail = buf[-keep:] if keep > 0 else b""
        self._tails[channel] = tail
        pending = p.pending(tail)
        if pending >= HOLD_FROM:
            self._pending[channel] = pending
        else:
            self._pending.pop(channel, None)

    @property
    def holding(self) -> bool:
        """Some channel ends with a long enough start of a key: hold events back."""
        return bool(self._pending)

    def scan_whole(self, text: str) -> None:
        """One complete string (a field of a body that was not streamed)."""
        p = self._p
        if p.needle_re is None or not text:
            return
        raw = text.encode("utf-8", "surrogatepass")
        if p.may_contain(raw) and p.needle_re.search(raw):
            raise KeyReassembled("body")
