"""Reflection guard: a response that echoes an injected key is redacted (S7).

A compromised or malicious upstream (or a provider error page that quotes the
`Authorization` header) could hand our key back to the gateway. Every response to a
request that got a key is passed through a `StreamRedactor`, which replaces each
occurrence of any current or recently rotated-out secret value, and of its base64
forms, with `[REDACTED]`.

What is matched, per secret value K:

- K itself;
- base64 (standard and URL-safe alphabets) of K at each of the three byte alignments
  it can have inside a larger base64 blob: for each alignment, the characters that
  depend only on K's bytes (at most two characters at each end, i.e. at most 12 bits
  of K, are left next to the `[REDACTED]` marker). Forms shorter than 16 characters
  are not used (they would redact innocent text);
- K percent-encoded, JSON-escaped and as HTML entities (every character, or every
  character that is not a letter or digit), and its hex. All are at least as long as
  K, so the sampling filter below keeps its stride. docs/credentials.md
  ("Encodings") lists what is not caught (partial escapes among them).

Streaming: chunks arrive with arbitrary boundaries, so a key can be split across two
or more chunks. The redactor keeps back the last `longest_needle - 1` bytes of what it
has seen (no more: it delays the stream by at most that many bytes, about a hundred
bytes for one provider key with its base64 forms, never a whole SSE event) and
emits the rest. Its output, concatenated, is exactly what redacting the whole
response at once would give, whatever the chunking.

Speed: a sampling filter first. With `L` the shortest needle and `q = min(8, L)`, every
occurrence of a needle covers some buffer offset that is a multiple of
`step = L - q + 1` together with the `q` bytes after it; so the filter looks up the
`q` bytes at every `step`-th offset in the set of all `q`-grams of all needles (one set
lookup per ~120 bytes for real keys, whatever the number of keys). Only when one
hits does the single compiled alternation of all needles (longest first) run over the
buffer to redact. Both are linear in the chunk size. Measured throughput is in
`docs/credentials.md`.

The adapter must (a) ask the provider for uncompressed responses (`prepare_request`
sets `accept-encoding: identity`) or decode before redacting, and (b) translate an
empty result of `feed()` into `[]` for mitmproxy: returning `b""` from a stream
callable writes a chunked terminator and desynchronises the connection
(docs/mitmproxy-traps.md, stream callables). `stream_callable()` does both for you.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import ahocorasick_rs

from sidecar.credentials.fields import MultiMap, by_name
from sidecar.credentials.prefix_automaton import PrefixAutomaton
from sidecar.credentials.secret_store import Secret, SecretStore

__all__ = [
    "HEADER_NAME_HIT",
    "REDACTED",
    "UNNAMED_HEADER_HIT",
    "RedactionPatterns",
    "ReflectionGuard",
    "StreamRedactor",
    "compile_patterns",
    "needles_for",
]

REDACTED = b"[REDACTED]"
HEADER_NAME_HIT = "(a header name)"  # what redact_headers reports for a dropped header
UNNAMED_HEADER_HIT = "(a header)"  # a value hit whose name shares 8+ bytes with a key
MIN_B64_NEEDLE = 16


def _b64_cores(value: bytes) -> set[bytes]:
    """Base64 text that any encoding containing `value` must contain, per alignment."""
    cores: set[bytes] = set()
    n = len(value)
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + value + b"\0\0")
        start = -(-8 * offset // 6)  # first char made only of value bits
        end = (8 * offset + 8 * n) // 6  # one past the last such char
        core = encoded[start:end]
        if len(core) >= MIN_B64_NEEDLE:
            cores.add(core)
            cores.add(core.replace(b"+", b"-").replace(b"/", b"_"))
    return cores


# Escapes a response can carry a key in (URL, JSON, HTML, hex): each character that is
# not a letter or digit escaped (what encoders do), or every character (what an
# evasive upstream does), with upper- and lower-case hex digits.
_ESCAPES = ("%%%02X", "%%%02x", "\\u%04x", "\\u%04X", "&#x%02x;", "&#x%02X;", "&#%d;")


def _escaped_forms(value: bytes) -> set[bytes]:
    forms = {value.hex().encode(), value.hex().upper().encode(), value.replace(b"/", b"\\/")}
    for escape in _ESCAPES:
        forms.add("".join(escape % b for b in value).encode())
        forms.add(
            "".join(chr(b) if chr(b).isalnum() and b < 128 else escape % b for b in value).encode()
        )
    return forms


def needles_for(value: bytes) -> set[bytes]:
    """Every byte string that reveals `value` and is redacted."""
    return {value} | _b64_cores(value) | _escaped_forms(value)


@dataclass(frozen=True, slots=True)
class RedactionPatterns:
    """Needles compiled once per set of secret values (per `SecretStore.generation`)."""

    needle_re: re.Pattern[bytes] | None  # alternation of all needles, longest first
    needles: tuple[bytes, ...]
    max_len: int
    owners: dict[bytes, str]  # needle -> secret name (for safe reporting)
    qgrams: frozenset[bytes] = frozenset()  # every q-byte substring of every needle
    q: int = 0
    step: int = 1
    prefixes: frozenset[bytes] = frozenset()  # every proper prefix of every needle
    alphabet: frozenset[int] = frozenset()  # every byte value that occurs in a needle
    automaton: PrefixAutomaton | None = None  # issue 10: `pending` in O(1) per new byte
    # Header names are matched case-insensitively: every needle lower-cased, compiled
    # once (a loop over the needles per header name was 37% of the proxy's loop).
    folded_re: re.Pattern[bytes] | None = None
    shortest: int = 0
    # Exact needle finders (Aho-Corasick, in Rust): whether any needle occurs at all, in
    # one pass over a body or over all of a message's headers at once (issue 17).
    search: ahocorasick_rs.BytesAhoCorasick | None = None
    folded_search: ahocorasick_rs.BytesAhoCorasick | None = None

    def pending(self, buf: bytes) -> int:
        """Length of the longest suffix of `buf` that could still become a needle.

        Only that much has to wait for the next chunk: an SSE event ending in "\n\n"
        (no key contains a newline) is emitted at once, not one chunk late.
        """
        alphabet, limit = self.alphabet, min(len(buf), self.max_len - 1)
        run = 0
        while run < limit and buf[-1 - run] in alphabet:
            run += 1
        for k in range(run, 0, -1):
            if buf[-k:] in self.prefixes:
                return k
        return 0

    def may_contain(self, buf: bytes) -> bool:
        """True if a needle occurs in `buf`."""
        return self.search is not None and bool(self.search.find_matches_as_indexes(buf))

    @property
    def empty(self) -> bool:
        return self.needle_re is None

    def __repr__(self) -> str:
        return f"RedactionPatterns(needles={len(self.owners)}, max_len={self.max_len})"


def compile_patterns(values: Iterable[Secret | bytes | str]) -> RedactionPatterns:
    owners: dict[bytes, str] = {}
    for item in values:
        if isinstance(item, Secret):
            raw, name = item.reveal_bytes(), item.name
        elif isinstance(item, str):
            raw, name = item.encode("utf-8"), "secret"
        else:
            raw, name = item, "secret"
        if not raw:
            continue
        for needle in needles_for(raw):
            owners.setdefault(needle, name)
    if not owners:
        return RedactionPatterns(None, (), 0, {})
    ordered = tuple(sorted(owners, key=lambda b: (-len(b), b)))
    needle_re = re.compile(b"|".join(re.escape(n) for n in ordered))
    shortest = len(ordered[-1])
    q = min(8, shortest)
    grams = frozenset(n[j : j + q] for n in ordered for j in range(len(n) - q + 1))
    prefixes = frozenset(n[:k] for n in ordered for k in range(1, len(n)))
    alphabet = frozenset(b for n in ordered for b in n)
    folded = sorted({n.lower() for n in ordered}, key=lambda b: (-len(b), b))
    return RedactionPatterns(
        needle_re,
        ordered,
        len(ordered[0]),
        owners,
        grams,
        q,
        shortest - q + 1,
        prefixes,
        alphabet,
        PrefixAutomaton(ordered),
        re.compile(b"|".join(re.escape(n) for n in folded)),
        shortest,
        ahocorasick_rs.BytesAhoCorasick(list(ordered)),
        ahocorasick_rs.BytesAhoCorasick(folded),
    )


class StreamRedactor:
    """Redacts one response body, chunk by chunk. One instance per response.

    `feed(chunk)` returns the bytes that are safe to emit now (possibly `b""`: nothing
    yet; the adapter must send nothing, i.e. `[]` for mitmproxy). `feed(b"")` means the
    end of the stream, like mitmproxy's last call, and is the same as `finish()`.
    `found` is True once anything was redacted; `names` are the secret names seen.
    """

    __slots__ = ("_done", "_p", "_state", "_tail", "count", "names")

    def __init__(self, patterns: RedactionPatterns) -> None:
        self._p = patterns
        self._tail = b""
        self._state = 0  # the automaton's state after everything fed so far
        self._done = False
        self.count = 0
        self.names: set[str] = set()

    @property
    def found(self) -> bool:
        return self.count > 0

    @property
    def held_back(self) -> int:
        """Bytes kept for the next chunk (at most longest needle - 1)."""
        return len(self._tail)

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return self.finish()
        if self._done:
            raise ValueError("feed() after finish()")
        if self._p.needle_re is None:
            return bytes(chunk)
        buf = self._tail + chunk
        automaton = self._p.automaton
        if automaton is None:
            cut = len(buf) - self._p.pending(buf)
        else:  # same answer as pending(buf), without re-reading the held-back tail
            self._state = automaton.advance(self._state, chunk)
            cut = len(buf) - automaton.pending(self._state, len(buf))
        if cut <= 0:
            self._tail = buf
            return b""
        out, end = self._redact(buf, cut)
        self._tail = buf[end:]
        return out

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        buf, self._tail = self._tail, b""
        if not buf or self._p.needle_re is None:
            return buf
        out, _ = self._redact(buf, len(buf))
        return out

    def __call__(self, chunk: bytes) -> bytes:
        return self.feed(chunk)

    def _redact(self, buf: bytes, cut: int) -> tuple[bytes, int]:
        """Redact matches starting before `cut`; return (output, consumed length)."""
        p = self._p
        assert p.needle_re is not None
        if not p.may_contain(buf):
            return buf[:cut], cut  # the common case: nothing to redact
        parts: list[bytes] = []
        pos = 0
        end = cut
        for m in p.needle_re.finditer(buf):
            if m.start() >= cut:
                break
            parts.append(buf[pos : m.start()])
            parts.append(REDACTED)
            pos = m.end()
            self.count += 1
            self.names.add(p.owners.get(m.group(), "secret"))
            end = max(end, m.end())
        parts.append(buf[pos:end])
        return b"".join(parts), end

    def stream_callable(self) -> Callable[[bytes], list[bytes]]:
        """A mitmproxy `flow.response.stream` callable: chunk -> list of chunks.

        Returns `[]` when there is nothing to emit yet (never `b""`), and flushes on
        mitmproxy's final `b""` call.
        """

        def stream(chunk: bytes) -> list[bytes]:
            out = self.feed(chunk)
            return [out] if out else []

        return stream

    def __repr__(self) -> str:
        return f"StreamRedactor(found={self.count}, held_back={len(self._tail)})"


def redact_bytes(patterns: RedactionPatterns, data: bytes) -> tuple[bytes, int]:
    """Redact a whole body at once; returns (redacted, number of redactions).

    One pass over `data`, not `feed` + `finish`: a body can be 64 MiB decoded, and the
    stream path's tail-joins would hold three more copies of it at once. With nothing
    to redact, `data` itself comes back (no copy)."""
    if not data or patterns.needle_re is None:
        return data, 0
    r = StreamRedactor(patterns)
    out, _ = r._redact(data, len(data))
    return out, r.count


def _shares_key_bytes(p: RedactionPatterns, folded: bytes) -> bool:
    """True if a (lower-cased) header name holds any `q` bytes of a needle: such a name
    is not written to a decision (it could be most of a key, with the value the rest)."""
    grams = {g.lower() for g in p.qgrams}
    return any(folded[i : i + p.q] in grams for i in range(len(folded) - p.q + 1))


class ReflectionGuard:
    """Keeps redaction patterns in step with the `SecretStore` (recompiled on change)."""

    def __init__(self, store: SecretStore) -> None:
        self._store = store
        self._generation = -1
        self._patterns = RedactionPatterns(None, (), 0, {})

    def patterns(self) -> RedactionPatterns:
        gen = self._store.generation
        if gen != self._generation:
            self._patterns = compile_patterns(self._store.redaction_values())
            self._generation = gen
        return self._patterns

    def redactor(self) -> StreamRedactor:
        """A fresh redactor for one response body."""
        return StreamRedactor(self.patterns())

    def redact_body(self, body: bytes) -> tuple[bytes, int]:
        return redact_bytes(self.patterns(), body)

    def redact_headers(self, headers: MultiMap) -> list[str]:
        """Redact header values in place and drop every header whose *name* reveals a
        key (a name cannot carry the marker: `[` is not a token character). Returns
        where keys were found, safe to log: a value hit is the lower-case header name,
        a name hit is `HEADER_NAME_HIT`, never the name itself."""
        p = self.patterns()
        if p.needle_re is None or p.search is None or p.folded_search is None:
            return []
        fields = by_name(headers)
        # One pass over every name and every value first: most responses hold no key.
        names = b"\n".join(n.encode("utf-8", "surrogateescape").lower() for n, _ in fields)
        blob = b"\n".join(v.encode("utf-8", "surrogateescape") for _, vs in fields for v in vs)
        if not (
            p.folded_search.find_matches_as_indexes(names) or p.search.find_matches_as_indexes(blob)
        ):
            return []
        hit: list[str] = []
        for name, values in fields:
            # Case-insensitively: HTTP/2 lower-cases names, and a case-folded key is
            # still most of the key.
            folded = name.encode("utf-8", "surrogateescape").lower()
            if len(folded) >= p.shortest and p.folded_re and p.folded_re.search(folded):
                headers.set_all(name, [])  # drops every field of that name
                hit.append(HEADER_NAME_HIT)
                continue
            new: list[str] = []
            changed = False
            for value in values:
                raw = value.encode("utf-8", "surrogateescape")
                red, count = redact_bytes(p, raw)
                if count:
                    changed = True
                    new.append(red.decode("utf-8", "surrogateescape"))
                else:
                    new.append(value)
            if changed:
                headers.set_all(name, new)
                hit.append(UNNAMED_HEADER_HIT if _shares_key_bytes(p, folded) else name.lower())
        return hit

    def __repr__(self) -> str:
        return f"ReflectionGuard(generation={self._generation})"
