"""What each gateway connection has been allowed to reach, and what was said about it.

The enforcer decides per hook (CONNECT, ClientHello, request, upstream connect, end of
connection); what one hook learnt that a later one needs lives here, one object per
client connection, dropped when the connection ends:

- `tunnel`: where the connection may go. The CONNECT authority in explicit mode; for
  a redirected plain-HTTP connection (transparent mode, no SNI), the Host that passed,
  so that later requests without a Host header still have a name.
- `pins`: vetted (address, port) -> name. Requests are routed by the vetted address
  so that mitmproxy reuses the pinned upstream connection (it matches connections by
  address alone); the upstream connect maps the address back to its name for SNI and
  certificate checks. One name per pinned address: a second host sharing a CDN
  address must not ride the first one's verified TLS session with our key in it.
- the S9 bookkeeping that makes every connection one decision line: a refused
  CONNECT answered inside the tunnel, a refusal already recorded at the ClientHello,
  whether any HTTP request was seen, and upstream TLS failures to match against the
  flow's error.

Pure: no mitmproxy, no network.
"""

from __future__ import annotations

import dataclasses

from sidecar.decision import Decision

_MAX_TLS_FAILURES = 16  # per connection: the texts are only matched, never grow unbounded


@dataclasses.dataclass(slots=True)
class ClientConnectionState:
    tunnel: tuple[str, int] | None = None
    pins: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)
    refused_tunnel: Decision | None = None  # answered to every request inside the tunnel
    refused_at_hello: bool = False  # refused (and recorded) at the TLS ClientHello
    refused_at_connect: bool = False  # its CONNECT was refused and recorded
    spoke_http: bool = False  # at least one request: each has its own line
    tls_failures: dict[str, str] = dataclasses.field(default_factory=dict)

    def pin(self, address: str, port: int, host: str) -> None:
        self.pins[(address, port)] = host

    def pinned_host(self, address: str, port: int) -> str | None:
        return self.pins.get((address, port))

    def other_host_pinned(self, address: str, port: int, host: str) -> str | None:
        """The other host this connection already reaches at `address`, if any."""
        pinned = self.pins.get((address, port))
        return pinned if pinned is not None and pinned != host else None

    def note_tls_failure(self, error: str) -> None:
        if error and len(self.tls_failures) < _MAX_TLS_FAILURES:
            self.tls_failures[error] = error[:200]


class ClientConnections:
    """The state of every open client connection, by mitmproxy's connection id."""

    def __init__(self) -> None:
        self._by_id: dict[str, ClientConnectionState] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def of(self, client_id: str) -> ClientConnectionState:
        """The connection's state, created on first use (only by hooks that write)."""
        state = self._by_id.get(client_id)
        if state is None:
            state = self._by_id[client_id] = ClientConnectionState()
        return state

    def peek(self, client_id: str) -> ClientConnectionState | None:
        """Read without creating: lookups must not leave state for connections."""
        return self._by_id.get(client_id)

    def close(self, client_id: str) -> ClientConnectionState:
        """Forget the connection; its last state (empty if it never had any)."""
        return self._by_id.pop(client_id, None) or ClientConnectionState()
