"""Limits on everything a peer controls on the HTTP side (issue 10): the values, how
they are parsed from `run` options, and the per-source connection counter.

Pure: no mitmproxy, no network. The thin addon in `sidecar/addons/limits.py` applies
them; docs/limits.md says what each one bounds and how to size it.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Mapping

KIB = 1024
MIB = 1024 * 1024

# Largest body limit accepted anywhere (option or policy): beyond this a "limit" is
# no limit, and the number would more likely be a typo (bytes vs. megabytes).
MAX_BODY_LIMIT = 4 * 1024 * MIB


# The rule named in decisions of limit refusals that no policy entry decided.
RULE_LIMITS = "limits"
# Marks a client connection a limit refused (its decision is already recorded).
LIMIT_ERROR_PREFIX = "egress-sidecar limit: "


class LimitError(ValueError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Defaults fit the shipped manifests (512 MiB memory limit, see docs/limits.md)."""

    request_header_bytes: int = 64 * KIB  # request line + headers, HTTP/1
    response_header_bytes: int = 64 * KIB  # status line + headers from upstream, HTTP/1
    header_count: int = 100  # request headers, HTTP/1 and HTTP/2
    request_body_bytes: int = 32 * MIB  # default; a provider entry may set its own
    header_timeout: float = 10.0  # first byte of a request head -> its end (slowloris)
    first_request_timeout: float = 10.0  # connection (or TLS) ready -> first request byte
    idle_timeout: float = 60.0  # between requests, and any connection without activity
    max_connections: int = 1024  # open client connections, all sources
    max_connections_per_source: int = 512  # open client connections from one address
    max_h2_streams: int = 100  # concurrent HTTP/2 streams per client connection
    # Process-wide budgets (an HTTP/2 flood multiplies streams and bodies past what the
    # per-connection caps bound): streams open at once over all HTTP/2 client
    # connections, and request body bytes read from the gateway but not yet handed on.
    max_h2_streams_total: int = 512
    max_buffered_request_bytes: int = 64 * MIB
    # HTTP/2 flow-control window the sidecar advertises (per stream and per connection),
    # returned only as bytes are handed on: what one connection can make us hold.
    h2_window: int = 64 * KIB
    # Decoded bytes of compressed responses being inspected at once (each one is also
    # bounded by the 64 MiB decode cap): four bombs decoding together took 852 MB.
    max_decoded_bytes: int = 32 * MIB


# (flag, env suffix, Limits field, kind, help). kind: "size" (bytes, k/m/g suffixes),
# "count" (integer), "seconds" (number).
OPTIONS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "--max-request-header-bytes",
        "MAX_REQUEST_HEADER_BYTES",
        "request_header_bytes",
        "size",
        "request line + headers, bytes (default 64k); more: 431",
    ),
    (
        "--max-response-header-bytes",
        "MAX_RESPONSE_HEADER_BYTES",
        "response_header_bytes",
        "size",
        "upstream status line + headers, bytes (default 64k); more: 502",
    ),
    (
        "--max-header-count",
        "MAX_HEADER_COUNT",
        "header_count",
        "count",
        "request headers per request (default 100); more: 431",
    ),
    (
        "--max-request-body",
        "MAX_REQUEST_BODY",
        "request_body_bytes",
        "size",
        "request body bytes unless the provider entry sets max_request_body (default 32m); "
        "more: 413",
    ),
    (
        "--header-timeout",
        "HEADER_TIMEOUT",
        "header_timeout",
        "seconds",
        "seconds to receive a request's headers once they start (default 10); more: 408",
    ),
    (
        "--first-request-timeout",
        "FIRST_REQUEST_TIMEOUT",
        "first_request_timeout",
        "seconds",
        "seconds a new connection may wait before its first request (default 10); then closed",
    ),
    (
        "--idle-timeout",
        "IDLE_TIMEOUT",
        "idle_timeout",
        "seconds",
        "seconds a connection may stay idle between requests (default 60); then closed",
    ),
    (
        "--max-connections",
        "MAX_CONNECTIONS",
        "max_connections",
        "count",
        "open client connections in total (default 1024); more: closed",
    ),
    (
        "--max-connections-per-source",
        "MAX_CONNECTIONS_PER_SOURCE",
        "max_connections_per_source",
        "count",
        "open client connections from one source address (default 512); more: closed",
    ),
    (
        "--max-h2-streams",
        "MAX_H2_STREAMS",
        "max_h2_streams",
        "count",
        "concurrent HTTP/2 streams per client connection (default 100); more: closed",
    ),
    (
        "--max-h2-streams-total",
        "MAX_H2_STREAMS_TOTAL",
        "max_h2_streams_total",
        "count",
        "concurrent HTTP/2 streams over all client connections (default 512); more: 503",
    ),
    (
        "--max-buffered-request-bytes",
        "MAX_BUFFERED_REQUEST_BYTES",
        "max_buffered_request_bytes",
        "size",
        "request body bytes held before they reach the provider, all requests (default 64m); "
        "more: 503",
    ),
    (
        "--max-decoded-bytes",
        "MAX_DECODED_BYTES",
        "max_decoded_bytes",
        "size",
        "decoded bytes of compressed responses inspected at once, all responses "
        "(default 32m); more: 502 response_not_inspectable",
    ),
    (
        "--h2-window",
        "H2_WINDOW",
        "h2_window",
        "size",
        "HTTP/2 flow-control window advertised to clients, per stream and per connection "
        "(default 64k, at least 64k, at most 16m)",
    ),
)

# The HTTP/2 window may not be below the protocol's initial 65,535: a client may send
# that much before it reads our SETTINGS. Above 16 MiB per connection it bounds little.
H2_WINDOW_RANGE = (64 * KIB, 16 * MIB)

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": 1024 * MIB}


def parse_size(text: str | int) -> int:
    """`65536`, `64k`, `32m`, `32MiB`, `1g` -> bytes (binary units)."""
    if isinstance(text, bool):
        raise LimitError(f"{text!r}: expected a size such as 65536, 64k or 32m")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.fullmatch(text.strip())
        if not match:
            raise LimitError(f"{text!r}: expected a size such as 65536, 64k or 32m")
        value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise LimitError(f"{text!r}: must be greater than 0")
    return value


def from_values(values: Mapping[str, str | None]) -> Limits:
    """`Limits` from option values keyed by flag (None: the default)."""
    changes: dict[str, int | float] = {}
    for flag, _env, field, kind, _help in OPTIONS:
        text = values.get(flag)
        if text is None or text == "":
            continue
        try:
            if kind == "size":
                changes[field] = parse_size(text)
                if changes[field] > MAX_BODY_LIMIT:
                    raise LimitError(f"{text!r}: at most {MAX_BODY_LIMIT // MIB}m")
                low, high = H2_WINDOW_RANGE
                if field == "h2_window" and not low <= changes[field] <= high:
                    raise LimitError(f"{text!r}: between {low // KIB}k and {high // MIB}m")
            elif kind == "count":
                if not text.strip().isdigit() or int(text) <= 0:
                    raise LimitError(f"{text!r}: expected a whole number greater than 0")
                changes[field] = int(text)
            else:
                seconds = float(text)
                if not 0.1 <= seconds <= 86400:
                    raise LimitError(f"{text!r}: expected seconds between 0.1 and 86400")
                changes[field] = seconds
        except (LimitError, ValueError) as exc:
            raise LimitError(
                f"{flag} {exc}".replace("could not convert string to float: ", "not a number: ")
            ) from None
    return dataclasses.replace(Limits(), **changes)  # type: ignore[arg-type]


def connection_refusal(total: int, total_limit: int, count: int, per_source: int) -> str | None:
    """Why one more connection is refused (safe to log), or None: `total` open in all,
    `count` from its source. One wording for a process's count and the pod's
    (sidecar/shared_connections.py)."""
    if total >= total_limit:
        return f"{total} open connections, limit {total_limit}"
    if count >= per_source:
        return f"{count} open connections from this source, limit {per_source}"
    return None


class ConnectionCounter:
    """Open client connections, in total and per source address.

    `open` says whether one more is allowed and, if so, counts it; every counted
    connection must be `close`d once. Memory is bounded by the number of open
    connections (an address with none is forgotten)."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total_limit = total
        self.per_source_limit = per_source
        self.total = 0
        self._by_source: dict[str, int] = {}

    def open(self, source: str) -> str | None:
        """None if admitted (and counted); otherwise why not, safe to log."""
        count = self._by_source.get(source, 0)
        why = connection_refusal(self.total, self.total_limit, count, self.per_source_limit)
        if why is not None:
            return why
        self.total += 1
        self._by_source[source] = count + 1
        return None

    def close(self, source: str) -> None:
        count = self._by_source.get(source, 0)
        if count <= 0:
            return
        self.total -= 1
        if count == 1:
            del self._by_source[source]
        else:
            self._by_source[source] = count - 1

    def open_from(self, source: str) -> int:
        return self._by_source.get(source, 0)


class Budget:
    """A process-wide amount (streams, bytes) shared by every connection: `take` says
    whether `amount` more fits and, if so, counts it; every taken amount must be `give`n
    back once. The callers release on every path (done, dropped, connection closed), so
    the count cannot drift upwards. Thread-safe: response decoding runs in worker
    threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refused = 0
        self._lock = threading.Lock()

    def take(self, amount: int) -> bool:
        with self._lock:
            if self.used + amount > self.limit:
                self.refused += 1
                return False
            self.used += amount
            self.peak = max(self.peak, self.used)
            return True

    def give(self, amount: int) -> None:
        with self._lock:
            self.used = max(0, self.used - amount)


def body_limit(default: int, provider_limit: int | None) -> int:
    """The request body limit for a request: the provider entry's, else the default."""
    return provider_limit if provider_limit is not None else default
